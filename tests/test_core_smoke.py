"""Smoke test: a span goes in over gRPC and comes back out."""

from __future__ import annotations

from llmtrace.api.v1 import ingest_service_pb2, query_service_pb2
from tests.conftest import RunningCore
from tests.factories import make_span


async def test_ingest_then_get(core: RunningCore) -> None:
    span = make_span(prompt="What is the capital of France?")
    response = await core.ingest.IngestSpans(ingest_service_pb2.IngestSpansRequest(spans=[span]))
    assert response.accepted_spans == 1
    assert not response.HasField("partial_success")
    got = await core.query.GetSpan(query_service_pb2.GetSpanRequest(tenant="acme", span_id=span.span_id))
    assert got.span.request.messages[1].parts[0].text == "What is the capital of France?"
    assert got.span.trace_id == span.trace_id
