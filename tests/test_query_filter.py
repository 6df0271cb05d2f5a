"""Filter compilation, checked by running the compiled SQL against a real DuckDB table."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import duckdb
import pytest

from llmtrace.query import FieldKind, FieldSpec, QueryError, SqlFragment, compile_filter
from llmtrace.store.catalogs import FINDING_FIELDS, SPAN_FIELDS, TRACE_FIELDS

SEVERITY = {"info": 1, "low": 2, "medium": 3, "high": 4, "critical": 5}
CATALOG = {
    "model": FieldSpec("model", "model", FieldKind.STRING),
    "note": FieldSpec("note", "note", FieldKind.STRING),
    "tokens": FieldSpec("tokens", "tokens", FieldKind.INT),
    "duration": FieldSpec("duration", "duration", FieldKind.FLOAT),
    "streamed": FieldSpec("streamed", "streamed", FieldKind.BOOL),
    "start_time": FieldSpec("start_time", "start_time", FieldKind.TIMESTAMP),
    "trace_id": FieldSpec("trace_id", "trace_id", FieldKind.BYTES_HEX),
    "severity": FieldSpec("severity", "severity", FieldKind.ENUM, enum_values=SEVERITY),
    "label": FieldSpec("label", "COALESCE(model, '') || '/' || CAST(tokens AS VARCHAR)", FieldKind.STRING),
    "secret": FieldSpec("secret", "note", FieldKind.STRING, filterable=False),
}
ALL = {1, 2, 3, 4, 5, 6}
INJECTION = "x'; DROP TABLE spans; --"


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


ROWS = [
    (1, "gpt-4o", 100, 12.5, True, _ts("2026-11-27T00:00:00+00:00"), bytes.fromhex("0a0b"), 1, "plain"),
    (
        2,
        "gpt-4o-mini",
        250,
        3.25,
        False,
        _ts("2026-11-27T12:30:00.000001+00:00"),
        b"\xff\x00",
        4,
        "50% off_x",
    ),
    (3, "claude-3", 0, 0.0, True, _ts("2026-11-26T23:59:59.999999+00:00"), b"\x00\x01", 5, 'it\'s "quoted"'),
    (4, None, -5, 1e6, False, _ts("2026-11-28T00:00:00+00:00"), b"\xab\xcd", 2, None),
    (5, INJECTION, 7, -1.5, True, _ts("2025-01-01T00:00:00+00:00"), b"\x00", 3, "a*b"),
    (6, "GPT-4o", 100, 12.5, False, _ts("2026-11-27T00:00:00+00:00"), bytes.fromhex("0a0b"), 4, "100%"),
]


@pytest.fixture
def conn() -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect()
    connection.execute(
        "CREATE TABLE spans (id INTEGER, model VARCHAR, tokens BIGINT, duration DOUBLE, streamed BOOLEAN,"
        " start_time TIMESTAMPTZ, trace_id BLOB, severity INTEGER, note VARCHAR)"
    )
    connection.executemany("INSERT INTO spans VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", ROWS)
    yield connection
    connection.close()


def select_ids(conn: duckdb.DuckDBPyConnection, text: str) -> set[int]:
    where = compile_filter(text, CATALOG)
    rows = conn.execute(f"SELECT id FROM spans WHERE {where.sql}", where.params).fetchall()
    return {row[0] for row in rows}


MATCHES: list[tuple[str, set[int]]] = [
    # strings
    ('model = "gpt-4o"', {1}),
    ('model != "gpt-4o"', {2, 3, 5, 6}),
    ('model < "gpt"', {3, 6}),
    ('model <= "claude-3"', {3, 6}),
    ('model > "gpt-4o"', {2, 5}),
    ('model >= "gpt-4o"', {1, 2, 5}),
    ('model:"gpt-4o"', {1}),
    ("note = plain", {1}),
    ("model = 'gpt-4o'", {1}),
    ('note = "it\'s \\"quoted\\""', {3}),
    ("note = 'it\\'s \"quoted\"'", {3}),
    ('label = "gpt-4o/100"', {1}),
    # wildcards
    ('model = "gpt-4o*"', {1, 2}),
    ('model = "*-mini"', {2}),
    ('model = "*4o*"', {1, 2, 6}),
    ('model : "gpt*"', {1, 2}),
    ('model != "gpt*"', {3, 5, 6}),
    ('model = "*"', {1, 2, 3, 5, 6}),
    ('model = "gpt-4o\\*"', set()),
    ('note = "a\\*b"', {5}),
    ('note = "*\\*b"', {5}),
    ('note = "50%*"', {2}),
    ('note = "50_*"', set()),
    ('note = "*%"', {6}),
    ('note = "100%"', {6}),
    # presence
    ("model:*", {1, 2, 3, 5, 6}),
    ("NOT model:*", {4}),
    # integers
    ("tokens = 100", {1, 6}),
    ("tokens != 100", {2, 3, 4, 5}),
    ("tokens < 0", {4}),
    ("tokens <= 0", {3, 4}),
    ("tokens > 100", {2}),
    ("tokens >= 100", {1, 2, 6}),
    ("tokens > -5", {1, 2, 3, 5, 6}),
    ("tokens >= -5", ALL),
    ("tokens:7", {5}),
    # floats
    ("duration = 12.5", {1, 6}),
    ("duration != 12.5", {2, 3, 4, 5}),
    ("duration > 3", {1, 2, 4, 6}),
    ("duration < 0", {5}),
    ("duration <= 0.0", {3, 5}),
    ("duration >= 1e6", {4}),
    ("duration > -1.5", {1, 2, 3, 4, 6}),
    ("duration = .0", {3}),
    # booleans
    ("streamed = true", {1, 3, 5}),
    ("streamed = false", {2, 4, 6}),
    ("streamed != true", {2, 4, 6}),
    ("streamed : TRUE", {1, 3, 5}),
    # timestamps
    ('start_time = "2026-11-27T00:00:00Z"', {1, 6}),
    ('start_time != "2026-11-27T00:00:00Z"', {2, 3, 4, 5}),
    ('start_time >= "2026-11-27T00:00:00Z"', {1, 2, 4, 6}),
    ('start_time < "2026-11-27T00:00:00Z"', {3, 5}),
    ('start_time > "2026-11-27T12:30:00Z"', {2, 4}),
    ('start_time > "2026-11-27T12:30:00.000001Z"', {4}),
    ('start_time <= "2026-11-26T23:59:59.999999Z"', {3, 5}),
    ('start_time = "2026-11-27T01:00:00+01:00"', {1, 6}),
    ('start_time = "2026-11-26T19:00:00-05:00"', {1, 6}),
    ('start_time = "2026-11-27T12:30:00.000001000Z"', {2}),
    ('start_time = "2026-11-27t00:00:00z"', {1, 6}),
    ('start_time = "2026-11-26T00:01:00-23:59"', {1, 6}),
    # enums compare by rank
    ("severity >= high", {2, 3, 6}),
    ('severity = "critical"', {3}),
    ("severity < medium", {1, 4}),
    ('severity <= "medium"', {1, 4, 5}),
    ("severity != low", {1, 2, 3, 5, 6}),
    ("severity = INFO", {1}),
    # ids
    ('trace_id = "0a0b"', {1, 6}),
    ('trace_id = "0A0B"', {1, 6}),
    ('trace_id != "0a0b"', {2, 3, 4, 5}),
    ("trace_id = abcd", {4}),
    ('trace_id = "00"', {5}),
    ('trace_id:"ff00"', {2}),
    # empty filter
    ("", ALL),
    ("   \t\n", ALL),
]


@pytest.mark.parametrize(("text", "expected"), MATCHES)
def test_filter_selects_exactly_the_matching_rows(
    conn: duckdb.DuckDBPyConnection, text: str, expected: set[int]
) -> None:
    assert select_ids(conn, text) == expected


PRECEDENCE: list[tuple[str, set[int]]] = [
    # OR binds tighter than AND: a AND (b OR c), not (a AND b) OR c = {3, 6}.
    ("tokens = 100 AND streamed = false OR severity = critical", {6}),
    ("severity = critical OR tokens = 100 AND streamed = false", {6}),
    ("(tokens = 100 AND streamed = false) OR severity = critical", {3, 6}),
    # Juxtaposition is AND, and also looser than OR.
    ("tokens = 100 streamed = false", {6}),
    ("tokens = 100 streamed = false OR severity = critical", {6}),
    ("tokens = 100 (streamed = false OR severity = critical)", {6}),
    ("tokens = 100 OR tokens = 0 AND streamed = true", {1, 3}),
    # NOT applies to one term.
    ("NOT tokens = 100", {2, 3, 4, 5}),
    ("-tokens = 100", {2, 3, 4, 5}),
    ("NOT NOT tokens = 100", {1, 6}),
    ("NOT tokens = 100 AND streamed = true", {3, 5}),
    ("NOT tokens = 100 OR streamed = true", {1, 2, 3, 4, 5}),
    ("NOT (tokens = 100 OR tokens = 0)", {2, 4, 5}),
    ("-(tokens = 100 OR tokens = 0) streamed = true", {5}),
    # NOT is two-valued: row 4 (model missing) makes the inner OR NULL, and NOT still matches it.
    ('NOT (model = "gpt-4o" OR tokens = 100)', {2, 3, 4, 5}),
    ('NOT model = "gpt-4o"', {2, 3, 4, 5, 6}),
    ("(((tokens = 100)))", {1, 6}),
    ("(" * 32 + "tokens = 100" + ")" * 32, {1, 6}),
]


@pytest.mark.parametrize(("text", "expected"), PRECEDENCE)
def test_precedence_and_grouping(conn: duckdb.DuckDBPyConnection, text: str, expected: set[int]) -> None:
    assert select_ids(conn, text) == expected


@pytest.mark.parametrize(
    "literal",
    [INJECTION, "' OR 1=1 --", 'x\\" OR 1=1 --', "%", "?", "'); DELETE FROM spans; --"],
)
def test_injection_attempts_stay_literals(conn: duckdb.DuckDBPyConnection, literal: str) -> None:
    quoted = '"' + literal.replace("\\", "\\\\").replace('"', '\\"') + '"'
    where = compile_filter(f"model = {quoted}", CATALOG)
    assert where.params == [literal]
    assert where.sql == "model = ?"
    expected = {5} if literal == INJECTION else set()
    assert select_ids(conn, f"model = {quoted}") == expected
    assert conn.execute("SELECT count(*) FROM spans").fetchone() == (6,)


def test_compiled_sql_uses_parameters_of_the_column_type() -> None:
    where = compile_filter(
        'model = "gpt-4o" AND tokens > 100 start_time >= "2026-11-27T01:00:00+01:00" trace_id = "0A0B"',
        CATALOG,
    )
    assert where.sql == "(model = ? AND tokens > ? AND start_time >= ? AND trace_id = ?)"
    assert where.params == ["gpt-4o", 100, datetime(2026, 11, 27, tzinfo=UTC), b"\x0a\x0b"]
    assert compile_filter("", CATALOG) == SqlFragment("TRUE", [])


def test_or_filter_is_self_contained_next_to_and(conn: duckdb.DuckDBPyConnection) -> None:
    where = compile_filter("tokens = 100 OR tokens = 0", CATALOG)
    rows = conn.execute(f"SELECT id FROM spans WHERE id <> ? AND {where.sql}", [6, *where.params]).fetchall()
    assert {row[0] for row in rows} == {1, 3}


def test_fragments_combine_with_and(conn: duckdb.DuckDBPyConnection) -> None:
    tenant = SqlFragment("id <> ?", [6])
    combined = tenant & compile_filter("tokens = 100 OR tokens = 0", CATALOG)
    assert combined.params == [6, 100, 0]
    rows = conn.execute(f"SELECT id FROM spans WHERE {combined.sql}", combined.params).fetchall()
    assert {row[0] for row in rows} == {1, 3}
    everything = SqlFragment("TRUE", [])
    assert everything & tenant == tenant
    assert tenant & everything == tenant


ERRORS: list[tuple[str, list[str]]] = [
    ("unknown = 1", ["'unknown' is not a known field", "at column 1", "filterable fields: ", "tokens"]),
    ('secret = "x"', ["'secret' cannot be filtered on"]),
    ('tokens = "100"', ["field 'tokens' needs an integer", "at column 10"]),
    ("tokens = 1.5", ["needs an integer"]),
    ("tokens = 1e3", ["needs an integer"]),
    ("tokens = 99999999999999999999", ["out of range"]),
    ('duration = "x"', ["needs a number"]),
    ("duration > 1e999", ["out of range"]),
    ("model = 5", ["needs a quoted string"]),
    ("streamed = 1", ["true or false"]),
    ("streamed = yes", ["true or false"]),
    ("streamed < true", ["operator '<' is not supported for field 'streamed'", "at column 10"]),
    ('trace_id > "00"', ["operator '>' is not supported"]),
    ('trace_id = "abc"', ["invalid hex"]),
    ('trace_id = "zz"', ["invalid hex"]),
    ('trace_id = "0a 0b"', ["invalid hex"]),
    ("trace_id = 12", ["needs a quoted hex string"]),
    ("severity = bogus", ["unknown value 'bogus'", "allowed: info, low, medium, high, critical"]),
    ("severity = 3", ["needs an enum value name"]),
    ('start_time > "2026-11-27"', ["invalid timestamp", "RFC 3339"]),
    ('start_time > "2026-11-27T00:00:00"', ["invalid timestamp"]),
    ('start_time > "2026-13-01T00:00:00Z"', ["invalid timestamp", "month"]),
    # Out-of-range parts are errors naming the literal, never carried into the next unit.
    ('start_time > "2026-11-27T00:00:00+05:99"', ['"2026-11-27T00:00:00+05:99"', "zone offset +05:99"]),
    ('start_time > "2026-11-27T00:00:00-00:75"', ["zone offset -00:75", "minutes 00-59"]),
    ('start_time > "2026-11-27T00:00:00+24:00"', ["zone offset +24:00", "hours 00-23"]),
    ('start_time > "2026-00-01T00:00:00Z"', ["month 00 is out of range 01-12"]),
    ('start_time > "2026-02-30T00:00:00Z"', ['"2026-02-30T00:00:00Z"', "2026-02 has no day 30"]),
    ('start_time > "2026-11-00T00:00:00Z"', ["2026-11 has no day 00"]),
    ('start_time > "0000-01-01T00:00:00Z"', ["year 0000 is out of range 0001-9999"]),
    ('start_time > "2026-11-27T24:00:00Z"', ["hour 24 is out of range 00-23"]),
    ('start_time > "2026-11-27T23:60:00Z"', ["minute 60 is out of range 00-59"]),
    ('start_time > "2026-12-31T23:59:60Z"', ["second 60 is out of range 00-59"]),
    ('start_time > "0001-01-01T00:00:00+01:00"', ["outside years 0001-9999 in UTC"]),
    ('start_time > "2026-11-27T00:00:00.0000001Z"', ["microsecond precision"]),
    ("start_time > 2026", ["quoted RFC 3339 timestamp"]),
    ("start_time > yesterday", ["quoted RFC 3339 timestamp"]),
    ("(tokens = 1", ["expected ')' to close the '(' at column 1", "at column 12"]),
    ("tokens = 1)", ["unexpected ')' at column 11"]),
    ("tokens = 1 2", ["expected a field name, found '2' at column 12"]),
    ("tokens =", ["expected a value after '='", "the end of the filter"]),
    ("= 1", ["expected a field name"]),
    ("tokens", ["expected a comparison operator"]),
    ("tokens 1", ["expected a comparison operator"]),
    ("tokens = 1 AND", ["expected a field name, found the end of the filter"]),
    ("tokens = 1 OR OR tokens = 2", ["expected a field name, found 'OR'"]),
    ("AND tokens = 1", ["expected a field name, found 'AND'"]),
    ("()", ["empty parentheses at column 1"]),
    ("tokens == 1", ["expected a value after '='"]),
    ("tokens = 1 and tokens = 2", ["logical operators are upper case", "'AND'"]),
    ("tokens = 1 or tokens = 2", ["logical operators are upper case", "'OR'"]),
    ('model = "abc', ["unterminated string at column 9"]),
    ('model = "abc\\', ["unterminated string"]),
    ('model = "a\\qb"', ["invalid escape sequence"]),
    ("tokens ! 1", ["unexpected character '!'"]),
    ("tokens = 1; DROP TABLE spans", ["unexpected character ';'"]),
    ("tokens = 0x10", ["invalid number '0x10'"]),
    ("tokens = 1.2.3", ["invalid number"]),
    ('model = "a*b"', ["may only start or end a string"]),
    ('model < "gpt*"', ["wildcards in 'model' values are only allowed with"]),
    ("tokens = *", ["'*' is only allowed after ':'"]),
    ("tokens = 1 AND " * 300 + "tokens = 1", ["longer than 4096 characters"]),
    ("(" * 33 + "tokens = 1" + ")" * 33, ["deeper than 32 levels"]),
    ("NOT " * 33 + "tokens = 1", ["deeper than 32 levels"]),
]


@pytest.mark.parametrize(("text", "fragments"), ERRORS)
def test_invalid_filters_raise_query_error(text: str, fragments: list[str]) -> None:
    with pytest.raises(QueryError) as caught:
        compile_filter(text, CATALOG)
    assert caught.value.field == "filter"
    for fragment in fragments:
        assert fragment in caught.value.message
    assert str(caught.value) == caught.value.message


def test_unknown_field_lists_only_filterable_fields() -> None:
    with pytest.raises(QueryError) as caught:
        compile_filter("nope = 1", CATALOG)
    allowed = caught.value.message.split("filterable fields: ")[1].split(")")[0].split(", ")
    assert allowed == sorted(name for name in CATALOG if name != "secret")


def test_field_spec_enum_values_only_for_enums() -> None:
    with pytest.raises(ValueError, match="enum_values"):
        FieldSpec("severity", "severity", FieldKind.ENUM)
    with pytest.raises(ValueError, match="enum_values"):
        FieldSpec("model", "model", FieldKind.STRING, enum_values={"a": 1})


def test_presence_treats_empty_strings_and_ids_as_unset() -> None:
    # The store keeps unset strings and ids empty rather than NULL.
    connection = duckdb.connect()
    connection.execute("CREATE TABLE spans (id INTEGER, model VARCHAR, trace_id BLOB)")
    connection.executemany(
        "INSERT INTO spans VALUES (?, ?, ?)", [(1, "gpt-4o", b"\x01"), (2, "", b""), (3, None, None)]
    )
    for text, expected in (("model:*", {1}), ("NOT model:*", {2, 3}), ("trace_id:*", {1})):
        where = compile_filter(text, CATALOG)
        rows = connection.execute(f"SELECT id FROM spans WHERE {where.sql}", where.params).fetchall()
        assert {row[0] for row in rows} == expected, text
    connection.close()


SENTINEL_CATALOG = {
    "ttft": FieldSpec("ttft", "coalesce(ttft_us / 1000.0, -1.0)", FieldKind.FLOAT, presence_sql="ttft_us"),
    "cost": FieldSpec("cost", "COALESCE(cost, 0.0)", FieldKind.FLOAT, presence_sql="cost"),
    "stream": FieldSpec("stream", "coalesce(stream, false)", FieldKind.BOOL, presence_sql="stream"),
    "score": FieldSpec(
        "score",
        "coalesce(CASE WHEN a IS NULL THEN b ELSE greatest(a, b) END, -1)",
        FieldKind.INT,
        presence_sql="CASE WHEN a IS NULL THEN b ELSE greatest(a, b) END",
    ),
    "parent": FieldSpec("parent", "coalesce(parent, ''::BLOB)", FieldKind.BYTES_HEX),
    "plain": FieldSpec("plain", "a", FieldKind.INT),  # no sentinel: presence is the value itself
}
SENTINEL_ROWS = [
    (1, 1500, 0.5, True, 3, 4, b"\x01"),
    (2, None, None, None, None, None, None),
    (3, 0, 0.0, False, None, 7, b""),
]


@pytest.mark.parametrize(
    "catalog", [SPAN_FIELDS, TRACE_FIELDS, FINDING_FIELDS], ids=["spans", "traces", "findings"]
)
def test_every_field_with_a_sort_sentinel_says_how_to_test_presence(catalog: dict[str, FieldSpec]) -> None:
    # Without it `field:*` sees the sentinel as a value and matches every row.
    for spec in catalog.values():
        if "coalesce(" in spec.sql.lower() and spec.kind not in (FieldKind.STRING, FieldKind.BYTES_HEX):
            assert spec.presence_sql is not None, spec.name


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # A sort sentinel (-1, 0, false) stands in for a missing value; it is not a value.
        ("ttft:*", {1, 3}),
        ("cost:*", {1, 3}),
        ("stream:*", {1, 3}),
        ("score:*", {1, 3}),
        ("parent:*", {1}),
        ("NOT ttft:*", {2}),
        ("-cost:*", {2}),
        ("NOT stream:*", {2}),
        ("-score:*", {2}),
        ("NOT parent:*", {2, 3}),
        ("plain:*", {1}),
        # Comparisons still see the sentinel.
        ("ttft = -1", {2}),
        ("stream = false", {2, 3}),
    ],
)
def test_presence_ignores_coalesced_sort_sentinels(text: str, expected: set[int]) -> None:
    connection = duckdb.connect()
    connection.execute(
        "CREATE TABLE spans (id INTEGER, ttft_us BIGINT, cost DOUBLE, stream BOOLEAN, a INTEGER,"
        " b INTEGER, parent BLOB)"
    )
    connection.executemany("INSERT INTO spans VALUES (?, ?, ?, ?, ?, ?, ?)", SENTINEL_ROWS)
    where = compile_filter(text, SENTINEL_CATALOG)
    rows = connection.execute(f"SELECT id FROM spans WHERE {where.sql}", where.params).fetchall()
    connection.close()
    assert {row[0] for row in rows} == expected
