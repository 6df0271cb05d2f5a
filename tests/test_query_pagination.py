"""order_by parsing, keyset pagination against DuckDB, and page token integrity."""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import duckdb
import pytest

from llmtrace.query import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    FieldKind,
    FieldSpec,
    OrderTerm,
    PageTokenCodec,
    QueryError,
    SqlFragment,
    compile_filter,
    effective_page_size,
    keyset_predicate,
    order_sql_clause,
    parse_order_by,
    query_fingerprint,
    sort_values_from_token,
    token_values_from_row,
)

SECRET = b"test-secret-0123456789abcdef"
TIEBREAK = ["trace_id", "span_id"]
DEFAULT_ORDER = "ts desc"
CATALOG = {
    "grp": FieldSpec("grp", "grp", FieldKind.STRING),
    "score": FieldSpec("score", "score", FieldKind.FLOAT),
    "ts": FieldSpec("ts", "ts", FieldKind.TIMESTAMP),
    "flag": FieldSpec("flag", "flag", FieldKind.BOOL),
    "sev": FieldSpec("sev", "sev", FieldKind.ENUM, enum_values={"low": 1, "mid": 2, "high": 3}),
    "n": FieldSpec("n", "n", FieldKind.INT),
    "model": FieldSpec("model", "COALESCE(model, '')", FieldKind.STRING),
    "trace_id": FieldSpec("trace_id", "trace_id", FieldKind.BYTES_HEX),
    "span_id": FieldSpec("span_id", "span_id", FieldKind.BYTES_HEX),
    "body": FieldSpec("body", "body", FieldKind.STRING, orderable=False),
}
ROW_COUNT = 2500
BASE = datetime(2026, 11, 27, tzinfo=UTC)


def _rows() -> list[tuple[object, ...]]:
    rng = random.Random(20261127)
    scores = [0.1 * k for k in range(-3, 8)] + [0.1 + 0.2, 0.3, 1e-300, -0.0, 1e300]
    stamps = [BASE + timedelta(microseconds=rng.randrange(50)) for _ in range(20)]
    stamps += [datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)]
    traces = [rng.randbytes(16) for _ in range(40)]
    rows: list[tuple[object, ...]] = []
    for i in range(ROW_COUNT):
        rows.append(
            (
                i,
                "tenant-b" if i % 10 == 0 else "tenant-a",
                rng.choice(["alpha", "beta", "gamma", "Beta", "beta "]),
                rng.choice(scores),
                rng.choice(stamps),
                rng.random() < 0.5,
                rng.randint(1, 3),
                rng.choice([-(2**63), -1, 0, 7, 2**63 - 1]),
                rng.choice([None, "gpt-4o", "claude"]),
                rng.choice(traces),
                i.to_bytes(8, "big")[::-1],  # unique span ids, not in id order
                "body",
            )
        )
    return rows


@pytest.fixture(scope="module")
def conn() -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect()
    # A non-UTC session zone: DuckDB returns TIMESTAMPTZ values in it, and tokens must not care.
    connection.execute("SET TimeZone = 'America/New_York'")
    connection.execute(
        "CREATE TABLE items (id INTEGER, tenant VARCHAR, grp VARCHAR, score DOUBLE, ts TIMESTAMPTZ,"
        " flag BOOLEAN, sev INTEGER, n BIGINT, model VARCHAR, trace_id BLOB, span_id BLOB, body VARCHAR)"
    )
    connection.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", _rows())
    yield connection
    connection.close()


def _base_where(filter_text: str) -> SqlFragment:
    return SqlFragment("tenant = ?", ["tenant-a"]) & compile_filter(filter_text, CATALOG)


def full_order(conn: duckdb.DuckDBPyConnection, order_by: str, filter_text: str) -> list[int]:
    order = parse_order_by(order_by, CATALOG, default=DEFAULT_ORDER, tiebreak=TIEBREAK)
    where = _base_where(filter_text)
    sql = f"SELECT id FROM items WHERE {where.sql} ORDER BY {order_sql_clause(order)}"
    return [row[0] for row in conn.execute(sql, where.params).fetchall()]


def page_through(
    conn: duckdb.DuckDBPyConnection, order_by: str, filter_text: str, page_size: int
) -> list[int]:
    """Walk every page the way the query service does, through encoded tokens."""
    codec = PageTokenCodec(SECRET)
    fingerprint = query_fingerprint("items", "tenant-a", filter_text, order_by)
    order = parse_order_by(order_by, CATALOG, default=DEFAULT_ORDER, tiebreak=TIEBREAK)
    keys = ", ".join(term.field.sql for term in order)
    token = ""
    seen: list[int] = []
    while True:
        where = _base_where(filter_text)
        if token:
            where = where & keyset_predicate(order, codec.decode(token, fingerprint))
        sql = (
            f"SELECT id, {keys} FROM items WHERE {where.sql} "
            f"ORDER BY {order_sql_clause(order)} LIMIT {page_size + 1}"
        )
        rows = conn.execute(sql, where.params).fetchall()
        page = rows[:page_size]
        seen.extend(row[0] for row in page)
        if len(rows) <= page_size:
            return seen
        token = codec.encode(fingerprint, token_values_from_row(order, page[-1][1:]))


ORDERS = [
    ("", ""),
    ("ts desc", ""),
    ("grp, score desc", ""),
    ("sev desc, ts, flag desc", "n != 0"),
    ("flag, grp desc, score", 'grp = "beta*" OR sev >= high'),
    ("trace_id desc", ""),
    ("model, n desc", "NOT flag = true"),
    ("score desc, span_id desc", ""),
]


@pytest.mark.parametrize("page_size", [7, 100])
@pytest.mark.parametrize(("order_by", "filter_text"), ORDERS)
def test_paging_matches_single_ordered_query(
    conn: duckdb.DuckDBPyConnection, order_by: str, filter_text: str, page_size: int
) -> None:
    expected = full_order(conn, order_by, filter_text)
    assert len(expected) > 300
    assert page_through(conn, order_by, filter_text, page_size) == expected


@pytest.mark.parametrize(("order_by", "filter_text"), [ORDERS[3], ORDERS[4]])
def test_paging_one_row_at_a_time(conn: duckdb.DuckDBPyConnection, order_by: str, filter_text: str) -> None:
    expected = full_order(conn, order_by, filter_text)
    got = page_through(conn, order_by, filter_text, 1)
    assert got == expected
    assert len(set(got)) == len(got)


def test_empty_result_has_no_next_page(conn: duckdb.DuckDBPyConnection) -> None:
    assert page_through(conn, "ts", "n = 12345", 10) == []


# --- order_by ---------------------------------------------------------------------------------


def _names(order: list[OrderTerm]) -> list[tuple[str, bool]]:
    return [(term.field.name, term.descending) for term in order]


def test_order_by_default_and_tiebreak() -> None:
    order = parse_order_by("", CATALOG, default=DEFAULT_ORDER, tiebreak=TIEBREAK)
    assert _names(order) == [("ts", True), ("trace_id", False), ("span_id", False)]
    assert order_sql_clause(order) == "ts DESC, trace_id ASC, span_id ASC"


def test_order_by_keeps_requested_direction_of_tiebreak_fields() -> None:
    order = parse_order_by(
        " grp ,span_id DESC,  score asc", CATALOG, default=DEFAULT_ORDER, tiebreak=TIEBREAK
    )
    assert _names(order) == [("grp", False), ("span_id", True), ("score", False), ("trace_id", False)]


def test_order_by_parenthesises_expressions() -> None:
    order = parse_order_by("model desc", CATALOG)
    assert order_sql_clause(order) == "(COALESCE(model, '')) DESC"


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("nope", ["'nope' is not a known field at column 1", "orderable fields: flag, grp"]),
        ("ts, body", ["'body' cannot be ordered by at column 5"]),
        ("ts descending", ["invalid direction 'descending' at column 4", "asc or desc"]),
        ("ts desc extra", ["expected 'field' or 'field desc'"]),
        ("ts,,grp", ["empty sort field at column 4"]),
        ("ts,", ["empty sort field at column 4"]),
        ("ts, ts desc", ["'ts' appears more than once"]),
        ("ts " * 400, ["longer than 1024 characters"]),
    ],
)
def test_invalid_order_by(text: str, fragments: list[str]) -> None:
    with pytest.raises(QueryError) as caught:
        parse_order_by(text, CATALOG, default=DEFAULT_ORDER, tiebreak=TIEBREAK)
    assert caught.value.field == "order_by"
    for fragment in fragments:
        assert fragment in caught.value.message


def test_unknown_order_field_lists_only_orderable_fields() -> None:
    with pytest.raises(QueryError) as caught:
        parse_order_by("nope", CATALOG)
    allowed = caught.value.message.split("orderable fields: ")[1].rstrip(")").split(", ")
    assert allowed == sorted(name for name in CATALOG if name != "body")


def test_unknown_tiebreak_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="tiebreak"):
        parse_order_by("ts", CATALOG, tiebreak=["missing"])


# --- token values -----------------------------------------------------------------------------

ALL_KINDS = parse_order_by("grp, n, score, flag, ts, sev, trace_id", CATALOG)


@pytest.mark.parametrize(
    "row",
    [
        ('\u03b1 "x" \'', -(2**63), 0.1 + 0.2, True, BASE + timedelta(microseconds=1), 3, b"\x00\xff"),
        ("", 2**63 - 1, -0.0, False, datetime(1, 1, 1, tzinfo=UTC), 1, b""),
        ("z", 0, math.inf, True, datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), 2, b"\x01"),
        ("z", 0, 5e-324, True, datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), 2, b"\x01"),
    ],
)
def test_token_values_round_trip_exactly(row: tuple[object, ...]) -> None:
    codec = PageTokenCodec(SECRET)
    token = codec.encode("fp", token_values_from_row(ALL_KINDS, row))
    back = sort_values_from_token(ALL_KINDS, codec.decode(token, "fp"))
    assert back == list(row)
    assert math.copysign(1.0, back[2]) == math.copysign(1.0, row[2])  # type: ignore[arg-type]


def test_token_values_normalise_time_zones() -> None:
    eastern = timezone(timedelta(hours=-5))
    aware = token_values_from_row(ALL_KINDS[4:5], [datetime(2026, 11, 26, 19, tzinfo=eastern)])
    naive = token_values_from_row(ALL_KINDS[4:5], [datetime(2026, 11, 27)])
    assert aware == naive == [int(BASE.timestamp()) * 1_000_000]
    assert sort_values_from_token(ALL_KINDS[4:5], aware) == [BASE]


def test_float_nan_round_trips() -> None:
    values = token_values_from_row(ALL_KINDS[2:3], [math.nan])
    assert math.isnan(sort_values_from_token(ALL_KINDS[2:3], values)[0])  # type: ignore[arg-type]


@pytest.mark.parametrize("row", [[None], ["text"], [True]])
def test_row_values_of_the_wrong_type_are_rejected(row: list[object]) -> None:
    with pytest.raises(TypeError, match="non-NULL"):
        token_values_from_row(ALL_KINDS[1:2], row)


def test_row_value_count_must_match_order() -> None:
    with pytest.raises(TypeError, match="expected 7"):
        token_values_from_row(ALL_KINDS, [1])


@pytest.mark.parametrize(
    "values",
    [
        ["a", 1, "0x1p+0", True, 0, 1],  # too few
        [1, 1, "0x1p+0", True, 0, 1, "00"],  # int where a string belongs
        ["a", True, "0x1p+0", True, 0, 1, "00"],  # bool is not an int
        ["a", 1, "zz", True, 0, 1, "00"],  # bad float hex
        ["a", 1, 1.5, True, 0, 1, "00"],  # floats travel as hex text
        ["a", 1, "0x1p+0", "true", 0, 1, "00"],
        ["a", 1, "0x1p+0", True, 10**30, 1, "00"],  # timestamp out of range
        ["a", 1, "0x1p+0", True, 0, 1, "0g"],  # bad hex id
    ],
)
def test_token_values_that_do_not_fit_the_order_are_malformed(values: list[object]) -> None:
    with pytest.raises(QueryError) as caught:
        sort_values_from_token(ALL_KINDS, values)
    assert (caught.value.field, caught.value.message) == ("page_token", "page token is malformed")


def test_keyset_predicate_shape() -> None:
    order = parse_order_by("grp desc, n", CATALOG)
    fragment = keyset_predicate(order, ["b", 4])
    assert fragment.sql == "(grp <= ? AND ((grp < ?) OR (grp = ? AND n > ?)))"
    assert fragment.params == ["b", "b", "b", 4]
    with pytest.raises(ValueError, match="at least one"):
        keyset_predicate([], [])


# --- page tokens ------------------------------------------------------------------------------

FINGERPRINT = query_fingerprint("items", "tenant-a", 'grp = "beta"', "ts desc")


def _token() -> str:
    return PageTokenCodec(SECRET).encode(FINGERPRINT, ["beta", 1764201600000000, "0a0b", True, -3])


def _assert_malformed(token: str, fingerprint: str = FINGERPRINT, secret: bytes = SECRET) -> None:
    with pytest.raises(QueryError) as caught:
        PageTokenCodec(secret).decode(token, fingerprint)
    assert (caught.value.field, caught.value.message) == ("page_token", "page token is malformed")


def test_token_round_trip_and_alphabet() -> None:
    token = _token()
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert PageTokenCodec(SECRET).decode(token, FINGERPRINT) == ["beta", 1764201600000000, "0a0b", True, -3]


def test_every_single_character_change_is_detected() -> None:
    token = _token()
    for i, char in enumerate(token):
        for replacement in {"A", "b", "-", "_", "9"} - {char}:
            _assert_malformed(token[:i] + replacement + token[i + 1 :])


def test_truncation_and_extension_are_detected() -> None:
    token = _token()
    for end in range(len(token)):
        _assert_malformed(token[:end])
    _assert_malformed(token + "A")
    _assert_malformed(token + "=")


@pytest.mark.parametrize("token", ["", "!!!!", "é" * 10, "A" * 9000, "page=2", " " + "QUJD"])
def test_garbage_tokens_are_malformed(token: str) -> None:
    _assert_malformed(token)


def test_token_from_another_secret_is_malformed() -> None:
    _assert_malformed(_token(), secret=b"another-secret-0123456789")


@pytest.mark.parametrize(
    "fingerprint",
    [
        query_fingerprint("items", "tenant-b", 'grp = "beta"', "ts desc"),
        query_fingerprint("items", "tenant-a", 'grp = "gamma"', "ts desc"),
        query_fingerprint("items", "tenant-a", 'grp = "beta"', "ts"),
        query_fingerprint("spans", "tenant-a", 'grp = "beta"', "ts desc"),
    ],
)
def test_token_for_another_request_is_rejected(fingerprint: str) -> None:
    with pytest.raises(QueryError) as caught:
        PageTokenCodec(SECRET).decode(_token(), fingerprint)
    assert caught.value.field == "page_token"
    assert caught.value.message == "page token does not match this request's tenant, filter or order_by"


def _forge(payload: bytes, version: int = 1) -> str:
    """A correctly signed token with arbitrary contents, as only a holder of the secret could make."""
    body = bytes([version]) + hashlib.sha256(FINGERPRINT.encode()).digest()[:16] + payload
    mac = hmac.new(SECRET, body, hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(body + mac).rstrip(b"=").decode()


def test_forge_helper_matches_the_codec() -> None:
    assert _forge(b'["beta",1764201600000000,"0a0b",true,-3]') == _token()


@pytest.mark.parametrize(
    ("payload", "version"),
    [
        (b"[1]", 2),
        (b"{}", 1),
        (b"[[1]]", 1),
        (b'[{"a":1}]', 1),
        (b"[NaN]", 1),
        (b"[Infinity]", 1),
        (b"[1", 1),
        (b"\xff", 1),
        (b"", 1),
    ],
)
def test_signed_but_invalid_contents_are_malformed(payload: bytes, version: int) -> None:
    _assert_malformed(_forge(payload, version))


@pytest.mark.parametrize("value", [[1], {"a": 1}, math.nan, math.inf, b"\x00", BASE])
def test_encode_accepts_only_json_scalars(value: object) -> None:
    with pytest.raises(TypeError, match="JSON scalars"):
        PageTokenCodec(SECRET).encode(FINGERPRINT, [value])


def test_secret_must_be_long_enough() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        PageTokenCodec(b"short")


def test_fingerprint_is_canonical() -> None:
    assert query_fingerprint("spans", "t", "a", "b") == query_fingerprint("spans", "t", "a", "b")
    assert len(query_fingerprint("spans", "t", "a", "b")) == 64
    assert query_fingerprint("spans", "t", "a b", "c") != query_fingerprint("spans", "t", "a", "b c")
    assert query_fingerprint("spans", "t,", "a", "") != query_fingerprint("spans", "t", ",a", "")


def test_effective_page_size() -> None:
    assert effective_page_size(0) == DEFAULT_PAGE_SIZE == 50
    assert effective_page_size(7) == 7
    assert effective_page_size(5000) == MAX_PAGE_SIZE == 1000
    with pytest.raises(QueryError) as caught:
        effective_page_size(-1)
    assert caught.value.field == "page_size"
