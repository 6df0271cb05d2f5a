"""QueryService errors: canonical codes with google.rpc ErrorInfo and BadRequest details.

Every client mistake is INVALID_ARGUMENT (or NOT_FOUND) naming the request field at fault;
nothing a client sends may end as UNKNOWN or INTERNAL.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, cast

import grpc
import pytest
import pytest_asyncio
from google.protobuf import duration_pb2, timestamp_pb2

from llmtrace.api.v1 import ingest_service_pb2, query_service_pb2
from tests.conftest import RunningCore, core_settings, running_core
from tests.factories import (
    BASE_NS,
    MS,
    RpcFailure,
    expect_failure,
    ingest_all,
    make_finding,
    make_span,
    rpc_failure,
)

if TYPE_CHECKING:
    from llmtrace.api.v1.query_service_pb2_grpc import QueryServiceAsyncStub

pytestmark = pytest.mark.asyncio(loop_scope="module")

TENANT = "acme"
Q = query_service_pb2
Call = Callable[["QueryServiceAsyncStub", str], Awaitable[object]]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningCore]:
    path = tmp_path_factory.mktemp("errors") / "llmtrace.duckdb"
    async with running_core(core_settings(path)) as running:
        spans = [make_span(tenant=TENANT, start_ns=BASE_NS + i * MS) for i in range(5)]
        for span in spans:
            span.findings.append(make_finding())
        twin = make_span(tenant=TENANT, start_ns=BASE_NS)
        twin.span_id = spans[0].span_id  # the same span id in another trace
        await ingest_all(running.ingest, [*spans, twin, make_span(tenant="other", start_ns=BASE_NS)])
        yield running


def _invalid(failure: RpcFailure, field: str) -> str:
    """Assert an INVALID_ARGUMENT naming exactly `field`; return the violation's description."""
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT, failure
    assert failure.domain == "llmtrace.dev"
    assert failure.reason in ("INVALID_ARGUMENT", "INVALID_QUERY", "AMBIGUOUS_SPAN"), failure.reason
    assert failure.fields == [field], failure.violations
    description = failure.violations[0][1]
    assert description
    assert failure.message == f"{field}: {description}"
    assert failure.request_id
    return description


# One call per Query RPC, for a given tenant; everything else valid.
QUERY_CALLS: dict[str, Call] = {
    "ListTraces": lambda q, t: q.ListTraces(Q.ListTracesRequest(tenant=t)),
    "GetTrace": lambda q, t: q.GetTrace(Q.GetTraceRequest(tenant=t, trace_id=b"\x01" * 16)),
    "ListSpans": lambda q, t: q.ListSpans(Q.ListSpansRequest(tenant=t)),
    "GetSpan": lambda q, t: q.GetSpan(Q.GetSpanRequest(tenant=t, span_id=b"\x01" * 8)),
    "ListFindings": lambda q, t: q.ListFindings(Q.ListFindingsRequest(tenant=t)),
    "GetStats": lambda q, t: q.GetStats(Q.GetStatsRequest(tenant=t)),
    "ExecuteSql": lambda q, t: q.ExecuteSql(Q.ExecuteSqlRequest(tenant=t, query="SELECT 1")),
}


@pytest.mark.parametrize("rpc", QUERY_CALLS)
async def test_missing_tenant_is_invalid_argument(shared: RunningCore, rpc: str) -> None:
    failure = await expect_failure(QUERY_CALLS[rpc](shared.query, ""))

    assert _invalid(failure, "tenant") == "is required"
    assert failure.reason == "INVALID_ARGUMENT"


@pytest.mark.parametrize("rpc", QUERY_CALLS)
@pytest.mark.parametrize(
    ("tenant", "description"),
    [
        ("t" * 129, "must be at most 128 characters"),
        ("ac\x00me", "must be printable, without leading or trailing spaces"),
        (" acme", "must be printable, without leading or trailing spaces"),
    ],
    ids=["too-long", "nul", "padded"],
)
async def test_malformed_tenant_is_invalid_argument(
    shared: RunningCore, rpc: str, tenant: str, description: str
) -> None:
    failure = await expect_failure(QUERY_CALLS[rpc](shared.query, tenant))

    assert _invalid(failure, "tenant") == description


async def _first_page_token(shared: RunningCore, rpc: str, filter: str = "", order_by: str = "") -> str:
    if rpc == "ListSpans":
        spans = await shared.query.ListSpans(
            Q.ListSpansRequest(tenant=TENANT, page_size=1, filter=filter, order_by=order_by)
        )
        token = spans.next_page_token
    elif rpc == "ListFindings":
        findings = await shared.query.ListFindings(
            Q.ListFindingsRequest(tenant=TENANT, page_size=1, filter=filter, order_by=order_by)
        )
        token = findings.next_page_token
    else:
        traces = await shared.query.ListTraces(
            Q.ListTracesRequest(tenant=TENANT, page_size=1, filter=filter, order_by=order_by)
        )
        token = traces.next_page_token
    assert token
    return token


def _list(
    q: QueryServiceAsyncStub,
    rpc: str,
    *,
    tenant: str = TENANT,
    token: str = "",
    filter: str = "",
    order_by: str = "",
    page_size: int = 1,
) -> Awaitable[object]:
    if rpc == "ListSpans":
        return q.ListSpans(
            Q.ListSpansRequest(
                tenant=tenant, page_size=page_size, page_token=token, filter=filter, order_by=order_by
            )
        )
    if rpc == "ListFindings":
        return q.ListFindings(
            Q.ListFindingsRequest(
                tenant=tenant, page_size=page_size, page_token=token, filter=filter, order_by=order_by
            )
        )
    if rpc == "ListTraces":
        return q.ListTraces(
            Q.ListTracesRequest(
                tenant=tenant, page_size=page_size, page_token=token, filter=filter, order_by=order_by
            )
        )
    assert rpc == "GetStats"
    return q.GetStats(Q.GetStatsRequest(tenant=tenant, filter=filter))


LISTS = ["ListSpans", "ListFindings", "ListTraces"]
MALFORMED = "page token is malformed"
MISMATCH = "page token does not match this request's tenant, filter or order_by"


def _flip(token: str, index: int) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    replacement = alphabet[(alphabet.index(token[index]) + 1) % len(alphabet)]
    return token[:index] + replacement + token[index + 1 :]


@pytest.mark.parametrize("rpc", LISTS)
async def test_page_token_round_trip_works(shared: RunningCore, rpc: str) -> None:
    order = "start_time" if rpc != "ListFindings" else ""
    everything = _keys(await _list(shared.query, rpc, order_by=order, page_size=1000))
    first = await _list(shared.query, rpc, order_by=order, page_size=1)
    token = _next_token(first)

    # page_size may change between pages.
    second = await _list(shared.query, rpc, token=token, order_by=order, page_size=2)

    assert len(everything) >= 3
    assert _keys(first) + _keys(second) == everything[:3]


def _keys(response: object) -> list[bytes | str]:
    """Identities of the items of a List response, in order."""
    if isinstance(response, Q.ListSpansResponse):
        return [s.trace_id + s.span_id for s in response.spans]
    if isinstance(response, Q.ListFindingsResponse):
        return [f.id for f in response.findings]
    assert isinstance(response, Q.ListTracesResponse)
    return [t.trace_id for t in response.traces]


def _next_token(response: object) -> str:
    assert isinstance(response, Q.ListSpansResponse | Q.ListFindingsResponse | Q.ListTracesResponse)
    return response.next_page_token


@pytest.mark.parametrize("rpc", LISTS)
async def test_garbage_page_tokens_are_malformed(shared: RunningCore, rpc: str) -> None:
    token = await _first_page_token(shared, rpc)
    bad_tokens = [
        "garbage",
        "!!!not base64!!!",
        "x" * 9000,
        "ä",
        token[:-4],  # truncated
        token + "A",  # extended
        _flip(token, len(token) // 2),  # tampered payload
        _flip(token, len(token) - 2),  # tampered MAC
        _flip(token, 0),  # tampered version
    ]
    for bad in bad_tokens:
        failure = await expect_failure(_list(shared.query, rpc, token=bad))
        assert _invalid(failure, "page_token") == MALFORMED, bad
        assert failure.reason == "INVALID_QUERY"


@pytest.mark.parametrize("rpc", LISTS)
async def test_page_token_of_another_request_is_rejected(shared: RunningCore, rpc: str) -> None:
    filters = {
        "ListSpans": "input_tokens > 0",
        "ListFindings": "confidence > 0",
        "ListTraces": "span_count > 0",
    }
    token = await _first_page_token(
        shared,
        rpc,
        filter=filters[rpc],
        order_by="start_time desc" if rpc != "ListFindings" else "confidence desc",
    )
    order = "start_time desc" if rpc != "ListFindings" else "confidence desc"

    other_filter = await expect_failure(_list(shared.query, rpc, token=token, filter="", order_by=order))
    other_order = await expect_failure(
        _list(shared.query, rpc, token=token, filter=filters[rpc], order_by="")
    )
    other_spacing = await expect_failure(
        _list(shared.query, rpc, token=token, filter=filters[rpc] + " ", order_by=order)
    )
    other_tenant = await expect_failure(
        _list(shared.query, rpc, token=token, tenant="other", filter=filters[rpc], order_by=order)
    )

    for failure in (other_filter, other_order, other_spacing, other_tenant):
        assert _invalid(failure, "page_token") == MISMATCH


async def test_page_token_of_another_resource_is_rejected(shared: RunningCore) -> None:
    spans_token = await _first_page_token(shared, "ListSpans")
    traces_token = await _first_page_token(shared, "ListTraces")

    on_findings = await expect_failure(_list(shared.query, "ListFindings", token=spans_token))
    on_spans = await expect_failure(_list(shared.query, "ListSpans", token=traces_token))

    assert _invalid(on_findings, "page_token") == MISMATCH
    assert _invalid(on_spans, "page_token") == MISMATCH


BAD_FILTERS = [
    ("ListSpans", "modle = 1", "'modle' is not a known field", 1),
    ("ListSpans", 'input_tokens = "100"', "field 'input_tokens' needs an integer, found '\"100\"'", 16),
    ("ListSpans", "input_tokens = 1.5", "field 'input_tokens' needs an integer", 16),
    ("ListSpans", "cost_usd > abc", "field 'cost_usd' needs a number", 12),
    ("ListSpans", "stream = yes", "field 'stream' needs true or false", 10),
    ("ListSpans", 'start_time > "yesterday"', "invalid timestamp", 14),
    ("ListSpans", "start_time > 5", "field 'start_time' needs a quoted RFC 3339 timestamp", 14),
    ("ListSpans", 'trace_id = "xyz"', "invalid hex", 12),
    ("ListSpans", "is_error > true", "operator '>' is not supported for field 'is_error'", 10),
    ("ListSpans", "model =", "expected a value after '='", 8),
    ("ListSpans", "model = 'gpt", "unterminated string", 9),
    ("ListSpans", "(model = a", "expected ')' to close the '(' at column 1", 11),
    ("ListSpans", "model = a and provider = b", "logical operators are upper case", 11),
    ("ListSpans", "model = a OR", "expected a field name", 13),
    ("ListSpans", "model = 'g*t'", "a '*' wildcard may only start or end a string", 9),
    ("ListSpans", "model = a )", "unexpected ')'", 11),
    ("ListSpans", "model = #", "unexpected character '#'", 9),
    ("ListFindings", "severity >= severe", "unknown value 'severe' for enum field 'severity'", 13),
    ("ListFindings", "request_model = a", "'request_model' is not a known field", 1),
    ("ListTraces", "model = a", "'model' is not a known field", 1),
    ("ListTraces", "span_count > '3'", "field 'span_count' needs an integer", 14),
    ("GetStats", "severity = high", "'severity' is not a known field", 1),
    ("GetStats", "input_tokens >", "expected a value after '>'", 15),
]


@pytest.mark.parametrize(
    ("rpc", "filter", "message", "column"), BAD_FILTERS, ids=[f"{r}:{f}" for r, f, _, _ in BAD_FILTERS]
)
async def test_bad_filter_names_the_problem_and_column(
    shared: RunningCore, rpc: str, filter: str, message: str, column: int
) -> None:
    failure = await expect_failure(_list(shared.query, rpc, filter=filter))

    description = _invalid(failure, "filter")
    assert description.startswith(message), description
    assert description.endswith(f"at column {column}"), description
    assert failure.reason == "INVALID_QUERY"


async def test_filter_length_and_depth_limits(shared: RunningCore) -> None:
    long_filter = "model = a " + "OR model = a " * 400
    deep = "(" * 33 + "model = a" + ")" * 33

    too_long = await expect_failure(_list(shared.query, "ListSpans", filter=long_filter))
    too_deep = await expect_failure(_list(shared.query, "ListSpans", filter=deep))

    assert _invalid(too_long, "filter") == "filter is longer than 4096 characters"
    assert _invalid(too_deep, "filter") == "filter nests deeper than 32 levels at column 33"


BAD_ORDERS = [
    ("ListSpans", "modle", "'modle' is not a known field at column 1"),
    ("ListSpans", "start_time sideways", "invalid direction 'sideways' at column 12 (use asc or desc)"),
    ("ListSpans", "start_time, start_time desc", "field 'start_time' appears more than once in order_by"),
    ("ListSpans", "start_time,,", "empty sort field at column 12"),
    ("ListSpans", "start_time desc asc", "expected 'field' or 'field desc' at column 1"),
    ("ListSpans", "x" * 1025, "order_by is longer than 1024 characters"),
    ("ListFindings", "model", "'model' cannot be ordered by at column 1"),
    ("ListFindings", "start_time", "'start_time' is not a known field at column 1"),
    ("ListTraces", "models", "'models' is not a known field at column 1"),
]


@pytest.mark.parametrize(
    ("rpc", "order_by", "message"), BAD_ORDERS, ids=[f"{r}:{o[:30]}" for r, o, _ in BAD_ORDERS]
)
async def test_bad_order_by_names_the_problem(
    shared: RunningCore, rpc: str, order_by: str, message: str
) -> None:
    failure = await expect_failure(_list(shared.query, rpc, order_by=order_by))

    description = _invalid(failure, "order_by")
    assert description.startswith(message), description


@pytest.mark.parametrize("rpc", LISTS)
@pytest.mark.parametrize("page_size", [-1, -(2**31)])
async def test_negative_page_size_is_invalid_argument(shared: RunningCore, rpc: str, page_size: int) -> None:
    failure = await expect_failure(_list(shared.query, rpc, page_size=page_size))

    assert _invalid(failure, "page_size") == "page_size must not be negative"


@pytest.mark.parametrize("rpc", LISTS)
async def test_huge_page_size_is_capped_not_rejected(shared: RunningCore, rpc: str) -> None:
    huge = await _list(shared.query, rpc, page_size=2**31 - 1)
    capped = await _list(shared.query, rpc, page_size=1000)

    assert _keys(huge) == _keys(capped)
    assert len(_keys(huge)) >= 3
    assert _next_token(huge) == ""


@pytest.mark.parametrize("size", [0, 7, 9, 16])
async def test_get_span_with_wrong_length_span_id(shared: RunningCore, size: int) -> None:
    failure = await expect_failure(
        shared.query.GetSpan(Q.GetSpanRequest(tenant=TENANT, span_id=b"\x01" * size))
    )

    assert _invalid(failure, "span_id") == "must be 8 bytes"


@pytest.mark.parametrize("size", [8, 15, 17])
async def test_get_span_with_wrong_length_trace_id(shared: RunningCore, size: int) -> None:
    request = Q.GetSpanRequest(tenant=TENANT, span_id=b"\x01" * 8, trace_id=b"\x01" * size)

    failure = await expect_failure(shared.query.GetSpan(request))

    assert _invalid(failure, "trace_id") == "must be 16 bytes"


@pytest.mark.parametrize("size", [0, 8, 15, 17])
async def test_get_trace_with_wrong_length_trace_id(shared: RunningCore, size: int) -> None:
    request = Q.GetTraceRequest(tenant=TENANT, trace_id=b"\x01" * size)

    failure = await expect_failure(shared.query.GetTrace(request))

    assert _invalid(failure, "trace_id") == "must be 16 bytes"


async def test_missing_span_and_trace_are_not_found(shared: RunningCore) -> None:
    listed = await shared.query.ListSpans(Q.ListSpansRequest(tenant=TENANT, filter="input_tokens > 0"))
    known = listed.spans[0]
    other_tenant = await shared.query.ListSpans(Q.ListSpansRequest(tenant="other"))
    foreign = other_tenant.spans[0]

    failures = [
        await expect_failure(shared.query.GetSpan(Q.GetSpanRequest(tenant=TENANT, span_id=b"\x07" * 8))),
        await expect_failure(
            shared.query.GetSpan(
                Q.GetSpanRequest(tenant=TENANT, span_id=known.span_id, trace_id=b"\x07" * 16)
            )
        ),
        await expect_failure(shared.query.GetTrace(Q.GetTraceRequest(tenant=TENANT, trace_id=b"\x07" * 16))),
        # Another tenant's span and trace do not exist for this tenant.
        await expect_failure(shared.query.GetSpan(Q.GetSpanRequest(tenant=TENANT, span_id=foreign.span_id))),
        await expect_failure(
            shared.query.GetTrace(Q.GetTraceRequest(tenant=TENANT, trace_id=foreign.trace_id))
        ),
    ]

    for failure in failures:
        assert failure.code == grpc.StatusCode.NOT_FOUND
        assert failure.reason == "NOT_FOUND"
        assert failure.violations == []
        assert failure.request_id
    assert failures[0].message == f"span {'07' * 8} not found"
    assert failures[2].message == f"trace {'07' * 16} not found"


async def test_span_id_in_two_traces_needs_trace_id(shared: RunningCore) -> None:
    spans = await shared.query.ListSpans(Q.ListSpansRequest(tenant=TENANT, page_size=100))
    by_span: dict[bytes, list[bytes]] = {}
    for span in spans.spans:
        by_span.setdefault(span.span_id, []).append(span.trace_id)
    [(span_id, trace_ids)] = [(k, v) for k, v in by_span.items() if len(v) == 2]

    failure = await expect_failure(shared.query.GetSpan(Q.GetSpanRequest(tenant=TENANT, span_id=span_id)))
    found = [
        await shared.query.GetSpan(Q.GetSpanRequest(tenant=TENANT, span_id=span_id, trace_id=trace_id))
        for trace_id in trace_ids
    ]

    assert _invalid(failure, "trace_id") == "span_id is in several traces; give trace_id too"
    assert failure.reason == "AMBIGUOUS_SPAN"
    assert [f.span.trace_id for f in found] == trace_ids


def _ts(seconds: int, nanos: int = 0) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


def _dur(seconds: int, nanos: int = 0) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=seconds, nanos=nanos)


def _stats(group_by: tuple[int, ...] = (), **fields: object) -> query_service_pb2.GetStatsRequest:
    request = Q.GetStatsRequest(tenant=TENANT, **fields)  # type: ignore[arg-type]
    request.group_by.extend(cast("list[query_service_pb2.StatsDimension.ValueType]", list(group_by)))
    return request


AT_LEAST_1S = "must be at least 1 second"
VALID_TS = "must be a valid timestamp (years 1 to 9999)"
AFTER_START = "must be after start_time"
BAD_DURATION = "nanos must be within +-999,999,999 and have the sign of seconds"
STATS_CASES: list[tuple[str, query_service_pb2.GetStatsRequest, str, str]] = [
    ("unknown-dimension", _stats((99,)), "group_by[0]", "unknown dimension"),
    ("unspecified-dimension", _stats((1, 0)), "group_by[1]", "unknown dimension"),
    ("repeated-dimension", _stats((1, 3, 1)), "group_by[2]", "model is repeated"),
    ("bucket-zero", _stats((4,), bucket_width=_dur(0)), "bucket_width", AT_LEAST_1S),
    ("bucket-under-1s", _stats((4,), bucket_width=_dur(0, 999_999_999)), "bucket_width", AT_LEAST_1S),
    ("bucket-negative", _stats(bucket_width=_dur(-60)), "bucket_width", AT_LEAST_1S),
    ("bucket-huge", _stats((4,), bucket_width=_dur(2**62)), "bucket_width", "must be at most 100 years"),
    ("bucket-mixed-signs", _stats((4,), bucket_width=_dur(5, -5)), "bucket_width", BAD_DURATION),
    ("bucket-mixed-signs-negative", _stats((4,), bucket_width=_dur(-5, 5)), "bucket_width", BAD_DURATION),
    ("bucket-nanos-over-1s", _stats((4,), bucket_width=_dur(5, 2_000_000_000)), "bucket_width", BAD_DURATION),
    ("end-equals-start", _stats(start_time=_ts(1000), end_time=_ts(1000)), "end_time", AFTER_START),
    ("end-before-start", _stats(start_time=_ts(1000, 1000), end_time=_ts(1000)), "end_time", AFTER_START),
    ("start-out-of-range", _stats(start_time=_ts(10**12)), "start_time", VALID_TS),
    ("end-out-of-range", _stats(end_time=_ts(-(10**12))), "end_time", VALID_TS),
    ("start-bad-nanos", _stats(start_time=_ts(0, -1)), "start_time", VALID_TS),
]


@pytest.mark.parametrize(
    ("request_", "field", "description"), [c[1:] for c in STATS_CASES], ids=[c[0] for c in STATS_CASES]
)
async def test_bad_stats_request_names_the_field(
    shared: RunningCore, request_: query_service_pb2.GetStatsRequest, field: str, description: str
) -> None:
    failure = await expect_failure(shared.query.GetStats(request_))

    assert _invalid(failure, field) == description


async def test_execute_sql_negative_max_rows(shared: RunningCore) -> None:
    request = Q.ExecuteSqlRequest(tenant=TENANT, query="SELECT 1", max_rows=-1)

    failure = await expect_failure(shared.query.ExecuteSql(request))

    assert _invalid(failure, "max_rows") == "must not be negative"


async def test_odd_but_valid_requests_succeed(shared: RunningCore) -> None:
    """Edge values that are valid must not fail (and certainly not as UNKNOWN or INTERNAL)."""
    q = shared.query
    await q.ListSpans(Q.ListSpansRequest(tenant=TENANT, filter='model = "a\\"b\\\\c" OR model = "ü😀"'))
    await q.ListSpans(Q.ListSpansRequest(tenant=TENANT, filter='start_time < "9999-12-31T23:59:59.999999Z"'))
    await q.ListSpans(Q.ListSpansRequest(tenant=TENANT, filter="input_tokens > -9223372036854775808"))
    await q.ListSpans(Q.ListSpansRequest(tenant=TENANT, filter="cost_usd < 1e308 duration_ms >= -1e308"))
    await q.ListSpans(Q.ListSpansRequest(tenant=TENANT, filter="(" * 32 + "model:*" + ")" * 32))
    await q.ListSpans(Q.ListSpansRequest(tenant="t" * 128))
    await q.GetStats(
        Q.GetStatsRequest(tenant=TENANT, start_time=_ts(-62135596800), end_time=_ts(253402300799))
    )
    await q.GetStats(_stats((4,), bucket_width=_dur(100 * 365 * 86_400)))
    await q.GetStats(_stats((4,), bucket_width=_dur(1)))
    await q.ExecuteSql(Q.ExecuteSqlRequest(tenant=TENANT, query="SELECT 1", max_rows=2**31 - 1))


async def test_timestamp_literal_at_the_edge_of_the_range_is_invalid_argument(shared: RunningCore) -> None:
    failure = await expect_failure(
        _list(shared.query, "ListSpans", filter='start_time > "0001-01-01T00:00:00+01:00"')
    )

    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_nothing_fails_as_unknown_or_internal(shared: RunningCore) -> None:
    """A sweep of hostile inputs across the RPCs: every failure has a canonical client code."""
    q = shared.query
    calls: list[Awaitable[object]] = [
        q.ListSpans(Q.ListSpansRequest(tenant=TENANT, filter="\x00")),
        q.ListSpans(Q.ListSpansRequest(tenant=TENANT, filter="model = '\\x'")),
        q.ListSpans(Q.ListSpansRequest(tenant=TENANT, filter="input_tokens > 99999999999999999999")),
        q.ListSpans(Q.ListSpansRequest(tenant=TENANT, filter="cost_usd > 1e400")),
        q.ListSpans(
            Q.ListSpansRequest(tenant=TENANT, filter='start_time > "2020-01-01T00:00:00.000000001Z"')
        ),
        q.ListSpans(Q.ListSpansRequest(tenant=TENANT, filter='start_time > "0000-01-01T00:00:00Z"')),
        q.ListSpans(Q.ListSpansRequest(tenant=TENANT, filter='start_time > "2020-13-01T00:00:00Z"')),
        q.ListSpans(Q.ListSpansRequest(tenant=TENANT, order_by="start_time desc, ")),
        q.ListSpans(Q.ListSpansRequest(tenant=TENANT, page_token="=" * 12)),
        q.ListTraces(Q.ListTracesRequest(tenant=TENANT, filter="trace_id > 'ab'")),
        q.ListFindings(Q.ListFindingsRequest(tenant=TENANT, filter="severity = 7")),
        q.GetStats(Q.GetStatsRequest(tenant=TENANT, filter="NOT")),
        q.ExecuteSql(Q.ExecuteSqlRequest(tenant=TENANT, query="SELECT 'x'::INTEGER")),
        q.ExecuteSql(Q.ExecuteSqlRequest(tenant=TENANT, query="SELECT (" * 2000 + "1" + ")" * 2000)),
        q.ExecuteSql(Q.ExecuteSqlRequest(tenant=TENANT, query="")),
        q.ExecuteSql(Q.ExecuteSqlRequest(tenant=TENANT, query="SELECT * FROM nowhere")),
        q.ExecuteSql(Q.ExecuteSqlRequest(tenant="ac\x00me", query="SELECT 1")),
    ]
    for call in calls:
        failure = await expect_failure(call)
        assert failure.code in (
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.PERMISSION_DENIED,
        ), failure
        assert failure.reason
        assert failure.request_id


async def test_a_span_ingested_with_a_fresh_trace_is_found(shared: RunningCore) -> None:
    """Sanity check that NOT_FOUND above is not an artefact: a new span is found at once."""
    span = make_span(tenant=TENANT, start_ns=BASE_NS)
    span.trace_id = os.urandom(16)
    await ingest_all(shared.ingest, [span])

    got = await shared.query.GetSpan(
        Q.GetSpanRequest(tenant=TENANT, span_id=span.span_id, trace_id=span.trace_id)
    )

    assert got.span.span_id == span.span_id


@pytest.mark.parametrize(
    "method",
    [
        "/llmtrace.api.v1.QueryService/ListSpans",
        "/llmtrace.api.v1.QueryService/GetStats",
        "/llmtrace.api.v1.QueryService/ExecuteSql",
        "/llmtrace.api.v1.AnalysisService/Analyze",
    ],
)
async def test_a_request_that_cannot_be_decoded_is_invalid_argument(shared: RunningCore, method: str) -> None:
    # Bytes no client library would send (a truncated varint; a lone surrogate as a string):
    # grpc itself would answer UNKNOWN and log nothing.
    call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = shared.channel.unary_unary(
        method, request_serializer=None, response_deserializer=None
    )
    for raw in (b"\xff\xff\xff", b"\x0a\x03\xed\xa0\x80"):
        failure = await expect_failure(call(raw))
        assert failure.code == grpc.StatusCode.INVALID_ARGUMENT, failure
        assert failure.reason == "MALFORMED_REQUEST"
        assert failure.request_id


async def test_a_stream_message_that_cannot_be_decoded_ends_the_stream_as_invalid_argument(
    shared: RunningCore,
) -> None:

    call: grpc.aio.StreamStreamMultiCallable[bytes, ingest_service_pb2.StreamSpansResponse]
    call = shared.channel.stream_stream(
        "/llmtrace.api.v1.IngestService/StreamSpans",
        request_serializer=None,
        response_deserializer=ingest_service_pb2.StreamSpansResponse.FromString,
    )
    good = ingest_service_pb2.StreamSpansRequest(spans=[make_span(tenant="stream-acme")])
    stream = call(iter([good.SerializeToString(), b"\xff\xff\xff"]))
    replies = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for reply in stream:
            replies.append(reply)
    failure = rpc_failure(caught.value)
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT and failure.reason == "MALFORMED_REQUEST"
    assert sum(r.accepted_spans for r in replies) == 1  # what came before is acknowledged


@pytest.mark.parametrize("text", ["é" * 4000, "9" * 6000, "漢" * 3000])
async def test_an_error_quoting_a_huge_input_still_arrives(shared: RunningCore, text: str) -> None:
    # The message and violations quote the client's filter: cut, so that the status fits the
    # metadata a client accepts (else it arrives as RESOURCE_EXHAUSTED, not the error).
    for _ in range(3):
        failure = await expect_failure(
            shared.query.ListSpans(Q.ListSpansRequest(tenant=TENANT, filter=f'input_tokens = "{text}"'))
        )
        assert failure.code == grpc.StatusCode.INVALID_ARGUMENT, failure
        assert failure.fields == ["filter"]
        assert len(failure.message.encode()) <= 1000
