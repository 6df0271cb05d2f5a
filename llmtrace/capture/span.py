"""Building the protobuf span of one exchange: the only capture module that knows protobuf.

Every string and list is held to `llmtrace.limits` (cut, with the truncated flags set), and the
content of each side to the capture limit, so the core never rejects a span built here.
"""

from __future__ import annotations

import time
from typing import Final

from llmtrace import limits
from llmtrace.api.v1 import span_pb2
from llmtrace.capture import model
from llmtrace.capture.content_filter import BODIES_FULL, BODIES_METADATA, ContentFilter, normalize_mode
from llmtrace.capture.exchange import ExchangeMeta
from llmtrace.rpc.exchange_convert import SEVERITY_TO_PB
from llmtrace.security.findings import Finding
from llmtrace.security.masking import mask_sensitive

ERROR_STREAM_CUT = "upstream_stream_cut"
_STREAM_CUT_MESSAGE = "the upstream stream ended before its final event"
_PART_TYPES = {
    model.PART_TEXT: span_pb2.CONTENT_PART_TYPE_TEXT,
    model.PART_IMAGE: span_pb2.CONTENT_PART_TYPE_IMAGE,
    model.PART_AUDIO: span_pb2.CONTENT_PART_TYPE_AUDIO,
    model.PART_FILE: span_pb2.CONTENT_PART_TYPE_FILE,
    model.PART_REFUSAL: span_pb2.CONTENT_PART_TYPE_REFUSAL,
    model.PART_REASONING: span_pb2.CONTENT_PART_TYPE_REASONING,
    model.PART_OTHER: span_pb2.CONTENT_PART_TYPE_OTHER,
}


def _cut(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[:limit]


def _name(value: str) -> str:
    """A short metadata string (model, id, role...) cut to the name limit."""
    return _cut(value, limits.MAX_NAME_CHARS)


def build_span(
    meta: ExchangeMeta,
    request: model.ParsedRequest,
    response: model.ParsedResponse | None,
    *,
    bodies: str,
    max_body_bytes: int,
) -> span_pb2.Span:
    """The span of one exchange, with content as the `bodies` mode (`full`, `redacted`,
    `metadata`) allows and each side's content within `max_body_bytes` characters."""
    span = exchange_span(meta, bodies=bodies)
    add_content(
        span,
        request,
        response,
        bodies=bodies,
        max_body_bytes=max_body_bytes,
        method=meta.method,
        path=meta.path,
        request_body_truncated=meta.request_body_truncated,
    )
    return span


def exchange_span(meta: ExchangeMeta, *, bodies: str) -> span_pb2.Span:
    """What the proxy itself observed (identity, times, outcome, headers, its own findings),
    without anything read from the bodies: `add_content` adds that, in the shim or the core."""
    mode = normalize_mode(bodies)
    span = span_pb2.Span(
        trace_id=meta.trace_id,
        span_id=meta.span_id,
        parent_span_id=meta.parent_span_id,
        tenant=_cut(meta.tenant, limits.MAX_TENANT_CHARS),
        agent=_cut(meta.agent, limits.MAX_AGENT_CHARS),
        session_id=_name(meta.session_id),
        client_address=_name(meta.client_address),
        user_agent=_cut(meta.user_agent, limits.MAX_TEXT_CHARS),
        upstream_request_id=_name(meta.upstream_request_id),
        server_address=_name(meta.server_address),
        api_key_fingerprint=_name(meta.api_key_fingerprint),
    )
    _set_times(span, meta)
    status = span.status
    status.http_status_code = meta.http_status if 100 <= meta.http_status <= 599 else 0
    # Our own failure, if any; `add_content` completes the status from the answer.
    status.error_type = _name(meta.error_type)
    status.error_message = _cut(meta.error_message, limits.MAX_TEXT_CHARS)
    _set_attributes(span, meta, mode)
    if meta.findings:
        _set_findings(span, meta.findings, mode)
    if meta.security_score is not None:
        span.security_score = min(max(meta.security_score, 0), 100)
    return span


def add_content(
    span: span_pb2.Span,
    request: model.ParsedRequest,
    response: model.ParsedResponse | None,
    *,
    bodies: str,
    max_body_bytes: int,
    method: str,
    path: str,
    request_body_truncated: bool,
) -> None:
    """Complete an `exchange_span` with what the bodies say: operation, models, name, the
    status's error from the answer, request, response and usage."""
    mode = normalize_mode(bodies)
    budget = max(0, min(max_body_bytes, limits.MAX_BODY_CHARS))
    request_model = _name(request.model)
    span.operation = _name(request.operation)
    span.provider = _name(request.provider)
    span.request_model = request_model
    span.response_model = _name(response.model) if response is not None else ""
    span.name = _name(_span_name(method, path, request.operation, request_model))
    _set_status(span.status, response, mode)
    _set_request(span.request, request, mode, budget, request_body_truncated)
    if response is not None:
        _set_response(span.response, response, mode, budget)
        if response.usage is not None:
            _set_usage(span.usage, response.usage)


def llm_request(meta: ExchangeMeta, request: model.ParsedRequest) -> tuple[span_pb2.LlmRequest, bool]:
    """The request as `LlmRequest` for the core's `Analyze` RPC: content in full, up to the
    core's own limit (not the capture limit: what is analysed is not stored); and whether message
    content was cut to that limit (the core then does not see all of it)."""
    out = span_pb2.LlmRequest()
    cut = _set_request(out, request, BODIES_FULL, limits.MAX_BODY_CHARS, meta.request_body_truncated)
    return out, cut


def _set_findings(span: span_pb2.Span, findings: list[Finding], mode: str) -> None:
    keep_excerpt = mode != BODIES_METADATA  # excerpts are masked, but metadata mode keeps no content
    for finding in findings[: limits.MAX_ITEMS]:
        span.findings.add(
            type=_name(finding.type),
            severity=SEVERITY_TO_PB[finding.severity],
            confidence=min(max(finding.confidence, 0.0), 1.0),
            detector=_name(finding.detector),
            location=_name(finding.location),
            description=_cut(finding.description, limits.MAX_TEXT_CHARS),
            excerpt=_cut(finding.excerpt, limits.MAX_TEXT_CHARS) if keep_excerpt else "",
        )


def _span_name(method: str, path: str, operation: str, request_model: str) -> str:
    if not operation:  # an unknown route: name it as OpenTelemetry names HTTP spans
        return f"{method} {path}".strip()
    return f"{operation} {request_model}".strip()


def _set_times(span: span_pb2.Span, meta: ExchangeMeta) -> None:
    # The proxy's clock readings are trusted but clamped, so the span is always valid.
    minimum = limits.MIN_START_UNIX_SECONDS * 1_000_000_000
    end = meta.end_unix_nano
    start = meta.start_unix_nano
    if start < minimum:
        start = end if end >= minimum else time.time_ns()
    end = max(end, start)
    # Set directly: protobuf's FromNanoseconds is Python, and checks what is clamped here.
    span.start_time.seconds, span.start_time.nanos = divmod(start, 1_000_000_000)
    span.end_time.seconds, span.end_time.nanos = divmod(end, 1_000_000_000)
    if meta.ttft_nano is not None:
        ttft = span.time_to_first_token
        ttft.seconds, ttft.nanos = divmod(min(max(meta.ttft_nano, 0), end - start), 1_000_000_000)


def _set_status(status: span_pb2.SpanStatus, response: model.ParsedResponse | None, mode: str) -> None:
    """The outcome: our own failure (already on `status`, from `exchange_span`) first, else the
    answer's error, else the HTTP status's."""
    http = status.http_status_code
    error_type = status.error_type
    message = status.error_message
    if response is not None:
        error_type = error_type or response.error_type
        if not message and response.error_message and mode == BODIES_METADATA:
            # Upstream messages often quote the request (vLLM and LiteLLM echo the offending
            # input): metadata mode keeps only that there was one. The proxy's own messages,
            # already on `status`, hold no content and are kept.
            message = f"upstream error (HTTP {http}); message not kept at capture.bodies: metadata"
        message = message or response.error_message
        if response.stream_cut and not error_type:
            error_type = ERROR_STREAM_CUT
            message = message or _STREAM_CUT_MESSAGE
        if response.error_message and not error_type:
            error_type = "upstream_error"
    if not error_type and http >= 400:
        error_type = str(http)  # as OpenTelemetry's `error.type` does for HTTP errors
    if not error_type and status.code != span_pb2.STATUS_CODE_ERROR:
        status.code = span_pb2.STATUS_CODE_OK
        return
    # An ERROR the sender already gave stays one, even without a type and with a good answer:
    # it knows what the answer cannot tell (the client gave up on it, say).
    status.code = span_pb2.STATUS_CODE_ERROR
    status.error_type = _name(error_type)
    # Upstream error messages may quote the request: masked unless content is kept in full.
    if mode != BODIES_FULL:
        message = mask_sensitive(_cut(message, limits.MAX_TEXT_CHARS))
    status.error_message = _cut(message, limits.MAX_TEXT_CHARS)


def _set_request(
    out: span_pb2.LlmRequest, request: model.ParsedRequest, mode: str, budget: int, body_truncated: bool
) -> bool:
    """Fill `out`; returns whether message content (texts, tool calls) was cut or dropped."""
    content = ContentFilter(mode, budget)
    truncated = request.truncated or body_truncated
    messages_cut = len(request.messages) > limits.MAX_ITEMS
    if messages_cut:
        truncated = True
    for message in request.messages[: limits.MAX_ITEMS]:
        _set_message(out.messages.add(), message, content)
    tools = ContentFilter(mode, budget)
    if len(request.tools) > limits.MAX_ITEMS:
        truncated = True
    for tool in request.tools[: limits.MAX_ITEMS]:
        out.tools.add(
            type=_name(tool.type),
            name=_name(tool.name),
            description=tools.text(tool.description),
            parameters_json=tools.text(tool.parameters_json),
        )
    _set_parameters(out.parameters, request.parameters, mode)
    body = ContentFilter(mode, budget)
    out.body = body.text(request.raw_body)
    out.truncated = truncated or content.truncated or tools.truncated or body.truncated
    return messages_cut or content.truncated


def _set_parameters(out: span_pb2.RequestParameters, params: model.Parameters, mode: str) -> None:
    if params.temperature is not None:
        out.temperature = params.temperature
    if params.top_p is not None:
        out.top_p = params.top_p
    if params.max_tokens is not None:
        out.max_tokens = params.max_tokens
    if params.stream is not None:
        out.stream = params.stream
    if params.frequency_penalty is not None:
        out.frequency_penalty = params.frequency_penalty
    if params.presence_penalty is not None:
        out.presence_penalty = params.presence_penalty
    if params.seed is not None:
        out.seed = params.seed
    if params.choice_count is not None:
        out.choice_count = params.choice_count
    out.output_type = _name(params.output_type)
    if mode != BODIES_METADATA:  # stop sequences are text the client wrote
        masks = mode != BODIES_FULL
        for stop in params.stop[: limits.MAX_STOP_SEQUENCES]:  # the core's limit
            out.stop_sequences.append(_name(mask_sensitive(stop) if masks else stop))


def _set_response(out: span_pb2.LlmResponse, response: model.ParsedResponse, mode: str, budget: int) -> None:
    out.id = _name(response.id)
    content = ContentFilter(mode, budget)
    truncated = response.truncated or len(response.choices) > limits.MAX_ITEMS
    for choice in response.choices[: limits.MAX_ITEMS]:
        added = out.choices.add(index=max(min(choice.index, 2**31 - 1), -(2**31)))
        added.finish_reason = _name(choice.finish_reason)
        _set_message(added.message, choice.message, content)
    body = ContentFilter(mode, budget)
    out.body = body.text(response.raw_body)
    out.truncated = truncated or content.truncated or body.truncated


def _set_message(out: span_pb2.Message, message: model.Message, content: ContentFilter) -> None:
    out.role = _name(message.role)
    out.name = _name(content.label(message.name))
    out.tool_call_id = _name(message.tool_call_id)
    for part in message.parts:
        out.parts.add(
            type=_PART_TYPES.get(part.type, span_pb2.CONTENT_PART_TYPE_OTHER),
            text=content.text(part.text),
            uri=content.text(part.uri),
            mime_type=_name(part.mime),
        )
    for call in message.tool_calls:
        out.tool_calls.add(
            id=_name(call.id),
            type=_name(call.type),
            name=_name(call.name),
            arguments=content.text(call.arguments),
        )


def _set_usage(out: span_pb2.Usage, usage: model.Usage) -> None:
    def count(value: int) -> int:
        return min(max(value, 0), limits.MAX_TOKENS)

    out.input_tokens = count(usage.input_tokens)
    out.output_tokens = count(usage.output_tokens)
    out.total_tokens = count(usage.total_tokens)
    out.cache_read_input_tokens = count(usage.cache_read_input_tokens)
    out.cache_creation_input_tokens = count(usage.cache_creation_input_tokens)
    out.reasoning_output_tokens = count(usage.reasoning_output_tokens)
    out.estimated = usage.estimated


class _AttributeEncodings:
    """Serialised `Span.attributes` entries, each made once by protobuf and kept by key and value.

    Most of an exchange's attributes repeat from one request to the next (method, path, status,
    the same few headers): merging their kept bytes into the span costs a dictionary lookup
    each, where building an entry in place costs about 2 us. Values seen once (request ids) are
    encoded afresh; the store is emptied when full, so such values cannot crowd out the rest.
    """

    MAX_ENTRIES: Final = 4096
    #: Longer values are encoded afresh rather than kept.
    MAX_KEPT_CHARS: Final = 256

    __slots__ = ("_kept",)

    def __init__(self) -> None:
        self._kept: dict[tuple[str, str | int], bytes] = {}

    def encode(self, key: str, value: str | int) -> bytes:
        """The bytes of one `attributes` entry of a serialised span (cut to the limits)."""
        entry = (key, value)
        kept = self._kept.get(entry)
        if kept is not None:
            return kept
        one = span_pb2.Span()
        item = one.attributes.add()
        item.key = _name(key)
        if isinstance(value, int):
            item.value.int_value = value
        else:
            item.value.string_value = _cut(value, limits.MAX_TEXT_CHARS)
        encoded = one.SerializeToString()
        if isinstance(value, int) or len(value) <= self.MAX_KEPT_CHARS:
            if len(self._kept) >= self.MAX_ENTRIES:
                self._kept.clear()
            self._kept[entry] = encoded
        return encoded


_ATTRIBUTES = _AttributeEncodings()


def _set_attributes(span: span_pb2.Span, meta: ExchangeMeta, mode: str) -> None:
    # Serialised entries merged in one call: in protobuf's encoding a repeated field's entries
    # concatenate, and merging appends them in order.
    encode = _ATTRIBUTES.encode
    parts = [encode("http.request.method", meta.method), encode("url.path", meta.path)]
    if meta.query:
        parts.append(encode("url.query", meta.query))
    if meta.http_status:
        parts.append(encode("http.response.status_code", meta.http_status))
    for name, value in meta.request_headers.items():
        parts.append(encode("http.request.header." + name, value))
    for name, value in meta.response_headers.items():
        parts.append(encode("http.response.header." + name, value))
    parts.append(encode("llmtrace.capture.bodies", mode))
    if meta.attributes:
        for name, extra in meta.attributes.items():
            parts.append(encode(name, extra))
    del parts[limits.MAX_ITEMS - len(span.attributes) :]
    span.MergeFromString(b"".join(parts))
