"""Validated spans straight to Arrow columns (the bulk ingest path).

This is transport, not domain logic: it reads wire messages field by field into column lists,
one pass per batch, and hands the writer Arrow tables with the store's row schemas.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from llmtrace.api.v1 import common_pb2, span_pb2
from llmtrace.ingest.content_json import dumps, encode_choices, encode_messages, encode_tools
from llmtrace.store.row_schema import FINDING_ROW_SCHEMA, SPAN_ROW_SCHEMA
from llmtrace.store.writer import WriteBatch

#: Base score per severity (FINDINGS.md): info 10, low 30, medium 60, high 80, critical 95.
SEVERITY_BASE_SCORE = {1: 10, 2: 30, 3: 60, 4: 80, 5: 95}


def _us(ts: Any) -> int:
    return int(ts.seconds) * 1_000_000 + int(ts.nanos) // 1000


def _opt(msg: Any, name: str) -> Any:
    return getattr(msg, name) if msg.HasField(name) else None


def any_value_to_python(value: common_pb2.AnyValue) -> Any:
    """An attribute value as a JSON-able Python value (bytes as {"bytes": base64})."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value_to_python(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value_to_python(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return {"bytes": base64.b64encode(value.bytes_value).decode()}
    return getattr(value, kind)


def _attributes_json(attributes: Sequence[common_pb2.KeyValue]) -> str:
    if not attributes:
        return "{}"
    return dumps({kv.key: any_value_to_python(kv.value) for kv in attributes})


def finding_id(tenant: str, trace_id: bytes, span_id: bytes, *, index: int, kind: str, detector: str) -> str:
    """Deterministic id for a finding sent without one, so replays do not duplicate it."""
    digest = hashlib.sha256(
        b"\x00".join(
            [tenant.encode(), trace_id, span_id, str(index).encode(), kind.encode(), detector.encode()]
        )
    )
    return digest.hexdigest()[:32]


def build_write_batch(spans: Sequence[span_pb2.Span], ingest_time_us: int) -> WriteBatch:
    """Arrow rows for already-validated spans and the findings they carry."""
    # Column by column with comprehensions: several times faster than appending row by row.
    usages = [s.usage for s in spans]
    statuses = [s.status for s in spans]
    requests = [s.request for s in spans]
    responses = [s.response for s in spans]
    costs = [s.cost for s in spans]
    params = [r.parameters for r in requests]
    cols: dict[str, list[Any]] = {
        "tenant": [s.tenant for s in spans],
        "trace_id": [s.trace_id for s in spans],
        "span_id": [s.span_id for s in spans],
        "parent_span_id": [s.parent_span_id or None for s in spans],
        "name": [s.name for s in spans],
        "agent": [s.agent for s in spans],
        "operation": [s.operation for s in spans],
        "provider": [s.provider for s in spans],
        "request_model": [s.request_model for s in spans],
        "response_model": [s.response_model for s in spans],
        "start_time": [_us(s.start_time) for s in spans],
        "end_time": [_us(s.end_time) for s in spans],
        "ttft_us": [_us(s.time_to_first_token) if s.HasField("time_to_first_token") else None for s in spans],
        "status_code": [st.code for st in statuses],
        "http_status_code": [st.http_status_code for st in statuses],
        "error_message": [st.error_message for st in statuses],
        "error_type": [st.error_type for st in statuses],
        "input_tokens": [u.input_tokens for u in usages],
        "output_tokens": [u.output_tokens for u in usages],
        "total_tokens": [u.total_tokens or u.input_tokens + u.output_tokens for u in usages],
        "cache_read_input_tokens": [u.cache_read_input_tokens for u in usages],
        "cache_creation_input_tokens": [u.cache_creation_input_tokens for u in usages],
        "reasoning_output_tokens": [u.reasoning_output_tokens for u in usages],
        "usage_estimated": [u.estimated for u in usages],
        "cost_usd": [_opt(c, "total_usd") for c in costs],
        "cost_input_usd": [c.input_usd for c in costs],
        "cost_output_usd": [c.output_usd for c in costs],
        "security_score": [_score(s) for s in spans],
        "session_id": [s.session_id for s in spans],
        "client_address": [s.client_address for s in spans],
        "user_agent": [s.user_agent for s in spans],
        "upstream_request_id": [s.upstream_request_id for s in spans],
        "server_address": [s.server_address for s in spans],
        "api_key_fingerprint": [s.api_key_fingerprint for s in spans],
        **_optional_parameters(params),
        "output_type": [p.output_type for p in params],
        "stop_sequences": [list(p.stop_sequences) for p in params],
        "request_messages": [encode_messages(r.messages) for r in requests],
        "request_tools": [encode_tools(r.tools) if r.tools else "[]" for r in requests],
        "request_body": [r.body for r in requests],
        "request_truncated": [r.truncated for r in requests],
        "response_id": [r.id for r in responses],
        "response_choices": [encode_choices(r.choices) for r in responses],
        # One entry per choice (empty when unknown) so that list position is the choice index.
        "finish_reasons": [[c.finish_reason for c in r.choices] for r in responses],
        "response_body": [r.body for r in responses],
        "response_truncated": [r.truncated for r in responses],
        "attributes": [_attributes_json(s.attributes) for s in spans],
        "attributes_pb": [
            common_pb2.KeyValueList(values=s.attributes).SerializeToString() if s.attributes else None
            for s in spans
        ],
        "ingest_time": [ingest_time_us] * len(spans),
    }
    table = pa.Table.from_arrays(
        [pa.array(cols[f.name], type=f.type) for f in SPAN_ROW_SCHEMA], schema=SPAN_ROW_SCHEMA
    )
    fcols: dict[str, list[Any]] = {name: [] for name in FINDING_ROW_SCHEMA.names}
    for span in spans:
        if span.findings:
            _add_findings(fcols, span, ingest_time_us)
    findings = None
    if fcols["id"]:
        findings = pa.Table.from_arrays(
            [pa.array(fcols[f.name], type=f.type) for f in FINDING_ROW_SCHEMA],
            schema=FINDING_ROW_SCHEMA,
        )
    return WriteBatch(spans=table, findings=findings)


_OPTIONAL_PARAMETERS = (
    "temperature",
    "top_p",
    "max_tokens",
    "stream",
    "frequency_penalty",
    "presence_penalty",
    "seed",
    "choice_count",
)


def _optional_parameters(params: Sequence[span_pb2.RequestParameters]) -> dict[str, list[Any]]:
    """Columns of the optional parameters, None where unset."""
    return {name: [_opt(p, name) for p in params] for name in _OPTIONAL_PARAMETERS}


def _score(span: span_pb2.Span) -> int | None:
    """The score sent with the span, raised to the worst severity among its findings."""
    score = span.security_score if span.HasField("security_score") else None
    if span.findings:
        worst = max(SEVERITY_BASE_SCORE.get(f.severity, 0) for f in span.findings)
        score = worst if score is None else max(score, worst)
    return score


def _add_findings(fcols: dict[str, list[Any]], span: span_pb2.Span, ingest_time_us: int) -> None:
    for i, f in enumerate(span.findings):
        fcols["tenant"].append(span.tenant)
        fcols["id"].append(
            f.id
            or finding_id(span.tenant, span.trace_id, span.span_id, index=i, kind=f.type, detector=f.detector)
        )
        fcols["trace_id"].append(span.trace_id)
        fcols["span_id"].append(span.span_id)
        fcols["type"].append(f.type)
        fcols["severity"].append(f.severity)
        fcols["confidence"].append(f.confidence)
        fcols["detector"].append(f.detector)
        fcols["location"].append(f.location)
        fcols["description"].append(f.description)
        fcols["excerpt"].append(f.excerpt)
        fcols["metadata"].append(dumps(dict(f.metadata)))
        fcols["create_time"].append(_us(f.create_time) if f.HasField("create_time") else ingest_time_us)
