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
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, Generic, Literal, TypeVar

import duckdb

from llmtrace.store.sql_sizes import built_size_problem

#: The only relations a query may read, by their bare names.
VIEWS: Final[frozenset[str]] = frozenset({"spans", "findings", "traces"})
#: Longer texts are refused before parsing; nobody types a 100 kB query.
MAX_QUERY_CHARS: Final = 100_000

RefusalReason = Literal["invalid", "denied"]

#: Containers (lists, structs, maps) nested deeper than this come back as DuckDB's text form of
#: the whole value: on the wire each level is two protobuf messages, and protobuf parsers refuse
#: messages nested past 100 (a 51-deep list failed the RPC with INTERNAL).
MAX_NESTING: Final = 32
#: Rows fetched from DuckDB at a time, at first and at most. Each fetch turns its rows into Python
#: objects in one uninterruptible call, so batches start small (a row may hold a 10,000-element
#: list of structs) and grow only while fetches stay quick; the time limit and the size budget
#: are checked between them.
_FIRST_BATCH: Final = 8
_MAX_BATCH: Final = 2048
#: Seconds a fetch should take: batches double below half of this and halve above twice it.
_BATCH_SECONDS: Final = 0.05
# Types whose Python conversion is wrong, or fails, for some values: DuckDB's client turns an
# INTERVAL's months into 30 days each (and fails with OverflowError past timedelta's range),
# and infinite dates and timestamps into date.max / datetime.min, which are real values too.
_TEMPORAL: Final = frozenset(
    {"date", "timestamp", "timestamp with time zone", "timestamp_ns", "timestamp_ms", "timestamp_s"}
)
_INFINITIES: Final = frozenset({"infinity", "-infinity"})
_INTERVAL_TEXT: Final = re.compile(
    r"(?:(-?\d+) years? ?)?(?:(-?\d+) months? ?)?(?:(-?\d+) days? ?)?"
    r"(?:(-?)(\d+):(\d+):(\d+)(?:\.(\d{1,6}))?)?"
)
_DAY_US: Final = 86_400_000_000

R = TypeVar("R")
Row = tuple[object, ...]

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


class _PastDeadline(Exception):  # noqa: N818
    """Raised between fetched rows once the query's time is up; reported as SqlTimeout."""


@dataclass(frozen=True)
class SqlColumn:
    """One result column: its name and DuckDB type name (`BIGINT`, `VARCHAR[]`, ...)."""

    name: str
    type: str


@dataclass(frozen=True)
class SqlResult:
    """At most `max_rows` rows; `truncated` says the query had more (or they passed the budget).

    Rows are tuples of values, or what the caller's RowEncoding made of them.
    """

    columns: list[SqlColumn]
    rows: list[Any]
    truncated: bool


@dataclass(frozen=True)
class RowEncoding(Generic[R]):
    """How the caller wants each row, done inside the fetch loop so the time limit covers it.

    `size` is what an encoded row adds to the caller's response; rows stop, and the result is
    `truncated`, before their sizes pass `max_bytes`.
    """

    encode: Callable[[Row], R]
    size: Callable[[R], int] | None = None
    max_bytes: int | None = None


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
    encoding: RowEncoding[Any] | None = None,
) -> SqlResult:
    """Check and run `query` on `conn`, a cursor made for this one query (the caller closes it).

    `tenant` None is operator mode: every tenant's rows. Otherwise the views are shadowed by
    tenant-filtered TEMP views on this cursor first. Blocks; call it from a worker thread.
    Rows are fetched a batch at a time and encoded with `encoding` (plain tuples without one):
    `timeout_s` covers running, fetching and encoding together.
    Raises SqlRefused, or SqlTimeout when the query runs longer than `timeout_s`.

    Values come back as DuckDB's Python client makes them, except where it would be wrong:
    INTERVALs as text (`interval_text`), infinite dates and timestamps as `infinity` /
    `-infinity`, and VARIANTs and values nested deeper than MAX_NESTING as DuckDB's text.
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

    timeout = f"query exceeded {timeout_s:g} s"
    deadline = time.monotonic() + timeout_s
    timer = threading.Timer(timeout_s, interrupt)
    timer.daemon = True
    timer.start()
    try:
        # Binding only: the names and types the query's result will have.
        description = conn.sql(query).description or []
        plans = [_plan(column_type) for _, column_type, *_ in description]
        if any(plan is not None for plan in plans):
            conn.execute(_rewritten(query, [str(d[0]) for d in description], plans))
        else:
            conn.execute(query)
        rows, truncated = _fetch(conn, plans, max_rows=max_rows, deadline=deadline, encoding=encoding)
    except duckdb.InterruptException:
        raise SqlTimeout(timeout) from None
    except _PastDeadline:
        raise SqlTimeout(timeout) from None
    except (duckdb.InternalException, duckdb.FatalException):
        # A DuckDB bug, not the user's mistake: let the caller report INTERNAL.
        raise
    except duckdb.Error as exc:
        if interrupted.is_set():
            raise SqlTimeout(timeout) from None
        # The user's mistake (unknown column, failed cast). A PermissionException would mean
        # the walk missed something and the connection's own lock-down stopped it.
        reason: RefusalReason = "denied" if isinstance(exc, duckdb.PermissionException) else "invalid"
        raise SqlRefused(reason, _first_line(exc)) from None
    finally:
        timer.cancel()
        # If the timer is mid-callback, wait so no interrupt lands after we return.
        timer.join()
    columns = [SqlColumn(name=str(d[0]), type=str(d[1])) for d in description]
    return SqlResult(columns=columns, rows=rows, truncated=truncated)


def _fetch(
    conn: duckdb.DuckDBPyConnection,
    plans: list[_Plan | None],
    *,
    max_rows: int,
    deadline: float,
    encoding: RowEncoding[Any] | None,
) -> tuple[list[Any], bool]:
    """Up to `max_rows` rows of the executed query, and whether there were more (or too many bytes).

    Results stream: only the rows returned, and one past the cap, are ever produced into Python,
    a batch at a time, so neither a huge result nor slow conversion escapes the time limit.
    """
    encode = encoding.encode if encoding is not None else None
    size = encoding.size if encoding is not None else None
    budget = encoding.max_bytes if encoding is not None else None
    width = len(plans)
    special = [(i, plan) for i, plan in enumerate(plans) if plan is not None]
    rows: list[Any] = []
    used = 0
    batch = _FIRST_BATCH
    while True:
        if time.monotonic() >= deadline:
            raise _PastDeadline
        want = min(batch, max_rows + 1 - len(rows))
        started = time.monotonic()
        try:
            fetched = conn.fetchmany(want)
        except (OverflowError, ValueError) as exc:
            # A value DuckDB's Python client cannot represent; the query's own choice of values.
            raise SqlRefused("invalid", f"a result value cannot be returned: {exc}") from None
        for raw in fetched:
            if len(rows) == max_rows:
                return rows, True
            if time.monotonic() >= deadline:
                raise _PastDeadline
            row: Row = tuple(raw[:width])
            if special:
                values = list(row)
                for i, plan in special:
                    text = raw[plan.text_at] if plan.text_at is not None else None
                    values[i] = plan.decode(values[i], text)
                row = tuple(values)
            value: Any = encode(row) if encode is not None else row
            if size is not None and budget is not None:
                used += size(value)
                if used > budget:
                    return rows, True
            rows.append(value)
        if len(fetched) < want:
            return rows, False
        elapsed = time.monotonic() - started
        if elapsed < _BATCH_SECONDS / 2:
            batch = min(batch * 2, _MAX_BATCH)
        elif elapsed > _BATCH_SECONDS * 2:
            batch = max(batch // 2, 1)


@dataclass
class _Plan:
    """How one result column is fetched when the Python client would get its values wrong.

    The column is cast to `cast` (None: as it is); `text`, when set, is a second, hidden column
    with the value as DuckDB's text at every date and timestamp, to tell infinities apart.
    """

    type: Any
    cast: str | None
    text: str | None
    whole_text: bool = False
    #: Where the hidden text column is in the rewritten result; set by `_rewritten`.
    text_at: int | None = None

    def decode(self, value: object, text: object) -> object:
        if self.whole_text:
            return value
        return _decode(self.type, value, text)


def _plan(column_type: Any) -> _Plan | None:
    """None for a column whose values the Python client converts faithfully (most of them)."""
    if _deeper_than(column_type, MAX_NESTING):
        return _Plan(column_type, cast="VARCHAR", text=None, whole_text=True)
    cast = _text_type(column_type, temporal=False)
    text = _text_type(column_type, temporal=True) if _has(column_type, _TEMPORAL) else None
    if cast is None and text is None:
        return None
    return _Plan(column_type, cast=cast, text=text)


def _rewritten(query: str, names: list[str], plans: list[_Plan | None]) -> str:
    """`query` wrapped so that DuckDB casts each planned column, keeping names and order."""
    inner = [f"c{i}" for i in range(len(names))]
    outer: list[str] = []
    hidden: list[str] = []
    for i, (name, plan) in enumerate(zip(names, plans, strict=True)):
        if plan is None or plan.cast is None:
            outer.append(f"c{i} AS {_quote(name)}")
        else:
            outer.append(f"CAST(c{i} AS {plan.cast}) AS {_quote(name)}")
        if plan is not None and plan.text is not None:
            plan.text_at = len(names) + len(hidden)
            hidden.append(f"CAST(c{i} AS {plan.text}) AS __text_{i}")
    # Columns renamed positionally, so duplicate or odd names in the query do not matter.
    return (
        f"SELECT {', '.join(outer + hidden)} FROM (\n{_without_semicolons(query)}\n) "
        f"AS __query({', '.join(inner)})"
    )


def _without_semicolons(query: str) -> str:
    """`query` without its trailing `;` (and what follows: comments), so it can be a subquery."""
    tokens = duckdb.tokenize(query)
    cut = len(query)
    for position, kind in reversed(tokens):
        if kind == duckdb.token_type.comment:
            continue
        if query.startswith(";", position):
            cut = position
            continue
        break
    return query[:cut]


def _children(column_type: Any) -> list[tuple[str, Any]]:
    kind = column_type.id
    if kind in ("list", "array"):
        return [column_type.children[0]]
    if kind in ("struct", "map"):
        return list(column_type.children)
    if kind == "union":
        return list(column_type.children[1:])  # the first is the member tag
    return []


def _deeper_than(column_type: Any, levels: int) -> bool:
    """Whether values nest more than `levels` containers deep (recursing at most that far)."""
    kind = column_type.id
    if kind == "union":
        return any(_deeper_than(t, levels) for _, t in _children(column_type))
    children = _children(column_type)
    if not children:
        return False
    if levels == 0:
        return True
    return any(_deeper_than(t, levels - 1) for _, t in children)


def _has(column_type: Any, kinds: frozenset[str]) -> bool:
    return column_type.id in kinds or any(_has(t, kinds) for _, t in _children(column_type))


def _text_type(column_type: Any, *, temporal: bool) -> str | None:
    """The type with INTERVAL and VARIANT (and, `temporal`, date and timestamp) parts as VARCHAR;
    None when nothing changes."""
    kind = column_type.id
    # A VARIANT's values have their own types and depths, unknown until read: always text.
    if kind in ("interval", "variant") or (temporal and kind in _TEMPORAL):
        return "VARCHAR"
    children = _children(column_type)
    changed = [_text_type(t, temporal=temporal) for _, t in children]
    if all(c is None for c in changed):
        return None
    parts = [c if c is not None else str(t) for c, (_, t) in zip(changed, children, strict=True)]
    if kind == "list":
        return f"{parts[0]}[]"
    if kind == "array":
        return f"{parts[0]}[{column_type.children[1][1]}]"
    if kind == "struct":
        fields = ", ".join(f"{_quote(name)} {part}" for (name, _), part in zip(children, parts, strict=True))
        return f"STRUCT({fields})"
    if kind == "map":
        return f"MAP({parts[0]}, {parts[1]})"
    # A UNION's value does not say which member it is: the whole value as text.
    return "VARCHAR"


@dataclass(frozen=True)
class _ListOf:
    """A list type of `child`, shaped like DuckDB's Python types for `_decode` and `_children`."""

    child: Any
    id: str = "list"

    @property
    def children(self) -> list[tuple[str, Any]]:
        return [("child", self.child)]


def _decode(column_type: Any, value: object, text: object) -> object:
    """`value` (fetched with `_text_type(temporal=False)`) with its intervals rendered and, from
    `text` (the same value fetched with `temporal=True`), its infinities."""
    if value is None:
        return None
    kind = column_type.id
    if kind == "interval":
        return interval_text(str(value))
    if kind in _TEMPORAL or kind == "union":
        return text if text in _INFINITIES else value
    children = _children(column_type)
    if kind in ("list", "array") and isinstance(value, list | tuple):
        texts: Iterable[object] = text if isinstance(text, list | tuple) else [None] * len(value)
        return [_decode(children[0][1], v, t) for v, t in zip(value, texts, strict=True)]
    if kind == "struct" and isinstance(value, dict):
        text_fields = text if isinstance(text, dict) else {}
        return {name: _decode(t, value.get(name), text_fields.get(name)) for name, t in children}
    if kind == "map" and isinstance(value, dict) and _children(children[0][1]):
        # Keys that are lists or structs cannot be dict keys: the client gives the map as
        # {"key": [keys], "value": [values]} instead.
        text_lists = text if isinstance(text, dict) else {}
        return {
            part: _decode(_ListOf(t), value.get(part), text_lists.get(part))
            for part, (_, t) in zip(("key", "value"), children, strict=True)
        }
    if kind == "map" and isinstance(value, dict):
        text_items = list(text.items()) if isinstance(text, dict) else [(None, None)] * len(value)
        key_type, value_type = children[0][1], children[1][1]
        return {
            _decode(key_type, k, tk): _decode(value_type, v, tv)
            for (k, v), (tk, tv) in zip(value.items(), text_items, strict=True)
        }
    return value


def interval_text(text: str) -> str:
    """DuckDB's text of an INTERVAL, rendered like Python's timedelta with years and months first.

    `1:30:00`, `-1 day, 22:30:00`, `1 year, 2 months, 3 days, 0:00:00`: exactly `str(timedelta)`
    when there are no months, which DuckDB's Python client would turn into 30 days each (a year
    became 360 days). Days and time are added up as timedelta does; months, whose length varies,
    stay apart. Any text not in DuckDB's form is returned as it is.
    """
    match = _INTERVAL_TEXT.fullmatch(text)
    if match is None or not text:
        return text
    years, months, days, sign, hours, minutes, seconds, fraction = match.groups()
    months_total = int(years or 0) * 12 + int(months or 0)
    micros = (int(hours or 0) * 3600 + int(minutes or 0) * 60 + int(seconds or 0)) * 1_000_000
    micros += int((fraction or "").ljust(6, "0"))
    total = int(days or 0) * _DAY_US + (-micros if sign else micros)
    parts: list[str] = []
    # Whole years and the months left, both signed like the total, as DuckDB writes them.
    whole_years = abs(months_total) // 12 * (1 if months_total >= 0 else -1)
    for count, unit in ((whole_years, "year"), (months_total - 12 * whole_years, "month")):
        if count:
            parts.append(f"{count} {unit}{'' if abs(count) == 1 else 's'}")
    day_count, rest = divmod(total, _DAY_US)
    if day_count:
        parts.append(f"{day_count} day{'' if abs(day_count) == 1 else 's'}")
    rest_seconds, rest_micros = divmod(rest, 1_000_000)
    clock = f"{rest_seconds // 3600}:{rest_seconds // 60 % 60:02d}:{rest_seconds % 60:02d}"
    parts.append(clock + (f".{rest_micros:06d}" if rest_micros else ""))
    return ", ".join(parts)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


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
