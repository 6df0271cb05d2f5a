"""Stored rows (plain dicts from the store) to wire messages."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

import orjson
from google.protobuf import duration_pb2, timestamp_pb2

from llmtrace.api.v1 import common_pb2, finding_pb2, query_service_pb2, span_pb2
from llmtrace.ingest.content_json import decode_choices, decode_messages, decode_tools
from llmtrace.store.reader import Row


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    """A protobuf Timestamp for an aware datetime."""
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def duration_ms(value: float | None) -> duration_pb2.Duration | None:
    """A protobuf Duration for milliseconds (None stays unset)."""
    if value is None:
        return None
    d = duration_pb2.Duration()
    d.FromMicroseconds(round(value * 1000))
    return d


def python_to_any_value(value: Any) -> common_pb2.AnyValue:
    """A JSON-decoded attribute value back to AnyValue (inverse of ingest's encoding)."""
    if value is None:
        return common_pb2.AnyValue()
    if isinstance(value, bool):
        return common_pb2.AnyValue(bool_value=value)
    if isinstance(value, int):
        return common_pb2.AnyValue(int_value=value)
    if isinstance(value, float):
        return common_pb2.AnyValue(double_value=value)
    if isinstance(value, str):
        return common_pb2.AnyValue(string_value=value)
    if isinstance(value, list):
        return common_pb2.AnyValue(
            array_value=common_pb2.ArrayValue(values=[python_to_any_value(v) for v in value])
        )
    if isinstance(value, dict):
        if set(value) == {"bytes"} and isinstance(value["bytes"], str):
            return common_pb2.AnyValue(bytes_value=base64.b64decode(value["bytes"]))
        return common_pb2.AnyValue(
            kvlist_value=common_pb2.KeyValueList(
                values=[common_pb2.KeyValue(key=k, value=python_to_any_value(v)) for k, v in value.items()]
            )
        )
    return common_pb2.AnyValue(string_value=str(value))


def span_from_row(row: Row) -> span_pb2.Span:
    """A span message from a span row (basic or full select)."""
    span = span_pb2.Span(
        trace_id=row["trace_id"],
        span_id=row["span_id"],
        parent_span_id=row["parent_span_id"] or b"",
        tenant=row["tenant"],
        agent=row["agent"],
        operation=row["operation"],
        provider=row["provider"],
        request_model=row["request_model"],
        response_model=row["response_model"],
        name=row["name"],
        session_id=row["session_id"],
        client_address=row["client_address"],
        user_agent=row["user_agent"],
        upstream_request_id=row["upstream_request_id"],
        server_address=row["server_address"],
        api_key_fingerprint=row["api_key_fingerprint"],
        start_time=timestamp(row["start_time"]),
        end_time=timestamp(row["end_time"]),
        status=span_pb2.SpanStatus(
            code=row["status_code"],
            http_status_code=row["http_status_code"],
            error_message=row["error_message"],
            error_type=row["error_type"],
        ),
        usage=span_pb2.Usage(
            input_tokens=row["input_tokens"],
            output_tokens=row["output_tokens"],
            total_tokens=row["total_tokens"],
            cache_read_input_tokens=row["cache_read_input_tokens"],
            cache_creation_input_tokens=row["cache_creation_input_tokens"],
            reasoning_output_tokens=row["reasoning_output_tokens"],
            estimated=row["usage_estimated"],
        ),
        cost=span_pb2.Cost(
            total_usd=row["cost_usd"], input_usd=row["cost_input_usd"], output_usd=row["cost_output_usd"]
        ),
    )
    if row["ttft_us"] is not None:
        span.time_to_first_token.FromMicroseconds(row["ttft_us"])
    if row["score"] is not None:
        span.security_score = row["score"]
    params = span.request.parameters
    for name in (
        "temperature",
        "top_p",
        "max_tokens",
        "stream",
        "frequency_penalty",
        "presence_penalty",
        "seed",
        "choice_count",
    ):
        if row[name] is not None:
            setattr(params, name, row[name])
    params.output_type = row["output_type"]
    params.stop_sequences.extend(row["stop_sequences"])
    span.response.id = row["response_id"]
    if row["attributes_pb"] is not None:
        span.attributes.extend(common_pb2.KeyValueList.FromString(row["attributes_pb"]).values)
    else:
        for key, value in orjson.loads(row["attributes"] or "{}").items():
            span.attributes.add(key=key, value=python_to_any_value(value))
    if "request_messages" in row:
        decode_messages(row["request_messages"], span.request.messages)
        decode_tools(row["request_tools"], span.request.tools)
        span.request.body = row["request_body"]
        span.request.truncated = row["request_truncated"]
        decode_choices(row["response_choices"], span.response.choices)
        span.response.body = row["response_body"]
        span.response.truncated = row["response_truncated"]
    else:
        # Basic view: no content, but finish reasons are metadata users filter and group on.
        for index, reason in enumerate(row["finish_reasons"]):
            span.response.choices.add(index=index, finish_reason=reason)
    return span


def finding_from_row(row: Row) -> finding_pb2.Finding:
    """A finding message from a finding row."""
    return finding_pb2.Finding(
        id=row["id"],
        tenant=row["tenant"],
        trace_id=row["trace_id"],
        span_id=row["span_id"],
        type=row["type"],
        severity=row["severity"],
        confidence=row["confidence"],
        detector=row["detector"],
        location=row["location"],
        description=row["description"],
        excerpt=row["excerpt"],
        metadata=orjson.loads(row["metadata"] or "{}"),
        create_time=timestamp(row["create_time"]),
    )


def trace_from_row(row: Row) -> query_service_pb2.Trace:
    """A trace summary message from a per-trace aggregate row."""
    trace = query_service_pb2.Trace(
        trace_id=row["trace_id"],
        tenant=row["tenant"],
        start_time=timestamp(row["start_time"]),
        end_time=timestamp(row["end_time"]),
        span_count=row["span_count"],
        error_count=row["error_count"],
        input_tokens=int(row["input_tokens"]),
        output_tokens=int(row["output_tokens"]),
        cost_usd=row["cost_usd"] or 0.0,
        models=row["models"],
        agents=row["agents"],
        session_id=row["session_id"] or "",
    )
    if row["max_security_score"] is not None:
        trace.max_security_score = row["max_security_score"]
    return trace


def stats_from_row(row: Row) -> query_service_pb2.Stats:
    """Aggregates of one stats row."""
    spans = int(row["span_count"])
    errors = int(row["error_count"])
    latency = row["latency_ms"] or [None, None, None]
    return query_service_pb2.Stats(
        span_count=spans,
        trace_count=int(row["trace_count"]),
        error_count=errors,
        error_rate=errors / spans if spans else 0.0,
        input_tokens=int(row["input_tokens"]),
        output_tokens=int(row["output_tokens"]),
        total_tokens=int(row["total_tokens"]),
        cost_usd=float(row["cost_usd"]),
        latency_p50=duration_ms(latency[0]),
        latency_p95=duration_ms(latency[1]),
        latency_p99=duration_ms(latency[2]),
        ttft_p50=duration_ms(row["ttft_p50_ms"]),
    )
