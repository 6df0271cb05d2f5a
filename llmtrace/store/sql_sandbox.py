"""Locked-down execution of ad-hoc SQL over the documented views (ExecuteSql and `llmtrace sql`).

Three layers, each enough on its own for the worst cases:

1. `check_query` parses the text with DuckDB's own parser (`json_serialize_sql`, which serialises
   SELECT statements only) and walks the whole syntax tree: one SELECT, reading only the views
   `spans`, `findings` and `traces` (or CTEs defined in the query), no table functions, no
   qualified names, no functions that read settings, the catalog or the host, and no call
   asked to build a value larger than `sql_sizes` allows (DuckDB's limits cannot stop those).
2. In tenant mode, TEMP views named like the documented ones shadow them on this cursor, so
   every reference the query makes, however nested, sees only the tenant's rows.
3. The connection itself was opened with `enable_external_access=false` and extension
   autoloading off, so even a query the walk let through cannot read or write files, attach
   databases or load code.

Documented for users in docs/sql.md.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Final, Literal

import duckdb

from llmtrace.store.sql_sizes import built_size_problem

#: The only relations a query may read, by their bare names.
VIEWS: Final[frozenset[str]] = frozenset({"spans", "findings", "traces"})
#: Longer texts are refused before parsing; nobody types a 100 kB query.
MAX_QUERY_CHARS: Final = 100_000

RefusalReason = Literal["invalid", "denied"]

_VIEW_LIST: Final = ", ".join(sorted(VIEWS))

# Functions that are harmless to DuckDB but reveal what a tenant must not see: settings,
# variables, the catalog, the query text, per-column statistics (`stats` reports min/max over
# every tenant's rows), or that have effects (sequences, the log, sleeping threads). Table
# functions are refused wholesale elsewhere; their names are here too in case a scalar variant
# appears in a later DuckDB.
_DENIED_FUNCTIONS: Final[frozenset[str]] = frozenset(
    {
        "checkpoint",
        "currval",
        "current_catalog",
        "current_connection_id",
        "current_database",
        "current_query",
        "current_query_id",
        "current_schema",
        "current_schemas",
        "current_setting",
        "current_transaction_id",
        "force_checkpoint",
        "format_type",
        "get_block_size",
        "getenv",
        "getvariable",
        "glob",
        "in_search_path",
        "json_deserialize_sql",
        "json_execute_serialized_sql",
        "json_serialize_plan",
        "json_serialize_sql",
        "nextval",
        "query",
        "query_table",
        "setval",
        "sleep_ms",
        "sniff_csv",
        "sql_auto_complete",
        "stats",
        "txid_current",
        "vector_type",
        "version",
        "which_secret",
        "write_log",
        # Builds a bitstring as long as the span of its values (nanosecond timestamps: exabits).
        "bitstring_agg",
    }
)
# Whole families: catalog and settings introspection (duckdb_*, pragma_*, pg_* including
# pg_get_viewdef and pg_sleep), file readers, and DuckDB's internal helpers.
_DENIED_PREFIXES: Final = ("duckdb_", "pragma_", "pg_", "read_", "parquet_", "__internal")

# Table references that only combine or compute rows; every other kind (TABLE_FUNCTION,
# SHOW_REF for DESCRIBE/SHOW/SUMMARIZE, and anything a later DuckDB adds) is refused.
_ALLOWED_TABLE_REFS: Final = frozenset(
    {"BASE_TABLE", "JOIN", "SUBQUERY", "EXPRESSION_LIST", "EMPTY", "PIVOT"}
)


# The names are the contract the RPC layer and CLI map to status codes, hence no Error suffix.
class SqlRefused(Exception):  # noqa: N818
    """The query is not run: `invalid` (INVALID_ARGUMENT) or `denied` (PERMISSION_DENIED)."""

    def __init__(self, reason: RefusalReason, message: str) -> None:
        super().__init__(message)
        self.reason: RefusalReason = reason
        self.message = message


class SqlTimeout(Exception):  # noqa: N818
    """The query ran past its time limit and was interrupted (DEADLINE_EXCEEDED)."""


@dataclass(frozen=True)
class SqlColumn:
    """One result column: its name and DuckDB type name (`BIGINT`, `VARCHAR[]`, ...)."""

    name: str
    type: str


@dataclass(frozen=True)
class SqlResult:
    """At most `max_rows` rows; `truncated` says the query had more."""

    columns: list[SqlColumn]
    rows: list[tuple[object, ...]]
    truncated: bool


def check_query(conn: duckdb.DuckDBPyConnection, query: str) -> None:
    """Raise SqlRefused unless `query` is one SELECT reading only the documented views.

    Parse and syntax errors and multiple statements are `invalid`; other statement kinds,
    other relations, table functions and denied functions are `denied`.
    """
    if len(query) > MAX_QUERY_CHARS:
        raise SqlRefused("invalid", f"query is longer than {MAX_QUERY_CHARS} characters")
    statements = _parse(conn, query)
    if not statements:
        raise SqlRefused("invalid", "empty query: expected exactly one SELECT statement")
    if len(statements) > 1:
        raise SqlRefused("invalid", f"expected exactly one SELECT statement, got {len(statements)}")
    _Walker(conn).walk(statements[0])
    problem = built_size_problem(statements[0])
    if problem is not None:
        raise SqlRefused("denied", problem)


def execute_sandboxed(
    conn: duckdb.DuckDBPyConnection,
    *,
    tenant: str | None,
    query: str,
    max_rows: int,
    timeout_s: float,
) -> SqlResult:
    """Check and run `query` on `conn`, a cursor made for this one query (the caller closes it).

    `tenant` None is operator mode: every tenant's rows. Otherwise the views are shadowed by
    tenant-filtered TEMP views on this cursor first. Blocks; call it from a worker thread.
    Raises SqlRefused, or SqlTimeout when the query runs longer than `timeout_s`.
    """
    if max_rows < 0:
        raise ValueError("max_rows must not be negative")
    if timeout_s <= 0:
        raise ValueError("timeout_s must be positive")
    check_query(conn, query)
    # An unknown table name would otherwise be looked up among the caller's Python variables
    # (DataFrames, Arrow tables). The setting is per connection, so other cursors keep theirs.
    conn.execute("SET python_enable_replacements = false")
    if tenant is not None:
        _shadow_views_for_tenant(conn, tenant)

    interrupted = threading.Event()

    def interrupt() -> None:
        interrupted.set()
        conn.interrupt()

    timer = threading.Timer(timeout_s, interrupt)
    timer.daemon = True
    timer.start()
    try:
        conn.execute(query)
        description = conn.description or []
        # Results stream: only max_rows + 1 rows are ever produced into Python.
        rows = conn.fetchmany(max_rows + 1)
    except duckdb.InterruptException:
        raise SqlTimeout(f"query exceeded {timeout_s:g} s") from None
    except (duckdb.InternalException, duckdb.FatalException):
        # A DuckDB bug, not the user's mistake: let the caller report INTERNAL.
        raise
    except duckdb.Error as exc:
        if interrupted.is_set():
            raise SqlTimeout(f"query exceeded {timeout_s:g} s") from None
        # The user's mistake (unknown column, failed cast). A PermissionException would mean
        # the walk missed something and the connection's own lock-down stopped it.
        reason: RefusalReason = "denied" if isinstance(exc, duckdb.PermissionException) else "invalid"
        raise SqlRefused(reason, _first_line(exc)) from None
    finally:
        timer.cancel()
        # If the timer is mid-callback, wait so no interrupt lands after we return.
        timer.join()
    columns = [SqlColumn(name=str(d[0]), type=str(d[1])) for d in description]
    return SqlResult(
        columns=columns,
        rows=[tuple(row) for row in rows[:max_rows]],
        truncated=len(rows) > max_rows,
    )


def _parse(conn: duckdb.DuckDBPyConnection, query: str) -> list[object]:
    """The serialised statements of `query`, or SqlRefused for parse errors and non-SELECTs."""
    row = conn.execute("SELECT json_serialize_sql(?)", [query]).fetchone()
    if row is None or not isinstance(row[0], str):
        raise SqlRefused("invalid", "the query could not be parsed")
    try:
        parsed = json.loads(row[0])
    except RecursionError:
        raise SqlRefused("invalid", "query is nested too deeply") from None
    if not isinstance(parsed, dict):
        raise SqlRefused("invalid", "the query could not be parsed")
    if parsed.get("error"):
        message = str(parsed.get("error_message") or "the query could not be parsed")
        if parsed.get("error_type") == "not implemented" and "Only SELECT" in message:
            # json_serialize_sql serialises SELECT only; every other statement kind lands here.
            raise SqlRefused(
                "denied",
                f"only SELECT statements are allowed{_statement_kinds(conn, query)}; "
                f"queries may read only the views {_VIEW_LIST}",
            )
        raise SqlRefused("invalid", f"Parser Error: {message}")
    statements = parsed.get("statements")
    if not isinstance(statements, list):
        raise SqlRefused("invalid", "the query could not be parsed")
    return statements


def _statement_kinds(conn: duckdb.DuckDBPyConnection, query: str) -> str:
    """` (got COPY)`-style detail for the refusal message; empty when it cannot be told."""
    try:
        kinds = [s.type.name for s in conn.extract_statements(query)]
    except duckdb.Error:
        return ""
    # DuckDB runs the PIVOT statement as several statements (MULTI): name it as the user wrote it.
    other = sorted({"PIVOT" if k == "MULTI" else k for k in kinds if k != "SELECT"})
    return f" (got {', '.join(other)})" if other else ""


class _Walker:
    """Walks every node of a serialised statement, tracking which CTE names are in scope."""

    def __init__(self, conn: duckdb.DuckDBPyConnection) -> None:
        # A CTE named like a catalog relation would make a reference outside the CTE's scope
        # (or in its own body) read that relation while the walk thinks it reads the CTE.
        # Refusing such names makes any scoping difference between this walk and DuckDB's
        # binder harmless.
        self._catalog_names = {
            _fold(str(name))
            for (name,) in conn.execute(
                "SELECT table_name FROM duckdb_tables() UNION ALL SELECT view_name FROM duckdb_views()"
            ).fetchall()
        }
        # Macros and UDFs someone created may read base tables; only DuckDB's own are allowed.
        self._user_functions = {
            _fold(str(name))
            for (name,) in conn.execute(
                "SELECT DISTINCT function_name FROM duckdb_functions() WHERE NOT internal"
            ).fetchall()
        }

    def walk(self, root: object) -> None:
        """Raise SqlRefused at the first node that is not allowed."""
        # Iterative, so deeply nested expressions cannot exhaust Python's recursion limit.
        stack: list[tuple[object, frozenset[str]]] = [(root, frozenset())]
        while stack:
            node, scope = stack.pop()
            if isinstance(node, list):
                stack.extend((item, scope) for item in node)
            elif isinstance(node, dict):
                scope = self._enter_ctes(node, scope, stack)
                self._check_table_ref(node, scope)
                self._check_function(node)
                recursive_name = _recursive_cte_name(node)
                for key, value in node.items():
                    if key == "cte_map":
                        continue
                    if key == "right" and recursive_name is not None:
                        # Only the recursive term of WITH RECURSIVE sees the CTE itself; in the
                        # anchor term DuckDB binds the name to the catalog.
                        stack.append((value, scope | {recursive_name}))
                    else:
                        stack.append((value, scope))

    def _enter_ctes(
        self, node: dict[str, object], scope: frozenset[str], stack: list[tuple[object, frozenset[str]]]
    ) -> frozenset[str]:
        """Queue the CTE bodies of a query node; return the scope for the rest of the node."""
        cte_map = node.get("cte_map")
        if cte_map is None:
            return scope
        entries = cte_map.get("map") if isinstance(cte_map, dict) else None
        if not isinstance(entries, list):
            raise SqlRefused("denied", "unsupported query construct (CTE list)")
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
                raise SqlRefused("denied", "unsupported query construct (CTE)")
            name = _fold(entry["key"])
            if name in self._catalog_names and name not in VIEWS:
                raise SqlRefused("denied", f"CTE name {entry['key']!r} is reserved; choose another name")
            # A CTE body sees the CTEs before it, not itself nor those after it.
            stack.append((entry.get("value"), scope))
            scope = scope | {name}
        return scope

    def _check_table_ref(self, node: dict[str, object], scope: frozenset[str]) -> None:
        kind = node.get("type")
        if "class" in node or not isinstance(kind, str):
            return
        if kind == "TABLE_FUNCTION":
            name = _function_name(node.get("function"))
            raise SqlRefused(
                "denied",
                f"table function {name}() is not allowed; queries may read only the views {_VIEW_LIST}",
            )
        if kind == "SHOW_REF":
            raise SqlRefused(
                "denied",
                "DESCRIBE, SHOW and SUMMARIZE are not allowed; "
                "SELECT * FROM <view> LIMIT 0 shows a view's columns",
            )
        is_table_ref = "sample" in node and "query_location" in node and not kind.endswith("_NODE")
        if is_table_ref and kind not in _ALLOWED_TABLE_REFS:
            raise SqlRefused("denied", f"unsupported table reference {kind}")
        if kind != "BASE_TABLE":
            return
        table = node.get("table_name")
        if not isinstance(table, str):
            raise SqlRefused("denied", "unsupported table reference")
        qualified = node.get("qualified_name")
        path = qualified.get("path") if isinstance(qualified, dict) else None
        if node.get("schema_name") or node.get("catalog_name") or (isinstance(path, list) and len(path) > 1):
            shown = ".".join(str(p) for p in path) if isinstance(path, list) and path else table
            raise SqlRefused(
                "denied",
                f"qualified name {shown} is not allowed; use the bare view names {_VIEW_LIST}",
            )
        if node.get("at_clause") is not None:
            raise SqlRefused("denied", "AT (time travel) clauses are not allowed")
        name = _fold(table)
        if name not in VIEWS and name not in scope:
            raise SqlRefused(
                "denied",
                f"relation {table!r} is not available; queries may read only the views {_VIEW_LIST}",
            )

    def _check_function(self, node: dict[str, object]) -> None:
        raw = node.get("function_name")
        if not isinstance(raw, str) or "class" not in node:
            return
        if node.get("schema") or node.get("catalog"):
            raise SqlRefused("denied", f"qualified function name for {raw}() is not allowed")
        name = _fold(raw)
        if name in _DENIED_FUNCTIONS or name.startswith(_DENIED_PREFIXES) or name in self._user_functions:
            raise SqlRefused("denied", f"function {raw}() is not allowed")


def _recursive_cte_name(node: dict[str, object]) -> str | None:
    if node.get("type") != "RECURSIVE_CTE_NODE":
        return None
    name = node.get("cte_name")
    if not isinstance(name, str):
        raise SqlRefused("denied", "unsupported query construct (recursive CTE)")
    return _fold(name)


def _function_name(node: object) -> str:
    if isinstance(node, dict) and isinstance(node.get("function_name"), str):
        return str(node["function_name"])
    return "<unknown>"


def _fold(name: str) -> str:
    """Case-fold an identifier the way DuckDB matches names: ASCII letters only."""
    return "".join(c.lower() if c.isascii() else c for c in name)


def _shadow_views_for_tenant(conn: duckdb.DuckDBPyConnection, tenant: str) -> None:
    """Create TEMP views on this cursor that show only `tenant`'s rows of each documented view.

    Unqualified names resolve to the temp schema before main, so the query cannot reach the
    unfiltered views (and `main.` or `temp.` prefixes are refused by the walk).
    """
    if "\x00" in tenant:
        raise ValueError("tenant must not contain NUL")
    row = conn.execute("SELECT current_database()").fetchone()
    if row is None:
        raise RuntimeError("DuckDB reported no current database")
    # `main.spans` would itself resolve to the temp schema named main; name the catalog.
    catalog = '"' + str(row[0]).replace('"', '""') + '"'
    # Views cannot take parameters, so the tenant is a literal: standard SQL quoting, where
    # only the single quote needs doubling (backslashes are not escapes in DuckDB strings).
    literal = "'" + tenant.replace("'", "''") + "'"
    for view in sorted(VIEWS):
        conn.execute(
            f"CREATE TEMP VIEW {view} AS SELECT * FROM {catalog}.main.{view} WHERE tenant = {literal}"
        )


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
