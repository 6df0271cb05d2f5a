"""Request lines and answers Sanic itself stumbles on: a clear answer from us, no traceback, no
key in the log."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from tests.conftest import Stack

KEY = "sk-test-hostile-000000000000"
SECRET = "QLEAKsecret123"


async def _raw(stack: Stack, head: str) -> tuple[int, dict[str, Any]]:
    """Send a raw request head; the status and JSON body of the answer."""
    url = urlsplit(stack.shim.base_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        writer.write(head.encode("latin-1"))
        await writer.drain()
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            chunk = await asyncio.wait_for(reader.read(65536), 10)
            if not chunk:
                break
            data += chunk
    finally:
        writer.close()
    status_line, _, rest = data.partition(b"\r\n")
    body = rest.partition(b"\r\n\r\n")[2]
    return int(status_line.split()[1]), json.loads(body)


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        f"{r.name}: {r.getMessage()} {r.exc_text or ''}" for r in caplog.records if r.levelno >= logging.ERROR
    ]


async def test_an_unreadable_request_target_gets_a_400_and_the_log_no_traceback_nor_query(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    for target in (f"v1/chat/completions?key={SECRET}", "example.com:443"):
        status, body = await _raw(stack, f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        assert status == 400 and body["error"]["message"], body
    assert _errors(caplog) == []
    assert SECRET not in caplog.text


async def test_options_star_is_a_400_not_a_500(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    status, body = await _raw(stack, "OPTIONS * HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert status == 400
    assert body["error"]["code"] == "invalid_request_target"
    assert not stack.upstream.requests
    assert _errors(caplog) == []


async def test_head_passes_through_without_errors(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    async with aiohttp.ClientSession() as http:
        for _ in range(2):  # the connection is still usable after it
            async with http.head(stack.shim.base_url + "/v1/models", headers=headers) as r:
                assert r.status == 200
                assert await r.read() == b""
    assert [r.method for r in stack.upstream.requests] == ["HEAD", "HEAD"]
    assert _errors(caplog) == []


async def test_a_body_cut_short_of_its_length_is_cut_for_the_client_and_logs_no_error(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "cut me"}]}
    headers = {"Authorization": f"Bearer {KEY}", "X-Fake-Behavior": "cut:10"}
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientPayloadError):
            async with http.post(
                stack.shim.base_url + "/v1/chat/completions", json=body, headers=headers
            ) as r:
                await r.read()
    (span,) = await stack.spans()
    assert span.status.error_type == "upstream_stream_cut"
    assert _errors(caplog) == []


async def test_oversized_headers_are_a_413_that_says_so(stack: Stack) -> None:
    status, body = await _raw(
        stack,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
        f"X-LLMTrace-Agent: {'a' * 200_000}\r\n\r\n{{}}",
    )
    assert status == 413
    assert "header" in body["error"]["message"]
    assert "max_request_size_bytes" not in body["error"]["message"]


async def test_header_bytes_that_are_not_utf8_still_leave_a_span(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json; x=\xe9\r\n"
        f"Authorization: Bearer {KEY}\r\nUser-Agent: caf\xe9-client\r\nOpenAI-Organization: org-\xff\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    )
    status, answer = await _raw(stack, head)
    # Refused rather than forwarded altered (aiohttp's header writer drops such bytes), and kept.
    assert status == 400 and answer["error"]["code"] == "invalid_header", answer
    assert not stack.upstream.requests
    (span,) = await stack.spans()
    assert span.status.error_type == "invalid_header"
    assert span.user_agent == "caf\ufffd-client"  # a byte that is not UTF-8 reads as U+FFFD
    assert span.request_model == "gpt-4o"
    assert _errors(caplog) == []
