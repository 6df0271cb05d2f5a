"""What List RPCs can filter and order by: field name -> SQL over the queried relation.

Aliases: `s` is span_rows, `sc` the per-span analysed score, `f` finding_rows, `t` the per-trace
aggregate. Sort keys must never be NULL (keyset pagination), so nullable columns are COALESCEd to a
documented sentinel: -1 for an unknown TTFT or an unanalysed security score, 0 for an unpriced cost.
The field lists are documented in docs/query.md.
"""

from __future__ import annotations

from llmtrace.query import FieldKind, FieldSpec

SEVERITY_RANKS = {"info": 1, "low": 2, "medium": 3, "high": 4, "critical": 5}

_S, _I, _F, _B, _T, _H = (
    FieldKind.STRING,
    FieldKind.INT,
    FieldKind.FLOAT,
    FieldKind.BOOL,
    FieldKind.TIMESTAMP,
    FieldKind.BYTES_HEX,
)

SPAN_SCORE_SQL = (
    "CASE WHEN sc.score IS NULL THEN s.security_score WHEN s.security_score IS NULL THEN sc.score "
    "ELSE greatest(sc.score, s.security_score) END"
)
SPAN_IS_ERROR_SQL = "(s.status_code = 2 OR s.http_status_code >= 400)"
SPAN_DURATION_MS_SQL = "(epoch_us(s.end_time) - epoch_us(s.start_time)) / 1000.0"


def _catalog(*specs: FieldSpec) -> dict[str, FieldSpec]:
    return {spec.name: spec for spec in specs}


SPAN_FIELDS = _catalog(
    FieldSpec("trace_id", "s.trace_id", _H),
    FieldSpec("span_id", "s.span_id", _H),
    FieldSpec("parent_span_id", "coalesce(s.parent_span_id, ''::BLOB)", _H),
    FieldSpec("name", "s.name", _S),
    FieldSpec("agent", "s.agent", _S),
    FieldSpec("operation", "s.operation", _S),
    FieldSpec("provider", "s.provider", _S),
    FieldSpec("model", "s.request_model", _S),
    FieldSpec("request_model", "s.request_model", _S),
    FieldSpec("response_model", "s.response_model", _S),
    FieldSpec("session_id", "s.session_id", _S),
    FieldSpec("client_address", "s.client_address", _S),
    FieldSpec("server_address", "s.server_address", _S),
    FieldSpec("upstream_request_id", "s.upstream_request_id", _S),
    FieldSpec("api_key_fingerprint", "s.api_key_fingerprint", _S),
    FieldSpec("error_type", "s.error_type", _S),
    FieldSpec("error", "s.error_message", _S),
    FieldSpec("start_time", "s.start_time", _T),
    FieldSpec("end_time", "s.end_time", _T),
    FieldSpec("duration_ms", SPAN_DURATION_MS_SQL, _F),
    FieldSpec("ttft_ms", "coalesce(s.ttft_us / 1000.0, -1.0)", _F, presence_sql="s.ttft_us"),
    FieldSpec("status_code", "s.http_status_code", _I),
    FieldSpec("is_error", SPAN_IS_ERROR_SQL, _B),
    FieldSpec("input_tokens", "s.input_tokens", _I),
    FieldSpec("output_tokens", "s.output_tokens", _I),
    FieldSpec("total_tokens", "s.total_tokens", _I),
    FieldSpec("cache_read_input_tokens", "s.cache_read_input_tokens", _I),
    FieldSpec("cache_creation_input_tokens", "s.cache_creation_input_tokens", _I),
    FieldSpec("reasoning_output_tokens", "s.reasoning_output_tokens", _I),
    FieldSpec("usage_estimated", "s.usage_estimated", _B),
    FieldSpec("stream", "coalesce(s.stream, false)", _B, presence_sql="s.stream"),
    FieldSpec("cost_usd", "coalesce(s.cost_usd, 0.0)", _F, presence_sql="s.cost_usd"),
    FieldSpec("security_score", f"coalesce({SPAN_SCORE_SQL}, -1)", _I, presence_sql=SPAN_SCORE_SQL),
)

TRACE_FIELDS = _catalog(
    FieldSpec("trace_id", "t.trace_id", _H),
    FieldSpec("start_time", "t.start_time", _T),
    FieldSpec("end_time", "t.end_time", _T),
    FieldSpec("duration_ms", "(epoch_us(t.end_time) - epoch_us(t.start_time)) / 1000.0", _F),
    FieldSpec("span_count", "t.span_count", _I),
    FieldSpec("error_count", "t.error_count", _I),
    FieldSpec("input_tokens", "t.input_tokens", _I),
    FieldSpec("output_tokens", "t.output_tokens", _I),
    FieldSpec("total_tokens", "t.total_tokens", _I),
    FieldSpec("cost_usd", "coalesce(t.cost_usd, 0.0)", _F, presence_sql="t.cost_usd"),
    FieldSpec(
        "max_security_score", "coalesce(t.max_security_score, -1)", _I, presence_sql="t.max_security_score"
    ),
    FieldSpec("session_id", "t.session_id", _S),
)

_SPAN_OF_FINDING = (
    "(SELECT {col} FROM span_rows AS x WHERE x.tenant = f.tenant "
    "AND x.trace_id = f.trace_id AND x.span_id = f.span_id)"
)

FINDING_FIELDS = _catalog(
    FieldSpec("id", "f.id", _S),
    FieldSpec("trace_id", "f.trace_id", _H),
    FieldSpec("span_id", "f.span_id", _H),
    FieldSpec("type", "f.type", _S),
    FieldSpec("severity", "f.severity", FieldKind.ENUM, enum_values=SEVERITY_RANKS),
    FieldSpec("confidence", "f.confidence", _F),
    FieldSpec("detector", "f.detector", _S),
    FieldSpec("location", "f.location", _S),
    FieldSpec("create_time", "f.create_time", _T),
    FieldSpec("model", _SPAN_OF_FINDING.format(col="x.request_model"), _S, orderable=False),
    FieldSpec("provider", _SPAN_OF_FINDING.format(col="x.provider"), _S, orderable=False),
    FieldSpec("agent", _SPAN_OF_FINDING.format(col="x.agent"), _S, orderable=False),
)
