"""Responses read by `ResponseCapture`: JSON and SSE bodies of every API, compressed or not, cut
anywhere, cut short, with and without usage, and garbage that must never raise."""

from __future__ import annotations

import gzip
import json
import random
import zlib
from collections.abc import Callable
from typing import Any

import pytest

from llmtrace.capture import model
from llmtrace.capture.request_parse import parse_request
from llmtrace.capture.response_parse import ResponseCapture

LIMIT = 1024 * 1024
SSE = "text/event-stream; charset=utf-8"
JSON = "application/json"


def sse(events: list[tuple[str | None, object]], *, done: bool, crlf: bool = False) -> bytes:
    """Events as OpenAI and Anthropic send them (`event:` line when named)."""
    out = []
    for name, payload in events:
        prefix = f"event: {name}\n" if name else ""
        out.append(f"{prefix}data: {json.dumps(payload)}\n\n")
    if done:
        out.append("data: [DONE]\n\n")
    text = "".join(out)
    return (text.replace("\n", "\r\n") if crlf else text).encode()


def request_for(path: str, body: dict[str, Any]) -> model.ParsedRequest:
    return parse_request(path, json.dumps(body).encode(), JSON, max_body_bytes=LIMIT)


def capture(
    request: model.ParsedRequest,
    chunks: list[bytes],
    *,
    status: int = 200,
    content_type: str = SSE,
    encoding: str = "",
    limit: int = LIMIT,
) -> model.ParsedResponse:
    reader = ResponseCapture(request, status, content_type, encoding, max_body_bytes=limit)
    for chunk in chunks:
        reader.feed(chunk)
    return reader.finish()


CHAT_REQUEST = {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "Hello there"}]}
ANSWER = ["Echo", ": ", "Héllo ", "thère 🌍"]


def chat_chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        **extra,
    }


def chat_stream(*, include_usage: bool, done: bool = True) -> bytes:
    chunks: list[tuple[str | None, object]] = [(None, chat_chunk({"role": "assistant", "content": ""}))]
    chunks += [(None, chat_chunk({"content": piece})) for piece in ANSWER]
    chunks.append((None, chat_chunk({}, "stop")))
    if include_usage:
        usage = {
            "prompt_tokens": 12,
            "completion_tokens": 4,
            "total_tokens": 16,
            "prompt_tokens_details": {"cached_tokens": 2},
            "completion_tokens_details": {"reasoning_tokens": 1},
        }
        chunks.append((None, {**chat_chunk({}), "choices": [], "usage": usage}))
    return sse(chunks, done=done)


def test_openai_chat_stream_split_at_every_byte_gives_the_same_answer() -> None:
    request = request_for("/v1/chat/completions", {**CHAT_REQUEST, "stream_options": {"include_usage": True}})
    body = chat_stream(include_usage=True)
    whole = capture(request, [body])
    assert whole.id == "chatcmpl-1" and whole.model == "gpt-4o-2024-08-06"
    (choice,) = whole.choices
    assert choice.message.role == "assistant" and choice.finish_reason == "stop"
    assert choice.message.parts == [model.Part("text", text="".join(ANSWER))]
    assert whole.usage == model.Usage(12, 4, 16, 2, 0, 1, estimated=False)
    assert not whole.stream_cut and not whole.truncated
    for cut in range(1, len(body)):
        assert capture(request, [body[:cut], body[cut:]]) == whole, cut
    assert capture(request, [body[i : i + 1] for i in range(len(body))]) == whole


def test_crlf_line_endings_and_comments_are_understood() -> None:
    request = request_for("/v1/chat/completions", CHAT_REQUEST)
    body = b": keep-alive\r\n\r\n" + sse(
        [(None, chat_chunk({"content": "hi"}, "stop"))], done=True, crlf=True
    )
    for size in (1, 2, 3, 7):
        got = capture(request, [body[i : i + size] for i in range(0, len(body), size)])
        assert got.choices[0].message.parts[0].text == "hi" and not got.stream_cut


def test_multi_line_data_is_joined_with_newlines() -> None:
    request = request_for("/v1/chat/completions", CHAT_REQUEST)
    payload = json.dumps(chat_chunk({"content": "multi"}, "stop"), indent=1).replace("\n", "\ndata: ")
    got = capture(request, [f"data: {payload}\n\ndata: [DONE]\n\n".encode()])
    assert got.choices[0].message.parts[0].text == "multi"


def test_stream_without_include_usage_is_estimated_with_the_delta_count_as_lower_bound() -> None:
    request = request_for("/v1/chat/completions", CHAT_REQUEST)
    got = capture(request, [chat_stream(include_usage=False)])
    assert got.usage is not None and got.usage.estimated
    # "Hello there": 11 chars -> 3 tokens, + 4 per message + 3 priming.
    assert got.usage.input_tokens == 3 + 4 + 3
    answer_chars = len("".join(ANSWER))
    assert got.usage.output_tokens == max(-(-answer_chars // 4), len(ANSWER))
    assert got.usage.total_tokens == got.usage.input_tokens + got.usage.output_tokens


def test_many_tiny_deltas_raise_the_output_estimate_to_the_delta_count() -> None:
    request = request_for("/v1/chat/completions", CHAT_REQUEST)
    body = sse([(None, chat_chunk({"content": "a"})) for _ in range(40)], done=True)
    got = capture(request, [body])
    assert got.usage is not None and got.usage.output_tokens == 40 and got.usage.estimated


def test_cut_stream_is_flagged_and_keeps_what_arrived() -> None:
    request = request_for("/v1/chat/completions", CHAT_REQUEST)
    body = chat_stream(include_usage=False, done=False)
    got = capture(request, [body[: len(body) // 2]])
    assert got.stream_cut
    assert got.choices[0].message.parts[0].text.startswith("Echo")
    assert got.choices[0].finish_reason == ""
    assert got.usage is not None and got.usage.estimated


def test_tool_call_deltas_are_assembled_by_index() -> None:
    request = request_for("/v1/chat/completions", {**CHAT_REQUEST, "tools": [{"type": "function"}]})
    arguments = '{"location": "Paris", "unit": "celsius"}'
    first = [
        {
            "index": 0,
            "id": "call_a",
            "type": "function",
            "function": {"name": "get_weather", "arguments": ""},
        },
        {"index": 1, "id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": ""}},
    ]
    events: list[tuple[str | None, object]] = [
        (None, chat_chunk({"role": "assistant", "content": None, "tool_calls": first}))
    ]
    for i in range(0, len(arguments), 8):
        piece = arguments[i : i + 8]
        events.append((None, chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})))
        events.append((None, chat_chunk({"tool_calls": [{"index": 1, "function": {"arguments": piece}}]})))
    events.append((None, chat_chunk({}, "tool_calls")))
    got = capture(request, [sse(events, done=True)])
    message = got.choices[0].message
    assert got.choices[0].finish_reason == "tool_calls" and message.parts == []
    assert message.tool_calls == [
        model.ToolCall("call_a", "function", "get_weather", arguments),
        model.ToolCall("call_b", "function", "get_time", arguments),
    ]


def test_legacy_function_call_deltas() -> None:
    request = request_for("/v1/chat/completions", CHAT_REQUEST)
    events: list[tuple[str | None, object]] = [
        (None, chat_chunk({"role": "assistant", "function_call": {"name": "f", "arguments": ""}})),
        (None, chat_chunk({"function_call": {"arguments": '{"a"'}})),
        (None, chat_chunk({"function_call": {"arguments": ": 1}"}}, "function_call")),
    ]
    got = capture(request, [sse(events, done=True)])
    assert got.choices[0].message.tool_calls == [model.ToolCall("", "function", "f", '{"a": 1}')]


def test_multiple_choices_are_kept_in_index_order() -> None:
    request = request_for("/v1/chat/completions", {**CHAT_REQUEST, "n": 2})
    events: list[tuple[str | None, object]] = []
    for index, text in ((1, "second"), (0, "first")):
        chunk = chat_chunk({"content": text})
        chunk["choices"][0]["index"] = index
        events.append((None, chunk))
    got = capture(request, [sse(events, done=True)])
    assert [(c.index, c.message.parts[0].text) for c in got.choices] == [(0, "first"), (1, "second")]


def test_legacy_completion_stream_with_usage() -> None:
    request = request_for("/v1/completions", {"model": "m", "prompt": "Say", "stream": True})

    def payload(choices: list[dict[str, Any]], usage: object = None) -> dict[str, Any]:
        return {"id": "cmpl-1", "object": "text_completion", "model": "m", "choices": choices, "usage": usage}

    events: list[tuple[str | None, object]] = [
        (None, payload([{"text": "Echo:", "index": 0, "finish_reason": None}])),
        (None, payload([{"text": " Say", "index": 0, "finish_reason": "stop"}])),
        (None, payload([], {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3})),
    ]
    got = capture(request, [sse(events, done=True)])
    assert got.choices[0].message.parts[0].text == "Echo: Say" and got.choices[0].finish_reason == "stop"
    assert got.usage == model.Usage(1, 2, 3)


RESPONSES_FINAL = {
    "id": "resp_1",
    "object": "response",
    "status": "completed",
    "model": "gpt-4.1-2025-04-14",
    "output": [
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Echo: hi", "annotations": []}],
        }
    ],
    "usage": {
        "input_tokens": 9,
        "input_tokens_details": {"cached_tokens": 4},
        "output_tokens": 3,
        "output_tokens_details": {"reasoning_tokens": 1},
        "total_tokens": 12,
    },
}


def responses_events(*, complete: bool = True) -> bytes:
    in_progress = {**RESPONSES_FINAL, "status": "in_progress", "output": [], "usage": None}
    where = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
    events: list[tuple[str | None, object]] = [
        ("response.created", {"type": "response.created", "response": in_progress}),
        ("response.output_item.added", {"type": "response.output_item.added", "output_index": 0, "item": {}}),
    ]
    for piece in ("Echo", ": ", "hi"):
        events.append(
            ("response.output_text.delta", {"type": "response.output_text.delta", **where, "delta": piece})
        )
    function = {"type": "function_call", "call_id": "call_7", "name": "lookup", "arguments": ""}
    events.append(("x", {"type": "response.output_item.added", "output_index": 1, "item": function}))
    for piece in ('{"q":', '"x"}'):
        events.append(
            ("x", {"type": "response.function_call_arguments.delta", "output_index": 1, "delta": piece})
        )
    if complete:
        events.append(("response.completed", {"type": "response.completed", "response": RESPONSES_FINAL}))
    return sse(events, done=False)


def test_responses_api_stream() -> None:
    request = request_for("/v1/responses", {"model": "gpt-4.1", "input": "hi", "stream": True})
    body = responses_events()
    got = capture(request, [body[i : i + 5] for i in range(0, len(body), 5)])
    assert (got.id, got.model) == ("resp_1", "gpt-4.1-2025-04-14")
    (choice,) = got.choices
    assert choice.message.parts == [model.Part("text", text="Echo: hi")]
    assert choice.message.tool_calls == [model.ToolCall("call_7", "function", "lookup", '{"q":"x"}')]
    assert choice.finish_reason == "tool_calls"
    assert got.usage == model.Usage(9, 3, 12, 4, 0, 1) and not got.stream_cut
    cut = capture(request, [responses_events(complete=False)])
    assert cut.stream_cut and cut.usage is not None and cut.usage.estimated


def test_responses_api_json_body() -> None:
    request = request_for("/v1/responses", {"model": "gpt-4.1", "input": "hi"})
    got = capture(request, [json.dumps(RESPONSES_FINAL).encode()], content_type=JSON)
    assert got.choices[0].message.parts[0].text == "Echo: hi" and got.choices[0].finish_reason == "stop"
    assert got.usage is not None and got.usage.cache_read_input_tokens == 4 and not got.stream_cut


def anthropic_events(*, stop: bool = True) -> bytes:
    start: dict[str, Any] = {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [],
        "stop_reason": None,
        "usage": {
            "input_tokens": 10,
            "cache_read_input_tokens": 100,
            "cache_creation_input_tokens": 20,
            "output_tokens": 1,
        },
    }
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": start},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Hmm."}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "s"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Let me "}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "check."}},
        {"type": "content_block_stop", "index": 1},
        {
            "type": "content_block_start",
            "index": 2,
            "content_block": {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}},
        },
        {
            "type": "content_block_delta",
            "index": 2,
            "delta": {"type": "input_json_delta", "partial_json": ""},
        },
        {
            "type": "content_block_delta",
            "index": 2,
            "delta": {"type": "input_json_delta", "partial_json": '{"ci'},
        },
        {
            "type": "content_block_delta",
            "index": 2,
            "delta": {"type": "input_json_delta", "partial_json": 'ty": "P"}'},
        },
        {"type": "content_block_stop", "index": 2},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 42}},
    ]
    if stop:
        events.append({"type": "message_stop"})
    return sse([(e["type"], e) for e in events], done=False)


def test_anthropic_stream_split_at_every_byte() -> None:
    request = request_for("/v1/messages", {"model": "claude-sonnet-4-5", "max_tokens": 9, "stream": True})
    body = anthropic_events()
    got = capture(request, [body])
    assert (got.id, got.model) == ("msg_01", "claude-sonnet-4-5-20250929")
    (choice,) = got.choices
    assert choice.finish_reason == "tool_use"
    assert choice.message.parts == [
        model.Part("reasoning", text="Hmm."),
        model.Part("text", text="Let me check."),
    ]
    assert choice.message.tool_calls == [
        model.ToolCall("toolu_1", "function", "get_weather", '{"city": "P"}')
    ]
    # input_tokens counts cached input too (OpenTelemetry gen_ai.usage.input_tokens).
    assert got.usage == model.Usage(130, 42, 172, 100, 20, 0, estimated=False)
    assert not got.stream_cut
    assert capture(request, [body[i : i + 1] for i in range(len(body))]) == got


def test_anthropic_stream_without_message_stop_is_cut() -> None:
    request = request_for("/v1/messages", {"model": "claude", "max_tokens": 9, "stream": True})
    got = capture(request, [anthropic_events(stop=False)])
    assert got.stream_cut and got.usage is not None and got.usage.output_tokens == 42


def test_anthropic_error_event_mid_stream_is_an_upstream_error_not_a_cut() -> None:
    request = request_for("/v1/messages", {"model": "claude", "max_tokens": 9, "stream": True})
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    got = capture(request, [sse([("error", error)], done=False)])
    assert (got.error_type, got.error_message) == ("overloaded_error", "Overloaded")
    assert not got.stream_cut and got.usage is None


def test_anthropic_json_message() -> None:
    request = request_for("/v1/messages", {"model": "claude", "max_tokens": 9})
    body = {
        "id": "msg_2",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [
            {"type": "text", "text": "Echo: hi"},
            {"type": "tool_use", "id": "toolu_2", "name": "f", "input": {"a": 1}},
        ],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 5, "output_tokens": 3},
    }
    got = capture(request, [json.dumps(body).encode()], content_type=JSON)
    assert got.choices[0].message.parts[0].text == "Echo: hi" and got.choices[0].finish_reason == "end_turn"
    assert got.choices[0].message.tool_calls == [model.ToolCall("toolu_2", "function", "f", '{"a":1}')]
    assert got.usage == model.Usage(5, 3, 8)


CHAT_JSON = {
    "id": "chatcmpl-9",
    "object": "chat.completion",
    "model": "gpt-4o-2024-08-06",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Echo: Hello there", "refusal": None},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14},
}


@pytest.mark.parametrize("encoding", ["", "gzip", "deflate", "br"])
def test_compressed_json_bodies_are_decoded_incrementally(encoding: str) -> None:
    request = request_for("/v1/chat/completions", {**CHAT_REQUEST, "stream": False})
    raw = json.dumps(CHAT_JSON).encode()
    if encoding == "br":
        brotli = pytest.importorskip("brotli")  # optional: br bodies are recorded undecoded without it
        body = brotli.compress(raw)
    else:
        compressors: dict[str, Callable[[bytes], bytes]] = {
            "": bytes,
            "gzip": gzip.compress,
            "deflate": zlib.compress,
        }
        body = compressors[encoding](raw)
    got = capture(
        request, [body[i : i + 3] for i in range(0, len(body), 3)], content_type=JSON, encoding=encoding
    )
    assert got.id == "chatcmpl-9" and got.choices[0].message.parts[0].text == "Echo: Hello there"
    assert got.usage == model.Usage(9, 5, 14)


def test_gzip_sse_stream_split_everywhere() -> None:
    request = request_for("/v1/chat/completions", CHAT_REQUEST)
    plain = capture(request, [chat_stream(include_usage=False)])
    body = gzip.compress(chat_stream(include_usage=False))
    got = capture(request, [body[i : i + 1] for i in range(len(body))], encoding="gzip")
    assert got == plain and not got.stream_cut


def test_raw_deflate_and_undecodable_bodies() -> None:
    request = request_for("/v1/chat/completions", {**CHAT_REQUEST, "stream": False})
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    raw_deflate = compressor.compress(json.dumps(CHAT_JSON).encode()) + compressor.flush()
    got = capture(request, [raw_deflate], content_type=JSON, encoding="deflate")
    assert got.id == "chatcmpl-9"
    bad = capture(request, [b"not gzip at all"], content_type=JSON, encoding="gzip")
    assert bad.raw_body.startswith("[15 bytes of gzip-encoded body") and bad.usage is None
    unknown = capture(request, [b"\x28\xb5\x2f\xfd"], content_type=JSON, encoding="zstd")
    assert "zstd" in unknown.raw_body and unknown.choices == []


RATE_LIMITED = {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}


@pytest.mark.parametrize(
    ("body", "error_type", "message"),
    [
        ({"error": RATE_LIMITED}, "requests", "Rate limit reached"),
        (
            {"error": {"message": "No key", "type": None, "code": "invalid_api_key"}},
            "invalid_api_key",
            "No key",
        ),
        (
            {"type": "error", "error": {"type": "overloaded_error", "message": "Busy"}},
            "overloaded_error",
            "Busy",
        ),
    ],
)
def test_error_bodies(body: dict[str, Any], error_type: str, message: str) -> None:
    request = request_for("/v1/chat/completions", {**CHAT_REQUEST, "stream": True})
    got = capture(request, [json.dumps(body).encode()], status=429, content_type=JSON)
    assert (got.error_type, got.error_message) == (error_type, message)
    assert got.usage is None and got.raw_body == "" and not got.stream_cut


def test_non_json_error_body_is_kept_raw() -> None:
    request = request_for("/v1/chat/completions", CHAT_REQUEST)
    got = capture(request, [b"<html>502 Bad Gateway</html>"], status=502, content_type="text/html")
    assert got.raw_body == "<html>502 Bad Gateway</html>" and got.usage is None


def test_embeddings_keep_model_and_usage_even_when_the_body_is_huge() -> None:
    request = request_for("/v1/embeddings", {"model": "text-embedding-3-small", "input": ["a", "b"]})
    data = [{"object": "embedding", "index": i, "embedding": [0.0123] * 1536} for i in range(300)]
    body = json.dumps(
        {
            "object": "list",
            "data": data,
            "model": "text-embedding-3-small",
            "usage": {"prompt_tokens": 7, "total_tokens": 7},
        }
    ).encode()
    assert len(body) > 2_000_000
    got = capture(request, [body[i : i + 65536] for i in range(0, len(body), 65536)], content_type=JSON)
    assert got.model == "text-embedding-3-small" and got.usage == model.Usage(7, 0, 7)
    assert got.choices == [] and got.raw_body == ""
    small = capture(
        request,
        [json.dumps({"data": [], "model": "e", "usage": {"prompt_tokens": 2}}).encode()],
        content_type=JSON,
    )
    assert small.model == "e" and small.usage == model.Usage(2, 0, 2)


def test_models_list_is_not_content() -> None:
    request = parse_request("/v1/models", b"", "", max_body_bytes=LIMIT)
    body = json.dumps({"object": "list", "data": [{"id": "gpt-4o", "object": "model"}]}).encode()
    got = capture(request, [body], content_type=JSON)
    assert got.raw_body == "" and got.choices == [] and got.usage is None


def test_streamed_text_beyond_the_limit_is_dropped_and_marked() -> None:
    request = request_for("/v1/chat/completions", CHAT_REQUEST)
    events: list[tuple[str | None, object]] = [(None, chat_chunk({"content": "x" * 100})) for _ in range(50)]
    got = capture(request, [sse(events, done=True)], limit=1000)
    text = got.choices[0].message.parts[0].text
    assert text == "x" * 1000 and got.truncated
    assert got.usage is not None and got.usage.output_tokens == 1250  # counted past the limit


def test_a_single_oversized_sse_line_is_dropped_not_buffered() -> None:
    request = request_for("/v1/chat/completions", CHAT_REQUEST)
    reader = ResponseCapture(request, 200, SSE, "", max_body_bytes=10)
    huge = b"data: " + b"y" * (9 * 1024 * 1024)
    for i in range(0, len(huge), 65536):
        reader.feed(huge[i : i + 65536])
    reader.feed(b"\n\n" + sse([(None, chat_chunk({"content": "ok"}, "stop"))], done=True))
    got = reader.finish()
    assert got.choices[0].message.parts[0].text == "ok" and got.truncated and not got.stream_cut


def test_oversized_json_body_is_kept_raw_and_truncated() -> None:
    request = request_for("/v1/chat/completions", {**CHAT_REQUEST, "stream": False})
    body = json.dumps({**CHAT_JSON, "pad": "z" * (9 * 1024 * 1024)}).encode()
    got = capture(
        request, [body[i : i + 1 << 20] for i in range(0, len(body), 1 << 20)], content_type=JSON, limit=500
    )
    assert len(got.raw_body) == 500 and got.truncated and got.choices == []


def test_json_answer_longer_than_the_limit_is_cut() -> None:
    request = request_for("/v1/chat/completions", {**CHAT_REQUEST, "stream": False})
    long_answer = {
        **CHAT_JSON,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "w" * 5000}}],
    }
    got = capture(request, [json.dumps(long_answer).encode()], content_type=JSON, limit=100)
    assert got.choices[0].message.parts[0].text == "w" * 100 and got.truncated


def test_garbage_never_raises() -> None:
    rng = random.Random(11)
    requests = [
        request_for(path, {"model": "m", "stream": True})
        for path in (
            "/v1/chat/completions",
            "/v1/completions",
            "/v1/responses",
            "/v1/messages",
            "/v1/embeddings",
            "/x",
        )
    ]
    valid = [
        chat_stream(include_usage=True),
        anthropic_events(),
        responses_events(),
        json.dumps(CHAT_JSON).encode(),
    ]
    for _ in range(300):
        request = rng.choice(requests)
        source = rng.choice(valid)
        mutated = bytearray(source)
        for _ in range(rng.randrange(1, 20)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        content_type = rng.choice([SSE, JSON, "", "text/plain"])
        encoding = rng.choice(["", "", "gzip", "br", "deflate", "weird"])
        cut = rng.randrange(1, 50)
        chunks = [bytes(mutated[i : i + cut]) for i in range(0, len(mutated), cut)]
        got = capture(
            request, chunks, status=rng.choice([200, 400, 500]), content_type=content_type, encoding=encoding
        )
        assert isinstance(got, model.ParsedResponse)


@pytest.mark.parametrize(
    "event",
    [
        {"choices": [{"index": -5, "delta": {"content": "x"}}]},
        {"choices": [{"index": 10**12, "delta": {"content": "x"}}]},
        {"choices": [{"index": "0", "delta": {"tool_calls": [{"index": None, "function": None}]}}]},
        {
            "choices": [{"delta": {"tool_calls": "no", "content": 5, "role": 7}}],
            "usage": {"prompt_tokens": "x"},
        },
        {"choices": None, "model": 5, "id": []},
        {"type": "content_block_delta", "index": 99, "delta": {"type": "text_delta", "text": "x"}},
        {"type": "message_start", "message": {"usage": {"input_tokens": -4}}},
        {"type": "response.completed", "response": {"usage": {"input_tokens": 1e300}, "output": "x"}},
        {"type": "response.output_text.delta", "output_index": [], "delta": ["x"]},
    ],
)
def test_wrong_types_in_events_never_raise(event: dict[str, Any]) -> None:
    for path in ("/v1/chat/completions", "/v1/messages", "/v1/responses"):
        request = request_for(path, {"model": "m", "stream": True})
        got = capture(request, [sse([(None, event), (None, [1]), (None, "s")], done=True)])
        assert isinstance(got, model.ParsedResponse)
        if got.usage is not None:
            assert got.usage.input_tokens >= 0


def _chat_text(response: model.ParsedResponse) -> str:
    return "".join(part.text for part in response.choices[0].message.parts if part.text)


def test_tool_call_deltas_without_an_index_are_told_apart_by_their_id() -> None:
    calls = [("call_1", "get_weather", '{"c":1}'), ("call_2", "get_time", '{"c":2}')]
    body = sse(
        [
            (None, chat_chunk({"tool_calls": [{"id": i, "function": {"name": n, "arguments": a}}]}))
            for i, n, a in calls
        ],
        done=True,
    )
    response = capture(request_for("/v1/chat/completions", CHAT_REQUEST), [body])
    got = [(c.id, c.name, c.arguments) for c in response.choices[0].message.tool_calls]
    assert got == calls


@pytest.mark.parametrize("split", [1, 2, 3, 10])
def test_a_byte_order_mark_does_not_hide_the_first_event(split: int) -> None:
    body = b"\xef\xbb\xbf" + sse(
        [(None, chat_chunk({"content": "FIRST"})), (None, chat_chunk({"content": "X"}))], done=True
    )
    response = capture(request_for("/v1/chat/completions", CHAT_REQUEST), [body[:split], body[split:]])
    assert _chat_text(response) == "FIRSTX"


def test_a_multi_member_gzip_stream_is_read_whole_even_byte_by_byte() -> None:
    body = chat_stream(include_usage=True)
    packed = gzip.compress(body[:300]) + gzip.compress(body[300:])
    whole = capture(request_for("/v1/chat/completions", CHAT_REQUEST), [body])
    for chunks in ([packed], [packed[i : i + 1] for i in range(len(packed))]):
        response = capture(request_for("/v1/chat/completions", CHAT_REQUEST), chunks, encoding="gzip")
        assert _chat_text(response) == _chat_text(whole) and not response.stream_cut


def test_raw_deflate_split_after_its_first_byte_is_decoded() -> None:
    body = chat_stream(include_usage=True)
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    packed = packer.compress(body) + packer.flush()
    response = capture(
        request_for("/v1/chat/completions", CHAT_REQUEST), [packed[:1], packed[1:]], encoding="deflate"
    )
    assert _chat_text(response) == "".join(ANSWER)


def test_a_delta_with_bytes_that_are_not_utf8_keeps_the_rest_of_its_text() -> None:
    body = b'data: {"choices":[{"index":0,"delta":{"content":"a\xff\xfeb"}}]}\n\ndata: [DONE]\n\n'
    response = capture(request_for("/v1/chat/completions", CHAT_REQUEST), [body])
    assert _chat_text(response) == "a\ufffd\ufffdb"


def _gzip_in_blocks(block: bytes, count: int, end: bytes = b"") -> bytes:
    """`block` repeated `count` times then `end`, gzipped without holding the whole body."""
    packer = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    packed = [packer.compress(block) for _ in range(count)]
    return b"".join([*packed, packer.compress(end), packer.flush()])


def _chunks(body: bytes, size: int = 65536) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)]


def test_a_gzip_embeddings_body_past_the_decode_limit_keeps_its_model_and_usage() -> None:
    # OpenAI puts model and usage after the vectors: the real end must be read, not the end of
    # what was decoded before some limit.
    request = request_for("/v1/embeddings", {"model": "text-embedding-3-small", "input": ["x"] * 700})
    item = json.dumps({"object": "embedding", "index": 0, "embedding": [-0.0123456789012345] * 1536})
    head = b'{"object": "list", "data": [' + (item.encode() + b", ") * 699 + item.encode()
    end = b'], "model": "text-embedding-3-small", "usage": {"prompt_tokens": 700, "total_tokens": 700}}'
    assert len(head) > 20 * 1024 * 1024
    got = capture(request, _chunks(_gzip_in_blocks(head, 1, end)), content_type=JSON, encoding="gzip")
    assert got.model == "text-embedding-3-small" and got.usage == model.Usage(700, 0, 700)


def test_a_gzip_stream_past_the_decode_limit_keeps_its_usage_and_is_not_cut() -> None:
    request = request_for("/v1/chat/completions", CHAT_REQUEST)
    delta = sse([(None, chat_chunk({"content": "tok "}))], done=False)
    usage = {"prompt_tokens": 5, "completion_tokens": 200_000, "total_tokens": 200_005}
    end = sse([(None, chat_chunk({}, "stop")), (None, chat_chunk({}, usage=usage))], done=True)
    body = _gzip_in_blocks(delta * 1000, 200, end)
    got = capture(request, _chunks(body), encoding="gzip")
    assert len(delta) * 200_000 > 18 * 1024 * 1024  # past what is parsed event by event
    assert got.usage == model.Usage(5, 200_000, 200_005) and not got.stream_cut
    assert got.truncated and got.choices[0].finish_reason == "stop"
    assert _chat_text(got).startswith("tok tok ")


def test_a_compressed_stream_too_large_to_read_is_truncated_not_cut() -> None:
    # About 270 MB decoded from 1.4 MB: reading stops at a capture limit, which is no upstream
    # failure (the end was never seen).
    request = request_for("/v1/chat/completions", CHAT_REQUEST)
    block = sse([(None, chat_chunk({"content": "x" * 60_000}))], done=False) * 18
    got = capture(request, _chunks(_gzip_in_blocks(block, 260)), encoding="gzip")
    assert got.truncated and not got.stream_cut
    assert _chat_text(got) == "x" * LIMIT


def test_a_decode_error_late_in_a_gzip_stream_keeps_what_was_read() -> None:
    request = request_for("/v1/chat/completions", CHAT_REQUEST)
    events: list[tuple[str | None, object]] = [
        (None, chat_chunk({"content": f"word{i} "})) for i in range(2000)
    ]
    body = bytearray(gzip.compress(sse(events, done=True)))
    body[-6] ^= 0xFF  # the CRC in the trailer: every event decodes before the check fails
    got = capture(request, _chunks(bytes(body), 4096), encoding="gzip")
    assert _chat_text(got).startswith("word0 word1 ") and got.raw_body == ""
    assert got.truncated and got.usage is not None and got.usage.estimated
    nothing = capture(request, [b"\x1f\x8b garbage from the first byte"], encoding="gzip")
    assert nothing.raw_body.startswith("[") and "not decoded" in nothing.raw_body
    assert nothing.choices == [] and nothing.usage is None


CUSTOM_TOOL = {
    "model": "gpt-5",
    "stream": True,
    "input": "run it",
    "tools": [{"type": "custom", "name": "py"}],
}


def _named_events(events: list[dict[str, Any]]) -> bytes:
    """Events named by their `type`, as the Responses and Anthropic APIs send them."""
    return sse([(event["type"], event) for event in events], done=False)


def test_responses_api_custom_tool_call_input_deltas_are_assembled() -> None:
    item = {"type": "custom_tool_call", "id": "ctc_1", "call_id": "call_1", "name": "py", "input": ""}
    where = {"type": "response.custom_tool_call_input.delta", "output_index": 0, "item_id": "ctc_1"}
    body = _named_events(
        [
            {"type": "response.created", "response": {"id": "resp_1", "model": "gpt-5", "output": []}},
            {"type": "response.output_item.added", "output_index": 0, "item": item},
            {**where, "delta": "print('hel"},
            {**where, "delta": "lo')"},
        ]
    )
    got = capture(request_for("/v1/responses", CUSTOM_TOOL), [body])  # cut: only the deltas tell
    assert got.choices[0].message.tool_calls == [model.ToolCall("call_1", "function", "py", "print('hello')")]
    assert got.stream_cut


def test_responses_api_items_the_deltas_left_empty_are_filled_from_the_final_output() -> None:
    call = {"type": "function_call", "id": "fc_1", "call_id": "call_2", "name": "lookup", "arguments": ""}
    done_call = {**call, "arguments": '{"q":"x"}', "status": "completed"}
    custom = {"type": "custom_tool_call", "id": "ctc_1", "call_id": "call_3", "name": "py", "input": ""}
    done_custom = {**custom, "input": "print(1)"}
    message = {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hi"}]}
    final = {
        "id": "resp_1",
        "model": "gpt-5",
        "status": "completed",
        "output": [message, done_call, done_custom],
    }
    body = _named_events(
        [
            {"type": "response.output_item.added", "output_index": 0, "item": {**message, "content": []}},
            {"type": "response.output_text.delta", "output_index": 0, "delta": "Hi"},
            {"type": "response.output_item.added", "output_index": 1, "item": call},
            # The arguments come whole, in the `done` events only.
            {"type": "response.function_call_arguments.done", "output_index": 1, "arguments": '{"q":"x"}'},
            {"type": "response.output_item.done", "output_index": 1, "item": done_call},
            {"type": "response.output_item.added", "output_index": 2, "item": custom},
            {"type": "response.completed", "response": final},
        ]
    )
    got = capture(request_for("/v1/responses", CUSTOM_TOOL), [body])
    (choice,) = got.choices
    assert choice.message.parts == [model.Part("text", text="Hi")]
    assert choice.message.tool_calls == [
        model.ToolCall("call_2", "function", "lookup", '{"q":"x"}'),
        model.ToolCall("call_3", "function", "py", "print(1)"),
    ]
    assert choice.finish_reason == "tool_calls" and not got.stream_cut


def test_responses_api_top_level_error_event_is_typed_by_its_code() -> None:
    body = _named_events(
        [
            {"type": "response.created", "response": {"id": "resp_2", "model": "gpt-5"}},
            {"type": "error", "code": "server_error", "message": "The server had an error", "param": None},
        ]
    )
    got = capture(request_for("/v1/responses", CUSTOM_TOOL), [body])
    assert (got.error_type, got.error_message) == ("server_error", "The server had an error")
    assert not got.stream_cut


def test_anthropic_stream_cut_before_message_delta_estimates_its_output_tokens() -> None:
    # message_start says output_tokens 1 before any output: not the count of a cut answer.
    request = request_for("/v1/messages", {"model": "claude", "max_tokens": 4096, "stream": True})
    start = {
        "id": "m",
        "role": "assistant",
        "model": "claude",
        "usage": {"input_tokens": 12, "output_tokens": 1},
    }
    delta = {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": "lorem ipsum "},
    }
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": start},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    ]
    events += [delta] * 800
    got = capture(request, [_named_events(events)])
    assert got.stream_cut and got.usage is not None
    assert got.usage.estimated and got.usage.input_tokens == 12
    assert got.usage.output_tokens == 800 * len("lorem ipsum ") // 4
    assert got.usage.total_tokens == 12 + got.usage.output_tokens


def test_chat_json_reasoning_field_is_kept_as_reasoning() -> None:
    # vLLM 0.10+ and OpenRouter name it `reasoning`, DeepSeek `reasoning_content`.
    request = request_for("/v1/chat/completions", {**CHAT_REQUEST, "stream": False})
    for field in ("reasoning", "reasoning_content"):
        message = {"role": "assistant", "content": "Hello", field: "The user greets me."}
        body = {**CHAT_JSON, "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
        got = capture(request, [json.dumps(body).encode()], content_type=JSON)
        parts = got.choices[0].message.parts
        assert model.Part("reasoning", text="The user greets me.") in parts, field


def _listened(
    request: model.ParsedRequest, body: bytes
) -> tuple[list[tuple[int, str]], list[tuple[int, int, str]]]:
    """What a listener hears of `body`: answer text, and tool-call arguments by (choice, call)."""
    texts: list[tuple[int, str]] = []
    arguments: list[tuple[int, int, str]] = []
    reader = ResponseCapture(request, 200, SSE, "", max_body_bytes=LIMIT)
    assert reader.listen(
        lambda i, piece: texts.append((i, piece)), lambda i, j, p: arguments.append((i, j, p))
    )
    reader.feed(body)
    reader.finish()
    return texts, arguments


def test_listeners_hear_tool_call_arguments_apart_from_the_text() -> None:
    chat = request_for("/v1/chat/completions", CHAT_REQUEST)
    call = {"index": 1, "id": "c", "type": "function", "function": {"name": "f", "arguments": '{"a"'}}
    events: list[tuple[str | None, object]] = [
        (None, chat_chunk({"role": "assistant", "content": "ok", "tool_calls": [call]})),
        (None, chat_chunk({"tool_calls": [{"index": 1, "function": {"arguments": ": 1}"}}]})),
        (None, chat_chunk({"function_call": {"name": "g", "arguments": "{}"}})),  # legacy functions
    ]
    assert _listened(chat, sse(events, done=True)) == (
        [(0, "ok")],
        [(0, 1, '{"a"'), (0, 1, ": 1}"), (0, -1, "{}")],
    )
    responses = request_for("/v1/responses", {"model": "gpt-4.1", "input": "hi", "stream": True})
    texts, arguments = _listened(responses, responses_events())
    assert "".join(t for _, t in texts) == "Echo: hi"
    assert arguments == [(0, 1, '{"q":'), (0, 1, '"x"}')]
    anthropic = request_for("/v1/messages", {"model": "claude-sonnet-4-5", "max_tokens": 9, "stream": True})
    texts, arguments = _listened(anthropic, anthropic_events())
    assert texts == [(0, "Let me "), (0, "check.")]  # not the thinking
    assert arguments == [(0, 2, '{"ci'), (0, 2, 'ty": "P"}')]  # the empty piece is not a delta


# --- fields written as null, and whitespace, by servers other than the providers' own ----------


def test_streamed_reasoning_beside_a_null_reasoning_content_is_kept() -> None:
    # vLLM 0.10+ names it `reasoning`; a server that writes every field sends the other as null.
    events: list[tuple[str | None, object]] = [
        (
            None,
            chat_chunk(
                {"role": "assistant", "content": None, "reasoning_content": None, "reasoning": "2+2=4."}
            ),
        ),
        (None, chat_chunk({"content": "4", "reasoning_content": ""}, "stop")),
    ]
    got = capture(request_for("/v1/chat/completions", CHAT_REQUEST), [sse(events, done=True)])
    parts = got.choices[0].message.parts
    assert [(p.type, p.text) for p in parts] == [(model.PART_REASONING, "2+2=4."), (model.PART_TEXT, "4")]


def test_anthropic_message_delta_usage_with_nulls_keeps_the_start_counts() -> None:
    start = {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "role": "assistant",
            "model": "claude",
            "content": [],
            "usage": {
                "input_tokens": 12,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 2048,
                "output_tokens": 1,
            },
        },
    }
    nulls = {"input_tokens": None, "cache_creation_input_tokens": None, "cache_read_input_tokens": None}
    events: list[tuple[str | None, object]] = [
        ("message_start", start),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
        ),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn"},
                "usage": {**nulls, "output_tokens": 9},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    request = request_for(
        "/v1/messages", {"model": "claude", "stream": True, "max_tokens": 9, "messages": []}
    )
    got = capture(request, [sse(events, done=False)])
    assert got.usage is not None and not got.usage.estimated
    assert (got.usage.input_tokens, got.usage.cache_read_input_tokens, got.usage.output_tokens) == (
        2060,
        2048,
        9,
    )
    assert got.usage.total_tokens == 2069


def test_anthropic_streamed_tool_use_without_arguments_reads_as_the_json_answer_does() -> None:
    events: list[tuple[str | None, object]] = [
        (
            "message_start",
            {"type": "message_start", "message": {"id": "m", "role": "assistant", "model": "c"}},
        ),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "tool_use", "id": "toolu_1", "name": "now", "input": {}},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "input_json_delta", "partial_json": ""},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 5}},
        ),
    ]
    request = request_for("/v1/messages", {"model": "c", "stream": True, "max_tokens": 9, "messages": []})
    streamed = capture(request, [sse(events, done=False)])
    whole = {
        "id": "m",
        "type": "message",
        "role": "assistant",
        "model": "c",
        "content": [{"type": "tool_use", "id": "toolu_1", "name": "now", "input": {}}],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 1, "output_tokens": 5},
    }
    json_answer = capture(request, [json.dumps(whole).encode()], content_type=JSON)
    assert streamed.choices[0].message.tool_calls[0].arguments == "{}"
    assert json_answer.choices[0].message.tool_calls[0].arguments == "{}"


def test_responses_reasoning_text_is_kept_in_json_as_in_a_stream() -> None:
    final = {
        "id": "resp_1",
        "object": "response",
        "model": "gpt-oss-120b",
        "status": "completed",
        "output": [
            {
                "type": "reasoning",
                "id": "rs_1",
                "summary": [],
                "content": [{"type": "reasoning_text", "text": "User asks 2+2."}],
            },
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "4"}]},
        ],
    }
    request = request_for("/v1/responses", {"model": "gpt-oss-120b", "input": "2+2?", "stream": True})
    whole = capture(request, [json.dumps(final).encode()], content_type=JSON)
    streamed = capture(
        request,
        [
            sse(
                [
                    (
                        "response.reasoning_text.delta",
                        {
                            "type": "response.reasoning_text.delta",
                            "output_index": 0,
                            "content_index": 0,
                            "delta": "User asks 2+2.",
                        },
                    ),
                    (
                        "response.output_text.delta",
                        {
                            "type": "response.output_text.delta",
                            "output_index": 1,
                            "content_index": 0,
                            "delta": "4",
                        },
                    ),
                    ("response.completed", {"type": "response.completed", "response": final}),
                ],
                done=False,
            )
        ],
    )
    for got in (whole, streamed):
        texts = [(p.type, p.text) for p in got.choices[0].message.parts]
        assert texts == [(model.PART_REASONING, "User asks 2+2."), (model.PART_TEXT, "4")], texts


def test_an_event_whose_data_has_a_second_leading_space_is_read() -> None:
    # SSE takes off one space after `data:`; JSON allows the rest (the openai SDK reads it).
    chunk = json.dumps(chat_chunk({"content": "ok"}, "stop"))
    body = f"data:  {chunk}\n\ndata: [DONE]\n\n".encode()
    got = capture(request_for("/v1/chat/completions", CHAT_REQUEST), [body])
    assert got.id == "chatcmpl-1" and got.choices[0].message.parts[0].text == "ok"
