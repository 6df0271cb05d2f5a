"""The SQL sandbox: what it refuses, tenant scoping, row cap and time limit.

The schema here is a small stand-in for the real one (llmtrace/store/migrations.py): the
sandbox depends only on the three view names and their `tenant` column.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from llmtrace.store.sql_sandbox import (
    MAX_QUERY_CHARS,
    VIEWS,
    SqlColumn,
    SqlRefused,
    SqlResult,
    SqlTimeout,
    check_query,
    execute_sandboxed,
)

LOCKED_DOWN = {
    "enable_external_access": "false",
    "autoload_known_extensions": "false",
    "autoinstall_known_extensions": "false",
}
ONLY_VIEWS = "queries may read only the views findings, spans, traces"
ACME_SPANS = 3000
GLOBEX_SECRET = "secret-globex-model"

_SCHEMA = [
    """CREATE TABLE span_rows (tenant VARCHAR, trace_id BLOB, span_id BLOB, request_model VARCHAR,
        input_tokens BIGINT, start_time TIMESTAMPTZ)""",
    "CREATE TABLE finding_rows (tenant VARCHAR, span_id BLOB, type VARCHAR)",
    "CREATE TABLE span_scores (tenant VARCHAR, span_id BLOB, score DOUBLE)",
    "CREATE TABLE schema_version (version INTEGER)",
    "INSERT INTO schema_version VALUES (1)",
    """CREATE VIEW spans AS SELECT tenant, lower(hex(trace_id)) AS trace_id, lower(hex(span_id)) AS span_id,
        request_model, input_tokens, start_time FROM span_rows""",
    "CREATE VIEW findings AS SELECT tenant, lower(hex(span_id)) AS span_id, type FROM finding_rows",
    """CREATE VIEW traces AS SELECT tenant, lower(hex(trace_id)) AS trace_id, count(*) AS span_count,
        sum(input_tokens) AS input_tokens, min(start_time) AS start_time
        FROM span_rows GROUP BY tenant, trace_id""",
]


def _insert_spans(conn: duckdb.DuckDBPyConnection, tenant: str, count: int, model: str, first: int) -> None:
    # Three spans per trace; ids are offset per tenant so they never collide.
    conn.execute(
        """INSERT INTO span_rows SELECT ?, unhex(printf('%032x', (? + i) // 3)),
           unhex(printf('%016x', ? + i)), ?, i, TIMESTAMPTZ '2024-01-01 00:00:00+00' + to_seconds(i)
           FROM range(?) AS r(i)""",
        [tenant, first, first, model, count],
    )
    conn.execute(
        """INSERT INTO finding_rows SELECT ?, unhex(printf('%016x', ? + i)), ? FROM range(2) AS r(i)""",
        [tenant, first, f"{model}-finding"],
    )


def _build_database(path: Path) -> None:
    conn = duckdb.connect(str(path), config=dict(LOCKED_DOWN))
    for statement in _SCHEMA:
        conn.execute(statement)
    _insert_spans(conn, "acme", ACME_SPANS, "gpt-4o", 0)
    _insert_spans(conn, "globex", 9, GLOBEX_SECRET, 1_000_000)
    _insert_spans(conn, "o'brien", 3, "irish-model", 2_000_000)
    conn.close()


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[duckdb.DuckDBPyConnection]:
    path = tmp_path_factory.mktemp("sql") / "llmtrace.duckdb"
    _build_database(path)
    conn = duckdb.connect(str(path), config=dict(LOCKED_DOWN))
    yield conn
    conn.close()


def run(
    db: duckdb.DuckDBPyConnection,
    query: str,
    *,
    tenant: str | None = None,
    max_rows: int = 10_000,
    timeout_s: float = 10.0,
) -> SqlResult:
    """Run one query the way the core does: a fresh cursor, closed afterwards."""
    cursor = db.cursor()
    try:
        return execute_sandboxed(cursor, tenant=tenant, query=query, max_rows=max_rows, timeout_s=timeout_s)
    finally:
        cursor.close()


def refusal(db: duckdb.DuckDBPyConnection, query: str, tenant: str | None = "acme") -> SqlRefused:
    with pytest.raises(SqlRefused) as caught:
        run(db, query, tenant=tenant)
    return caught.value


def test_views_constant() -> None:
    assert frozenset({"spans", "findings", "traces"}) == VIEWS


# --- statements other than one SELECT ---------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "kind"),
    [
        ("COPY spans TO '/tmp/x'", "COPY"),
        ("COPY (SELECT 1) TO '/tmp/x.csv'", "COPY"),
        ("ATTACH '/tmp/x.db' AS x", "ATTACH"),
        ("DETACH x", "DETACH"),
        ("INSTALL httpfs", "LOAD"),
        ("LOAD httpfs", "LOAD"),
        ("SET enable_external_access = true", "SET"),
        ("SET threads = 1", "SET"),
        ("RESET threads", "SET"),
        ("PRAGMA version", "PRAGMA"),
        ("PRAGMA table_info('span_rows')", "PRAGMA"),
        ("CREATE TABLE t AS SELECT 1", "CREATE"),
        ("CREATE TEMP VIEW spans AS SELECT * FROM span_rows", "CREATE"),
        ("CREATE MACRO m() AS TABLE SELECT * FROM span_rows", "CREATE"),
        ("INSERT INTO span_rows (tenant) VALUES ('x')", "INSERT"),
        ("UPDATE span_rows SET tenant = 'x'", "UPDATE"),
        ("DELETE FROM span_rows", "DELETE"),
        ("DROP TABLE span_rows", "DROP"),
        ("CALL pragma_version()", "CALL"),
        ("EXPORT DATABASE '/tmp/x'", "EXPORT"),
        ("EXPLAIN SELECT * FROM spans", "EXPLAIN"),
        ("CHECKPOINT", "CALL"),
        ("VACUUM", "VACUUM"),
        ("BEGIN TRANSACTION", "TRANSACTION"),
        ("PREPARE p AS SELECT 1", "PREPARE"),
        ("PIVOT spans ON request_model USING count(*)", "PIVOT"),
        # DuckDB plans a PIVOT in a subquery as more than a SELECT, so it is refused too.
        ("SELECT * FROM (PIVOT span_rows ON tenant USING count(*))", "PIVOT"),
        ("SELECT 1; DROP TABLE span_rows", "DROP"),
    ],
)
def test_non_select_statements_are_denied(db: duckdb.DuckDBPyConnection, query: str, kind: str) -> None:
    refused = refusal(db, query)
    assert refused.reason == "denied"
    assert refused.message.startswith("only SELECT statements are allowed")
    assert ONLY_VIEWS in refused.message
    if kind:
        assert f"got {kind}" in refused.message
    # Nothing ran: the base tables are intact.
    assert db.execute("SELECT count(*) FROM span_rows").fetchone() == (ACME_SPANS + 12,)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("SELECT 1; SELECT 2", "expected exactly one SELECT statement, got 2"),
        ("", "empty query: expected exactly one SELECT statement"),
        ("  -- just a comment\n", "empty query: expected exactly one SELECT statement"),
        ("SELEC 1", 'Parser Error: syntax error at or near "SELEC"'),
        ("SELECT * FROM spans WHERE", 'Parser Error: syntax error at or near "WHERE"'),
        ("x" * (MAX_QUERY_CHARS + 1), f"query is longer than {MAX_QUERY_CHARS} characters"),
        ("SELECT " + "(SELECT " * 300 + "1" + ")" * 300, "query is nested too deeply"),
    ],
)
def test_malformed_queries_are_invalid(db: duckdb.DuckDBPyConnection, query: str, message: str) -> None:
    refused = refusal(db, query)
    assert refused.reason == "invalid"
    assert refused.message == message


# --- relations ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("SELECT * FROM span_rows", f"relation 'span_rows' is not available; {ONLY_VIEWS}"),
        ("SELECT * FROM finding_rows", f"relation 'finding_rows' is not available; {ONLY_VIEWS}"),
        ("SELECT * FROM span_scores", f"relation 'span_scores' is not available; {ONLY_VIEWS}"),
        ("SELECT * FROM schema_version", f"relation 'schema_version' is not available; {ONLY_VIEWS}"),
        ("SELECT * FROM pg_class", f"relation 'pg_class' is not available; {ONLY_VIEWS}"),
        ("SELECT * FROM duckdb_tables", f"relation 'duckdb_tables' is not available; {ONLY_VIEWS}"),
        ("SELECT * FROM sqlite_master", f"relation 'sqlite_master' is not available; {ONLY_VIEWS}"),
        # A quoted path is a replacement scan of a file.
        ("SELECT * FROM '/etc/passwd'", f"relation '/etc/passwd' is not available; {ONLY_VIEWS}"),
        ("FROM 'spans.csv'", f"relation 'spans.csv' is not available; {ONLY_VIEWS}"),
        ("SELECT * FROM spans WHERE trace_id IN (SELECT lower(hex(trace_id)) FROM span_rows)", "'span_rows'"),
        ("SELECT (SELECT count(*) FROM span_scores) FROM spans", "'span_scores'"),
        (
            "SELECT * FROM spans WHERE EXISTS (SELECT 1 FROM (SELECT * FROM schema_version))",
            "'schema_version'",
        ),
        ("SELECT * FROM spans ORDER BY (SELECT max(version) FROM schema_version)", "'schema_version'"),
        ("SELECT * FROM spans s JOIN finding_rows f USING (tenant)", "'finding_rows'"),
        ("SELECT tenant FROM spans UNION ALL SELECT tenant FROM span_rows", "'span_rows'"),
        ("SELECT list_transform([1], x -> (SELECT count(*) FROM span_rows))", "'span_rows'"),
        ("SELECT count(*) FILTER (WHERE EXISTS (FROM span_rows)) FROM spans", "'span_rows'"),
        ("SELECT * FROM (UNPIVOT span_rows ON request_model INTO NAME k VALUE v)", "'span_rows'"),
    ],
)
def test_other_relations_are_denied(db: duckdb.DuckDBPyConnection, query: str, message: str) -> None:
    refused = refusal(db, query)
    assert refused.reason == "denied"
    assert message in refused.message


@pytest.mark.parametrize(
    ("query", "shown"),
    [
        ("SELECT * FROM main.span_rows", "main.span_rows"),
        ("SELECT * FROM main.spans", "main.spans"),
        ("SELECT * FROM temp.spans", "temp.spans"),
        ("SELECT * FROM temp.main.spans", "temp.main.spans"),
        ("SELECT * FROM llmtrace.main.spans", "llmtrace.main.spans"),
        ("SELECT * FROM system.main.duckdb_tables", "system.main.duckdb_tables"),
        ("SELECT * FROM information_schema.tables", "information_schema.tables"),
        ("SELECT * FROM pg_catalog.pg_class", "pg_catalog.pg_class"),
        ("SELECT * FROM spans WHERE tenant IN (SELECT tenant FROM main.spans)", "main.spans"),
    ],
)
def test_qualified_names_are_denied(db: duckdb.DuckDBPyConnection, query: str, shown: str) -> None:
    refused = refusal(db, query)
    assert refused.reason == "denied"
    assert refused.message == (
        f"qualified name {shown} is not allowed; use the bare view names findings, spans, traces"
    )


@pytest.mark.parametrize(
    ("query", "function"),
    [
        ("SELECT * FROM read_text('/etc/passwd')", "read_text"),
        ("SELECT content FROM read_text('/etc/passwd')", "read_text"),
        ("SELECT * FROM read_blob('/etc/passwd')", "read_blob"),
        ("SELECT * FROM read_csv('/etc/passwd')", "read_csv"),
        ("SELECT * FROM read_parquet('/tmp/x.parquet')", "read_parquet"),
        ("SELECT * FROM read_json('/tmp/x.json')", "read_json"),
        ("SELECT * FROM glob('/etc/*')", "glob"),
        ("SELECT * FROM query('SELECT * FROM span_rows')", "query"),
        ("SELECT * FROM query_table('span_rows')", "query_table"),
        ("SELECT * FROM duckdb_settings()", "duckdb_settings"),
        ("SELECT * FROM pragma_table_info('span_rows')", "pragma_table_info"),
        ("SELECT * FROM range(10)", "range"),
        ("SELECT * FROM unnest([1, 2])", "unnest"),
        ("WITH x AS (SELECT * FROM read_csv('/etc/passwd')) SELECT * FROM x", "read_csv"),
        ("SELECT * FROM spans WHERE tenant IN (SELECT * FROM read_text('/etc/hostname'))", "read_text"),
        ("SELECT * FROM spans, LATERAL (SELECT * FROM read_text('/etc/passwd'))", "read_text"),
    ],
)
def test_table_functions_are_denied(db: duckdb.DuckDBPyConnection, query: str, function: str) -> None:
    refused = refusal(db, query)
    assert refused.reason == "denied"
    assert refused.message == f"table function {function}() is not allowed; {ONLY_VIEWS}"


@pytest.mark.parametrize(
    "query", ["DESCRIBE spans", "SHOW TABLES", "SUMMARIZE spans", "FROM (DESCRIBE span_rows)"]
)
def test_describe_show_summarize_are_denied(db: duckdb.DuckDBPyConnection, query: str) -> None:
    refused = refusal(db, query)
    assert refused.reason == "denied"
    assert refused.message.startswith("DESCRIBE, SHOW and SUMMARIZE are not allowed")


def test_time_travel_is_denied(db: duckdb.DuckDBPyConnection) -> None:
    refused = refusal(db, "SELECT * FROM spans AT (VERSION => 1)")
    assert (refused.reason, refused.message) == ("denied", "AT (time travel) clauses are not allowed")


# --- CTE scoping: a CTE name must not become a way to name a base table -----------------------


@pytest.mark.parametrize(
    ("query", "message"),
    [
        # DuckDB binds a CTE's own name inside its body to the catalog, not to the CTE.
        (
            "WITH span_rows AS (SELECT * FROM span_rows) SELECT * FROM span_rows",
            "CTE name 'span_rows' is reserved",
        ),
        ("WITH pg_class AS (SELECT 1) SELECT * FROM pg_class", "CTE name 'pg_class' is reserved"),
        ("WITH SCHEMA_VERSION AS (SELECT 1) SELECT 1", "CTE name 'SCHEMA_VERSION' is reserved"),
        ("WITH a AS (SELECT * FROM a) SELECT * FROM a", "relation 'a' is not available"),
        # A CTE is visible inside its own query only, not to a sibling FROM item.
        ("SELECT * FROM (WITH x AS (SELECT 1 AS v) SELECT * FROM x), x", "relation 'x' is not available"),
        # Later CTEs are not visible to earlier ones.
        (
            "WITH a AS (SELECT * FROM b), b AS (SELECT 1 AS v) SELECT * FROM a",
            "relation 'b' is not available",
        ),
        # The anchor of a recursive CTE reads the catalog, not the CTE.
        (
            "WITH RECURSIVE r AS (SELECT * FROM r UNION ALL SELECT 1) SELECT * FROM r",
            "relation 'r' is not available",
        ),
    ],
)
def test_cte_names_cannot_reach_base_tables(db: duckdb.DuckDBPyConnection, query: str, message: str) -> None:
    refused = refusal(db, query)
    assert refused.reason == "denied"
    assert message in refused.message


# --- functions ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "function"),
    [
        ("SELECT getenv('HOME')", "getenv"),
        ("SELECT 'HOME'.getenv()", "getenv"),
        ("SELECT current_setting('threads')", "current_setting"),
        ("SELECT count(*) FILTER (WHERE current_setting('threads') IS NULL) FROM spans", "current_setting"),
        ("SELECT getvariable('x')", "getvariable"),
        ("SELECT version()", "version"),
        ("SELECT current_query()", "current_query"),
        ("SELECT current_database()", "current_database"),
        ("SELECT stats(input_tokens) FROM spans", "stats"),
        ("SELECT nextval('s')", "nextval"),
        ("SELECT json_serialize_sql('SELECT 1')", "json_serialize_sql"),
        ("SELECT json_serialize_plan('SELECT * FROM span_rows')", "json_serialize_plan"),
        ("SELECT sleep_ms(100000)", "sleep_ms"),
        ("SELECT pg_sleep(100)", "pg_sleep"),
        ("SELECT pg_get_viewdef(1)", "pg_get_viewdef"),
        ("SELECT get_block_size('llmtrace')", "get_block_size"),
        ("SELECT write_log('x')", "write_log"),
        ("SELECT __internal_barrier(1)", "__internal_barrier"),
        ("SELECT duckdb_functions()", "duckdb_functions"),
        ("SELECT max(length(tenant)) OVER (PARTITION BY current_setting('x')) FROM spans", "current_setting"),
    ],
)
def test_introspective_functions_are_denied(db: duckdb.DuckDBPyConnection, query: str, function: str) -> None:
    refused = refusal(db, query)
    assert (refused.reason, refused.message) == ("denied", f"function {function}() is not allowed")


def test_qualified_function_calls_are_denied(db: duckdb.DuckDBPyConnection) -> None:
    refused = refusal(db, "SELECT system.main.current_setting('threads')")
    assert refused.reason == "denied"
    assert refused.message == "qualified function name for current_setting() is not allowed"


def test_user_defined_macros_are_denied(tmp_path: Path) -> None:
    # A macro someone adds to the database could read a base table inside its body.
    conn = duckdb.connect(str(tmp_path / "m.duckdb"), config=dict(LOCKED_DOWN))
    for statement in _SCHEMA:
        conn.execute(statement)
    conn.execute("CREATE MACRO versions() AS (SELECT max(version) FROM schema_version)")
    refused = refusal(conn, "SELECT versions()")
    conn.close()
    assert (refused.reason, refused.message) == ("denied", "function versions() is not allowed")


# --- queries that are allowed -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("SELECT count(*) FROM spans", [(ACME_SPANS + 12,)]),
        ("SELECT COUNT(*) FROM SPANS", [(ACME_SPANS + 12,)]),
        ('SELECT count(*) FROM "Traces"', [(1006,)]),
        ("FROM findings SELECT count(*)", [(6,)]),
        ("SELECT count(*) FROM spans;", [(ACME_SPANS + 12,)]),
        ("SELECT 42 AS answer", [(42,)]),
        ("VALUES (1), (2)", [(1,), (2,)]),
        ("WITH spans AS (SELECT * FROM spans WHERE tenant = 'globex') SELECT count(*) FROM spans", [(9,)]),
        (
            "WITH g AS (SELECT * FROM spans WHERE tenant = 'globex'), h AS (SELECT * FROM g) "
            "SELECT count(*) FROM h",
            [(9,)],
        ),
        (
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) "
            "SELECT sum(n) FROM r",
            [(6,)],
        ),
        (
            "SELECT count(*) FROM (SELECT tenant FROM spans UNION SELECT tenant FROM findings "
            "EXCEPT SELECT 'nobody')",
            [(3,)],
        ),
        (
            "SELECT tenant, count(*) FROM spans s JOIN findings f USING (tenant, span_id) "
            "GROUP BY ALL ORDER BY tenant",
            [("acme", 2), ("globex", 2), ("o'brien", 2)],
        ),
        (
            "SELECT row_number() OVER (ORDER BY span_count DESC, trace_id) AS n FROM traces QUALIFY n = 1",
            [(1,)],
        ),
        ("SELECT list_transform([1, 2], lambda x: x * 2)", [([2, 4],)]),
        ("SELECT * FROM (SELECT tenant FROM spans) PIVOT (count(*) FOR tenant IN ('globex'))", [(9,)]),
    ],
)
def test_allowed_queries_run(
    db: duckdb.DuckDBPyConnection, query: str, expected: list[tuple[object, ...]]
) -> None:
    result = run(db, query)
    assert result.rows == expected
    assert not result.truncated


# --- values whose size the query chooses -------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("SELECT repeat('-', 5)", [("-----",)]),
        ("SELECT lpad('7', 3, '0'), rpad('a', 2, '.')", [("007", "a.")]),
        ("SELECT len(range(9997)), len(generate_series(1, 3))", [(9997, 3)]),
        ("SELECT len(range(0, 1000000000, 100000))", [(10000,)]),
        ("SELECT list_resize([1], 3)", [([1, None, None],)]),
        ("SELECT repeat([1, 2], 2)", [([1, 2, 1, 2],)]),
        ("SELECT printf('%5.1f%%', 12.34), format('{:>4}|', 7)", [(" 12.3%", "   7|")]),
        ("SELECT count(*) FROM (SELECT unnest(range(30)) AS d)", [(30,)]),
        # docs/sql.md's calendar example
        (
            "SELECT max(day) FROM (SELECT DATE '2026-01-01' + unnest(range(365))::INTEGER AS day)",
            [(datetime.date(2026, 12, 31),)],
        ),
    ],
)
def test_small_built_values_run(
    db: duckdb.DuckDBPyConnection, query: str, expected: list[tuple[object, ...]]
) -> None:
    assert run(db, query).rows == expected


@pytest.mark.parametrize(
    ("query", "message"),
    [
        # Each of these builds gigabytes in one call, which neither DuckDB's memory limit nor
        # the query's time limit stops.
        ("SELECT length(repeat('x', 2000000000))", "repeat(): the query may build at most 10000"),
        ("SELECT len(range(4000000000))", "range(): the query may build at most 10000"),
        ("SELECT len(list_sort(range(40000000)))", "range(): the query may build at most 10000"),
        ("SELECT len(generate_series(-5, -100000, -1))", "generate_series(): the query may build"),
        ("SELECT length(lpad('', 2000000000, 'x'))", "lpad(): the query may build at most 10000"),
        ("SELECT length(rpad(request_model, 900000000, 'x')) FROM spans", "rpad(): the query may build"),
        ("SELECT len(list_resize([1], 2000000000))", "list_resize(): the query may build"),
        ("SELECT length(bitstring('0', 2000000000))", "bitstring(): the query may build"),
        ("SELECT length('x'.repeat(2000000000))", "repeat(): the query may build"),
        ("SELECT len(range(6000)), len(range(6000))", "range(): the query may build at most 10000"),
        ("SELECT repeat('ab', 5001)", "repeat(): the query may build at most 10000"),
        # Sizes the query does not state, or that multiply.
        ("SELECT repeat('x', duration_ms::INT) FROM spans", "repeat() needs the size it builds written"),
        ("SELECT repeat(request_model, 3) FROM spans", "repeat() needs the size it builds written"),
        ("SELECT len(range(input_tokens)) FROM spans", "range() needs the size it builds written"),
        ("SELECT lpad('x', 10 * 1000, 'y')", "lpad() needs the size it builds written"),
        ("SELECT list_transform(range(100), x -> range(100))", "range() is not allowed inside a lambda"),
        ("SELECT [lpad('', 100, 'x') for x in range(100)]", "lpad() is not allowed inside a lambda"),
        ("SELECT printf('%999999999d', 1)", "printf() field widths and precisions"),
        ("SELECT printf('%*d', 999999999, 1)", "printf() field widths and precisions"),
        ("SELECT printf(request_model, 1) FROM spans", "printf() needs its format string"),
        ("SELECT format('{:>999999999}', 1)", "format() field widths and precisions"),
        ("SELECT format('{:>{}}', 1, 999999999)", "format() field widths and precisions"),
        ("SELECT bitstring_agg(input_tokens) FROM spans", "function bitstring_agg() is not allowed"),
        # Named arguments reorder what the positions say (stop first reads as a size of 0).
        ("SELECT len(range(stop := 4000000000, start := 0))", "range() does not take named arguments"),
        ("SELECT len(equi_width_bins(0.0, 1.0, 1000000, false))", "equi_width_bins(): the query may build"),
        # Widths add up: 11 fields of 1,000 are 11,000 characters per row.
        ("SELECT printf('" + "%1$1000d" * 11 + "', 7)", "printf(): the query may build at most 10000"),
        ("SELECT list_transform(range(100), x -> printf('%500d', x))", "printf() is not allowed inside"),
    ],
)
def test_oversized_built_values_are_denied(db: duckdb.DuckDBPyConnection, query: str, message: str) -> None:
    refused = refusal(db, query)
    assert refused.reason == "denied"
    assert str(refused).startswith(message)


def test_check_query_accepts_a_select_over_the_views(db: duckdb.DuckDBPyConnection) -> None:
    cursor = db.cursor()
    try:
        check_query(cursor, "SELECT s.tenant FROM spans s WHERE s.span_id IN (SELECT span_id FROM findings)")
    finally:
        cursor.close()


# --- tenant scoping -----------------------------------------------------------------------------


def _tenants_seen(db: duckdb.DuckDBPyConnection, tenant: str | None, view: str) -> set[object]:
    return {row[0] for row in run(db, f"SELECT DISTINCT tenant FROM {view}", tenant=tenant).rows}


@pytest.mark.parametrize("view", sorted(VIEWS))
def test_operator_mode_sees_every_tenant(db: duckdb.DuckDBPyConnection, view: str) -> None:
    assert _tenants_seen(db, None, view) == {"acme", "globex", "o'brien"}


@pytest.mark.parametrize("view", sorted(VIEWS))
@pytest.mark.parametrize("tenant", ["acme", "globex", "o'brien"])
def test_tenant_sees_only_its_own_rows(db: duckdb.DuckDBPyConnection, view: str, tenant: str) -> None:
    assert _tenants_seen(db, tenant, view) == {tenant}


@pytest.mark.parametrize(
    "query",
    [
        f"SELECT count(*) FROM spans WHERE request_model = '{GLOBEX_SECRET}'",
        f"WITH s AS (SELECT * FROM spans) SELECT count(*) FROM s WHERE request_model = '{GLOBEX_SECRET}'",
        (
            "WITH spans AS (SELECT * FROM spans) "
            f"SELECT count(*) FROM spans WHERE request_model = '{GLOBEX_SECRET}'"
        ),
        f"SELECT count(*) FROM (SELECT * FROM (SELECT * FROM spans)) WHERE request_model = '{GLOBEX_SECRET}'",
        f"SELECT (SELECT count(*) FROM spans WHERE request_model = '{GLOBEX_SECRET}')",
        f"SELECT count(*) FROM findings WHERE type = '{GLOBEX_SECRET}-finding'",
        "SELECT count(*) FROM findings WHERE span_id IN (SELECT span_id FROM spans WHERE tenant = 'globex')",
        "SELECT count(*) FROM traces WHERE tenant <> 'acme'",
        "SELECT count(*) FROM traces t JOIN spans s USING (trace_id) WHERE s.tenant = 'globex'",
        (
            "SELECT count(*) FROM (SELECT tenant FROM spans UNION ALL SELECT tenant FROM findings) "
            "WHERE tenant <> 'acme'"
        ),
        (
            "WITH RECURSIVE r(n, t) AS (SELECT 1, 'acme' UNION ALL "
            "SELECT n + 1, (SELECT max(tenant) FROM spans) FROM r WHERE n < 3) "
            "SELECT count(*) FROM r WHERE t <> 'acme'"
        ),
    ],
)
def test_tenant_cannot_reach_other_tenants(db: duckdb.DuckDBPyConnection, query: str) -> None:
    assert run(db, query, tenant="acme").rows == [(0,)]


@pytest.mark.parametrize(
    ("view", "column"), [("spans", "request_model"), ("findings", "type"), ("traces", "trace_id")]
)
def test_errors_cannot_probe_other_tenants(db: duckdb.DuckDBPyConnection, view: str, column: str) -> None:
    # If a user predicate ran before the tenant filter, error() would put another tenant's data
    # in the message (or its mere raising would answer a yes/no question about it).
    query = (
        f"SELECT count(*) FROM {view} "
        f"WHERE CASE WHEN tenant <> 'acme' THEN error('leak ' || {column}) ELSE true END"
    )
    expected = run(db, f"SELECT count(*) FROM {view}", tenant="acme").rows
    assert run(db, query, tenant="acme").rows == expected


def test_tenant_name_is_quoted_not_spliced(db: duckdb.DuckDBPyConnection) -> None:
    assert run(db, "SELECT count(*) FROM spans", tenant="o'brien").rows == [(3,)]
    assert run(db, "SELECT count(*) FROM spans", tenant="acme' OR '1'='1").rows == [(0,)]
    assert run(db, "SELECT count(*) FROM spans", tenant="x'; DROP TABLE span_rows; --").rows == [(0,)]
    assert run(db, "SELECT count(*) FROM spans", tenant="globex\\").rows == [(0,)]
    assert db.execute("SELECT count(*) FROM span_rows").fetchone() == (ACME_SPANS + 12,)


def test_temp_views_shadow_main_on_that_cursor_only(db: duckdb.DuckDBPyConnection) -> None:
    tenant_cursor = db.cursor()
    other_cursor = db.cursor()
    try:
        result = execute_sandboxed(
            tenant_cursor, tenant="globex", query="SELECT count(*) FROM spans", max_rows=10, timeout_s=10
        )
        assert result.rows == [(9,)]
        # The unqualified name resolves to the temp view, and temp views are per connection.
        shadowing = tenant_cursor.execute(
            "SELECT view_name FROM duckdb_views() WHERE temporary AND NOT internal ORDER BY view_name"
        ).fetchall()
        assert shadowing == [("findings",), ("spans",), ("traces",)]
        assert other_cursor.execute("SELECT count(*) FROM spans").fetchone() == (ACME_SPANS + 12,)
    finally:
        tenant_cursor.close()
        other_cursor.close()


def test_tenant_scoping_works_on_a_read_only_connection(tmp_path: Path) -> None:
    # `llmtrace sql` opens the file read-only; TEMP views live in memory and still work.
    path = tmp_path / "ro.duckdb"
    _build_database(path)
    conn = duckdb.connect(str(path), read_only=True, config=dict(LOCKED_DOWN))
    try:
        assert run(conn, "SELECT count(*) FROM spans", tenant="globex").rows == [(9,)]
        assert run(conn, "SELECT DISTINCT tenant FROM traces", tenant="o'brien").rows == [("o'brien",)]
    finally:
        conn.close()


# --- the connection's own lock-down, beneath the walk -------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT * FROM read_text('/etc/passwd')",
        "SELECT * FROM read_csv('/etc/passwd')",
        "COPY (SELECT 1) TO '{tmp}/x.csv'",
        "ATTACH '{tmp}/x.db' AS x",
    ],
)
def test_connection_blocks_external_access_even_unchecked(
    db: duckdb.DuckDBPyConnection, tmp_path: Path, statement: str
) -> None:
    cursor = db.cursor()
    try:
        with pytest.raises(duckdb.PermissionException):
            cursor.execute(statement.format(tmp=tmp_path))
    finally:
        cursor.close()
    assert list(tmp_path.iterdir()) == []


# --- errors from DuckDB -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "prefix"),
    [
        ("SELECT nope FROM spans", 'Binder Error: Referenced column "nope" not found'),
        ("SELECT input_tokens + 'abc' FROM spans", "Conversion Error: Could not convert string 'abc'"),
        ("SELECT * FROM spans WHERE tenant = ?", "Invalid Input Error"),
        ("SELECT error('boom')", "Invalid Input Error: boom"),
    ],
)
def test_query_errors_are_invalid_with_duckdbs_first_line(
    db: duckdb.DuckDBPyConnection, query: str, prefix: str
) -> None:
    refused = refusal(db, query)
    assert refused.reason == "invalid"
    assert refused.message.startswith(prefix)
    assert "\n" not in refused.message


# --- row cap, time limit, types -----------------------------------------------------------------


def test_row_cap_truncates(db: duckdb.DuckDBPyConnection) -> None:
    result = run(db, "SELECT span_id FROM spans ORDER BY span_id", max_rows=5)
    assert len(result.rows) == 5
    assert result.truncated
    assert result.rows[0] == ("0000000000000000",)


def test_row_cap_not_reached(db: duckdb.DuckDBPyConnection) -> None:
    exact = run(db, "SELECT span_id FROM spans", tenant="globex", max_rows=9)
    assert (len(exact.rows), exact.truncated) == (9, False)
    none = run(db, "SELECT span_id FROM spans", tenant="globex", max_rows=0)
    assert (none.rows, none.truncated) == ([], True)


def test_row_cap_does_not_materialise_huge_results(db: duckdb.DuckDBPyConnection) -> None:
    # 2.7e10 rows: only a streaming fetch of max_rows + 1 can finish inside the time limit.
    result = run(db, "SELECT a.span_id FROM spans a, spans b, spans c", max_rows=3, timeout_s=5)
    assert (len(result.rows), result.truncated) == (3, True)


@pytest.mark.parametrize(
    ("tenant", "query"),
    [
        (None, "SELECT count(*) FROM spans a, spans b, spans c"),
        (
            "acme",
            "WITH s AS (SELECT * FROM spans) SELECT count(*) FROM s a, s b, s c WHERE a.span_id <> c.span_id",
        ),
    ],
)
def test_slow_query_times_out_and_cursor_stays_usable(
    db: duckdb.DuckDBPyConnection, tenant: str | None, query: str
) -> None:
    cursor = db.cursor()
    started = time.monotonic()
    with pytest.raises(SqlTimeout, match=r"^query exceeded 0\.2 s$"):
        execute_sandboxed(cursor, tenant=tenant, query=query, max_rows=10, timeout_s=0.2)
    assert time.monotonic() - started < 5
    assert cursor.execute("SELECT 1").fetchall() == [(1,)]
    cursor.close()


def test_fast_query_is_not_interrupted_later(db: duckdb.DuckDBPyConnection) -> None:
    cursor = db.cursor()
    try:
        result = execute_sandboxed(cursor, tenant=None, query="SELECT 1", max_rows=1, timeout_s=0.5)
        assert result.rows == [(1,)]
        time.sleep(0.7)
        # The timer was cancelled: a later statement on the cursor is not interrupted.
        assert cursor.execute("SELECT count(*) FROM range(1000000)").fetchall() == [(1_000_000,)]
    finally:
        cursor.close()


def test_column_names_and_types(db: duckdb.DuckDBPyConnection) -> None:
    result = run(
        db,
        "SELECT tenant, input_tokens, start_time, [1, 2] AS l, {'a': 1} AS st, 1.5 AS d FROM spans LIMIT 0",
    )
    assert result.columns == [
        SqlColumn("tenant", "VARCHAR"),
        SqlColumn("input_tokens", "BIGINT"),
        SqlColumn("start_time", "TIMESTAMP WITH TIME ZONE"),
        SqlColumn("l", "INTEGER[]"),
        SqlColumn("st", "STRUCT(a INTEGER)"),
        SqlColumn("d", "DECIMAL(2,1)"),
    ]
    assert (result.rows, result.truncated) == ([], False)


@pytest.mark.parametrize(("max_rows", "timeout_s"), [(-1, 1.0), (10, 0.0)])
def test_bad_limits_are_programming_errors(
    db: duckdb.DuckDBPyConnection, max_rows: int, timeout_s: float
) -> None:
    with pytest.raises(ValueError, match="must"):
        run(db, "SELECT 1", max_rows=max_rows, timeout_s=timeout_s)
