"""Upstreams that answer in ways the fake upstream never does, scripted byte by byte: what the
client gets through the shim is what it would get directly, or a clean 502 with a span."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from llmtrace.config.schema import StreamingAnalysisSettings
from tests.conftest import core_settings, running_core, running_shim, shim_settings, wait_for_spans
from tests.raw_http import post, raw_response, scripted_upstream

CHAT = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'


async def _raw_get(base_url: str) -> bytes:
    """The response's raw bytes, as a plain HTTP/1.1 client reads them (to the connection's end)."""
    return await raw_response(base_url, post("/v1/chat/completions", CHAT))


def _headers(raw: bytes) -> list[bytes]:
    return raw.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]


async def test_header_values_that_are_not_ascii_arrive_byte_for_byte(tmp_path: Path) -> None:
    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Name: caf\xc3\xa9\r\n"
            b"X-Latin: caf\xe9\r\nX-Raw: \xff\xfeab\r\nContent-Length: 2\r\n\r\n{}"
        )

    async with (
        scripted_upstream(script) as upstream,
        running_core(core_settings(tmp_path / "db.duckdb")) as core,
        running_shim(shim_settings(tmp_path, upstream), core.bound.grpc) as shim,
    ):
        headers = _headers(await _raw_get(shim.base_url))
        (span,) = await wait_for_spans(core)
    # Sanic re-encoded latin-1-decoded values as UTF-8: every byte from 0x80 up came out twice.
    assert b"X-Name: caf\xc3\xa9" in headers
    assert b"X-Latin: caf\xe9" in headers
    assert b"X-Raw: \xff\xfeab" in headers
    assert span.status.http_status_code == 200


async def test_an_answer_without_a_content_type_gets_none_added(tmp_path: Path) -> None:
    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")

    async with (
        scripted_upstream(script) as upstream,
        running_core(core_settings(tmp_path / "db.duckdb")) as core,
        running_shim(shim_settings(tmp_path, upstream), core.bound.grpc) as shim,
    ):
        raw = await _raw_get(shim.base_url)
    assert raw.endswith(b"\r\n\r\nhello")
    assert not [h for h in _headers(raw) if h.lower().startswith(b"content-type")]


async def test_switching_protocols_is_a_clean_502_with_a_span(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.5)

    async with (
        scripted_upstream(script) as upstream,
        running_core(core_settings(tmp_path / "db.duckdb")) as core,
        running_shim(shim_settings(tmp_path, upstream), core.bound.grpc) as shim,
    ):
        async with (
            aiohttp.ClientSession() as http,
            http.post(shim.base_url + "/v1/chat/completions", json={}) as r,
        ):
            status, body = r.status, await r.json()
        (span,) = await wait_for_spans(core)
    assert status == 502
    assert body["error"]["code"] == "upstream_bad_response" and "101" in body["error"]["message"]
    assert span.status.http_status_code == 502 and span.status.error_type == "upstream_bad_response"
    assert "Traceback" not in capsys.readouterr().err


async def test_events_ending_in_mixed_line_ends_are_not_held_back(tmp_path: Path) -> None:
    # With early stops on, the shim releases whole events only; "\n\r\n" ends one too.
    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        for index in range(4):
            event = b'data: {"n": %d}\n\r\n' % index
            writer.write(b"%x\r\n%b\r\n" % (len(event), event))
            await writer.drain()
            await asyncio.sleep(0.3)
        writer.write(b"0\r\n\r\n")

    streaming = StreamingAnalysisSettings(enabled=True, early_stop_on_critical=True)
    async with (
        scripted_upstream(script) as upstream,
        running_core(core_settings(tmp_path / "db.duckdb")) as core,
        running_shim(
            shim_settings(tmp_path, upstream, streaming_analysis=streaming), core.bound.grpc
        ) as shim,
    ):
        arrivals: list[float] = []
        async with aiohttp.ClientSession() as http:
            started = time.monotonic()
            async with http.post(shim.base_url + "/v1/chat/completions", json={"stream": True}) as r:
                async for _ in r.content.iter_any():
                    arrivals.append(time.monotonic() - started)
    assert len(arrivals) >= 3
    assert arrivals[0] < 0.25  # the first event, not the whole stream after 1.2 s


async def test_the_upstreams_alt_svc_is_kept_and_none_is_added(tmp_path: Path) -> None:
    async def with_alt_svc(writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
            b'Alt-Svc: h3=":443"\r\nContent-Length: 2\r\n\r\nok'
        )

    async def without(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok")

    async with running_core(core_settings(tmp_path / "db.duckdb")) as core:
        for script, expected in ((with_alt_svc, [b'alt-svc: h3=":443"']), (without, [])):
            async with (
                scripted_upstream(script) as upstream,
                running_shim(shim_settings(tmp_path, upstream), core.bound.grpc) as shim,
            ):
                headers = _headers(await _raw_get(shim.base_url))
            assert [h for h in headers if h.lower().startswith(b"alt-svc")] == expected
