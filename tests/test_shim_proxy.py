"""The official openai SDK through the shim gets what it gets from the upstream directly.

Each test drives the real SDK against the fake upstream twice, directly and through a running
shim, compares the results, and checks the span the core received for the proxied call.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from typing import Any

import aiohttp
import openai
import pytest

from llmtrace.api.v1 import span_pb2
from tests.conftest import OpenAIFactory, Stack

KEY = "sk-test-0123456789abcdefghijklmnop"
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def clients(
    make_client: OpenAIFactory, stack: Stack, **headers: str
) -> tuple[openai.AsyncOpenAI, openai.AsyncOpenAI]:
    """(direct, proxied) async clients with identical settings."""
    direct = make_client(api_key=KEY, base_url=stack.upstream.base_url + "/v1", max_retries=0)
    proxied = make_client(
        api_key=KEY, base_url=stack.shim.base_url + "/v1", max_retries=0, default_headers=headers
    )
    return direct, proxied


_PER_CALL = frozenset({"id", "created", "created_at"})


def strip_ids(data: Any) -> Any:
    """A response without the fields that differ per call (ids and timestamps), at any depth."""
    if isinstance(data, dict):
        return {k: strip_ids(v) for k, v in data.items() if k not in _PER_CALL}
    if isinstance(data, list):
        return [strip_ids(v) for v in data]
    return data


async def test_chat_completion_same_result_and_span(make_client: OpenAIFactory, stack: Stack) -> None:
    direct, proxied = clients(
        make_client, stack, **{"X-LLMTrace-Tenant": "acme", "X-LLMTrace-Agent": "billing-bot"}
    )
    request: Any = {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "hello there"},
        ],
        "temperature": 0.2,
        "max_tokens": 50,
    }
    want = await direct.chat.completions.create(**request)
    raw = await proxied.chat.completions.with_raw_response.create(**request)
    got = raw.parse()
    assert strip_ids(got.model_dump()) == strip_ids(want.model_dump())
    assert got.choices[0].message.content == "Echo: hello there"

    forwarded = stack.upstream.last_request
    assert forwarded.json() == request
    assert forwarded.headers["authorization"] == f"Bearer {KEY}"
    assert not [h for h in forwarded.headers if h.startswith("x-llmtrace")]

    (span,) = await stack.spans("acme")
    assert span.tenant == "acme" and span.agent == "billing-bot"
    assert span.operation == "chat" and span.provider == "openai"
    assert span.request_model == "gpt-4o" and span.response_model == got.model
    assert span.status.code == span_pb2.STATUS_CODE_OK and span.status.http_status_code == 200
    assert [m.role for m in span.request.messages] == ["system", "user"]
    assert span.request.messages[1].parts[0].text == "hello there"
    assert span.request.parameters.temperature == pytest.approx(0.2)
    assert span.request.parameters.max_tokens == 50
    assert span.response.choices[0].message.parts[0].text == "Echo: hello there"
    assert span.response.choices[0].finish_reason == "stop"
    assert got.usage is not None
    assert span.usage.input_tokens == got.usage.prompt_tokens
    assert span.usage.output_tokens == got.usage.completion_tokens
    assert not span.usage.estimated
    assert span.upstream_request_id == raw.headers["x-request-id"] == forwarded.request_id
    assert span.api_key_fingerprint and KEY not in span.SerializeToString().decode("latin-1")
    assert span.start_time.ToNanoseconds() < span.end_time.ToNanoseconds()
    assert span.HasField("time_to_first_token")


async def test_sync_client_through_the_shim(stack: Stack) -> None:
    def call() -> str | None:
        with openai.OpenAI(api_key=KEY, base_url=stack.shim.base_url + "/v1", max_retries=0) as client:
            answer = client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "sync works"}]
            )
        return answer.choices[0].message.content

    assert await asyncio.to_thread(call) == "Echo: sync works"
    (span,) = await stack.spans()
    assert span.request_model == "gpt-4o-mini"


@pytest.mark.parametrize("include_usage", [True, False])
async def test_streaming_chat_same_chunks_and_span(
    make_client: OpenAIFactory, stack: Stack, include_usage: bool
) -> None:
    direct, proxied = clients(make_client, stack)
    request: Any = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "stream me a few words please"}],
        "stream": True,
    }
    if include_usage:
        request["stream_options"] = {"include_usage": True}

    async def collect(client: openai.AsyncOpenAI) -> list[dict[str, Any]]:
        stream = await client.chat.completions.create(**request)
        return [strip_ids(chunk.model_dump()) async for chunk in stream]

    want, got = await collect(direct), await collect(proxied)
    assert got == want and len(got) > 3
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in got if c["choices"])
    assert text == "Echo: stream me a few words please"

    (span,) = await stack.spans()
    assert span.request.parameters.stream
    assert span.response.choices[0].message.parts[0].text == text
    assert span.response.choices[0].finish_reason == "stop"
    assert span.usage.output_tokens > 0 and span.usage.input_tokens > 0
    assert span.usage.estimated is not include_usage
    if include_usage:
        assert got[-1]["usage"]["completion_tokens"] == span.usage.output_tokens
    assert span.status.code == span_pb2.STATUS_CODE_OK


async def test_streamed_tool_calls_are_captured(make_client: OpenAIFactory, stack: Stack) -> None:
    direct, proxied = clients(make_client, stack)
    request: Any = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "what is the weather in Paris?"}],
        "tools": [WEATHER_TOOL],
        "stream": True,
    }

    async def collect(client: openai.AsyncOpenAI) -> list[dict[str, Any]]:
        stream = await client.chat.completions.create(**request)
        return [strip_ids(chunk.model_dump()) async for chunk in stream]

    want, got = await collect(direct), await collect(proxied)
    assert got == want
    (span,) = await stack.spans()
    assert span.request.tools[0].name == "get_weather"
    (call,) = span.response.choices[0].message.tool_calls
    assert call.name == "get_weather"
    assert json.loads(call.arguments) == {"location": "Paris", "unit": "celsius"}
    assert span.response.choices[0].finish_reason == "tool_calls"


async def test_tool_call_json_and_tool_message_round_trip(make_client: OpenAIFactory, stack: Stack) -> None:
    direct, proxied = clients(make_client, stack)
    first: Any = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "weather in Oslo?"}],
        "tools": [WEATHER_TOOL],
    }
    want = await direct.chat.completions.create(**first)
    got = await proxied.chat.completions.create(**first)
    assert strip_ids(got.model_dump()) == strip_ids(want.model_dump())
    tool_calls = got.choices[0].message.tool_calls
    assert tool_calls
    follow_up: Any = {
        "model": "gpt-4o",
        "tools": [WEATHER_TOOL],
        "messages": [
            *first["messages"],
            got.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": tool_calls[0].id, "content": "12 degrees, rain"},
        ],
    }
    await proxied.chat.completions.create(**follow_up)
    spans = await stack.spans(expected=2)
    second = next(s for s in spans if len(s.request.messages) == 3)
    assert second.request.messages[1].tool_calls[0].name == "get_weather"
    assert second.request.messages[2].role == "tool"
    assert second.request.messages[2].tool_call_id == tool_calls[0].id


async def test_content_array_with_image_part(make_client: OpenAIFactory, stack: Stack) -> None:
    _, proxied = clients(make_client, stack)
    await proxied.chat.completions.create(
        model="gpt-4o",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "describe this"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                ],
            }
        ],
    )
    (span,) = await stack.spans()
    parts = span.request.messages[0].parts
    assert [p.type for p in parts] == [span_pb2.CONTENT_PART_TYPE_TEXT, span_pb2.CONTENT_PART_TYPE_IMAGE]
    assert parts[1].uri == "https://example.com/cat.png"


async def test_embeddings_and_models(make_client: OpenAIFactory, stack: Stack) -> None:
    direct, proxied = clients(make_client, stack)
    want = await direct.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    got = await proxied.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert got.model_dump() == want.model_dump()
    models_direct = [m.id async for m in direct.models.list()]
    models_proxied = [m.id async for m in proxied.models.list()]
    assert models_proxied == models_direct
    spans = await stack.spans(expected=2)
    embedding = next(s for s in spans if s.operation == "embeddings")
    assert embedding.request_model == "text-embedding-3-small"
    assert embedding.usage.input_tokens == got.usage.prompt_tokens


async def test_legacy_completions(make_client: OpenAIFactory, stack: Stack) -> None:
    direct, proxied = clients(make_client, stack)
    want = await direct.completions.create(model="gpt-3.5-turbo-instruct", prompt="say hi")
    got = await proxied.completions.create(model="gpt-3.5-turbo-instruct", prompt="say hi")
    assert strip_ids(got.model_dump()) == strip_ids(want.model_dump())
    (span,) = await stack.spans()
    assert span.operation == "text_completion"
    assert span.response.choices[0].message.parts[0].text == got.choices[0].text


async def test_responses_api_json_and_stream(make_client: OpenAIFactory, stack: Stack) -> None:
    direct, proxied = clients(make_client, stack)
    want = await direct.responses.create(model="gpt-4o", input="respond kindly")
    got = await proxied.responses.create(model="gpt-4o", input="respond kindly")
    assert got.output_text == want.output_text
    stream = await proxied.responses.create(model="gpt-4o", input="stream kindly", stream=True)
    events = [event.type async for event in stream]
    assert events[-1] == "response.completed"
    spans = await stack.spans(expected=2)
    texts = sorted(s.response.choices[0].message.parts[0].text for s in spans)
    assert texts == sorted([got.output_text, "Echo: stream kindly"])
    assert all(s.usage.output_tokens > 0 for s in spans)


@pytest.mark.parametrize("status", [401, 429, 500])
async def test_upstream_errors_pass_through_unchanged(
    make_client: OpenAIFactory, stack: Stack, status: int
) -> None:
    async with aiohttp.ClientSession() as http:
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}
        headers = {"Authorization": f"Bearer {KEY}", "X-Fake-Behavior": f"status:{status}"}
        async with http.post(
            stack.upstream.base_url + "/v1/chat/completions", json=body, headers=headers
        ) as r:
            want_body, want_status = await r.read(), r.status
        async with http.post(stack.shim.base_url + "/v1/chat/completions", json=body, headers=headers) as r:
            got_body, got_status = await r.read(), r.status
    assert (got_status, got_body) == (want_status, want_body) == (status, want_body)
    _, proxied = clients(make_client, stack)
    with pytest.raises(openai.APIStatusError) as caught:
        await proxied.chat.completions.create(
            model=f"gpt-4o+status:{status}", messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.status_code == status
    spans = await stack.spans(expected=2)
    assert all(s.status.code == span_pb2.STATUS_CODE_ERROR for s in spans)
    assert all(s.status.http_status_code == status for s in spans)
    assert all(s.status.error_message for s in spans)


async def test_gzip_response_passes_through_compressed(make_client: OpenAIFactory, stack: Stack) -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "zip it"}]}
    headers = {"Authorization": f"Bearer {KEY}", "X-Fake-Behavior": "gzip", "Accept-Encoding": "gzip"}
    url = stack.shim.base_url + "/v1/chat/completions"
    async with (
        aiohttp.ClientSession(auto_decompress=False) as http,
        http.post(url, json=body, headers=headers) as r,
    ):
        assert r.headers["Content-Encoding"] == "gzip"
        raw = await r.read()
    answer = json.loads(gzip.decompress(raw))
    assert answer["choices"][0]["message"]["content"] == "Echo: zip it"
    _, proxied = clients(make_client, stack)
    got = await proxied.chat.completions.create(
        model="gpt-4o+gzip", messages=[{"role": "user", "content": "zip again"}]
    )
    assert got.choices[0].message.content == "Echo: zip again"
    spans = await stack.spans(expected=2)
    assert sorted(s.response.choices[0].message.parts[0].text for s in spans) == [
        "Echo: zip again",
        "Echo: zip it",
    ]


async def test_anthropic_messages_json_and_stream(stack: Stack) -> None:
    body: Any = {
        "model": "claude-sonnet-4",
        "max_tokens": 64,
        "system": "Answer briefly.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello claude"}]}],
    }
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    async with aiohttp.ClientSession() as http:
        async with http.post(stack.upstream.base_url + "/v1/messages", json=body, headers=headers) as r:
            want = await r.json()
        async with http.post(stack.shim.base_url + "/v1/messages", json=body, headers=headers) as r:
            got = await r.json()
        async with http.post(
            stack.shim.base_url + "/v1/messages", json={**body, "stream": True}, headers=headers
        ) as r:
            events = (await r.read()).decode()
    assert strip_ids(got) == strip_ids(want)
    assert "event: message_stop" in events
    spans = await stack.spans(expected=2)
    assert {s.provider for s in spans} == {"anthropic"}
    for span in spans:
        assert [m.role for m in span.request.messages] == ["system", "user"]
        assert span.request.messages[0].parts[0].text == "Answer briefly."
        assert span.response.choices[0].message.parts[0].text == "Echo: hello claude"
        assert span.usage.output_tokens > 0 and not span.usage.estimated
        assert span.request.parameters.max_tokens == 64
    assert sorted(s.request.parameters.stream for s in spans) == [False, True]
