"""Fixes from the capture review: a failed Responses API object, Responses stream parts keyed by
content index, chat chunks with `"error": null`, usage estimated only for answers to a POST, and
streamed answers stored as the same parts as the JSON answer of the same exchange."""

from __future__ import annotations

import json
from typing import Any

import pytest

from llmtrace.api.v1 import span_pb2
from llmtrace.capture import model
from llmtrace.capture.raw import read_raw_exchange
from llmtrace.capture.request_parse import parse_request, raw_text
from llmtrace.capture.response_parse import ResponseCapture

LIMIT = 1024 * 1024
SSE = "text/event-stream"
JSON = "application/json"


def request_for(path: str, body: dict[str, Any] | None) -> model.ParsedRequest:
    raw = json.dumps(body).encode() if body is not None else b""
    return parse_request(path, raw, JSON, max_body_bytes=LIMIT)


def capture(
    request: model.ParsedRequest,
    body: bytes,
    *,
    status: int = 200,
    content_type: str = SSE,
    method: str = "",
    limit: int = LIMIT,
) -> model.ParsedResponse:
    reader = ResponseCapture(request, status, content_type, "", max_body_bytes=limit, method=method)
    # In small pieces, as a stream arrives: slots must survive events split anywhere.
    for start in range(0, len(body), 7):
        reader.feed(body[start : start + 7])
    return reader.finish()


def named_events(*events: dict[str, Any]) -> bytes:
    """Responses API and Anthropic events: the type is both the event name and in the data."""
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)


def parts_of(response: model.ParsedResponse) -> list[model.Part]:
    (choice,) = response.choices
    return choice.message.parts


# -- a failed Responses API object ---------------------------------------------------------------

FAILED_RESPONSE = {
    "id": "resp_9",
    "object": "response",
    "status": "failed",
    "model": "gpt-4o-2024-08-06",
    "error": {"code": "server_error", "message": "The model failed"},
    "output": [],
    "usage": {"input_tokens": 12, "output_tokens": 0, "total_tokens": 12},
}


def test_a_failed_responses_object_keeps_its_id_model_and_usage_as_the_stream_does() -> None:
    request = request_for("/v1/responses", {"model": "gpt-4o", "input": "hi"})
    whole = capture(request, json.dumps(FAILED_RESPONSE).encode(), content_type=JSON, method="POST")
    assert (whole.id, whole.model) == ("resp_9", "gpt-4o-2024-08-06")
    assert (whole.error_type, whole.error_message) == ("server_error", "The model failed")
    assert whole.usage == model.Usage(12, 0, 12, estimated=False)
    assert whole.choices == [] and whole.raw_body == ""

    streamed_request = request_for("/v1/responses", {"model": "gpt-4o", "input": "hi", "stream": True})
    events = named_events(
        {"type": "response.created", "response": {"id": "resp_9", "model": "gpt-4o-2024-08-06"}},
        {"type": "response.failed", "response": FAILED_RESPONSE},
    )
    streamed = capture(streamed_request, events, method="POST")
    assert (streamed.id, streamed.model, streamed.usage) == (whole.id, whole.model, whole.usage)
    assert (streamed.error_type, streamed.error_message) == (whole.error_type, whole.error_message)


def test_other_error_bodies_on_the_responses_route_are_still_errors() -> None:
    request = request_for("/v1/responses", {"model": "gpt-4o", "input": "hi"})
    body = b'{"error": {"type": "invalid_request_error", "message": "bad input"}}'
    for status in (200, 400):
        got = capture(request, body, status=status, content_type=JSON, method="POST")
        assert (got.error_type, got.error_message) == ("invalid_request_error", "bad input")
        assert got.usage is None and got.choices == []


# -- Responses API streams: one part per content index -------------------------------------------


def _message_stream(content: list[dict[str, Any]], deltas: list[dict[str, Any]]) -> tuple[bytes, bytes]:
    """(stream, JSON body) of one answer whose message item holds `content`."""
    final = {
        "id": "resp_3",
        "object": "response",
        "model": "gpt-4o",
        "status": "completed",
        "output": [{"type": "message", "id": "msg_1", "role": "assistant", "content": content}],
        "usage": {"input_tokens": 5, "output_tokens": 9, "total_tokens": 14},
    }
    added = {"type": "message", "id": "msg_1", "role": "assistant", "content": []}
    stream = named_events(
        {"type": "response.created", "response": {"id": "resp_3", "model": "gpt-4o"}},
        {"type": "response.output_item.added", "output_index": 0, "item": added},
        *({"output_index": 0, "item_id": "msg_1", **delta} for delta in deltas),
        {"type": "response.completed", "response": final},
    )
    return stream, json.dumps(final).encode()


@pytest.mark.parametrize(
    ("content", "deltas"),
    [
        pytest.param(
            [
                {"type": "output_text", "text": "Here is part A. "},
                {"type": "refusal", "refusal": "I can't help with B."},
            ],
            [
                {"type": "response.output_text.delta", "content_index": 0, "delta": "Here is "},
                {"type": "response.output_text.delta", "content_index": 0, "delta": "part A. "},
                {"type": "response.refusal.delta", "content_index": 1, "delta": "I can't help with B."},
            ],
            id="text then refusal",
        ),
        pytest.param(
            [{"type": "output_text", "text": "first"}, {"type": "output_text", "text": "second"}],
            [
                {"type": "response.output_text.delta", "content_index": 0, "delta": "first"},
                {"type": "response.output_text.delta", "content_index": 1, "delta": "second"},
            ],
            id="two text parts",
        ),
    ],
)
def test_responses_stream_keeps_each_content_part_of_a_message_as_json_does(
    content: list[dict[str, Any]], deltas: list[dict[str, Any]]
) -> None:
    stream, whole = _message_stream(content, deltas)
    streamed = capture(
        request_for("/v1/responses", {"model": "gpt-4o", "input": "hi", "stream": True}), stream
    )
    parsed = capture(
        request_for("/v1/responses", {"model": "gpt-4o", "input": "hi"}), whole, content_type=JSON
    )
    assert len(parts_of(parsed)) == 2
    assert parts_of(streamed) == parts_of(parsed)


def test_responses_reasoning_summary_parts_are_joined_by_newlines_as_json_joins_them() -> None:
    summary = [{"type": "summary_text", "text": "think1"}, {"type": "summary_text", "text": "think2"}]
    final = {
        "id": "resp_1",
        "model": "gpt-4o",
        "status": "completed",
        "output": [
            {"type": "reasoning", "id": "rs_1", "summary": summary},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hello"}]},
        ],
    }
    delta = "response.reasoning_summary_text.delta"
    stream = named_events(
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": {"type": "reasoning", "summary": []},
        },
        {"type": delta, "output_index": 0, "summary_index": 0, "delta": "thi"},
        {"type": delta, "output_index": 0, "summary_index": 0, "delta": "nk1"},
        {"type": delta, "output_index": 0, "summary_index": 1, "delta": "think2"},
        {"type": "response.output_text.delta", "output_index": 1, "content_index": 0, "delta": "Hello"},
        {"type": "response.completed", "response": final},
    )
    streamed = capture(
        request_for("/v1/responses", {"model": "gpt-4o", "input": "hi", "stream": True}), stream
    )
    parsed = capture(
        request_for("/v1/responses", {"model": "gpt-4o", "input": "hi"}),
        json.dumps(final).encode(),
        content_type=JSON,
    )
    expected = [model.Part("reasoning", text="think1\nthink2"), model.Part("text", text="Hello")]
    assert parts_of(streamed) == parts_of(parsed) == expected


# -- chat chunks with "error": null --------------------------------------------------------------


def test_chat_chunks_with_a_null_error_are_read() -> None:
    request = request_for(
        "/v1/chat/completions",
        {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    body = (
        b'data: {"id":"c","model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"hello"}}],'
        b'"error":null}\n\n'
        b'data: {"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"error":null}\n\n'
        b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4},'
        b'"error":null}\n\n'
        b"data: [DONE]\n\n"
    )
    got = capture(request, body)
    assert parts_of(got) == [model.Part("text", text="hello")]
    assert got.choices[0].finish_reason == "stop"
    assert got.usage == model.Usage(3, 1, 4, estimated=False)
    assert (got.error_type, got.error_message) == ("", "")
    # A real error object still ends the answer.
    failed = capture(request, b'data: {"id":"c","error":{"type":"server_error","message":"boom"}}\n\n')
    assert (failed.error_type, failed.error_message) == ("server_error", "boom")


# -- usage estimated only for answers to a POST --------------------------------------------------

STORED_LIST = json.dumps(
    {
        "object": "list",
        "data": [
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "model": "gpt-4o",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
            }
        ],
        "has_more": False,
    }
).encode()
CHAT_POST = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("pass_method", [True, False], ids=["method known", "method unknown"])
@pytest.mark.parametrize(
    ("method", "path", "request_body", "status", "answer"),
    [
        ("HEAD", "/v1/chat/completions", None, 200, b""),
        ("OPTIONS", "/v1/chat/completions", None, 204, b""),
        ("GET", "/v1/chat/completions", None, 304, b""),
        ("POST", "/v1/chat/completions", CHAT_POST, 204, b""),
        ("GET", "/v1/chat/completions?limit=1", None, 200, STORED_LIST),
        ("HEAD", "/v1/embeddings", None, 200, b""),
        ("OPTIONS", "/v1/completions", None, 204, b""),
    ],
)
def test_no_usage_is_estimated_when_nothing_was_answered(
    pass_method: bool,
    method: str,
    path: str,
    request_body: dict[str, Any] | None,
    status: int,
    answer: bytes,
) -> None:
    request = request_for(path, request_body)
    got = capture(request, answer, status=status, content_type=JSON, method=method if pass_method else "")
    assert got.usage is None


def test_usage_is_estimated_only_for_an_answer_to_a_post() -> None:
    request = request_for("/v1/chat/completions", CHAT_POST)
    answer = json.dumps(
        {
            "id": "c",
            "model": "gpt-4o",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi!"}}],
        }
    ).encode()
    for method in ("POST", "post", ""):
        got = capture(request, answer, content_type=JSON, method=method)
        assert got.usage is not None and got.usage.estimated, method
    assert capture(request, answer, content_type=JSON, method="GET").usage is None
    # A body that is not JSON may still be an answer: it is estimated as before.
    opaque = capture(request, b"Hi!", content_type="text/plain", method="POST")
    assert opaque.usage is not None and opaque.usage.estimated


def test_the_core_reads_a_raw_exchange_with_its_method() -> None:
    answer = json.dumps({"id": "c", "model": "gpt-4o", "choices": []}).encode()

    def read(method: str) -> span_pb2.Span:
        span = span_pb2.Span()
        raw = span.raw_exchange
        raw.method, raw.path, raw.request_content_type = method, "/v1/chat/completions", JSON
        raw.max_body_bytes = LIMIT
        raw.has_response, raw.response_status, raw.response_content_type = True, 200, JSON
        raw.response_body = answer
        read_raw_exchange(span)
        return span

    assert read("POST").usage.estimated
    assert not read("GET").HasField("usage")


# -- streamed and JSON answers store the same parts ----------------------------------------------


def test_chat_reasoning_comes_before_the_text_streamed_or_not() -> None:
    message = {"role": "assistant", "content": "answer", "reasoning_content": "think", "refusal": "no"}
    whole = {"id": "c", "model": "m", "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
    parsed = capture(
        request_for("/v1/chat/completions", CHAT_POST), json.dumps(whole).encode(), content_type=JSON
    )
    stream = (
        b'data: {"id":"c","model":"m","choices":[{"index":0,"delta":{"reasoning_content":"think"}}]}\n\n'
        b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"answer"}}]}\n\n'
        b'data: {"id":"c","choices":[{"index":0,"delta":{"refusal":"no"},"finish_reason":"stop"}]}\n\n'
        b"data: [DONE]\n\n"
    )
    streamed = capture(request_for("/v1/chat/completions", {**CHAT_POST, "stream": True}), stream)
    expected = [
        model.Part("reasoning", text="think"),
        model.Part("text", text="answer"),
        model.Part("refusal", text="no"),
    ]
    assert parts_of(parsed) == parts_of(streamed) == expected


def test_anthropic_redacted_thinking_is_kept_streamed_or_not() -> None:
    request_body = {"model": "claude", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    content = [
        {"type": "thinking", "thinking": "hmm", "signature": "s"},
        {"type": "redacted_thinking", "data": "opaque"},
        {"type": "text", "text": "Hello"},
    ]
    whole = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude", "content": content}
    parsed = capture(request_for("/v1/messages", request_body), json.dumps(whole).encode(), content_type=JSON)
    stream = named_events(
        {"type": "message_start", "message": {"id": "msg_1", "role": "assistant", "model": "claude"}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hmm"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "s"}},
        {"type": "content_block_start", "index": 1, "content_block": content[1]},
        {"type": "content_block_stop", "index": 1},
        {"type": "content_block_start", "index": 2, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 2, "delta": {"type": "text_delta", "text": "Hello"}},
        {"type": "message_stop"},
    )
    streamed = capture(request_for("/v1/messages", {**request_body, "stream": True}), stream)
    assert model.Part("other", mime="redacted_thinking") in parts_of(parsed)
    assert parts_of(streamed) == parts_of(parsed)


# -- raw text cut through a character ------------------------------------------------------------


def test_a_body_cut_through_a_character_stores_no_replacement_character() -> None:
    request = parse_request("/v1/unknown", ("€" * 50).encode(), "text/plain", max_body_bytes=10)
    assert (request.raw_body, request.truncated) == ("€€€", True)
    error_body = ("Erreur: réessayez " * 20).encode()
    response = capture(
        request_for("/v1/chat/completions", CHAT_POST),
        error_body,
        status=500,
        content_type="text/plain",
        limit=10,
    )
    assert (response.raw_body, response.truncated) == ("Erreur: r", True)  # "é" is bytes 9 and 10
    # Invalid bytes before the cut, and a broken character ending a body that was not cut, were
    # sent: they still show as U+FFFD.
    assert raw_text(b"\xffab\xe2\x82\xac\xe2\x82", 7) == ("\ufffdab€", True)
    assert raw_text(b"ab\xe2\x82", 10) == ("ab\ufffd", False)
