"""Spans built from captured exchanges: every field mapped, content modes honoured, limits kept,
and `validate_span` (the core's ingest check) accepting every span built."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest

from llmtrace import limits
from llmtrace.api.v1 import span_pb2
from llmtrace.capture import model
from llmtrace.capture.exchange import ExchangeMeta
from llmtrace.capture.request_parse import parse_request
from llmtrace.capture.response_parse import ResponseCapture
from llmtrace.capture.span import build_span
from llmtrace.ingest.validation import validate_span

LIMIT = 1024 * 1024
SECRET_PROMPT = "My card is 4111 1111 1111 1111, mail jane@example.com, key sk-abcdefghijklmnopqrstuvwx"


def meta(**fields: Any) -> ExchangeMeta:
    now = time.time_ns()
    values: dict[str, Any] = {
        "trace_id": os.urandom(16),
        "span_id": os.urandom(8),
        "parent_span_id": b"",
        "tenant": "acme",
        "agent": "support-bot",
        "session_id": "sess-1",
        "method": "POST",
        "path": "/v1/chat/completions",
        "query": "",
        "client_address": "10.0.0.7",
        "user_agent": "OpenAI/Python 1.50.0",
        "server_address": "api.openai.com",
        "api_key_fingerprint": "fp:abcd",
        "request_headers": {"openai-organization": "org-1"},
        "response_headers": {"x-ratelimit-remaining-requests": "99"},
        "start_unix_nano": now - 2_000_000_000,
        "end_unix_nano": now,
        "ttft_nano": 300_000_000,
        "http_status": 200,
        "upstream_request_id": "req_123",
    }
    values.update(fields)
    return ExchangeMeta(**values)


def chat_exchange(
    prompt: str = SECRET_PROMPT, answer: str = SECRET_PROMPT
) -> tuple[model.ParsedRequest, model.ParsedResponse]:
    body = {
        "model": "gpt-4o",
        "temperature": 0.3,
        "stop": [SECRET_PROMPT],
        "messages": [{"role": "user", "content": prompt}],
        "tools": [{"type": "function", "function": {"name": "lookup", "description": SECRET_PROMPT}}],
    }
    request = parse_request(
        "/v1/chat/completions", json.dumps(body).encode(), "application/json", max_body_bytes=LIMIT
    )
    response_body = {
        "id": "chatcmpl-1",
        "model": "gpt-4o-2024-08-06",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": answer,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "lookup", "arguments": SECRET_PROMPT},
                        }
                    ],
                },
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 10,
            "completion_tokens": 20,
            "total_tokens": 30,
            "prompt_tokens_details": {"cached_tokens": 4},
        },
    }
    reader = ResponseCapture(request, 200, "application/json", "", max_body_bytes=LIMIT)
    reader.feed(json.dumps(response_body).encode())
    return request, reader.finish()


def assert_valid(span: span_pb2.Span) -> None:
    assert validate_span(span) == []
    span.ParseFromString(span.SerializeToString())  # and it survives the wire


def all_texts(span: span_pb2.Span) -> str:
    """Every content string of a span, joined."""
    out = [span.request.body, span.response.body, span.status.error_message]
    out += list(span.request.parameters.stop_sequences)
    messages = list(span.request.messages) + [c.message for c in span.response.choices]
    for message in messages:
        out += [p.text + p.uri for p in message.parts] + [c.arguments for c in message.tool_calls]
    out += [t.description + t.parameters_json for t in span.request.tools]
    return "\n".join(out)


def test_full_mode_maps_every_field() -> None:
    request, response = chat_exchange()
    exchange = meta(query="api-version=1")
    span = build_span(exchange, request, response, bodies="full", max_body_bytes=LIMIT)
    assert_valid(span)
    assert (span.trace_id, span.span_id, span.tenant, span.agent) == (
        exchange.trace_id,
        exchange.span_id,
        "acme",
        "support-bot",
    )
    assert (span.operation, span.provider, span.request_model, span.response_model) == (
        "chat",
        "openai",
        "gpt-4o",
        "gpt-4o-2024-08-06",
    )
    assert span.name == "chat gpt-4o" and span.session_id == "sess-1"
    assert (span.client_address, span.user_agent, span.upstream_request_id) == (
        "10.0.0.7",
        "OpenAI/Python 1.50.0",
        "req_123",
    )
    assert (span.server_address, span.api_key_fingerprint) == ("api.openai.com", "fp:abcd")
    assert span.start_time.ToNanoseconds() == exchange.start_unix_nano
    assert span.end_time.ToNanoseconds() == exchange.end_unix_nano
    assert span.time_to_first_token.ToNanoseconds() == 300_000_000
    assert span.status.code == span_pb2.STATUS_CODE_OK and span.status.http_status_code == 200
    (message,) = span.request.messages
    assert message.role == "user" and message.parts[0].text == SECRET_PROMPT
    assert message.parts[0].type == span_pb2.CONTENT_PART_TYPE_TEXT
    assert span.request.parameters.temperature == pytest.approx(0.3)
    assert not span.request.parameters.HasField("seed")
    assert span.request.tools[0].name == "lookup"
    assert span.response.id == "chatcmpl-1" and span.response.choices[0].finish_reason == "stop"
    assert span.response.choices[0].message.tool_calls[0].arguments == SECRET_PROMPT
    assert (span.usage.input_tokens, span.usage.output_tokens, span.usage.total_tokens) == (10, 20, 30)
    assert span.usage.cache_read_input_tokens == 4 and not span.usage.estimated
    attributes = {a.key: a.value for a in span.attributes}
    assert attributes["http.request.method"].string_value == "POST"
    assert attributes["url.path"].string_value == "/v1/chat/completions"
    assert attributes["url.query"].string_value == "api-version=1"
    assert attributes["http.response.status_code"].int_value == 200
    assert attributes["http.request.header.openai-organization"].string_value == "org-1"
    assert attributes["http.response.header.x-ratelimit-remaining-requests"].string_value == "99"
    assert attributes["llmtrace.capture.bodies"].string_value == "full"


def test_metadata_mode_keeps_no_content() -> None:
    request, response = chat_exchange()
    span = build_span(meta(), request, response, bodies="metadata", max_body_bytes=LIMIT)
    assert_valid(span)
    serialized = span.SerializeToString()
    for secret in (b"4111", b"jane@example.com", b"sk-abc", b"My card"):
        assert secret not in serialized
    # Structure stays: roles, counts, tool names, models, usage.
    assert [m.role for m in span.request.messages] == ["user"] and len(span.request.messages[0].parts) == 1
    assert span.request.tools[0].name == "lookup" and span.request.tools[0].description == ""
    assert span.response.choices[0].message.tool_calls[0].name == "lookup"
    assert span.usage.total_tokens == 30 and span.response_model == "gpt-4o-2024-08-06"


def test_redacted_mode_masks_every_text() -> None:
    request, response = chat_exchange()
    request.raw_body = SECRET_PROMPT
    response.raw_body = SECRET_PROMPT
    span = build_span(meta(), request, response, bodies="redacted", max_body_bytes=LIMIT)
    assert_valid(span)
    texts = all_texts(span)
    assert "[CREDIT_CARD]" in texts and "[EMAIL]" in texts and "[OPENAI_KEY]" in texts
    serialized = span.SerializeToString()
    for secret in (b"4111", b"jane@example.com", b"sk-abc"):
        assert secret not in serialized
    assert "My card is" in texts  # the rest of the text is kept


def test_unknown_mode_fails_closed_to_metadata() -> None:
    request, response = chat_exchange()
    span = build_span(meta(), request, response, bodies="everything", max_body_bytes=LIMIT)
    assert b"4111" not in span.SerializeToString()


@pytest.mark.parametrize("bodies", ["full", "redacted"])
def test_content_is_cut_to_the_capture_limit_per_side(bodies: str) -> None:
    request, response = chat_exchange(prompt="p" * 5000 + " jane@example.com", answer="a" * 5000)
    span = build_span(meta(), request, response, bodies=bodies, max_body_bytes=1000)
    assert_valid(span)
    request_chars = sum(len(p.text) for m in span.request.messages for p in m.parts)
    response_chars = sum(len(p.text) for c in span.response.choices for p in c.message.parts)
    response_chars += sum(len(t.arguments) for c in span.response.choices for t in c.message.tool_calls)
    assert request_chars <= 1000 and response_chars <= 1000
    assert span.request.truncated and span.response.truncated
    assert span.request.messages[0].parts[0].text == "p" * 1000


def test_huge_everything_stays_within_core_limits() -> None:
    huge = "x" * (limits.MAX_BODY_CHARS + 10)
    body = {
        "model": "m" * 5000,
        "messages": [{"role": "r" * 900, "content": huge, "name": "n" * 900} for _ in range(3)]
        + [{"role": "user", "content": "hi"}] * (limits.MAX_ITEMS + 5),
        "tools": [{"type": "function", "function": {"name": "t", "description": huge}}] * 2,
        "stop": ["s" * 2000] * 100,
    }
    request = parse_request("/v1/chat/completions", json.dumps(body).encode(), "", max_body_bytes=10**9)
    response = model.ParsedResponse(
        id="i" * 2000,
        model="m" * 2000,
        choices=[
            model.Choice(i, model.Message("assistant", [model.Part("text", text=huge)])) for i in range(3)
        ],
        usage=model.Usage(input_tokens=10**12, output_tokens=-5),
        error_message="e" * 100_000,
        error_type="t" * 5000,
        raw_body=huge,
    )
    exchange = meta(
        agent="a" * 1000,
        user_agent="u" * 100_000,
        session_id="s" * 1000,
        request_headers={"h" * 1000: "v" * 100_000},
        ttft_nano=10**18,
        http_status=999,
    )
    for bodies in ("full", "redacted", "metadata"):
        span = build_span(exchange, request, response, bodies=bodies, max_body_bytes=10**9)
        assert_valid(span)
        assert len(span.request.messages) == limits.MAX_ITEMS and span.request.truncated
        assert span.usage.input_tokens == limits.MAX_TOKENS and span.usage.output_tokens == 0
        assert span.status.http_status_code == 0 and span.status.code == span_pb2.STATUS_CODE_ERROR


def test_stream_cut_marks_the_span_as_an_error() -> None:
    request = parse_request("/v1/messages", b'{"model": "claude", "stream": true}', "", max_body_bytes=LIMIT)
    reader = ResponseCapture(request, 200, "text/event-stream", "", max_body_bytes=LIMIT)
    reader.feed(b'event: message_start\ndata: {"type": "message_start", "message": {"id": "m"}}\n\n')
    response = reader.finish()
    span = build_span(meta(path="/v1/messages"), request, response, bodies="full", max_body_bytes=LIMIT)
    assert_valid(span)
    assert span.status.code == span_pb2.STATUS_CODE_ERROR
    assert span.status.error_type == "upstream_stream_cut" and span.status.http_status_code == 200
    assert span.usage.estimated
    # The proxy's own error (the client went away) wins over the cut it caused.
    gone = meta(error_type="client_disconnected", error_message="client left")
    span = build_span(gone, request, response, bodies="full", max_body_bytes=LIMIT)
    assert (span.status.error_type, span.status.error_message) == ("client_disconnected", "client left")


def test_upstream_error_status_and_type() -> None:
    request, _ = chat_exchange()
    reader = ResponseCapture(request, 429, "application/json", "", max_body_bytes=LIMIT)
    reader.feed(b'{"error": {"message": "Slow down jane@example.com", "type": "requests"}}')
    response = reader.finish()
    span = build_span(meta(http_status=429), request, response, bodies="redacted", max_body_bytes=LIMIT)
    assert_valid(span)
    assert span.status.code == span_pb2.STATUS_CODE_ERROR and span.status.http_status_code == 429
    assert span.status.error_type == "requests"
    assert span.status.error_message == "Slow down [EMAIL]"
    assert not span.HasField("usage") or span.usage.total_tokens == 0
    plain = build_span(meta(http_status=503), request, None, bodies="full", max_body_bytes=LIMIT)
    assert plain.status.error_type == "503" and plain.status.code == span_pb2.STATUS_CODE_ERROR
    assert_valid(plain)


def test_unknown_route_is_named_like_an_http_span_and_keeps_its_raw_body() -> None:
    request = parse_request("/v1/audio/speech", b'{"input": "hi"}', "application/json", max_body_bytes=LIMIT)
    span = build_span(meta(path="/v1/audio/speech"), request, None, bodies="full", max_body_bytes=LIMIT)
    assert_valid(span)
    assert span.name == "POST /v1/audio/speech" and span.operation == ""
    assert span.request.body == '{"input": "hi"}'


def test_bad_clock_readings_are_clamped_to_a_valid_span() -> None:
    request, response = chat_exchange()
    now = time.time_ns()
    span = build_span(
        meta(start_unix_nano=0, end_unix_nano=now, ttft_nano=-4),
        request,
        response,
        bodies="full",
        max_body_bytes=LIMIT,
    )
    assert_valid(span)
    backwards = meta(start_unix_nano=now, end_unix_nano=now - 10**9, ttft_nano=5 * 10**9)
    span = build_span(backwards, request, response, bodies="full", max_body_bytes=LIMIT)
    assert_valid(span)
    assert span.end_time == span.start_time


def test_request_truncated_by_the_proxy_is_marked() -> None:
    request, response = chat_exchange()
    span = build_span(
        meta(request_body_truncated=True), request, response, bodies="full", max_body_bytes=LIMIT
    )
    assert span.request.truncated and not span.response.truncated


def test_secret_cut_by_the_budget_never_leaks_half_unmasked() -> None:
    key = "sk-" + "Q" * 40
    prompt = "a" * 989 + " " + key + " " + "b" * 20_000
    request, response = chat_exchange(prompt=prompt)
    span = build_span(meta(), request, response, bodies="redacted", max_body_bytes=1000)
    text = span.request.messages[0].parts[0].text
    assert len(text) <= 1000 and "QQQ" not in text and "sk-" not in text


def test_metadata_mode_keeps_no_upstream_error_message_nor_participant_name() -> None:
    prompt = "Draft the Q3 layoff list: Alice Smith, Bob Jones"
    body = {"model": "llama", "messages": [{"role": "user", "contnt": prompt, "name": "alice_smith"}]}
    request = parse_request("/v1/chat/completions", json.dumps(body).encode(), "", max_body_bytes=LIMIT)
    # vLLM and LiteLLM validation errors echo the offending input.
    echo = f"Field required, input: {{'role': 'user', 'contnt': '{prompt}'}}"
    reader = ResponseCapture(request, 400, "application/json", "", max_body_bytes=LIMIT)
    reader.feed(json.dumps({"error": {"message": echo, "type": "BadRequestError", "code": 400}}).encode())
    response = reader.finish()
    span = build_span(meta(http_status=400), request, response, bodies="metadata", max_body_bytes=LIMIT)
    assert_valid(span)
    serialized = span.SerializeToString()
    assert b"Alice Smith" not in serialized and b"alice_smith" not in serialized
    assert span.status.error_type == "BadRequestError" and span.status.code == span_pb2.STATUS_CODE_ERROR
    assert "HTTP 400" in span.status.error_message and "metadata" in span.status.error_message
    full = build_span(meta(http_status=400), request, response, bodies="full", max_body_bytes=LIMIT)
    assert full.status.error_message == echo and full.request.messages[0].name == "alice_smith"
    # The proxy's own messages hold no content: kept in every mode.
    own = meta(http_status=502, error_type="upstream_unreachable", error_message="upstream unreachable")
    span = build_span(own, request, None, bodies="metadata", max_body_bytes=LIMIT)
    assert span.status.error_message == "upstream unreachable"


def test_redacted_mode_masks_participant_names() -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi", "name": "jane@example.com"}]}
    request = parse_request("/v1/chat/completions", json.dumps(body).encode(), "", max_body_bytes=LIMIT)
    span = build_span(meta(), request, None, bodies="redacted", max_body_bytes=LIMIT)
    assert span.request.messages[0].name == "[EMAIL]"


def test_times_are_kept_to_the_nanosecond() -> None:
    start = 1_760_000_000_123_456_789
    span = build_span(
        meta(start_unix_nano=start, end_unix_nano=start + 2_500_000_001, ttft_nano=300_000_007),
        *chat_exchange(),
        bodies="full",
        max_body_bytes=LIMIT,
    )
    assert span.start_time.ToNanoseconds() == start
    assert span.end_time.ToNanoseconds() == start + 2_500_000_001
    assert span.time_to_first_token.ToNanoseconds() == 300_000_007


def _attribute_pairs(span: span_pb2.Span) -> list[tuple[str, str | int]]:
    return [
        (a.key, a.value.int_value if a.value.WhichOneof("value") == "int_value" else a.value.string_value)
        for a in span.attributes
    ]


def test_attributes_are_each_exchanges_own_across_many_exchanges() -> None:
    # Attribute entries are encoded once and reused (span._AttributeEncodings): every span must
    # still carry its own values, in order, also once more distinct values were seen than kept.
    request, response = chat_exchange()
    for i in range(5000):
        status = 200 + i % 3
        span = build_span(
            meta(
                http_status=status,
                query=f"page={i % 2}",
                request_headers={"openai-organization": f"org-{i % 5}"},
                response_headers={"x-request-id": f"req-{i}", "openai-version": "2020-10-01"},
                attributes={"llmtrace.enforcement.action": "flag", "llmtrace.count": i},
            ),
            request,
            response,
            bodies="redacted" if i % 2 else "full",
            max_body_bytes=LIMIT,
        )
        assert _attribute_pairs(span) == [
            ("http.request.method", "POST"),
            ("url.path", "/v1/chat/completions"),
            ("url.query", f"page={i % 2}"),
            ("http.response.status_code", status),
            ("http.request.header.openai-organization", f"org-{i % 5}"),
            ("http.response.header.x-request-id", f"req-{i}"),
            ("http.response.header.openai-version", "2020-10-01"),
            ("llmtrace.capture.bodies", "redacted" if i % 2 else "full"),
            ("llmtrace.enforcement.action", "flag"),
            ("llmtrace.count", i),
        ]


def test_attributes_are_held_to_the_core_limits() -> None:
    many: dict[str, str | int] = {f"llmtrace.extra.{i}": i for i in range(limits.MAX_ITEMS + 10)}
    long_key = "llmtrace." + "k" * (limits.MAX_NAME_CHARS + 50)
    long_value = "v" * (limits.MAX_TEXT_CHARS + 50)
    for _ in range(2):  # the second time from kept encodings
        span = build_span(
            meta(response_headers={"x-long": long_value}, attributes={long_key: "x", **many}),
            *chat_exchange(),
            bodies="full",
            max_body_bytes=LIMIT,
        )
        assert_valid(span)
        assert len(span.attributes) == limits.MAX_ITEMS
        pairs = dict(_attribute_pairs(span))
        assert pairs["http.response.header.x-long"] == long_value[: limits.MAX_TEXT_CHARS]
        assert pairs[long_key[: limits.MAX_NAME_CHARS]] == "x"
