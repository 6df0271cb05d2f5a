"""The fake upstream, driven by the real `openai` SDK and by raw HTTP."""

from __future__ import annotations

import base64
import gzip
import json
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest

from tools.fake_upstream import BEHAVIOR_HEADER, FakeUpstream, FakeUpstreamConfig, run_fake_upstream

USER_TEXT = "Hello there, fake model"
EXPECTED = f"Echo: {USER_TEXT}"
WEATHER_TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
        },
    }
]


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    async with run_fake_upstream() as upstream:
        yield upstream


@pytest.fixture
async def client(fake: FakeUpstream) -> AsyncIterator[openai.AsyncOpenAI]:
    sdk = openai.AsyncOpenAI(base_url=fake.base_url + "/v1", api_key="sk-test", max_retries=0)
    try:
        yield sdk
    finally:
        await sdk.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


def behave(value: str) -> dict[str, str]:
    return {BEHAVIOR_HEADER: value}


async def test_chat_completion_json(client: openai.AsyncOpenAI, fake: FakeUpstream) -> None:
    completion = await client.chat.completions.create(
        model="gpt-4o",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": USER_TEXT},
        ],
    )
    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion"
    assert completion.model == "gpt-4o-2024-08-06"
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == EXPECTED
    assert choice.finish_reason == "stop"
    usage = completion.usage
    assert usage is not None
    # 3 per message + one per word: "Be brief." (2) and the user text (4).
    assert usage.prompt_tokens == 3 + 2 + 3 + 4
    assert usage.completion_tokens == 5
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 0
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 0


async def test_chat_list_content_parts(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="gpt-4o",
        messages=[
            {
                "role": "user",
                "content": [{"type": "text", "text": "parts "}, {"type": "text", "text": "joined"}],
            }
        ],
    )
    assert completion.choices[0].message.content == "Echo: parts joined"


async def test_chat_streaming_reassembles(client: openai.AsyncOpenAI, fake: FakeUpstream) -> None:
    stream = await client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": USER_TEXT}],
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces: list[str] = []
    finish_reasons: list[str] = []
    usage_chunks = []
    async for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        assert chunk.model == "gpt-4o-2024-08-06"
        if chunk.usage is not None:
            assert chunk.choices == []
            usage_chunks.append(chunk.usage)
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finish_reasons.append(choice.finish_reason)
    assert "".join(pieces) == EXPECTED
    assert len(pieces) > 2
    assert finish_reasons == ["stop"]
    assert len(usage_chunks) == 1
    assert usage_chunks[0].completion_tokens == 5
    assert usage_chunks[0].prompt_tokens == 7


async def test_chat_stream_wire_format(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with http.post(
        fake.base_url + "/v1/chat/completions", json=body, headers={"Authorization": "Bearer k"}
    ) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers["x-request-id"] == "req_000001"
        raw = (await response.read()).decode()
    events = raw.split("\n\n")
    assert events[-1] == ""
    assert events[-2] == "data: [DONE]"
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all("usage" not in p for p in payloads)
    assert payloads[-1]["choices"][0]["finish_reason"] == "stop"


async def test_chat_stream_chunk_delay() -> None:
    async with run_fake_upstream(FakeUpstreamConfig(chunk_delay_s=0.05)) as upstream:
        sdk = openai.AsyncOpenAI(base_url=upstream.base_url + "/v1", api_key="sk-test", max_retries=0)
        try:
            started = time.monotonic()
            stream = await client_stream(sdk, "one two")
            arrivals = [time.monotonic() - started async for _ in stream]
        finally:
            await sdk.close()
    # role chunk, "Echo: ", "one ", "two", finish chunk: four gaps of 50 ms.
    assert len(arrivals) == 5
    assert arrivals[-1] - arrivals[0] >= 0.15


async def client_stream(
    sdk: openai.AsyncOpenAI, text: str
) -> openai.AsyncStream[openai.types.chat.ChatCompletionChunk]:
    return await sdk.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": text}], stream=True
    )


async def test_tool_call_json(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=WEATHER_TOOLS,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert calls is not None
    assert len(calls) == 1
    call = calls[0]
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"location": "Paris", "unit": "celsius"}


async def test_weather_without_tools_is_text(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "weather?"}]
    )
    assert completion.choices[0].message.content == "Echo: weather?"
    assert completion.choices[0].message.tool_calls is None


async def test_tool_call_streamed(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "Tell me the weather"}],
        tools=WEATHER_TOOLS,
        stream=True,
    )
    ids: list[str] = []
    names: list[str] = []
    argument_deltas: list[str] = []
    finish_reasons: list[str] = []
    async for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                assert delta.index == 0
                if delta.id:
                    ids.append(delta.id)
                if delta.function and delta.function.name:
                    names.append(delta.function.name)
                if delta.function and delta.function.arguments:
                    argument_deltas.append(delta.function.arguments)
            if choice.finish_reason:
                finish_reasons.append(choice.finish_reason)
    assert len(ids) == 1
    assert ids[0].startswith("call_")
    assert names == ["get_weather"]
    assert len(argument_deltas) > 2
    assert json.loads("".join(argument_deltas)) == {"location": "Paris", "unit": "celsius"}
    assert finish_reasons == ["tool_calls"]


async def test_embeddings(client: openai.AsyncOpenAI) -> None:
    # The SDK asks for base64 by default and decodes it.
    result = await client.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta gamma"])
    assert result.model == "text-embedding-3-small"
    assert [d.index for d in result.data] == [0, 1]
    vectors = [d.embedding for d in result.data]
    assert all(len(v) == 8 for v in vectors)
    assert sum(x * x for x in vectors[0]) == pytest.approx(1.0, abs=1e-5)
    assert vectors[0] != vectors[1]
    assert result.usage.prompt_tokens == 3
    assert result.usage.total_tokens == 3

    again = await client.embeddings.create(
        model="text-embedding-3-small", input="alpha", encoding_format="float", dimensions=4
    )
    assert len(again.data[0].embedding) == 4
    repeat = await client.embeddings.create(model="text-embedding-3-small", input="alpha")
    assert repeat.data[0].embedding == vectors[0]


async def test_embeddings_base64_wire(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    body = {"model": "e", "input": "alpha", "encoding_format": "base64"}
    async with http.post(
        fake.base_url + "/v1/embeddings", json=body, headers={"Authorization": "Bearer k"}
    ) as response:
        data = await response.json()
    raw = base64.b64decode(data["data"][0]["embedding"])
    assert len(struct.unpack("<8f", raw)) == 8


async def test_models_list(client: openai.AsyncOpenAI) -> None:
    page = await client.models.list()
    ids = [model.id async for model in page]
    assert ids == ["gpt-4o", "gpt-4o-mini", "text-embedding-3-small"]


async def test_legacy_completions(client: openai.AsyncOpenAI) -> None:
    completion = await client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say this")
    assert completion.object == "text_completion"
    assert completion.choices[0].text == "Echo: Say this"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 2
    assert completion.usage.completion_tokens == 3

    stream = await client.completions.create(
        model="gpt-3.5-turbo-instruct",
        prompt="Say this",
        stream=True,
        stream_options={"include_usage": True},
    )
    texts: list[str] = []
    usage_seen = 0
    async for chunk in stream:
        texts.extend(choice.text for choice in chunk.choices)
        if chunk.usage is not None:
            usage_seen += 1
            assert chunk.usage.total_tokens == 5
    assert "".join(texts) == "Echo: Say this"
    assert usage_seen == 1


async def test_responses(client: openai.AsyncOpenAI) -> None:
    response = await client.responses.create(model="gpt-4o", input=USER_TEXT)
    assert response.id.startswith("resp_")
    assert response.status == "completed"
    assert response.model == "gpt-4o-2024-08-06"
    assert response.output_text == EXPECTED
    assert response.output[0].type == "message"
    assert response.usage is not None
    assert response.usage.input_tokens == 4
    assert response.usage.output_tokens == 5
    assert response.usage.total_tokens == 9

    message_input: Any = [{"role": "user", "content": [{"type": "input_text", "text": "from items"}]}]
    itemised = await client.responses.create(model="gpt-4o", input=message_input)
    assert itemised.output_text == "Echo: from items"


async def test_responses_streaming(client: openai.AsyncOpenAI) -> None:
    stream = await client.responses.create(model="gpt-4o", input=USER_TEXT, stream=True)
    types: list[str] = []
    deltas: list[str] = []
    final_text = ""
    async for event in stream:
        types.append(event.type)
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
        if event.type == "response.completed":
            final_text = event.response.output_text
    assert types[0] == "response.created"
    assert types[-1] == "response.completed"
    assert "".join(deltas) == EXPECTED
    assert final_text == EXPECTED


async def test_anthropic_messages(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    body = {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": "Hi"}]}
    headers = {"x-api-key": "sk-ant", "anthropic-version": "2023-06-01"}
    async with http.post(fake.base_url + "/v1/messages", json=body, headers=headers) as response:
        assert response.status == 200
        message = await response.json()
    assert message["type"] == "message"
    assert message["model"] == "claude-sonnet-4-5"
    assert message["content"] == [{"type": "text", "text": "Echo: Hi"}]
    assert message["stop_reason"] == "end_turn"
    assert message["usage"]["input_tokens"] == 4
    assert message["usage"]["output_tokens"] == 2


async def test_anthropic_messages_streaming(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "stream": True,
        "messages": [{"role": "user", "content": [{"type": "text", "text": USER_TEXT}]}],
    }
    async with http.post(
        fake.base_url + "/v1/messages", json=body, headers={"x-api-key": "sk-ant"}
    ) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        raw = (await response.read()).decode()
    events: list[tuple[str, dict[str, Any]]] = []
    for block in raw.strip().split("\n\n"):
        event_line, data_line = block.split("\n")
        name = event_line.removeprefix("event: ")
        data = json.loads(data_line.removeprefix("data: "))
        assert data["type"] == name
        events.append((name, data))
    names = [name for name, _ in events]
    assert names[:2] == ["message_start", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert text == EXPECTED
    assert events[0][1]["message"]["usage"]["input_tokens"] == 7
    assert events[-2][1]["usage"]["output_tokens"] == 5
    assert "[DONE]" not in raw


async def test_anthropic_error_shape(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    body = {"model": "claude+status:429", "max_tokens": 1, "messages": []}
    async with http.post(
        fake.base_url + "/v1/messages", json=body, headers={"x-api-key": "sk-ant"}
    ) as response:
        assert response.status == 429
        error = await response.json()
    assert error == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": error["error"]["message"]},
    }


@pytest.mark.parametrize(
    ("status", "exception", "code"),
    [
        (401, openai.AuthenticationError, "invalid_api_key"),
        (429, openai.RateLimitError, "rate_limit_exceeded"),
        (500, openai.InternalServerError, "server_error"),
        (400, openai.BadRequestError, None),
    ],
)
async def test_status_switch(
    client: openai.AsyncOpenAI, status: int, exception: type[openai.APIStatusError], code: str | None
) -> None:
    with pytest.raises(exception) as caught:
        await client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "x"}],
            extra_headers=behave(f"status:{status}"),
        )
    error = caught.value
    assert error.status_code == status
    assert error.code == code
    assert error.response.headers["x-request-id"].startswith("req_")
    if status == 429:
        assert error.response.headers["retry-after"] == "1"


async def test_status_switch_by_model_name(client: openai.AsyncOpenAI, fake: FakeUpstream) -> None:
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(
            model="gpt-4o+status:429", messages=[{"role": "user", "content": "x"}]
        )
    assert fake.last_request.json() == {
        "model": "gpt-4o+status:429",
        "messages": [{"role": "user", "content": "x"}],
    }


async def test_delay_switch(client: openai.AsyncOpenAI) -> None:
    started = time.monotonic()
    completion = await client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "slow"}], extra_headers=behave("delay:0.3")
    )
    assert time.monotonic() - started >= 0.3
    assert completion.choices[0].message.content == "Echo: slow"

    with pytest.raises(openai.APITimeoutError):
        await client.with_options(timeout=0.1).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "slow"}], extra_headers=behave("delay:1")
        )


async def test_cut_switch_stream(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": USER_TEXT}],
        stream=True,
        extra_headers=behave("cut:3"),
    )
    received: list[str] = []
    # The socket closes mid chunked body: the SDK wraps httpx's incomplete-read error while iterating.
    with pytest.raises(openai.APIConnectionError) as caught:
        async for chunk in stream:
            received.extend(choice.delta.content or "" for choice in chunk.choices)
    assert "".join(received) == "Echo: Hello "
    assert "incomplete chunked read" in str(caught.value.__cause__)


async def test_cut_switch_raw(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "a b c d"}], "stream": True}
    headers = {"Authorization": "Bearer k", **behave("cut:2")}
    async with http.post(fake.base_url + "/v1/chat/completions", json=body, headers=headers) as response:
        assert response.status == 200
        received = b""
        with pytest.raises(aiohttp.ClientPayloadError):
            async for data in response.content.iter_any():
                received += data
    assert received.count(b"data: ") == 2
    assert b"[DONE]" not in received


async def test_cut_switch_json_body(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}
    headers = {"Authorization": "Bearer k", **behave("cut:10")}
    async with http.post(fake.base_url + "/v1/chat/completions", json=body, headers=headers) as response:
        assert response.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()


async def test_gzip_switch(
    client: openai.AsyncOpenAI, fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    completion = await client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "zip"}], extra_headers=behave("gzip")
    )
    assert completion.choices[0].message.content == "Echo: zip"

    body = {"model": "gpt-4o+gzip", "messages": [{"role": "user", "content": "zip"}]}
    async with http.post(
        fake.base_url + "/v1/chat/completions", json=body, headers={"Authorization": "Bearer k"}
    ) as response:
        assert response.headers["Content-Encoding"] == "gzip"
        compressed = await response.read()
    assert json.loads(gzip.decompress(compressed))["choices"][0]["message"]["content"] == "Echo: zip"


async def test_combined_switches(client: openai.AsyncOpenAI) -> None:
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "x"}],
            extra_headers=behave("delay:0.2,status:500"),
        )
    assert time.monotonic() - started >= 0.2


async def test_unknown_switch_is_400(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="unknown fake behavior"):
        await client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "x"}], extra_headers=behave("explode")
        )


async def test_missing_auth(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    sdk = openai.AsyncOpenAI(
        base_url=fake.base_url + "/v1", api_key="unused", max_retries=0, default_headers={"Authorization": ""}
    )
    try:
        with pytest.raises(openai.AuthenticationError) as caught:
            await sdk.models.list()
    finally:
        await sdk.close()
    assert caught.value.code == "invalid_api_key"
    assert fake.last_request.headers["authorization"] == ""

    async with http.get(fake.base_url + "/v1/models") as response:
        assert response.status == 401
        assert (await response.json())["error"]["type"] == "invalid_request_error"


async def test_auth_can_be_disabled(http: aiohttp.ClientSession) -> None:
    async with (
        run_fake_upstream(FakeUpstreamConfig(require_auth=False)) as upstream,
        http.get(upstream.base_url + "/v1/models") as response,
    ):
        assert response.status == 200


async def test_unknown_route_is_openai_404(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    async with http.get(fake.base_url + "/v1/nope", headers={"Authorization": "Bearer k"}) as response:
        assert response.status == 404
        assert "error" in await response.json()


async def test_requests_are_recorded(client: openai.AsyncOpenAI, fake: FakeUpstream) -> None:
    await client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "record me"}],
        extra_headers={"X-Custom": "yes"},
        extra_query={"trace": "1"},
    )
    await client.models.list()
    assert [r.path for r in fake.requests] == ["/v1/chat/completions", "/v1/models"]
    first = fake.requests[0]
    assert first.method == "POST"
    assert first.query_string == "trace=1"
    assert first.headers["authorization"] == "Bearer sk-test"
    assert first.headers["x-custom"] == "yes"
    assert first.headers["content-type"] == "application/json"
    assert json.loads(first.body) == {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "record me"}],
    }
    assert first.request_id == "req_000001"
    assert fake.requests[1].method == "GET"
    assert fake.requests[1].body == b""
    assert fake.requests[1].request_id == "req_000002"


async def test_a_bounded_upstream_keeps_only_its_newest_requests() -> None:
    async with run_fake_upstream(FakeUpstreamConfig(keep_requests=2)) as upstream:
        client = openai.AsyncOpenAI(base_url=upstream.base_url + "/v1", api_key="sk-test")
        for _ in range(7):
            await client.models.list()
        await client.close()
        ids = [r.request_id for r in upstream.requests]
        assert 2 <= len(ids) <= 4  # trimmed in bulk past twice the bound
        assert ids[-2:] == ["req_000006", "req_000007"]
    async with run_fake_upstream(FakeUpstreamConfig(keep_requests=0)) as upstream:
        client = openai.AsyncOpenAI(base_url=upstream.base_url + "/v1", api_key="sk-test")
        for _ in range(3):
            await client.models.list()
        await client.close()
        assert upstream.requests == []  # none kept, rather than all


async def test_request_id_header(client: openai.AsyncOpenAI) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "id"}]
    )
    assert raw.headers["x-request-id"] == "req_000001"
    assert raw.parse().choices[0].message.content == "Echo: id"
