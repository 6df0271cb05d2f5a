"""Request bodies of every supported API read into `ParsedRequest`, and garbage never raising."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from llmtrace.capture import model
from llmtrace.capture.request_parse import parse_request, requested_model

LIMIT = 1024 * 1024


def parse(path: str, body: object, *, limit: int = LIMIT) -> model.ParsedRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_request(path, raw, "application/json", max_body_bytes=limit)


def texts(message: model.Message) -> list[str]:
    return [part.text for part in message.parts]


def test_chat_completions_with_string_and_array_content_tools_and_parameters() -> None:
    body = {
        "model": "gpt-4o",
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.2,
        "top_p": 0.9,
        "max_completion_tokens": 300,
        "stop": ["END", 7],
        "frequency_penalty": 0.5,
        "presence_penalty": -0.5,
        "seed": 42,
        "n": 2,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x"}},
        "messages": [
            {"role": "system", "content": "You are terse."},
            {
                "role": "user",
                "name": "ann",
                "content": [
                    {"type": "text", "text": "What is in this image?"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAAA"}},
                    {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
                    {"type": "file", "file": {"file_id": "file-123"}},
                    {"type": "mystery"},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Weather of a city",
                    "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
                },
            }
        ],
    }
    request = parse("/v1/chat/completions", body)
    assert (request.api, request.operation, request.provider) == ("chat_completions", "chat", "openai")
    assert request.model == "gpt-4o" and request.stream and request.include_usage
    assert request.raw_body == "" and not request.truncated
    params = request.parameters
    assert (params.temperature, params.top_p, params.max_tokens) == (0.2, 0.9, 300)
    assert params.stop == ["END"] and params.stream is True
    assert (params.frequency_penalty, params.presence_penalty, params.seed, params.choice_count) == (
        0.5,
        -0.5,
        42,
        2,
    )
    assert params.output_type == "json"
    system, user, assistant, tool = request.messages
    assert system.role == "system" and texts(system) == ["You are terse."]
    assert user.name == "ann"
    assert [p.type for p in user.parts] == ["text", "image", "image", "audio", "file", "other"]
    assert user.parts[1].uri == "https://example.com/cat.png"
    # Inline data URIs are not stored, only their MIME type.
    assert user.parts[2].uri == "" and user.parts[2].mime == "image/jpeg"
    assert user.parts[3].mime == "audio/wav" and user.parts[4].uri == "file-123"
    assert user.parts[5].mime == "mystery"
    assert assistant.parts == []
    assert assistant.tool_calls == [
        model.ToolCall("call_1", "function", "get_weather", '{"location":"Paris"}')
    ]
    assert tool.role == "tool" and tool.tool_call_id == "call_1" and texts(tool) == ['{"temp": 21}']
    (definition,) = request.tools
    assert (definition.type, definition.name, definition.description) == (
        "function",
        "get_weather",
        "Weather of a city",
    )
    assert json.loads(definition.parameters_json)["properties"]["location"] == {"type": "string"}


def test_chat_legacy_functions_and_function_call() -> None:
    body = {
        "model": "gpt-3.5-turbo",
        "max_tokens": 50,
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": "{}"}},
            {"role": "function", "name": "f", "content": "42"},
        ],
        "functions": [{"name": "f", "description": "d", "parameters": {"type": "object"}}],
    }
    request = parse("/v1/chat/completions", body)
    assert request.parameters.max_tokens == 50
    assert request.messages[1].tool_calls == [model.ToolCall("", "function", "f", "{}")]
    assert request.messages[2].role == "function" and request.messages[2].name == "f"
    assert [(t.name, t.description, t.parameters_json) for t in request.tools] == [
        ("f", "d", '{"type":"object"}')
    ]
    assert request.parameters.stream is False and not request.stream  # absent means not streamed


def test_legacy_completions_prompt_forms() -> None:
    request = parse(
        "/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": "Say hi", "max_tokens": 5}
    )
    assert (request.operation, request.api) == ("text_completion", "completions")
    assert [texts(m) for m in request.messages] == [["Say hi"]] and request.parameters.max_tokens == 5
    batch = parse("/v1/completions", {"model": "m", "prompt": ["a", "b"]})
    assert [texts(m) for m in batch.messages] == [["a"], ["b"]]
    tokens = parse("/v1/completions", {"model": "m", "prompt": [[1, 2, 3], [4, 5]]})
    assert tokens.messages == [] and tokens.token_id_count == 5


def test_embeddings_inputs_are_one_user_message_and_token_ids_are_counted() -> None:
    request = parse("/v1/embeddings", {"model": "text-embedding-3-small", "input": ["one", "two"]})
    assert request.operation == "embeddings" and request.model == "text-embedding-3-small"
    (message,) = request.messages
    assert message.role == "user" and texts(message) == ["one", "two"]
    single = parse("/v1/embeddings", {"model": "m", "input": "alone"})
    assert texts(single.messages[0]) == ["alone"]
    ids = parse("/v1/embeddings", {"model": "m", "input": [101, 102, 103]})
    assert ids.messages == [] and ids.token_id_count == 3


def test_responses_api_instructions_items_and_tools() -> None:
    body = {
        "model": "gpt-4.1",
        "instructions": "Be brief.",
        "max_output_tokens": 128,
        "text": {"format": {"type": "json_object"}},
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
            {"type": "input_image", "image_url": "https://example.com/a.png"},
            {"type": "function_call", "call_id": "call_9", "name": "get_weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_9", "output": "sunny"},
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "thinking"}]},
        ],
        "tools": [
            {"type": "function", "name": "get_weather", "parameters": {"type": "object"}},
            {"type": "web_search_preview"},
        ],
    }
    request = parse("/v1/responses", body)
    assert (request.operation, request.api, request.provider) == ("chat", "responses", "openai")
    assert request.parameters.max_tokens == 128 and request.parameters.output_type == "json"
    roles = [m.role for m in request.messages]
    assert roles == ["system", "user", "user", "assistant", "tool", "assistant"]
    assert texts(request.messages[0]) == ["Be brief."] and texts(request.messages[1]) == ["Weather?"]
    assert request.messages[2].parts[0].uri == "https://example.com/a.png"
    assert request.messages[3].tool_calls[0].id == "call_9"
    assert request.messages[4].tool_call_id == "call_9" and texts(request.messages[4]) == ["sunny"]
    assert request.messages[5].parts[0].type == "reasoning"
    assert [(t.type, t.name) for t in request.tools] == [
        ("function", "get_weather"),
        ("web_search_preview", "web_search_preview"),
    ]
    plain = parse("/v1/responses", {"model": "m", "input": "hello"})
    assert [(m.role, texts(m)) for m in plain.messages] == [("user", ["hello"])]


def test_anthropic_messages_system_blocks_tools_and_tool_results() -> None:
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "stop_sequences": ["\n\nHuman:"],
        "stream": True,
        "temperature": 0.7,
        "system": [{"type": "text", "text": "You are a cat."}],
        "messages": [
            {"role": "user", "content": "What's the weather?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Let me check."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                    {"type": "text", "text": "Thanks"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA"}},
                ],
            },
        ],
        "tools": [{"name": "get_weather", "description": "w", "input_schema": {"type": "object"}}],
    }
    request = parse("/v1/messages", body)
    assert (request.operation, request.provider, request.api) == ("chat", "anthropic", "messages")
    assert request.stream and request.parameters.max_tokens == 1024
    assert request.parameters.stop == ["\n\nHuman:"] and request.parameters.temperature == 0.7
    roles = [m.role for m in request.messages]
    assert roles == ["system", "user", "assistant", "tool", "user"]
    assert texts(request.messages[0]) == ["You are a cat."]
    assistant = request.messages[2]
    assert texts(assistant) == ["Let me check."]
    assert assistant.tool_calls == [model.ToolCall("toolu_1", "function", "get_weather", '{"city":"Paris"}')]
    assert request.messages[3].tool_call_id == "toolu_1" and texts(request.messages[3]) == ["sunny"]
    assert [p.type for p in request.messages[4].parts] == ["text", "image"]
    assert request.messages[4].parts[1].mime == "image/png"
    assert [(t.type, t.name, t.parameters_json) for t in request.tools] == [
        ("function", "get_weather", '{"type":"object"}')
    ]
    assert not request.include_usage


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1/chat/completions", ("chat_completions", "chat", "openai")),
        ("/proxy/openai/v1/chat/completions/", ("chat_completions", "chat", "openai")),
        (
            "/openai/deployments/gpt4/chat/completions?api-version=2024",
            ("chat_completions", "chat", "openai"),
        ),
        ("/v1/completions", ("completions", "text_completion", "openai")),
        ("/v1/models", ("models", "list_models", "openai")),
        ("/anthropic/v1/messages", ("messages", "chat", "anthropic")),
        ("/v1/threads/t1/messages", ("", "", "openai")),
        ("/v1/messages/count_tokens", ("", "", "anthropic")),
        ("/v1/audio/speech", ("", "", "openai")),
    ],
)
def test_routes_match_on_the_path_suffix(path: str, expected: tuple[str, str, str]) -> None:
    request = parse_request(path, b"", "", max_body_bytes=LIMIT)
    assert (request.api, request.operation, request.provider) == expected


def test_unknown_route_and_unparseable_bodies_keep_a_truncated_raw_body() -> None:
    unknown = parse("/v1/audio/speech", b'{"input": "hello"}')
    assert unknown.raw_body == '{"input": "hello"}' and not unknown.truncated
    broken = parse("/v1/chat/completions", b'{"model": "gpt-4o", "messages": [', limit=10)
    assert broken.raw_body == '{"model": ' and broken.truncated and broken.messages == []
    not_object = parse("/v1/chat/completions", b"[1, 2]")
    assert not_object.raw_body == "[1, 2]"
    invalid_utf8 = parse("/v1/chat/completions", b"\xff\xfe{")
    assert invalid_utf8.raw_body == "\ufffd\ufffd{"
    binary = parse_request(
        "/v1/audio/transcriptions", b"\x00" * 10, "multipart/form-data; b=x", max_body_bytes=5
    )
    assert binary.raw_body.startswith("[10 bytes of multipart/form-data") and "\x00" not in binary.raw_body
    models = parse_request("/v1/models", b"", "", max_body_bytes=LIMIT)
    assert models.operation == "list_models" and models.raw_body == ""


WRONG_VALUES: list[Any] = [None, 1, -1.5, True, "s", [], {}, [None], [1, "x"], {"a": None}, 2**70]


@pytest.mark.parametrize(
    "path", ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/messages"]
)
def test_wrong_types_at_every_level_never_raise(path: str) -> None:
    keys = [
        "model", "messages", "prompt", "input", "instructions", "system", "tools", "functions", "stop",
        "stop_sequences", "temperature", "max_tokens", "seed", "n", "stream", "stream_options",
        "response_format", "text",
    ]  # fmt: skip
    nested: dict[str, Any] = {
        "role": None, "content": None, "name": 3, "tool_calls": None, "function_call": 1,
        "type": None, "text": 5, "image_url": 1, "source": "x", "input": None, "function": [],
        "tool_use_id": 2, "summary": 1, "output": {}, "arguments": 3,
    }  # fmt: skip
    rng = random.Random(7)
    for _ in range(400):
        body: dict[str, Any] = {}
        for key in rng.sample(keys, 6):
            value = rng.choice(WRONG_VALUES)
            if rng.random() < 0.5:
                item = {k: rng.choice([*WRONG_VALUES, nested]) for k in rng.sample(list(nested), 5)}
                value = [item, rng.choice(WRONG_VALUES), {"content": [item, None, 3]}]
            body[key] = value
        raw = json.dumps(body).encode()
        request = parse_request(path, raw, "application/json", max_body_bytes=LIMIT)
        assert isinstance(request, model.ParsedRequest)
        for message in request.messages:
            assert isinstance(message.role, str)
            assert all(isinstance(p.text, str) for p in message.parts)


def test_garbage_bytes_never_raise() -> None:
    rng = random.Random(3)
    for _ in range(300):
        size = rng.randrange(0, 200)
        raw = bytes(rng.randrange(256) for _ in range(size))
        for path in ("/v1/chat/completions", "/v1/messages", "/x"):
            request = parse_request(path, raw, "application/json", max_body_bytes=64)
            assert len(request.raw_body) <= 64


def test_huge_body_is_parsed_and_raw_body_is_bounded() -> None:
    text = "x" * 3_000_000
    request = parse("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": text}]})
    assert request.messages[0].parts[0].text == text  # the span builder cuts it, not the parser
    unknown = parse("/v1/unknown", text.encode(), limit=1000)
    assert len(unknown.raw_body) == 1000 and unknown.truncated


def test_json_orjson_refuses_is_read_by_the_standard_parser() -> None:
    from llmtrace.capture.jsonvalues import loads  # noqa: PLC0415

    # Lone surrogate escapes (keys, nested strings) become U+FFFD; a proper pair stays one character.
    value = loads(b'{"k\\udc00": ["a\\ud800b", {"c": "\\ud83d\\ude00 \\udfff"}], "n": 1e400}')
    assert value == {"k\ufffd": ["a\ufffdb", {"c": "\U0001f600 \ufffd"}], "n": float("inf")}
    assert loads(b"{not json") is None
    assert loads(b"\xff\xfe{}") is None
    assert loads(b"[" * 100_000) is None
    request = parse_request(
        "/v1/chat/completions",
        b'{"model": "m", "messages": [{"role": "user", "content": "hi \\ud800"}]}',
        "application/json",
        max_body_bytes=1 << 20,
    )
    assert request.messages[0].parts[0].text == "hi \ufffd"
    assert not request.raw_body
    request.messages[0].parts[0].text.encode()  # encodable: protobuf and the wire need UTF-8


@pytest.mark.parametrize(
    ("path", "body", "content_type"),
    [
        ("/v1/chat/completions", b'{"model": "gpt-4o", "messages": []}', "application/json"),
        ("/v1/messages", b'{"model": "claude-x", "system": "s", "messages": []}', "application/json"),
        ("/v1/embeddings", b'{"model": "text-embedding-3-small", "input": "x"}', "application/json"),
        ("/v1/responses", b'{"model": "o4", "input": "x"}', ""),
        ("/v1/chat/completions", b'{"model": 42}', "application/json"),
        ("/v1/chat/completions", b"not json", "application/json"),
        ("/v1/chat/completions", b"", "application/json"),
        ("/v1/unknown/route", b'{"model": "gpt-4o"}', "application/json"),
        ("/v1/audio/transcriptions", b'{"model": "whisper-1"}', "multipart/form-data; boundary=x"),
    ],
)
def test_requested_model_is_what_the_full_read_finds(path: str, body: bytes, content_type: str) -> None:
    full = parse_request(path, body, content_type, max_body_bytes=1 << 20)
    assert requested_model(path, body, content_type) == full.model


def test_a_null_field_does_not_hide_its_alternative() -> None:
    # Servers that write every field send `"max_completion_tokens": null` beside `max_tokens`.
    got = parse(
        "/v1/chat/completions",
        {
            "model": "m",
            "max_completion_tokens": None,
            "max_tokens": 256,
            "messages": [],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": None}}],
        },
    )
    assert got.parameters.max_tokens == 256
    responses = parse(
        "/v1/responses",
        {
            "model": "m",
            "input": [
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": None, "input": {"a": 1}}
            ],
        },
    )
    assert responses.messages[0].tool_calls[0].arguments == '{"a":1}'
