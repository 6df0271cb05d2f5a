"""IngestService review fixes, over real gRPC: bounded rejection details, no task left behind by
an ended stream, a sender's ERROR kept through a raw exchange, and the short content strings and
finding fields held to their limits.

All tests share one core (module scope, in this test's event loop) and keep apart by tenant.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import gzip
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from llmtrace import limits
from llmtrace.api.v1 import ingest_service_pb2, ingest_service_pb2_grpc, span_pb2
from llmtrace.config.schema import SecurityAnalysisSettings
from llmtrace.rpc.ingest import MAX_ECHOED_ID_BYTES, MAX_VIOLATIONS_PER_SPAN
from tests.conftest import RunningCore, core_settings, running_core
from tests.factories import make_finding, make_span
from tests.test_ingest_rpc import _get, _ingest

pytestmark = pytest.mark.asyncio(loop_scope="module")

#: A gRPC client's default receive limit: a response past it fails at the client.
DEFAULT_RECEIVE_BYTES = 4 * 1024 * 1024
MIB = 1024 * 1024


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningCore]:
    path: Path = tmp_path_factory.mktemp("ingest-review") / "llmtrace.duckdb"
    settings = dataclasses.replace(
        core_settings(path), security_analysis=SecurityAnalysisSettings(enabled=False)
    )
    async with running_core(settings) as running:
        yield running


@pytest.fixture
def tenant() -> str:
    return f"t-{uuid.uuid4().hex}"


def _bad_findings_span(tenant: str, count: int) -> span_pb2.Span:
    """A span whose every finding has three problems (no type, no severity, confidence 5)."""
    span = make_span(tenant=tenant)
    for _ in range(count):
        span.findings.add(confidence=5.0)
    return span


# --- 1. Rejection details are bounded ----------------------------------------------------------


async def test_a_span_of_many_bad_findings_is_rejected_in_a_response_a_default_client_reads(
    shared: RunningCore, tenant: str
) -> None:
    # 361 KB of request made a 5.5 MB response (30,000 violations a span): the default client
    # failed RESOURCE_EXHAUSTED although the good span was committed, and would send it forever.
    good = make_span(tenant=tenant)
    bad = [_bad_findings_span(tenant, 10_000) for _ in range(3)]
    reply = await _ingest(shared, good, *bad)  # the stub's channel keeps the default limits
    assert reply.ByteSize() < DEFAULT_RECEIVE_BYTES // 100
    assert reply.accepted_spans == 1
    partial = reply.partial_success
    assert partial.rejected_spans == 3
    assert [r.index for r in partial.rejections] == [1, 2, 3]
    for rejection, span in zip(partial.rejections, bad, strict=True):
        assert (rejection.trace_id, rejection.span_id) == (span.trace_id, span.span_id)
        fields = [v.field for v in rejection.violations]
        assert len(fields) == MAX_VIOLATIONS_PER_SPAN + 1
        assert fields[:3] == [
            f"spans[{rejection.index}].findings[0].type",
            f"spans[{rejection.index}].findings[0].severity",
            f"spans[{rejection.index}].findings[0].confidence",
        ]
        assert fields[-1] == f"spans[{rejection.index}]"
        assert "more problem" in rejection.violations[-1].description
    assert (await _get(shared, good)).span_id == good.span_id


async def test_past_the_detail_budget_every_rejected_span_still_has_its_entry(
    shared: RunningCore, tenant: str
) -> None:
    # 3,000 spans of 11 listed violations each pass the 1 MiB budget: every rejected span keeps
    # its entry and index (a sender dead-letters by index), later ones without details.
    good = make_span(tenant=tenant)
    bad = [_bad_findings_span(tenant, 12) for _ in range(3_000)]
    reply = await _ingest(shared, *bad, good)
    assert reply.ByteSize() < DEFAULT_RECEIVE_BYTES // 2
    assert reply.accepted_spans == 1
    partial = reply.partial_success
    assert partial.rejected_spans == 3_000
    assert [r.index for r in partial.rejections] == list(range(3_000))
    detailed = [r for r in partial.rejections if r.violations]
    assert 0 < len(detailed) < 3_000
    assert partial.rejections[: len(detailed)] == detailed  # the first ones, in order
    assert all(not r.trace_id and not r.span_id for r in partial.rejections[len(detailed) :])
    assert f"listed for the first {len(detailed)} only" in partial.error_message
    assert (await _get(shared, good)).span_id == good.span_id


async def test_a_long_malformed_id_is_echoed_cut(shared: RunningCore, tenant: str) -> None:
    span = make_span(tenant=tenant, trace_id=b"\x01" * 100_000)
    reply = await _ingest(shared, span)
    [rejection] = reply.partial_success.rejections
    assert rejection.trace_id == b"\x01" * MAX_ECHOED_ID_BYTES
    assert [v.field for v in rejection.violations] == ["spans[0].trace_id"]


# --- 2. An ended stream leaves no task behind -----------------------------------------------------


async def test_cancelled_and_abandoned_streams_leave_no_tasks(shared: RunningCore, tenant: str) -> None:
    loop = asyncio.get_running_loop()
    unretrieved: list[dict[str, Any]] = []
    handler = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: unretrieved.append(context))
    try:
        await asyncio.sleep(0.2)
        before = len(asyncio.all_tasks())
        rounds = 20
        for _ in range(rounds):  # the client cancels its call
            call = shared.ingest.StreamSpans()
            await call.write(
                ingest_service_pb2.StreamSpansRequest(sequence=1, spans=[make_span(tenant=tenant)])
            )
            await call.read()
            call.cancel()
        for _ in range(rounds):  # the client goes away (its channel closed)
            channel = grpc.aio.insecure_channel(shared.bound.grpc)
            call = ingest_service_pb2_grpc.IngestServiceStub(channel).StreamSpans()
            await call.write(
                ingest_service_pb2.StreamSpansRequest(sequence=1, spans=[make_span(tenant=tenant)])
            )
            await call.read()
            await channel.close()
        for _ in range(100):  # the server's side of each call ends soon after the client's
            if len(asyncio.all_tasks()) <= before + 3:
                break
            await asyncio.sleep(0.05)
        # A pending `closing.wait()` task was left per ended stream, until the core stopped.
        assert len(asyncio.all_tasks()) <= before + 3
        gc.collect()  # an unretrieved task exception is reported when the task is collected
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(handler)
    assert [c["message"] for c in unretrieved] == []


# --- 3. A sender's ERROR survives the reading of its raw exchange ------------------------------


def _raw_span(tenant: str, code: int, error_type: str, error_message: str) -> span_pb2.Span:
    """A span as the shim sends it: what it observed, the bodies attached unread."""
    span = span_pb2.Span(trace_id=os.urandom(16), span_id=os.urandom(8), tenant=tenant)
    now = time.time_ns()
    span.start_time.FromNanoseconds(now - 5_000_000)
    span.end_time.FromNanoseconds(now)
    span.status.code = code  # type: ignore[assignment]
    span.status.error_type = error_type
    span.status.error_message = error_message
    span.status.http_status_code = 200
    raw = span.raw_exchange
    raw.method, raw.path, raw.request_content_type = "POST", "/v1/chat/completions", "application/json"
    raw.request_body = b'{"model":"gpt-4o","messages":[{"role":"user","content":"Hi"}]}'
    raw.has_response, raw.response_status, raw.response_content_type = True, 200, "application/json"
    raw.response_body = (
        b'{"id":"chatcmpl-1","model":"gpt-4o","choices":[{"index":0,"message":'
        b'{"role":"assistant","content":"Hello."},"finish_reason":"stop"}]}'
    )
    return span


async def test_a_senders_error_without_a_type_stays_an_error(shared: RunningCore, tenant: str) -> None:
    # The answer was fine but the client gave up on it: the sender knows, the answer cannot tell.
    gave_up = _raw_span(tenant, span_pb2.STATUS_CODE_ERROR, "", "client gave up")
    unset = _raw_span(tenant, span_pb2.STATUS_CODE_UNSPECIFIED, "", "")
    assert (await _ingest(shared, gave_up, unset)).accepted_spans == 2
    stored = await _get(shared, gave_up)
    assert stored.response.choices[0].finish_reason == "stop"  # the exchange really was read
    assert (stored.status.code, stored.status.error_message) == (span_pb2.STATUS_CODE_ERROR, "client gave up")
    assert (await _get(shared, unset)).status.code == span_pb2.STATUS_CODE_OK


# --- 4. Short content strings and finding fields are held to their limits -----------------------

LONG = "r" * (3 * MIB)  # past 1 MiB: the side is checked field by field


def _role(span: span_pb2.Span) -> None:
    span.request.messages[0].role = LONG


def _mime_type(span: span_pb2.Span) -> None:
    span.request.messages[1].parts[0].mime_type = LONG


def _stop_sequence(span: span_pb2.Span) -> None:
    span.request.parameters.stop_sequences.extend(["END", LONG])


def _stop_sequences(span: span_pb2.Span) -> None:
    span.request.parameters.stop_sequences.extend(["ab"] * (limits.MAX_STOP_SEQUENCES + 1))


def _tool_call_name(span: span_pb2.Span) -> None:
    span.response.choices[0].message.tool_calls.add(id="call_1", name=LONG)


def _finish_reason(span: span_pb2.Span) -> None:
    span.response.choices[0].finish_reason = LONG


def _detector(span: span_pb2.Span) -> None:
    span.findings.append(make_finding())
    span.findings[0].detector = "d" * (limits.MAX_NAME_CHARS + 1)


def _location(span: span_pb2.Span) -> None:
    span.findings.append(make_finding())
    span.findings.append(make_finding())
    span.findings[1].location = "l" * (limits.MAX_NAME_CHARS + 1)


def _metadata_value(span: span_pb2.Span) -> None:
    span.findings.append(make_finding())
    span.findings[0].metadata["k"] = "v" * (limits.MAX_TEXT_CHARS + 1)


def _metadata_entries(span: span_pb2.Span) -> None:
    span.findings.append(make_finding())
    span.findings[0].metadata.update({f"k{i}": "v" for i in range(limits.MAX_FINDING_METADATA_ENTRIES + 1)})


CASES: list[tuple[Callable[[span_pb2.Span], None], str]] = [
    (_role, "request.messages[0].role"),
    (_mime_type, "request.messages[1].parts[0].mime_type"),
    (_stop_sequence, "request.parameters.stop_sequences[1]"),
    (_stop_sequences, "request.parameters.stop_sequences"),
    (_tool_call_name, "response.choices[0].message.tool_calls[0].name"),
    (_finish_reason, "response.choices[0].finish_reason"),
    (_detector, "findings[0].detector"),
    (_location, "findings[1].location"),
    (_metadata_value, "findings[0].metadata"),
    (_metadata_entries, "findings[0].metadata"),
]


@pytest.mark.parametrize(("change", "field"), CASES, ids=[c[0].__name__.lstrip("_") for c in CASES])
async def test_a_field_past_its_limit_is_rejected_by_name(
    shared: RunningCore, tenant: str, change: Callable[[span_pb2.Span], None], field: str
) -> None:
    good, bad = make_span(tenant=tenant), make_span(tenant=tenant)
    change(bad)
    reply = await _ingest(shared, good, bad)
    assert reply.accepted_spans == 1
    [rejection] = reply.partial_success.rejections
    assert [v.field for v in rejection.violations] == [f"spans[1].{field}"]
    assert (await _get(shared, good)).span_id == good.span_id


async def test_fields_at_their_limits_are_accepted(shared: RunningCore, tenant: str) -> None:
    # What the shim sends at most (it cuts to the same limits) is always stored.
    name = "n" * limits.MAX_NAME_CHARS
    span = make_span(tenant=tenant)
    span.request.body = "b" * (limits.MAX_BODY_CHARS - 10)  # past 1 MiB with the rest: checked one by one
    span.request.messages[0].role = name
    span.request.parameters.stop_sequences.extend([name] * limits.MAX_STOP_SEQUENCES)
    span.response.choices[0].finish_reason = name
    finding = make_finding()
    finding.detector = finding.location = name
    finding.metadata.update(
        {f"{i:0{limits.MAX_NAME_CHARS}d}": "v" * limits.MAX_TEXT_CHARS for i in range(64)}
    )
    span.findings.append(finding)
    assert span.request.ByteSize() > limits.MAX_BODY_CHARS
    reply = await _ingest(shared, span)
    assert (reply.accepted_spans, reply.partial_success.rejected_spans) == (1, 0)
    stored = await _get(shared, span)
    assert stored.request.messages[0].role == name
    assert len(stored.findings[0].metadata) == limits.MAX_FINDING_METADATA_ENTRIES


# --- 5. The compressed answers of one request share one decompression budget ------------------


async def test_a_request_of_gzip_bombs_decompresses_about_one(shared: RunningCore, tenant: str) -> None:
    # Each answer may decompress to MAX_SKIMMED_BYTES on its own; a request of such bombs held the
    # single ingest thread for seconds each, every tenant's ingest waiting. Past the request's
    # budget an answer is kept unread (stored, marked truncated, its text not read).
    event = b'data: {"choices":[{"index":0,"delta":{"content":"a"}}]}\n\n'
    decoded = event * (200 * MIB // len(event))  # one bomb fits the budget, two do not
    bomb = gzip.compress(decoded)  # about 600 KB: under the 1 MiB a raw body may be
    del decoded
    spans = []
    for _ in range(3):
        span = _raw_span(tenant, span_pb2.STATUS_CODE_UNSPECIFIED, "", "")
        raw = span.raw_exchange
        raw.request_body = b'{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"Hi"}]}'
        raw.response_content_type, raw.response_content_encoding = "text/event-stream", "gzip"
        raw.response_body = bomb
        spans.append(span)
    assert (await _ingest(shared, *spans)).accepted_spans == 3
    first, _, last = [await _get(shared, span) for span in spans]
    assert first.response.choices and first.response.choices[0].message.parts[0].text.startswith("aaa")
    assert not [part.text for choice in last.response.choices for part in choice.message.parts if part.text]
    assert last.response.truncated
