"""The shim's own answers (502, 504, 413, 400) and broken streams: clear to the client, recorded."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from llmtrace.api.v1 import span_pb2
from tests.conftest import (
    OpenAIFactory,
    Stack,
    core_settings,
    running_core,
    running_shim,
    running_stack,
    shim_settings,
    wait_for_spans,
)
from tools.fake_upstream import FakeUpstreamConfig

KEY = "sk-test-failures-000000000000"
CHAT: Any = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _post(url: str, body: Any, **headers: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    auth = {"Authorization": f"Bearer {KEY}", **headers}
    async with aiohttp.ClientSession() as http, http.post(url, json=body, headers=auth) as r:
        return r.status, await r.json(content_type=None), dict(r.headers)


def _assert_openai_error(body: dict[str, Any], code: str) -> None:
    error = body["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]


async def test_unreachable_upstream_is_502_and_recorded(make_client: OpenAIFactory, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{_free_port()}"
    async with running_core(core_settings(tmp_path / "db.duckdb")) as core:
        async with running_shim(shim_settings(tmp_path, dead), core.bound.grpc) as shim:
            status, body, _ = await _post(shim.base_url + "/v1/chat/completions", CHAT)
            assert status == 502
            _assert_openai_error(body, "upstream_unreachable")
            client = make_client(api_key=KEY, base_url=shim.base_url + "/v1", max_retries=0)
            with pytest.raises(openai.APIStatusError) as caught:
                await client.chat.completions.create(**CHAT)
            assert caught.value.status_code == 502
        stack_spans = await wait_for_spans(core, expected=2)
    assert all(s.status.error_type == "upstream_unreachable" for s in stack_spans)
    assert all(s.status.http_status_code == 502 for s in stack_spans)
    assert all(s.request.messages[0].parts[0].text == "hi" for s in stack_spans)


async def test_no_headers_in_time_is_504(tmp_path: Path) -> None:
    async with running_stack(tmp_path, timeout_ms=300) as stack:
        started = time.monotonic()
        status, body, _ = await _post(
            stack.shim.base_url + "/v1/chat/completions", CHAT, **{"X-Fake-Behavior": "delay:3"}
        )
        assert status == 504 and time.monotonic() - started < 2.9  # not the upstream's 3 s
        _assert_openai_error(body, "upstream_timeout")
        (span,) = await stack.spans()
        assert span.status.error_type == "upstream_timeout"


async def test_slow_stream_is_not_cut_by_timeout(make_client: OpenAIFactory, tmp_path: Path) -> None:
    # timeout_ms bounds the gaps between chunks, never the whole stream.
    async with running_stack(tmp_path, FakeUpstreamConfig(chunk_delay_s=0.15), timeout_ms=1000) as stack:
        client = make_client(api_key=KEY, base_url=stack.shim.base_url + "/v1", max_retries=0)
        started = time.monotonic()
        stream = await client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "a longer answer with quite a few words in it"}],
            stream=True,
        )
        chunks = [c async for c in stream]
        assert time.monotonic() - started > 1.0  # longer than timeout_ms in total
        assert chunks[-1].choices[0].finish_reason == "stop"
        (span,) = await stack.spans()
        assert span.status.code == span_pb2.STATUS_CODE_OK


async def test_body_over_limit_is_413_and_recorded(tmp_path: Path) -> None:
    async with running_stack(tmp_path, max_request_size_bytes=2000) as stack:
        big = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x" * 5000}]}
        status, body, _ = await _post(stack.shim.base_url + "/v1/chat/completions", big)
        assert status == 413
        _assert_openai_error(body, "request_too_large")
        assert not stack.upstream.requests  # never forwarded
        (span,) = await stack.spans()
        assert span.status.http_status_code == 413
        assert span.status.error_type == "request_too_large"


async def test_bad_tenant_header_is_400(stack: Stack) -> None:
    status, body, _ = await _post(
        stack.shim.base_url + "/v1/chat/completions", CHAT, **{"X-LLMTrace-Tenant": "x" * 500}
    )
    assert status == 400
    _assert_openai_error(body, "invalid_llmtrace_header")
    assert "X-LLMTrace-Tenant" in body["error"]["message"]
    assert not stack.upstream.requests


async def test_a_refused_header_leaves_a_span_without_the_prompt(tmp_path: Path) -> None:
    # Recorded under a tenant its headers did not all vouch for: its readers must not see the
    # caller's prompt.
    secret = {"model": "gpt-4o", "messages": [{"role": "user", "content": "ACME CONFIDENTIAL plan"}]}
    async with running_stack(tmp_path) as stack:
        url = stack.shim.base_url + "/v1/chat/completions"
        bad_session = {"X-LLMTrace-Tenant": "acme", "X-LLMTrace-Session": "s" * 300}
        status, body, _ = await _post(url, secret, **bad_session)
        assert status == 400 and "X-LLMTrace-Session" in body["error"]["message"]
        status, _, _ = await _post(url, secret, **{"X-LLMTrace-Tenant": "a\tb"})
        assert status == 400
        assert not stack.upstream.requests
        (kept_tenant,) = await stack.spans("acme")  # the tenant header alone was fine
        (defaulted,) = await stack.spans("default")
    for span in (kept_tenant, defaulted):
        assert span.status.http_status_code == 400
        assert span.status.error_type == "invalid_llmtrace_header"
        assert b"CONFIDENTIAL" not in span.SerializeToString()
        assert not span.request.messages and not span.session_id


async def test_stream_cut_by_upstream_is_visible_to_the_client(
    make_client: OpenAIFactory, stack: Stack
) -> None:
    client = make_client(api_key=KEY, base_url=stack.shim.base_url + "/v1", max_retries=0)
    received: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        stream = await client.chat.completions.create(
            model="gpt-4o+cut:3",
            messages=[{"role": "user", "content": "this answer will be cut short"}],
            stream=True,
        )
        async for chunk in stream:
            if chunk.choices:
                received.append(chunk.choices[0].delta.content or "")
    assert len(received) <= 3
    (span,) = await stack.spans()
    assert span.status.code == span_pb2.STATUS_CODE_ERROR
    assert span.status.error_type == "upstream_stream_cut"
    assert span.response.truncated or span.response.choices


async def test_client_disconnect_cancels_upstream_and_is_recorded(tmp_path: Path) -> None:
    async with running_stack(tmp_path, FakeUpstreamConfig(chunk_delay_s=0.2)) as stack:
        body = {
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": "one two three four five six seven eight"}],
            "stream": True,
        }
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                stack.shim.base_url + "/v1/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {KEY}"},
            ) as response,
        ):
            await response.content.readany()  # first chunk, then hang up
        (span,) = await stack.spans()
        assert span.status.error_type == "client_disconnected"
