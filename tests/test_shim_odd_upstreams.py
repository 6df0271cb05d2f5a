"""Upstreams that answer in ways the fake upstream never does, scripted byte by byte: what the
client gets through the shim is what it would get directly, or a clean 502 with a span."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from llmtrace.config.schema import StreamingAnalysisSettings
from tests.conftest import (
    RunningCore,
    RunningShim,
    core_settings,
    running_core,
    running_shim,
    shim_settings,
    wait_for_spans,
)
from tests.raw_http import Script, post, raw_response, scripted_upstream

CHAT = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'


@contextlib.asynccontextmanager
async def _proxying(
    tmp_path: Path, script: Script, **changes: object
) -> AsyncIterator[tuple[RunningCore, RunningShim]]:
    """A core, and a shim in front of an upstream that answers with `script`."""
    async with (
        scripted_upstream(script) as upstream,
        running_core(core_settings(tmp_path / "db.duckdb")) as core,
        running_shim(shim_settings(tmp_path, upstream, **changes), core.bound.grpc) as shim,
    ):
        yield core, shim


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

    async with _proxying(tmp_path, script) as (core, shim):
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

    async with _proxying(tmp_path, script) as (_core, shim):
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

    async with _proxying(tmp_path, script) as (core, shim):
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


@pytest.mark.parametrize("reads_bodies", ["core", "shim"])
async def test_an_upstream_request_id_that_is_not_utf8_keeps_the_span(
    tmp_path: Path, reads_bodies: str
) -> None:
    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Request-Id: req_\xff1\r\n"
            b"Content-Length: 2\r\n\r\n{}"
        )

    # With the streaming checks on, the shim reads the bodies itself (shim.proxy.Proxy.raw_limit).
    changes = (
        {"streaming_analysis": StreamingAnalysisSettings(enabled=True)} if reads_bodies == "shim" else {}
    )
    async with _proxying(tmp_path, script, **changes) as (core, shim):
        raw = await _raw_get(shim.base_url)
        (span,) = await wait_for_spans(core)
    assert b"X-Request-Id: req_\xff1" in _headers(raw)  # relayed as it came
    assert span.upstream_request_id == "req_\ufffd1"
    assert span.status.http_status_code == 200


async def test_expect_100_continue_is_answered_by_the_proxy_not_forwarded(tmp_path: Path) -> None:
    # The upstream answers at once without a `100 Continue` (RFC 9110 allows it). Forwarded, the
    # header made the upstream request wait for one with the body unsent, until Sanic's own
    # response timeout answered 503 and two spans were recorded for the one call.
    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")

    settings_changes = {"timeout_ms": 1000, "connection_timeout_ms": 1000}
    async with _proxying(tmp_path, script, **settings_changes) as (core, shim):
        started = time.monotonic()
        raw = await raw_response(shim.base_url, post("/v1/chat/completions", CHAT, "Expect: 100-continue"))
        took = time.monotonic() - started
        spans = await wait_for_spans(core)
        await asyncio.sleep(0.5)  # a second span would come with the next flush
        spans = await wait_for_spans(core)
    assert raw.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK") or raw.startswith(
        b"HTTP/1.1 200 OK"
    )
    assert raw.endswith(b"\r\n\r\n{}")
    assert took < 1.0
    assert len(spans) == 1 and spans[0].status.http_status_code == 200


async def test_a_response_header_longer_than_aiohttps_default_is_relayed(tmp_path: Path) -> None:
    long_value = b"a" * 20_000

    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Long: "
            + long_value
            + b"\r\nContent-Length: 2\r\n\r\n{}"
        )

    async with _proxying(tmp_path, script) as (core, shim):
        raw = await _raw_get(shim.base_url)
        (span,) = await wait_for_spans(core)
    assert raw.startswith(b"HTTP/1.1 200 OK")
    assert b"X-Long: " + long_value in _headers(raw)
    assert span.status.http_status_code == 200


async def test_an_unreadable_response_head_is_a_502_that_says_so(tmp_path: Path) -> None:
    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 100_000 + b"\r\nContent-Length: 2\r\n\r\n{}")

    async with _proxying(tmp_path, script) as (core, shim):
        async with (
            aiohttp.ClientSession() as http,
            http.post(shim.base_url + "/v1/chat/completions", data=CHAT) as r,
        ):
            status, body = r.status, await r.json()
        (span,) = await wait_for_spans(core)
    assert status == 502
    assert body["error"]["code"] == "upstream_bad_response"
    assert "cannot read" in body["error"]["message"]
    assert span.status.error_type == "upstream_bad_response"


async def test_an_event_stream_type_in_capitals_is_still_not_to_be_buffered(tmp_path: Path) -> None:
    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: Text/Event-Stream\r\nContent-Length: 0\r\n\r\n")

    async with _proxying(tmp_path, script) as (_core, shim):
        raw = await _raw_get(shim.base_url)
    assert b"X-Accel-Buffering: no" in _headers(raw)


async def test_sanics_response_timeout_leaves_one_span_with_its_503(tmp_path: Path) -> None:
    # Sanic's response timeout is a backstop behind ours (set above timeout_ms); lowered here so
    # that it fires first. Its 503 and the handler it cancels used to record two spans.
    async def script(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(3)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")

    async with _proxying(tmp_path, script) as (core, shim):
        shim.worker.app.config.RESPONSE_TIMEOUT = 1  # read by each new connection
        raw = await _raw_get(shim.base_url)
        spans = await wait_for_spans(core)
        await asyncio.sleep(0.5)  # a second span would come with the next flush
        spans = await wait_for_spans(core)
    assert raw.startswith(b"HTTP/1.1 503")
    assert b"response_timeout" in raw
    assert [(s.status.http_status_code, s.status.error_type) for s in spans] == [(503, "response_timeout")]
