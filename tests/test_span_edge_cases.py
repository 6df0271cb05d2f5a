"""Round-trip edge cases: values JSON alone could not tell apart, and per-choice metadata."""

from __future__ import annotations

from llmtrace.api.v1 import common_pb2, ingest_service_pb2, query_service_pb2
from tests.conftest import RunningCore
from tests.factories import make_span


async def test_attributes_round_trip_exactly_even_when_json_is_ambiguous(core: RunningCore) -> None:
    span = make_span()
    # A map whose only key is "bytes" looks like the JSON encoding of a bytes value.
    lookalike = common_pb2.KeyValueList(
        values=[common_pb2.KeyValue(key="bytes", value=common_pb2.AnyValue(string_value="AAE="))]
    )
    span.attributes.add(key="map", value=common_pb2.AnyValue(kvlist_value=lookalike))
    span.attributes.add(key="raw", value=common_pb2.AnyValue(bytes_value=b"\x00\x01"))
    span.attributes.add(key="one", value=common_pb2.AnyValue(double_value=1.0))
    span.attributes.add(key="two", value=common_pb2.AnyValue(int_value=2))
    await core.ingest.IngestSpans(ingest_service_pb2.IngestSpansRequest(spans=[span]))
    got = await core.query.GetSpan(query_service_pb2.GetSpanRequest(tenant="acme", span_id=span.span_id))
    assert list(got.span.attributes) == list(span.attributes)


async def test_basic_view_keeps_finish_reasons_at_their_choice_index(core: RunningCore) -> None:
    span = make_span()
    span.response.choices[0].finish_reason = ""  # e.g. the stream of choice 0 was cut
    span.response.choices.add(index=1, finish_reason="length")
    await core.ingest.IngestSpans(ingest_service_pb2.IngestSpansRequest(spans=[span]))
    page = await core.query.ListSpans(query_service_pb2.ListSpansRequest(tenant="acme"))
    reasons = [(c.index, c.finish_reason) for c in page.spans[0].response.choices]
    assert reasons == [(0, ""), (1, "length")]


async def test_timestamps_with_invalid_nanos_are_rejected(core: RunningCore) -> None:
    span = make_span()
    span.start_time.nanos = -5
    reply = await core.ingest.IngestSpans(ingest_service_pb2.IngestSpansRequest(spans=[span]))
    assert reply.accepted_spans == 0
    fields = [v.field for v in reply.partial_success.rejections[0].violations]
    assert "spans[0].start_time.nanos" in fields
