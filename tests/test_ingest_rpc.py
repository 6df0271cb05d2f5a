"""IngestService over real gRPC: round trips, idempotent replay, streaming and validation.

All tests share one core (module scope) and keep apart by tenant; each test makes its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import grpc
import pytest
import pytest_asyncio
from google.protobuf import timestamp_pb2

from llmtrace import limits
from llmtrace.api.v1 import (
    common_pb2,
    finding_pb2,
    ingest_service_pb2,
    query_service_pb2,
    span_pb2,
)
from llmtrace.config.schema import SecurityAnalysisSettings, ShutdownSettings
from llmtrace.store.finding_ids import FindingIdReadError, FindingIds
from llmtrace.store.writer import StoreWriter
from tests.conftest import RunningCore, core_settings, running_core
from tests.factories import BASE_NS, MS, expect_failure, make_complete_span, make_finding, make_span

pytestmark = pytest.mark.asyncio(loop_scope="module")

SEVERITY_SCORES = {
    finding_pb2.SEVERITY_INFO: 10,
    finding_pb2.SEVERITY_LOW: 30,
    finding_pb2.SEVERITY_MEDIUM: 60,
    finding_pb2.SEVERITY_HIGH: 80,
    finding_pb2.SEVERITY_CRITICAL: 95,
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningCore]:
    path = tmp_path_factory.mktemp("ingest") / "llmtrace.duckdb"
    # Post-ack analysis would add scores and findings of its own; these tests check what was sent
    # (tests/test_analysis_worker.py covers analysis).
    settings = core_settings(path)
    settings = dataclasses.replace(settings, security_analysis=SecurityAnalysisSettings(enabled=False))
    async with running_core(settings) as running:
        yield running


@pytest.fixture
def tenant() -> str:
    return f"t-{uuid.uuid4().hex}"


def _ts_ns(ts: timestamp_pb2.Timestamp) -> int:
    return ts.seconds * 1_000_000_000 + ts.nanos


async def _ingest(core: RunningCore, *spans: span_pb2.Span) -> ingest_service_pb2.IngestSpansResponse:
    return await core.ingest.IngestSpans(ingest_service_pb2.IngestSpansRequest(spans=spans))


async def _get(core: RunningCore, span: span_pb2.Span) -> span_pb2.Span:
    response = await core.query.GetSpan(
        query_service_pb2.GetSpanRequest(tenant=span.tenant, span_id=span.span_id, trace_id=span.trace_id)
    )
    return response.span


async def _all_spans(
    core: RunningCore,
    tenant: str,
    view: query_service_pb2.SpanView.ValueType = query_service_pb2.SPAN_VIEW_UNSPECIFIED,
) -> list[span_pb2.Span]:
    out: list[span_pb2.Span] = []
    token = ""
    while True:
        page = await core.query.ListSpans(
            query_service_pb2.ListSpansRequest(
                tenant=tenant,
                page_size=1000,
                page_token=token,
                view=view,
                order_by="start_time",
            )
        )
        out.extend(page.spans)
        token = page.next_page_token
        if not token:
            return out


async def _span_count(core: RunningCore, tenant: str) -> int:
    stats = await core.query.GetStats(query_service_pb2.GetStatsRequest(tenant=tenant))
    return stats.total.span_count


def _as_stored(
    sent: span_pb2.Span, got: span_pb2.Span, ingest_window_ns: tuple[int, int]
) -> tuple[span_pb2.Span, span_pb2.Span]:
    """(expected, actual): `sent` with what the core fills in, and `got` with findings by type.

    The core computes total_tokens when 0, raises security_score to the worst finding's base
    score, and gives each finding its id (when empty), tenant, ids and create_time (when unset).
    """
    expected = span_pb2.Span()
    expected.CopyFrom(sent)
    if expected.usage.total_tokens == 0:
        expected.usage.total_tokens = sent.usage.input_tokens + sent.usage.output_tokens
    if sent.findings:
        worst = max(SEVERITY_SCORES[f.severity] for f in sent.findings)
        sent_score = sent.security_score if sent.HasField("security_score") else 0
        expected.security_score = max(worst, sent_score)
    returned = {f.type: f for f in got.findings}
    assert len(returned) == len(got.findings) == len(sent.findings)
    del expected.findings[:]
    for finding in sorted(sent.findings, key=lambda f: f.type):
        stored = returned[finding.type]
        want = expected.findings.add()
        want.CopyFrom(finding)
        want.tenant = sent.tenant
        want.trace_id = sent.trace_id
        want.span_id = sent.span_id
        if not finding.id:
            assert re.fullmatch(r"[0-9a-f]{32}", stored.id), stored.id
            want.id = stored.id
        if not finding.HasField("create_time"):
            low, high = ingest_window_ns
            assert low // 1000 * 1000 <= _ts_ns(stored.create_time) <= high
            want.create_time.CopyFrom(stored.create_time)
    actual = span_pb2.Span()
    actual.CopyFrom(got)
    del actual.findings[:]
    actual.findings.extend(sorted(got.findings, key=lambda f: f.type))
    return expected, actual


def _basic_view(full: span_pb2.Span) -> span_pb2.Span:
    """What the basic view keeps of a full span: no content, no findings; finish reasons stay."""
    basic = span_pb2.Span()
    basic.CopyFrom(full)
    basic.request.ClearField("messages")
    basic.request.ClearField("tools")
    basic.request.ClearField("body")
    basic.request.ClearField("truncated")
    basic.response.ClearField("choices")
    basic.response.ClearField("body")
    basic.response.ClearField("truncated")
    for index, choice in enumerate(c for c in full.response.choices if c.finish_reason):
        basic.response.choices.add(index=index, finish_reason=choice.finish_reason)
    basic.ClearField("findings")
    return basic


async def test_complete_span_round_trips_through_get_span(shared: RunningCore, tenant: str) -> None:
    sent = make_complete_span(tenant=tenant)
    before = time.time_ns()
    response = await _ingest(shared, sent)
    after = time.time_ns()
    assert response.accepted_spans == 1
    assert not response.HasField("partial_success")

    got = await _get(shared, sent)

    expected, actual = _as_stored(sent, got, (before, after))
    assert actual == expected
    # Spot checks that the comparison covers what the spec calls out.
    assert actual.usage.total_tokens == 1545
    assert actual.security_score == 80
    assert [p.type for p in actual.request.messages[1].parts] == [
        span_pb2.CONTENT_PART_TYPE_TEXT,
        span_pb2.CONTENT_PART_TYPE_IMAGE,
        span_pb2.CONTENT_PART_TYPE_AUDIO,
        span_pb2.CONTENT_PART_TYPE_FILE,
        span_pb2.CONTENT_PART_TYPE_OTHER,
    ]
    assert actual.request.messages[3].tool_call_id == "call_1"
    assert [c.id for c in actual.request.messages[2].tool_calls] == ["call_1", "call_2"]
    assert actual.response.choices[0].message.tool_calls[0].arguments == '{"city":"Lyon"}'
    assert list(actual.request.parameters.stop_sequences) == ["\n\n", "END"]
    attributes = {kv.key: kv.value for kv in actual.attributes}
    assert attributes["bytes"].bytes_value == b"\x01\x02\xfe"
    assert attributes["int"].int_value == -(2**62)
    assert attributes["array"].array_value.values[1].array_value.values[0].string_value == "x"
    assert attributes["kvlist"].kvlist_value.values[1].value.bytes_value == b"\x00\xff"
    assert attributes["null"].WhichOneof("value") is None
    stated = next(f for f in actual.findings if f.id == "client-finding-1")
    assert stated.create_time.seconds == BASE_NS // 1_000_000_000 + 5
    assert dict(stated.metadata) == {"rule": "aws-key"}


async def test_unset_optionals_stay_unset(shared: RunningCore, tenant: str) -> None:
    sent = make_span(tenant=tenant, start_ns=BASE_NS)
    sent.ClearField("time_to_first_token")
    sent.request.ClearField("parameters")
    sent.cost.ClearField("total_usd")
    await _ingest(shared, sent)

    got = await _get(shared, sent)

    assert not got.HasField("time_to_first_token")
    assert not got.HasField("security_score")
    assert not got.cost.HasField("total_usd")
    for name in ("temperature", "top_p", "max_tokens", "stream", "frequency_penalty", "seed"):
        assert not got.request.parameters.HasField(name), name
    assert got.parent_span_id == b""
    assert list(got.findings) == []


async def test_full_views_equal_get_span(shared: RunningCore, tenant: str) -> None:
    sent = make_complete_span(tenant=tenant)
    await _ingest(shared, sent)
    got = await _get(shared, sent)

    listed = await _all_spans(shared, tenant, query_service_pb2.SPAN_VIEW_FULL)
    trace = await shared.query.GetTrace(
        query_service_pb2.GetTraceRequest(tenant=tenant, trace_id=sent.trace_id)
    )
    trace_full = await shared.query.GetTrace(
        query_service_pb2.GetTraceRequest(
            tenant=tenant, trace_id=sent.trace_id, view=query_service_pb2.SPAN_VIEW_FULL
        )
    )

    assert listed == [got]
    assert list(trace.trace.spans) == [got]
    assert list(trace_full.trace.spans) == [got]


async def test_basic_view_omits_content_and_findings(shared: RunningCore, tenant: str) -> None:
    sent = make_complete_span(tenant=tenant)
    await _ingest(shared, sent)
    full = await _get(shared, sent)

    default = await _all_spans(shared, tenant)
    basic = await _all_spans(shared, tenant, query_service_pb2.SPAN_VIEW_BASIC)
    trace = await shared.query.GetTrace(
        query_service_pb2.GetTraceRequest(
            tenant=tenant, trace_id=sent.trace_id, view=query_service_pb2.SPAN_VIEW_BASIC
        )
    )

    assert len(basic) == 1
    assert len(basic[0].request.messages) == 0
    assert len(basic[0].request.tools) == 0
    assert basic[0].request.body == ""
    assert list(basic[0].findings) == []
    assert [(c.index, c.finish_reason, c.HasField("message")) for c in basic[0].response.choices] == [
        (0, "tool_calls", False),
        (1, "stop", False),
    ]
    assert basic == [_basic_view(full)]
    assert default == basic
    assert list(trace.trace.spans) == basic


@pytest.mark.parametrize(
    ("given", "expected"),
    [(0, 1545), (2000, 2000), (1545, 1545)],
    ids=["computed-when-zero", "kept-when-given", "kept-when-equal"],
)
async def test_total_tokens(shared: RunningCore, tenant: str, given: int, expected: int) -> None:
    sent = make_span(tenant=tenant, start_ns=BASE_NS)
    sent.usage.input_tokens = 1200
    sent.usage.output_tokens = 345
    sent.usage.total_tokens = given
    await _ingest(shared, sent)

    got = await _get(shared, sent)

    assert got.usage.total_tokens == expected


@pytest.mark.parametrize(
    ("severities", "score"),
    [
        ([finding_pb2.SEVERITY_CRITICAL], 95),
        ([finding_pb2.SEVERITY_HIGH], 80),
        ([finding_pb2.SEVERITY_MEDIUM], 60),
        ([finding_pb2.SEVERITY_LOW], 30),
        ([finding_pb2.SEVERITY_INFO], 10),
        ([finding_pb2.SEVERITY_INFO, finding_pb2.SEVERITY_MEDIUM, finding_pb2.SEVERITY_LOW], 60),
        ([finding_pb2.SEVERITY_LOW, finding_pb2.SEVERITY_CRITICAL, finding_pb2.SEVERITY_HIGH], 95),
    ],
    ids=["critical", "high", "medium", "low", "info", "worst-of-three", "critical-among-three"],
)
async def test_security_score_is_base_score_of_worst_finding(
    shared: RunningCore, tenant: str, severities: list[int], score: int
) -> None:
    sent = make_span(tenant=tenant, start_ns=BASE_NS)
    for i, severity in enumerate(severities):
        sent.findings.append(make_finding(f"kind_{i}", severity))
    await _ingest(shared, sent)

    got = await _get(shared, sent)
    trace = await shared.query.GetTrace(
        query_service_pb2.GetTraceRequest(tenant=tenant, trace_id=sent.trace_id)
    )

    assert got.security_score == score
    assert trace.trace.max_security_score == score
    assert sorted(f.severity for f in got.findings) == sorted(severities)


async def test_get_trace_returns_spans_oldest_first_with_summary(shared: RunningCore, tenant: str) -> None:
    trace_id = os.urandom(16)
    other_trace = make_span(tenant=tenant, start_ns=BASE_NS, model="not-in-trace")

    def member(offset_ms: int, duration_ms: int, model: str, agent: str) -> span_pb2.Span:
        span = make_span(
            tenant=tenant, start_ns=BASE_NS + offset_ms * MS, duration_ms=duration_ms, model=model
        )
        span.trace_id = trace_id
        span.agent = agent
        span.session_id = "sess-7"
        return span

    root = member(0, 5000, "gpt-4o", "planner")
    root.usage.input_tokens, root.usage.output_tokens = 100, 10
    root.cost.total_usd = 0.5
    child_error = member(100, 200, "claude-3-5-sonnet", "writer")
    child_error.parent_span_id = root.span_id
    child_error.status.code = span_pb2.STATUS_CODE_ERROR
    child_error.usage.input_tokens, child_error.usage.output_tokens = 40, 0
    child_error.cost.total_usd = 0.25
    child_http = member(300, 6000, "gpt-4o", "writer")
    child_http.parent_span_id = root.span_id
    child_http.status.http_status_code = 429
    child_http.usage.input_tokens, child_http.usage.output_tokens = 7, 3
    child_http.cost.ClearField("total_usd")
    child_http.findings.append(make_finding(severity=finding_pb2.SEVERITY_MEDIUM))
    unnamed = member(50, 10, "", "")
    unnamed.usage.input_tokens, unnamed.usage.output_tokens = 1, 2
    unnamed.cost.total_usd = 0.125
    # Sent out of order: the core orders by start time.
    await _ingest(shared, child_http, unnamed, other_trace, child_error, root)

    response = await shared.query.GetTrace(
        query_service_pb2.GetTraceRequest(tenant=tenant, trace_id=trace_id)
    )
    trace = response.trace

    assert [s.span_id for s in trace.spans] == [
        root.span_id,
        unnamed.span_id,
        child_error.span_id,
        child_http.span_id,
    ]
    assert all(len(s.request.messages) == 2 for s in trace.spans)  # full view by default
    assert trace.trace_id == trace_id
    assert trace.tenant == tenant
    assert _ts_ns(trace.start_time) == BASE_NS
    assert _ts_ns(trace.end_time) == BASE_NS + 6300 * MS
    assert trace.span_count == 4
    assert trace.error_count == 2
    assert trace.input_tokens == 100 + 40 + 7 + 1
    assert trace.output_tokens == 10 + 0 + 3 + 2
    assert trace.cost_usd == 0.875
    assert trace.max_security_score == 60
    assert list(trace.models) == ["claude-3-5-sonnet", "gpt-4o"]
    assert list(trace.agents) == ["planner", "writer"]
    assert trace.session_id == "sess-7"


async def test_list_traces_summarises_each_trace_newest_first(shared: RunningCore, tenant: str) -> None:
    spans: list[span_pb2.Span] = []
    trace_ids = [os.urandom(16) for _ in range(3)]
    for t, trace_id in enumerate(trace_ids):
        for s in range(t + 1):
            span = make_span(tenant=tenant, start_ns=BASE_NS + (t * 10_000 + s * 100) * MS, duration_ms=50)
            span.trace_id = trace_id
            span.usage.input_tokens = 10 * (s + 1)
            spans.append(span)
    await _ingest(shared, *spans)

    listed = await shared.query.ListTraces(query_service_pb2.ListTracesRequest(tenant=tenant))

    assert [t.trace_id for t in listed.traces] == trace_ids[::-1]
    assert [t.span_count for t in listed.traces] == [3, 2, 1]
    assert [t.input_tokens for t in listed.traces] == [60, 30, 10]
    assert listed.next_page_token == ""
    for summary in listed.traces:
        assert list(summary.spans) == []
        single = await shared.query.GetTrace(
            query_service_pb2.GetTraceRequest(tenant=tenant, trace_id=summary.trace_id)
        )
        full = query_service_pb2.Trace()
        full.CopyFrom(single.trace)
        full.ClearField("spans")
        assert summary == full


async def test_replayed_batch_is_stored_once(shared: RunningCore, tenant: str) -> None:
    batch = [make_span(tenant=tenant, start_ns=BASE_NS + i * MS) for i in range(5)]
    for span in batch[:3]:
        span.findings.append(make_finding())
        span.findings.append(make_finding("pii_detected", finding_pb2.SEVERITY_LOW))

    first = await _ingest(shared, *batch)
    findings_before = await shared.query.ListFindings(query_service_pb2.ListFindingsRequest(tenant=tenant))
    second = await _ingest(shared, *batch)
    third = await _ingest(shared, batch[1], batch[4])

    assert (first.accepted_spans, second.accepted_spans, third.accepted_spans) == (5, 5, 2)
    assert not second.HasField("partial_success")
    assert len(await _all_spans(shared, tenant)) == 5
    assert await _span_count(shared, tenant) == 5
    findings = await shared.query.ListFindings(query_service_pb2.ListFindingsRequest(tenant=tenant))
    assert len(findings.findings) == 6
    assert sorted(f.id for f in findings.findings) == sorted(f.id for f in findings_before.findings)


async def test_span_repeated_in_one_batch_is_stored_once(shared: RunningCore, tenant: str) -> None:
    span = make_span(tenant=tenant, start_ns=BASE_NS)
    span.findings.append(make_finding())
    other = make_span(tenant=tenant, start_ns=BASE_NS + MS)

    response = await _ingest(shared, span, other, span, span)

    assert response.accepted_spans == 4
    assert not response.HasField("partial_success")
    assert [s.span_id for s in await _all_spans(shared, tenant)] == [span.span_id, other.span_id]
    assert await _span_count(shared, tenant) == 2
    findings = await shared.query.ListFindings(query_service_pb2.ListFindingsRequest(tenant=tenant))
    assert len(findings.findings) == 1


async def test_same_ids_in_another_tenant_are_a_different_span(shared: RunningCore, tenant: str) -> None:
    span = make_span(tenant=tenant, start_ns=BASE_NS, model="model-a")
    twin = span_pb2.Span()
    twin.CopyFrom(span)
    twin.tenant = tenant + "-b"
    twin.request_model = "model-b"

    await _ingest(shared, span, twin)

    assert (await _get(shared, span)).request_model == "model-a"
    assert (await _get(shared, twin)).request_model == "model-b"


class _StreamDriver:
    """Sends StreamSpans requests one at a time so a test can act between acks."""

    def __init__(self, core: RunningCore) -> None:
        self._queue: asyncio.Queue[ingest_service_pb2.StreamSpansRequest | None] = asyncio.Queue()
        self.call = core.ingest.StreamSpans(self._requests())

    async def _requests(self) -> AsyncIterator[ingest_service_pb2.StreamSpansRequest]:
        while (request := await self._queue.get()) is not None:
            yield request

    async def send(self, sequence: int, *spans: span_pb2.Span) -> ingest_service_pb2.StreamSpansResponse:
        await self._queue.put(ingest_service_pb2.StreamSpansRequest(sequence=sequence, spans=spans))
        response = await self.call.read()
        assert isinstance(response, ingest_service_pb2.StreamSpansResponse)
        return response

    async def close(self) -> None:
        await self._queue.put(None)
        assert await self.call.read() is grpc.aio.EOF
        assert await self.call.code() == grpc.StatusCode.OK


async def test_stream_spans_acknowledges_each_message_in_order(shared: RunningCore, tenant: str) -> None:
    stream = _StreamDriver(shared)
    first = [make_span(tenant=tenant, start_ns=BASE_NS + i * MS) for i in range(3)]
    second = [make_span(tenant=tenant, start_ns=BASE_NS + (10 + i) * MS) for i in range(2)]
    bad = make_span(tenant=tenant, start_ns=BASE_NS)
    bad.trace_id = b"\x00" * 16
    third = [make_span(tenant=tenant, start_ns=BASE_NS + 20 * MS)]

    ack1 = await stream.send(7, *first)
    # Acknowledged means committed: the spans are queryable now.
    assert await _span_count(shared, tenant) == 3
    assert (await _get(shared, first[2])).span_id == first[2].span_id
    ack2 = await stream.send(8, second[0], bad, second[1])
    assert await _span_count(shared, tenant) == 5
    ack3 = await stream.send(1000, *third)
    ack4 = await stream.send(1001)
    await stream.close()

    assert (ack1.sequence, ack1.accepted_spans, ack1.HasField("partial_success")) == (7, 3, False)
    assert (ack2.sequence, ack2.accepted_spans) == (8, 2)
    assert ack2.partial_success.rejected_spans == 1
    assert ack2.partial_success.error_message == (
        "1 span(s) rejected: spans[1].trace_id: must be 16 bytes, not all zero"
    )
    [rejection] = ack2.partial_success.rejections
    assert (rejection.index, rejection.trace_id, rejection.span_id) == (1, bad.trace_id, bad.span_id)
    assert [(v.field, v.description) for v in rejection.violations] == [
        ("spans[1].trace_id", "must be 16 bytes, not all zero")
    ]
    assert (ack3.sequence, ack3.accepted_spans, ack3.HasField("partial_success")) == (1000, 1, False)
    assert (ack4.sequence, ack4.accepted_spans, ack4.HasField("partial_success")) == (1001, 0, False)
    assert await _span_count(shared, tenant) == 6


async def test_stream_spans_replay_is_acknowledged_and_stored_once(shared: RunningCore, tenant: str) -> None:
    spans = [make_span(tenant=tenant, start_ns=BASE_NS + i * MS) for i in range(4)]
    await _ingest(shared, *spans[:2])

    async def requests() -> AsyncIterator[ingest_service_pb2.StreamSpansRequest]:
        yield ingest_service_pb2.StreamSpansRequest(sequence=1, spans=spans)
        yield ingest_service_pb2.StreamSpansRequest(sequence=2, spans=spans)

    acks = [ack async for ack in shared.ingest.StreamSpans(requests())]

    assert [(a.sequence, a.accepted_spans) for a in acks] == [(1, 4), (2, 4)]
    assert await _span_count(shared, tenant) == 4


async def test_stream_with_oversized_batch_fails(shared: RunningCore, tenant: str) -> None:
    span = make_span(tenant=tenant, start_ns=BASE_NS)
    too_many = [span] * (limits.MAX_SPANS_PER_BATCH + 1)

    async def requests() -> AsyncIterator[ingest_service_pb2.StreamSpansRequest]:
        yield ingest_service_pb2.StreamSpansRequest(sequence=1, spans=[span])
        yield ingest_service_pb2.StreamSpansRequest(sequence=2, spans=too_many)

    call = shared.ingest.StreamSpans(requests())
    ack = await call.read()
    failure = await expect_failure(call.read())

    assert isinstance(ack, ingest_service_pb2.StreamSpansResponse)
    assert (ack.sequence, ack.accepted_spans) == (1, 1)
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.reason == "BATCH_TOO_LARGE"
    assert failure.fields == ["spans"]


async def test_partly_bad_batch_stores_the_good_spans(shared: RunningCore, tenant: str) -> None:
    good = [make_span(tenant=tenant, start_ns=BASE_NS + i * MS) for i in range(4)]
    bad_tenant = make_span(tenant="", start_ns=BASE_NS)
    bad_ids = make_span(tenant=tenant, start_ns=BASE_NS)
    bad_ids.trace_id = b"\x01\x02\x03"
    bad_ids.span_id = b""
    batch = [good[0], bad_tenant, good[1], good[2], bad_ids, good[3]]

    response = await _ingest(shared, *batch)

    assert response.accepted_spans == 4
    partial = response.partial_success
    assert partial.rejected_spans == 2
    assert partial.error_message == "2 span(s) rejected: spans[1].tenant: is required (and 1 more spans)"
    assert [(r.index, r.trace_id, r.span_id) for r in partial.rejections] == [
        (1, bad_tenant.trace_id, bad_tenant.span_id),
        (4, b"\x01\x02\x03", b""),
    ]
    assert [[v.field for v in r.violations] for r in partial.rejections] == [
        ["spans[1].tenant"],
        ["spans[4].trace_id", "spans[4].span_id"],
    ]
    assert all(v.description for r in partial.rejections for v in r.violations)
    assert sorted(s.span_id for s in await _all_spans(shared, tenant)) == sorted(s.span_id for s in good)
    assert await _span_count(shared, tenant) == 4


Mutator = Callable[[span_pb2.Span], None]


def _set(**fields: object) -> Mutator:
    def apply(span: span_pb2.Span) -> None:
        for path, value in fields.items():
            target: object = span
            *parents, leaf = path.split("__")
            for parent in parents:
                target = getattr(target, parent)
            setattr(target, leaf, value)

    return apply


def _times(start_ns: int | None, end_ns: int | None, ttft_ns: int | None = None) -> Mutator:
    def apply(span: span_pb2.Span) -> None:
        span.ClearField("start_time")
        span.ClearField("end_time")
        span.ClearField("time_to_first_token")
        if start_ns is not None:
            span.start_time.FromNanoseconds(start_ns)
        if end_ns is not None:
            span.end_time.FromNanoseconds(end_ns)
        if ttft_ns is not None:
            span.time_to_first_token.seconds = ttft_ns // 1_000_000_000 if ttft_ns >= 0 else 0
            span.time_to_first_token.nanos = ttft_ns % 1_000_000_000 if ttft_ns >= 0 else ttft_ns

    return apply


def _finding(index: int = 0, **fields: object) -> Mutator:
    def apply(span: span_pb2.Span) -> None:
        while len(span.findings) <= index:
            span.findings.append(make_finding(f"kind_{len(span.findings)}"))
        for name, value in fields.items():
            setattr(span.findings[index], name, value)

    return apply


def _many(field: str, count: int) -> Mutator:
    def apply(span: span_pb2.Span) -> None:
        if field == "request.messages":
            for _ in range(count):
                span.request.messages.add(role="user")
        elif field == "request.tools":
            for i in range(count):
                span.request.tools.add(name=f"t{i}")
        elif field == "response.choices":
            for i in range(count):
                span.response.choices.add(index=i)
        elif field == "attributes":
            for i in range(count):
                span.attributes.add(key=f"k{i}", value=common_pb2.AnyValue(int_value=i))
        elif field == "long attribute key":
            span.attributes.add(key="k" * (limits.MAX_NAME_CHARS + 1))
        else:
            assert field == "findings"
            span.findings.extend(make_finding(f"kind_{i}") for i in range(count))

    return apply


def _big_content(field: str) -> Mutator:
    half = limits.MAX_BODY_CHARS // 2 + 1  # two fields each under the limit, together over it

    def apply(span: span_pb2.Span) -> None:
        if field == "request.messages":
            span.request.messages[1].parts.add(text="a" * half)
            span.request.messages[1].parts.add(uri="u" * half)
        elif field == "request.tool_calls":
            span.request.messages[1].parts[0].text = "a" * half
            span.request.messages.add(role="assistant").tool_calls.add(name="f", arguments="b" * half)
        elif field == "response.choices":
            span.response.choices[0].message.parts[0].text = "a" * half
            span.response.choices.add(index=1).message.tool_calls.add(name="f", arguments="b" * half)
        elif field == "attributes":
            span.attributes.add(key="a", value=common_pb2.AnyValue(string_value="a" * half))
            nested = common_pb2.AnyValue(array_value=common_pb2.ArrayValue(values=[common_pb2.AnyValue()]))
            nested.array_value.values[0].string_value = "b" * half
            span.attributes.add(key="b", value=nested)
        else:
            assert field == "request.tools"
            span.request.tools.add(name="f", description="d" * half, parameters_json="p" * half)

    return apply


_NOW_NS = time.time_ns()
_SHORT_FIELDS = (
    "operation",
    "provider",
    "request_model",
    "response_model",
    "name",
    "session_id",
    "client_address",
    "upstream_request_id",
    "server_address",
    "api_key_fingerprint",
)
_TOKEN_FIELDS = (
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "reasoning_output_tokens",
)

# (case id, mutation of a valid span, expected violation paths relative to the span)
VALIDATION_CASES: list[tuple[str, Mutator, list[str]]] = [
    ("trace_id-short", _set(trace_id=b"\x01" * 15), ["trace_id"]),
    ("trace_id-long", _set(trace_id=b"\x01" * 17), ["trace_id"]),
    ("trace_id-empty", _set(trace_id=b""), ["trace_id"]),
    ("trace_id-all-zero", _set(trace_id=b"\x00" * 16), ["trace_id"]),
    ("span_id-short", _set(span_id=b"\x01" * 7), ["span_id"]),
    ("span_id-empty", _set(span_id=b""), ["span_id"]),
    ("span_id-all-zero", _set(span_id=b"\x00" * 8), ["span_id"]),
    ("parent_span_id-short", _set(parent_span_id=b"\x01" * 4), ["parent_span_id"]),
    ("parent_span_id-long", _set(parent_span_id=b"\x01" * 16), ["parent_span_id"]),
    ("tenant-missing", _set(tenant=""), ["tenant"]),
    ("tenant-too-long", _set(tenant="t" * (limits.MAX_TENANT_CHARS + 1)), ["tenant"]),
    ("tenant-control-char", _set(tenant="acme\n"), ["tenant"]),
    ("tenant-padded", _set(tenant=" acme"), ["tenant"]),
    ("start_time-missing", _times(None, BASE_NS), ["start_time"]),
    ("end_time-missing", _times(BASE_NS, None), ["end_time"]),
    ("start_time-before-2000", _times(900_000_000 * 10**9, 900_000_001 * 10**9), ["start_time"]),
    ("end_time-far-future", _times(_NOW_NS, _NOW_NS + 2 * 86_400 * 10**9), ["end_time"]),
    ("end_time-before-start", _times(BASE_NS, BASE_NS - MS), ["end_time"]),
    ("ttft-negative", _times(BASE_NS, BASE_NS + 100 * MS, -5 * MS), ["time_to_first_token"]),
    ("ttft-longer-than-span", _times(BASE_NS, BASE_NS + 100 * MS, 101 * MS), ["time_to_first_token"]),
    ("agent-too-long", _set(agent="a" * (limits.MAX_AGENT_CHARS + 1)), ["agent"]),
    *[
        (f"{name}-too-long", _set(**{name: "x" * (limits.MAX_NAME_CHARS + 1)}), [name])
        for name in _SHORT_FIELDS
    ],
    ("user_agent-too-long", _set(user_agent="u" * (limits.MAX_TEXT_CHARS + 1)), ["user_agent"]),
    ("http-status-99", _set(status__http_status_code=99), ["status.http_status_code"]),
    ("http-status-600", _set(status__http_status_code=600), ["status.http_status_code"]),
    ("http-status-negative", _set(status__http_status_code=-200), ["status.http_status_code"]),
    ("status-code-unknown", _set(status__code=3), ["status.code"]),
    (
        "error_message-too-long",
        _set(status__error_message="e" * (limits.MAX_TEXT_CHARS + 1)),
        ["status.error_message"],
    ),
    (
        "error_type-too-long",
        _set(status__error_type="e" * (limits.MAX_NAME_CHARS + 1)),
        ["status.error_type"],
    ),
    *[(f"{name}-negative", _set(**{f"usage__{name}": -1}), [f"usage.{name}"]) for name in _TOKEN_FIELDS],
    *[
        (f"{name}-absurd", _set(**{f"usage__{name}": limits.MAX_TOKENS + 1}), [f"usage.{name}"])
        for name in _TOKEN_FIELDS
    ],
    ("cost-total-negative", _set(cost__total_usd=-0.01), ["cost.total_usd"]),
    ("cost-total-nan", _set(cost__total_usd=math.nan), ["cost.total_usd"]),
    ("cost-total-absurd", _set(cost__total_usd=limits.MAX_COST_USD * 2), ["cost.total_usd"]),
    ("cost-input-infinite", _set(cost__input_usd=math.inf), ["cost.input_usd"]),
    ("cost-output-negative", _set(cost__output_usd=-1.0), ["cost.output_usd"]),
    ("security_score-101", _set(security_score=101), ["security_score"]),
    ("security_score-negative", _set(security_score=-1), ["security_score"]),
    ("messages-too-many", _many("request.messages", limits.MAX_ITEMS), ["request.messages"]),
    ("tools-too-many", _many("request.tools", limits.MAX_ITEMS + 1), ["request.tools"]),
    ("choices-too-many", _many("response.choices", limits.MAX_ITEMS), ["response.choices"]),
    ("attributes-too-many", _many("attributes", limits.MAX_ITEMS + 1), ["attributes"]),
    ("attributes-too-big", _big_content("attributes"), ["attributes"]),
    ("attribute-key-too-long", _many("long attribute key", 1), ["attributes[0].key"]),
    ("findings-too-many", _many("findings", limits.MAX_ITEMS + 1), ["findings"]),
    ("request-body-too-big", _set(request__body="b" * (limits.MAX_BODY_CHARS + 1)), ["request.body"]),
    ("response-body-too-big", _set(response__body="b" * (limits.MAX_BODY_CHARS + 1)), ["response.body"]),
    ("response-id-too-long", _set(response__id="r" * (limits.MAX_NAME_CHARS + 1)), ["response.id"]),
    ("request-content-too-big", _big_content("request.messages"), ["request.messages"]),
    ("tool-call-arguments-too-big", _big_content("request.tool_calls"), ["request.messages"]),
    ("response-content-too-big", _big_content("response.choices"), ["response.choices"]),
    ("tool-definitions-too-big", _big_content("request.tools"), ["request.tools"]),
    ("finding-type-missing", _finding(type=""), ["findings[0].type"]),
    ("finding-type-too-long", _finding(type="t" * (limits.MAX_NAME_CHARS + 1)), ["findings[0].type"]),
    ("finding-severity-unspecified", _finding(severity=0), ["findings[0].severity"]),
    ("finding-severity-unknown", _finding(severity=9), ["findings[0].severity"]),
    ("finding-confidence-above-1", _finding(confidence=1.01), ["findings[0].confidence"]),
    ("finding-confidence-negative", _finding(confidence=-0.1), ["findings[0].confidence"]),
    ("finding-confidence-nan", _finding(confidence=math.nan), ["findings[0].confidence"]),
    ("finding-foreign-span_id", _finding(span_id=b"\x09" * 8), ["findings[0].span_id"]),
    ("finding-foreign-trace_id", _finding(trace_id=b"\x09" * 16), ["findings[0].trace_id"]),
    ("finding-id-too-long", _finding(id="i" * (limits.MAX_NAME_CHARS + 1)), ["findings[0].id"]),
    (
        "finding-description-too-long",
        _finding(description="d" * (limits.MAX_TEXT_CHARS + 1)),
        ["findings[0].description"],
    ),
    (
        "finding-excerpt-too-long",
        _finding(excerpt="e" * (limits.MAX_TEXT_CHARS + 1)),
        ["findings[0].excerpt"],
    ),
    ("second-finding-bad", _finding(1, severity=0), ["findings[1].severity"]),
]


def _with_finding_ids(span: span_pb2.Span, *ids: str) -> span_pb2.Span:
    for i, finding_id in enumerate(ids):
        finding = make_finding(f"kind_{i}")
        finding.id = finding_id
        span.findings.append(finding)
    return span


async def test_a_finding_id_another_span_holds_is_refused_not_dropped(
    shared: RunningCore, tenant: str
) -> None:
    # The store keys findings by (tenant, id): a second span's "f1" would be ignored as a
    # duplicate, accepted yet lost.
    first = _with_finding_ids(make_span(tenant=tenant), "f1")
    assert (await _ingest(shared, first)).accepted_spans == 1
    assert (await _ingest(shared, first)).accepted_spans == 1  # the same span again: idempotent
    second = _with_finding_ids(make_span(tenant=tenant), "f1")
    twice = _with_finding_ids(make_span(tenant=tenant), "f2", "f2")
    pair = [_with_finding_ids(make_span(tenant=tenant), "f3") for _ in range(2)]
    reply = await _ingest(shared, second, twice, *pair)
    assert reply.accepted_spans == 1  # pair[0]
    rejected = {r.index: [v.field for v in r.violations] for r in reply.partial_success.rejections}
    assert rejected == {
        0: ["spans[0].findings[0].id"],
        1: ["spans[1].findings[1].id"],
        3: ["spans[3].findings[0].id"],
    }
    assert first.span_id.hex() in reply.partial_success.rejections[0].violations[0].description
    other = _with_finding_ids(make_span(tenant=f"{tenant}-other"), "f1")  # ids are per tenant
    assert (await _ingest(shared, other)).accepted_spans == 1
    assert [f.id for f in (await _get(shared, first)).findings] == ["f1"]
    assert [f.id for f in (await _get(shared, pair[0])).findings] == ["f3"]


async def test_two_requests_sent_together_cannot_both_take_a_finding_id(
    shared: RunningCore, tenant: str
) -> None:
    # Each checks the store while the other's write waits: without claims both were acknowledged
    # and one finding was lost (20 of 20 tries).
    for attempt in range(10):
        pair = [_with_finding_ids(make_span(tenant=tenant), f"race-{attempt}") for _ in range(2)]
        replies = await asyncio.gather(*(_ingest(shared, span) for span in pair))
        assert sorted(r.accepted_spans for r in replies) == [0, 1]
        (refused,) = [r for r in replies if not r.accepted_spans]
        assert refused.partial_success.rejections[0].violations[0].field == "spans[0].findings[0].id"


async def test_a_finding_id_check_that_cannot_read_the_store_is_retryable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # UNAVAILABLE, which the shim retries; INTERNAL would have it dead-letter valid spans.
    def unreadable(self: FindingIds, keys: object) -> NoReturn:
        raise FindingIdReadError("IO Error: could not read block")

    monkeypatch.setattr(FindingIds, "_stored", unreadable)
    async with running_core(core_settings(tmp_path / "db.duckdb")) as core:
        named = _with_finding_ids(make_span(tenant="acme"), "f1")
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await _ingest(core, named)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        assert (await _ingest(core, make_span(tenant="acme"))).accepted_spans == 1  # no ids: no lookup


async def test_a_replay_with_other_findings_adds_nothing_to_the_stored_span(
    shared: RunningCore, tenant: str
) -> None:
    # The span row of a replay is ignored; its findings were stored anyway, describing content
    # that was never stored, and the span's score did not match them.
    stored = make_span(tenant=tenant)
    assert (await _ingest(shared, stored)).accepted_spans == 1
    replay = span_pb2.Span()
    replay.CopyFrom(stored)
    replay.findings.append(make_finding(severity=finding_pb2.SEVERITY_CRITICAL))
    assert (await _ingest(shared, replay)).accepted_spans == 1  # idempotent: accepted, not stored
    got = await _get(shared, stored)
    assert list(got.findings) == [] and not got.HasField("security_score")

    # The same within one request, and across requests committed together.
    first = _with_finding_ids(make_span(tenant=tenant), "kept")
    again = span_pb2.Span()
    again.CopyFrom(first)
    del again.findings[:]
    again.findings.append(make_finding("other_kind"))
    reply = await _ingest(shared, first, again)
    assert reply.accepted_spans == 2 and not reply.HasField("partial_success")
    assert [f.id for f in (await _get(shared, first)).findings] == ["kept"]
    racing = [make_span(tenant=tenant) for _ in range(2)]
    copies = []
    for span in racing:
        copy = span_pb2.Span()
        copy.CopyFrom(span)
        copy.findings.append(make_finding("late_kind"))
        copies.append(copy)
    replies = await asyncio.gather(*(_ingest(shared, span) for span in [*racing, *copies]))
    assert [r.accepted_spans for r in replies] == [1, 1, 1, 1]
    for span in racing:  # whichever copy was stored, its findings and score agree with it
        got = await _get(shared, span)
        kept = [f.type for f in got.findings]
        assert (kept, got.HasField("security_score")) in (([], False), (["late_kind"], True)), got


async def test_an_idle_stream_ends_when_the_core_stops_instead_of_holding_it(tmp_path: Path) -> None:
    # An SDK keeps its StreamSpans stream open between batches: the stop waited the whole grace
    # period for it (8 s of 8 measured), leaving a rolling deploy little margin.
    settings = dataclasses.replace(
        core_settings(tmp_path / "db.duckdb"), shutdown=ShutdownSettings(timeout_seconds=20)
    )
    async with running_core(settings) as core:
        queue: asyncio.Queue[ingest_service_pb2.StreamSpansRequest] = asyncio.Queue()

        async def requests() -> AsyncIterator[ingest_service_pb2.StreamSpansRequest]:
            while True:
                yield await queue.get()

        call = core.ingest.StreamSpans(requests())
        span = make_span(tenant="acme")
        await queue.put(ingest_service_pb2.StreamSpansRequest(sequence=1, spans=[span]))
        ack = await call.read()
        assert isinstance(ack, ingest_service_pb2.StreamSpansResponse)
        assert ack.sequence == 1 and ack.accepted_spans == 1
        started = time.monotonic()
        await core.core.stop()
        assert time.monotonic() - started < 5
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await call.read()
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in (ended.value.details() or "")
    async with running_core(settings) as again:  # what was acknowledged is there
        assert (await _get(again, span)).span_id == span.span_id


async def test_a_request_cancelled_while_checked_gives_its_finding_ids_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Past its deadline while its ids were being checked: the request is never written, and its
    # claim on "f1" was kept until the core restarted, refusing every other span that named it.
    stored = FindingIds._stored

    def slow(self: FindingIds, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], tuple[bytes, bytes]]:
        time.sleep(0.5)
        return stored(self, keys)

    monkeypatch.setattr(FindingIds, "_stored", slow)
    async with running_core(core_settings(tmp_path / "db.duckdb")) as core:
        abandoned = _with_finding_ids(make_span(tenant="acme"), "f1")
        with pytest.raises(grpc.aio.AioRpcError) as late:
            request = ingest_service_pb2.IngestSpansRequest(spans=[abandoned])
            await core.ingest.IngestSpans(request, timeout=0.1)
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await asyncio.sleep(0.6)  # the check ends in the core
        taker = _with_finding_ids(make_span(tenant="acme"), "f1")
        reply = await _ingest(core, taker)
        assert reply.accepted_spans == 1, reply.partial_success.error_message
        assert [f.id for f in (await _get(core, taker)).findings] == ["f1"]


async def test_a_request_cancelled_while_written_keeps_its_finding_ids_until_the_write_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The write of a request past its deadline still commits. Its claim was given up at once:
    # a second span naming the same id passed the check before the first was stored, both were
    # acknowledged, and the store dropped the second's finding as a duplicate.
    commit = StoreWriter._commit_ingest

    def slow(self: StoreWriter, group: list[Any]) -> None:
        time.sleep(0.5)
        commit(self, group)

    monkeypatch.setattr(StoreWriter, "_commit_ingest", slow)
    async with running_core(core_settings(tmp_path / "db.duckdb")) as core:
        first = _with_finding_ids(make_span(tenant="acme"), "f1")
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await core.ingest.IngestSpans(ingest_service_pb2.IngestSpansRequest(spans=[first]), timeout=0.1)
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        second = _with_finding_ids(make_span(tenant="acme"), "f1")
        reply = await _ingest(core, second)  # sent while the first is still being written
        assert reply.accepted_spans == 0
        assert reply.partial_success.rejections[0].violations[0].field == "spans[0].findings[0].id"
        await asyncio.sleep(0.6)  # the first write commits
        assert [f.id for f in (await _get(core, first)).findings] == ["f1"]


@pytest.mark.parametrize(
    ("mutate", "paths"), [case[1:] for case in VALIDATION_CASES], ids=[case[0] for case in VALIDATION_CASES]
)
async def test_invalid_span_is_rejected_with_its_field_path(
    shared: RunningCore, tenant: str, mutate: Mutator, paths: list[str]
) -> None:
    good = [make_span(tenant=tenant, start_ns=BASE_NS + i * MS) for i in range(3)]
    bad = make_span(tenant=tenant, start_ns=BASE_NS + 10 * MS)
    mutate(bad)

    response = await _ingest(shared, good[0], good[1], bad, good[2])

    assert response.accepted_spans == 3
    assert response.partial_success.rejected_spans == 1
    [rejection] = response.partial_success.rejections
    assert (rejection.index, rejection.trace_id, rejection.span_id) == (2, bad.trace_id, bad.span_id)
    assert [v.field for v in rejection.violations] == [f"spans[2].{p}" for p in paths]
    assert all(v.description for v in rejection.violations)
    first = rejection.violations[0]
    assert response.partial_success.error_message == (
        f"1 span(s) rejected: {first.field}: {first.description}"
    )
    stored = await _all_spans(shared, tenant)
    assert sorted(s.span_id for s in stored) == sorted(s.span_id for s in good)


async def test_boundary_values_are_accepted(shared: RunningCore, tenant: str) -> None:
    edge = make_span(tenant=tenant, start_ns=BASE_NS, duration_ms=100)
    edge.tenant = tenant + "x" * (limits.MAX_TENANT_CHARS - len(tenant))
    edge.agent = "a" * limits.MAX_AGENT_CHARS
    for name in _SHORT_FIELDS:
        setattr(edge, name, "n" * limits.MAX_NAME_CHARS)
    edge.response.id = "r" * limits.MAX_NAME_CHARS
    edge.user_agent = "u" * limits.MAX_TEXT_CHARS
    edge.time_to_first_token.FromMilliseconds(100)
    edge.status.http_status_code = 599
    for name in _TOKEN_FIELDS:
        setattr(edge.usage, name, limits.MAX_TOKENS)
    edge.cost.total_usd = limits.MAX_COST_USD
    edge.security_score = 100
    edge.request.body = "b" * limits.MAX_BODY_CHARS
    edge.findings.append(make_finding(confidence=1.0))
    edge.findings.append(make_finding("other", confidence=0.0))
    edge.findings[0].span_id = edge.span_id
    edge.findings[0].trace_id = edge.trace_id
    zero_parent = make_span(tenant=tenant, start_ns=BASE_NS, duration_ms=0)
    zero_parent.time_to_first_token.FromMilliseconds(0)
    zero_parent.status.http_status_code = 0
    zero_parent.status.code = span_pb2.STATUS_CODE_UNSPECIFIED

    response = await _ingest(shared, edge, zero_parent)

    assert response.accepted_spans == 2, response.partial_success
    got = await _get(shared, edge)
    assert got.request.body == edge.request.body
    assert got.usage.total_tokens == limits.MAX_TOKENS


async def test_every_problem_of_a_span_is_listed(shared: RunningCore, tenant: str) -> None:
    bad = make_span(tenant="", start_ns=BASE_NS)
    bad.trace_id = b"\x00" * 16
    bad.usage.input_tokens = -5
    bad.cost.total_usd = math.nan
    bad.findings.append(make_finding(confidence=2.0))

    response = await _ingest(shared, bad)

    assert response.accepted_spans == 0
    [rejection] = response.partial_success.rejections
    assert [v.field for v in rejection.violations] == [
        "spans[0].trace_id",
        "spans[0].tenant",
        "spans[0].usage.input_tokens",
        "spans[0].cost.total_usd",
        "spans[0].findings[0].confidence",
    ]


async def test_batch_at_the_span_limit_is_accepted(shared: RunningCore, tenant: str) -> None:
    spans = [make_span(tenant=tenant, start_ns=BASE_NS + i * 1000) for i in range(limits.MAX_SPANS_PER_BATCH)]

    response = await _ingest(shared, *spans)

    assert response.accepted_spans == limits.MAX_SPANS_PER_BATCH
    assert await _span_count(shared, tenant) == limits.MAX_SPANS_PER_BATCH


async def test_batch_over_the_span_limit_is_invalid_argument(shared: RunningCore, tenant: str) -> None:
    spans = [
        make_span(tenant=tenant, start_ns=BASE_NS + i * 1000) for i in range(limits.MAX_SPANS_PER_BATCH + 1)
    ]

    failure = await expect_failure(_ingest(shared, *spans))

    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.reason == "BATCH_TOO_LARGE"
    assert failure.domain == "llmtrace.dev"
    assert failure.violations == [
        (
            "spans",
            f"at most {limits.MAX_SPANS_PER_BATCH} spans per request, got {limits.MAX_SPANS_PER_BATCH + 1}",
        )
    ]
    assert await _span_count(shared, tenant) == 0


async def test_message_over_the_size_limit_is_resource_exhausted(tmp_path: Path) -> None:
    settings = core_settings(tmp_path / "small.duckdb")
    settings = dataclasses.replace(
        settings, grpc=dataclasses.replace(settings.grpc, max_message_bytes=64 * 1024)
    )
    async with running_core(settings) as small:
        fits = make_span(start_ns=BASE_NS, prompt="p" * 30_000)
        too_big = make_span(start_ns=BASE_NS, prompt="p" * 70_000)

        accepted = await _ingest(small, fits)
        failure = await expect_failure(_ingest(small, too_big))

        assert accepted.accepted_spans == 1
        assert failure.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert await _span_count(small, "acme") == 1
