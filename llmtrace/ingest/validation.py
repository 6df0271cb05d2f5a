"""Validation of incoming spans: every problem of a span, each with its field path.

Works on the wire messages directly (this is the bulk ingest path); limits come from
`llmtrace.limits`, which the shim also uses so that captured spans always pass.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping

from llmtrace import limits
from llmtrace.api.v1 import finding_pb2, span_pb2

Violation = tuple[str, str]
"""(field path relative to the span, description)."""

_SEVERITIES = frozenset(finding_pb2.Severity.values()) - {finding_pb2.SEVERITY_UNSPECIFIED}
_STATUS_CODES = frozenset(span_pb2.StatusCode.values())
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


#: Bad findings reported per span: the rest are not checked. 10,000 findings of a bad
#: confidence made 30,000 violations, megabytes of response for one span of 361 KB.
MAX_BAD_FINDINGS = 10


def validate_span(span: span_pb2.Span, now_unix: float | None = None) -> list[Violation]:
    """Return every violation of `span`; an empty list means the span can be stored."""
    out: list[Violation] = []
    _check_ids(span, out)
    _check_tenant(span.tenant, out)
    now = time.time() if now_unix is None else now_unix
    _check_times(span, now, out)
    _check_len(out, "agent", span.agent, limits.MAX_AGENT_CHARS)
    # Hot path: one sum tells that every short field is within its limit; only when it does not
    # are the fields checked one by one to name the culprit.
    short = (
        span.operation,
        span.provider,
        span.request_model,
        span.response_model,
        span.name,
        span.session_id,
        span.client_address,
        span.upstream_request_id,
        span.server_address,
        span.api_key_fingerprint,
    )
    if sum(map(len, short)) > limits.MAX_NAME_CHARS:
        for name, value in zip(_SHORT_FIELDS, short, strict=True):
            _check_len(out, name, value, limits.MAX_NAME_CHARS)
    _check_len(out, "user_agent", span.user_agent, limits.MAX_TEXT_CHARS)
    _check_status(span.status, out)
    _check_usage(span.usage, out)
    _check_cost(span, out)
    _check_content(span, out)
    if span.attributes:
        _check_attributes(span, out)
    if span.findings:
        _check_findings(span, now, out)
    return out


def _check_attributes(span: span_pb2.Span, out: list[Violation]) -> None:
    attributes = span.attributes
    if len(attributes) > limits.MAX_ITEMS:
        out.append(("attributes", f"at most {limits.MAX_ITEMS} attributes"))
        return
    # Keys are names; values, nested ones included, are bounded together like a body (the encoded
    # size bounds every string in them): one attribute could otherwise hold a whole gRPC message.
    long_keys = [i for i, kv in enumerate(attributes) if len(kv.key) > limits.MAX_NAME_CHARS]
    for i in long_keys[:MAX_BAD_FINDINGS]:
        out.append((f"attributes[{i}].key", f"must be at most {limits.MAX_NAME_CHARS} characters"))
    if sum(kv.ByteSize() for kv in attributes) > limits.MAX_BODY_CHARS:
        out.append(("attributes", f"exceed {limits.MAX_BODY_CHARS} bytes encoded"))


def _check_ids(span: span_pb2.Span, out: list[Violation]) -> None:
    if len(span.trace_id) != limits.TRACE_ID_BYTES or not any(span.trace_id):
        out.append(("trace_id", f"must be {limits.TRACE_ID_BYTES} bytes, not all zero"))
    if len(span.span_id) != limits.SPAN_ID_BYTES or not any(span.span_id):
        out.append(("span_id", f"must be {limits.SPAN_ID_BYTES} bytes, not all zero"))
    if span.parent_span_id and len(span.parent_span_id) != limits.SPAN_ID_BYTES:
        out.append(("parent_span_id", f"must be empty or {limits.SPAN_ID_BYTES} bytes"))


def _check_tenant(tenant: str, out: list[Violation]) -> None:
    problem = limits.tenant_problem(tenant)
    if problem is not None:
        out.append(("tenant", problem))


def _check_times(span: span_pb2.Span, now: float, out: list[Violation]) -> None:
    if not span.HasField("start_time"):
        out.append(("start_time", "is required"))
        return
    if not span.HasField("end_time"):
        out.append(("end_time", "is required"))
        return
    for name in ("start_time", "end_time"):
        if not 0 <= getattr(span, name).nanos < 1_000_000_000:
            out.append((f"{name}.nanos", "must be in [0, 999999999]"))
    start = span.start_time.seconds + span.start_time.nanos / 1e9
    end = span.end_time.seconds + span.end_time.nanos / 1e9
    if start < limits.MIN_START_UNIX_SECONDS:
        out.append(("start_time", "must be after 2000-01-01"))
    if end > now + limits.MAX_FUTURE_SECONDS:
        out.append(("end_time", "is more than a day in the future"))
    if end < start:
        out.append(("end_time", "must not be before start_time"))
    if span.HasField("time_to_first_token"):
        ttft = span.time_to_first_token
        if ttft.seconds < 0 or ttft.nanos < 0:
            out.append(("time_to_first_token", "must not be negative"))
        elif ttft.seconds + ttft.nanos / 1e9 > max(end - start, 0) + 1e-6:
            out.append(("time_to_first_token", "must not exceed the span's duration"))


def _check_status(status: span_pb2.SpanStatus, out: list[Violation]) -> None:
    code = status.http_status_code
    if code != 0 and not 100 <= code <= 599:
        out.append(("status.http_status_code", "must be 0 or an HTTP status 100-599"))
    if status.code not in _STATUS_CODES:
        out.append(("status.code", "unknown status code"))
    _check_len(out, "status.error_message", status.error_message, limits.MAX_TEXT_CHARS)
    _check_len(out, "status.error_type", status.error_type, limits.MAX_NAME_CHARS)


def _check_usage(usage: span_pb2.Usage, out: list[Violation]) -> None:
    counts = (
        usage.input_tokens,
        usage.output_tokens,
        usage.total_tokens,
        usage.cache_read_input_tokens,
        usage.cache_creation_input_tokens,
        usage.reasoning_output_tokens,
    )
    if min(counts) >= 0 and max(counts) <= limits.MAX_TOKENS:
        return
    for name in (
        "input_tokens",
        "output_tokens",
        "total_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
        "reasoning_output_tokens",
    ):
        value = getattr(usage, name)
        if value < 0:
            out.append((f"usage.{name}", "must not be negative"))
        elif value > limits.MAX_TOKENS:
            out.append((f"usage.{name}", f"must be at most {limits.MAX_TOKENS}"))


def _check_cost(span: span_pb2.Span, out: list[Violation]) -> None:
    cost = span.cost
    for name, value in (
        ("total_usd", cost.total_usd),
        ("input_usd", cost.input_usd),
        ("output_usd", cost.output_usd),
    ):
        if not math.isfinite(value) or value < 0 or value > limits.MAX_COST_USD:
            out.append((f"cost.{name}", f"must be a finite amount from 0 to {limits.MAX_COST_USD}"))
    if span.HasField("security_score") and not 0 <= span.security_score <= 100:
        out.append(("security_score", "must be 0-100"))


def _check_content(span: span_pb2.Span, out: list[Violation]) -> None:
    req, resp = span.request, span.response
    if len(req.parameters.stop_sequences) > limits.MAX_STOP_SEQUENCES:
        out.append(
            ("request.parameters.stop_sequences", f"at most {limits.MAX_STOP_SEQUENCES} stop sequences")
        )
    counts = (len(req.messages), len(req.tools), len(resp.choices))
    # Encoded size bounds every text length below it (a character takes at least one byte).
    if max(counts) <= limits.MAX_ITEMS and max(req.ByteSize(), resp.ByteSize()) <= limits.MAX_BODY_CHARS:
        # The size bound does not cover response.id, whose limit is far below the body's.
        _check_len(out, "response.id", resp.id, limits.MAX_NAME_CHARS)
        # The short content strings are not checked one by one here: that cost about 10 µs of a
        # span's 77 µs of ingest CPU (docs/benchmarks.md), and the size bound already holds each
        # within 1 MiB. docs/limits.md says so.
        return
    if len(req.messages) > limits.MAX_ITEMS:
        out.append(("request.messages", f"at most {limits.MAX_ITEMS} messages"))
    if len(req.tools) > limits.MAX_ITEMS:
        out.append(("request.tools", f"at most {limits.MAX_ITEMS} tools"))
    if len(resp.choices) > limits.MAX_ITEMS:
        out.append(("response.choices", f"at most {limits.MAX_ITEMS} choices"))
    _check_len(out, "request.body", req.body, limits.MAX_BODY_CHARS)
    _check_len(out, "response.body", resp.body, limits.MAX_BODY_CHARS)
    _check_len(out, "response.id", resp.id, limits.MAX_NAME_CHARS)
    if _content_chars(req.messages) > limits.MAX_BODY_CHARS:
        out.append(("request.messages", f"content exceeds {limits.MAX_BODY_CHARS} characters"))
    if _content_chars(c.message for c in resp.choices) > limits.MAX_BODY_CHARS:
        out.append(("response.choices", f"content exceeds {limits.MAX_BODY_CHARS} characters"))
    tools_chars = sum(len(t.parameters_json) + len(t.description) for t in req.tools)
    if tools_chars > limits.MAX_BODY_CHARS:
        out.append(("request.tools", f"definitions exceed {limits.MAX_BODY_CHARS} characters"))
    _check_names(req, resp, out)


def _check_names(req: span_pb2.LlmRequest, resp: span_pb2.LlmResponse, out: list[Violation]) -> None:
    """The short strings of the content (roles, names, ids, MIME types, stop sequences...): each
    at most MAX_NAME_CHARS. The content totals do not count them: once a side passed 1 MiB, a
    3 MiB role was stored."""
    _check_len(out, "request.parameters.output_type", req.parameters.output_type, limits.MAX_NAME_CHARS)
    for i, stop in enumerate(req.parameters.stop_sequences[: limits.MAX_STOP_SEQUENCES]):
        _check_len(out, f"request.parameters.stop_sequences[{i}]", stop, limits.MAX_NAME_CHARS)
    for i, tool in enumerate(req.tools[: limits.MAX_ITEMS]):
        _check_len(out, f"request.tools[{i}].type", tool.type, limits.MAX_NAME_CHARS)
        _check_len(out, f"request.tools[{i}].name", tool.name, limits.MAX_NAME_CHARS)
    for i, message in enumerate(req.messages[: limits.MAX_ITEMS]):
        _check_message_names(f"request.messages[{i}]", message, out)
    for i, choice in enumerate(resp.choices[: limits.MAX_ITEMS]):
        _check_len(out, f"response.choices[{i}].finish_reason", choice.finish_reason, limits.MAX_NAME_CHARS)
        if choice.HasField("message"):
            _check_message_names(f"response.choices[{i}].message", choice.message, out)


def _check_message_names(path: str, message: span_pb2.Message, out: list[Violation]) -> None:
    _check_len(out, f"{path}.role", message.role, limits.MAX_NAME_CHARS)
    _check_len(out, f"{path}.name", message.name, limits.MAX_NAME_CHARS)
    _check_len(out, f"{path}.tool_call_id", message.tool_call_id, limits.MAX_NAME_CHARS)
    for j, part in enumerate(message.parts):
        _check_len(out, f"{path}.parts[{j}].mime_type", part.mime_type, limits.MAX_NAME_CHARS)
    for j, call in enumerate(message.tool_calls):
        _check_len(out, f"{path}.tool_calls[{j}].id", call.id, limits.MAX_NAME_CHARS)
        _check_len(out, f"{path}.tool_calls[{j}].type", call.type, limits.MAX_NAME_CHARS)
        _check_len(out, f"{path}.tool_calls[{j}].name", call.name, limits.MAX_NAME_CHARS)


def _content_chars(messages: Iterable[span_pb2.Message]) -> int:
    total = 0
    for message in messages:
        for part in message.parts:
            total += len(part.text) + len(part.uri)
        for call in message.tool_calls:
            total += len(call.arguments)
    return total


def _check_findings(span: span_pb2.Span, now: float, out: list[Violation]) -> None:
    if len(span.findings) > limits.MAX_ITEMS:
        out.append(("findings", f"at most {limits.MAX_ITEMS} findings"))
        return
    bad = 0
    for i, finding in enumerate(span.findings):
        if bad == MAX_BAD_FINDINGS:
            out.append(("findings", f"not checked past findings[{i - 1}]: fix the problems above first"))
            return
        before = len(out)
        _check_finding(span, finding, f"findings[{i}]", now, out)
        bad += len(out) > before


def _check_finding(
    span: span_pb2.Span, finding: finding_pb2.Finding, path: str, now: float, out: list[Violation]
) -> None:
    if not finding.type:
        out.append((f"{path}.type", "is required"))
    _check_len(out, f"{path}.type", finding.type, limits.MAX_NAME_CHARS)
    if finding.severity not in _SEVERITIES:
        out.append((f"{path}.severity", "must be INFO, LOW, MEDIUM, HIGH or CRITICAL"))
    if not 0.0 <= finding.confidence <= 1.0:
        out.append((f"{path}.confidence", "must be in [0, 1]"))
    if finding.span_id and finding.span_id != span.span_id:
        out.append((f"{path}.span_id", "must be empty or the span's own span_id"))
    if finding.trace_id and finding.trace_id != span.trace_id:
        out.append((f"{path}.trace_id", "must be empty or the span's own trace_id"))
    if finding.HasField("create_time"):
        created = finding.create_time
        if not 0 <= created.nanos < 1_000_000_000:
            out.append((f"{path}.create_time.nanos", "must be in [0, 999999999]"))
        elif not limits.MIN_START_UNIX_SECONDS <= created.seconds <= now + limits.MAX_FUTURE_SECONDS:
            out.append((f"{path}.create_time", "must be after 2000-01-01 and at most a day ahead"))
    _check_len(out, f"{path}.id", finding.id, limits.MAX_NAME_CHARS)
    _check_len(out, f"{path}.description", finding.description, limits.MAX_TEXT_CHARS)
    _check_len(out, f"{path}.excerpt", finding.excerpt, limits.MAX_TEXT_CHARS)
    _check_len(out, f"{path}.detector", finding.detector, limits.MAX_NAME_CHARS)
    _check_len(out, f"{path}.location", finding.location, limits.MAX_NAME_CHARS)
    if finding.metadata:
        _check_metadata(finding.metadata, f"{path}.metadata", out)


def _check_metadata(metadata: Mapping[str, str], path: str, out: list[Violation]) -> None:
    if len(metadata) > limits.MAX_FINDING_METADATA_ENTRIES:
        out.append((path, f"at most {limits.MAX_FINDING_METADATA_ENTRIES} entries"))
        return
    # One violation for each kind of problem: a map entry has no stable position to name, and
    # its key (user data) is never quoted back.
    if any(len(key) > limits.MAX_NAME_CHARS for key in metadata):
        out.append((path, f"keys must be at most {limits.MAX_NAME_CHARS} characters"))
    if any(len(value) > limits.MAX_TEXT_CHARS for value in metadata.values()):
        out.append((path, f"values must be at most {limits.MAX_TEXT_CHARS} characters"))


def _check_len(out: list[Violation], path: str, value: str, limit: int) -> None:
    if len(value) > limit:
        out.append((path, f"must be at most {limit} characters"))
