"""Compressed request bodies (`Content-Encoding: gzip | deflate | br`) end to end.

The proxy forwards the client's bytes as they came, compressed, and reads a decoded copy for the
inline check and the span: an injection in a gzip-compressed chat request is blocked like a plain
one. Decoding is bounded (a compression bomb is read up to the proxy's limit, then forwarded
unread), and a body that cannot be decoded is forwarded as it is, recorded as a note of its size
and encoding, and marked on the span as not checked (`llmtrace.enforcement.failopen`).
"""

from __future__ import annotations

import asyncio
import gzip
import importlib
import importlib.util
import io
import json
import struct
import time
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from llmtrace.api.v1 import span_pb2
from llmtrace.capture.request_parse import decode_request_body, request_codings
from llmtrace.config.schema import BoundaryDefenseSettings, EnforcementSettings
from tests.conftest import (
    RunningCore,
    core_settings,
    running_core,
    running_shim,
    running_stack,
    shim_settings,
    wait_for_spans,
)
from tests.raw_http import exchange
from tests.test_shim_enforcement import INJECTION, KEY, attributes, metric

HAS_BROTLI = importlib.util.find_spec("brotli") is not None
needs_brotli = pytest.mark.skipif(not HAS_BROTLI, reason="the brotli module is not installed")
CHAT = "/v1/chat/completions"
FAILOPEN = "llmtrace_shim_enforcement_failopen_total"


def chat_body(text: str) -> bytes:
    return json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": text}]}).encode()


def headers(encoding: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {KEY}",
        "Content-Type": "application/json",
        "Content-Encoding": encoding,
    }


def brotli_compress(data: bytes) -> bytes:
    out: bytes = importlib.import_module("brotli").compress(data)  # optional, as it is for aiohttp
    return out


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


#: MiB of zeros in the bomb: half a GiB, twice the most any body is ever decoded to (256 MiB), in
#: half a megabyte: under aiohttp's 1 MiB, past which the shim's forwarding of it warns.
BOMB_MIB = 512


def gzip_bomb(prefix: bytes) -> bytes:
    """`prefix` then `BOMB_MIB` MiB of zeros, gzip-compressed, in milliseconds: 1 MiB of zeros
    compressed once with a full flush is a block that can be repeated as it is."""
    zeros = b"\0" * (1 << 20)
    first = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    head = first.compress(prefix + zeros) + first.flush(zlib.Z_FULL_FLUSH)
    rest = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = rest.compress(zeros) + rest.flush(zlib.Z_FULL_FLUSH)
    crc = zlib.crc32(zeros, zlib.crc32(prefix))
    for _ in range(BOMB_MIB - 1):
        crc = zlib.crc32(zeros, crc)
    size = len(prefix) + (BOMB_MIB << 20)
    return head + block * (BOMB_MIB - 1) + rest.flush() + struct.pack("<II", crc, size & 0xFFFFFFFF)


# --- an upstream that keeps the bytes it received ---------------------------------------------

ANSWER = json.dumps(
    {
        "id": "chatcmpl-raw",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-4o",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    }
).encode()


@dataclass
class Recorded:
    """Requests exactly as they reached the upstream: header lines and body bytes."""

    requests: list[tuple[list[bytes], bytes]] = field(default_factory=list)


@asynccontextmanager
async def recording_upstream() -> AsyncIterator[tuple[str, Recorded]]:
    """An upstream that never decodes anything (the fake upstream's aiohttp server decompresses
    request bodies before its handlers see them): records each request's raw bytes and answers a
    small chat completion."""
    recorded = Recorded()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in lines
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            recorded.requests.append((lines, await reader.readexactly(length)))
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                + f"Content-Length: {len(ANSWER)}\r\n\r\n".encode()
                + ANSWER
            )
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", recorded
    finally:
        server.close()


@dataclass
class RawStack:
    base_url: str
    upstream: Recorded
    core: RunningCore

    async def spans(self, expected: int = 1) -> list[span_pb2.Span]:
        return await wait_for_spans(self.core, expected=expected)


@asynccontextmanager
async def raw_stack(tmp_path: Path, mode: str, **changes: object) -> AsyncIterator[RawStack]:
    async with (
        recording_upstream() as (url, recorded),
        running_core(core_settings(tmp_path / "db.duckdb")) as core,
        running_shim(
            shim_settings(tmp_path, url, enforcement=EnforcementSettings(mode=mode), **changes),
            core.bound.grpc,
        ) as shim,
    ):
        yield RawStack(shim.base_url, recorded, core)


def header(lines: list[bytes], name: bytes) -> bytes:
    return next(line.split(b":", 1)[1].strip() for line in lines if line.lower().startswith(name + b":"))


# --- the inline check sees what the upstream would decode -------------------------------------


COMPRESSORS: list[Any] = [
    pytest.param("gzip", gzip.compress, id="gzip"),
    pytest.param("  GZip ", gzip.compress, id="gzip-case-and-spaces"),
    pytest.param("deflate", zlib.compress, id="deflate"),
    pytest.param("deflate", raw_deflate, id="raw-deflate"),
    pytest.param("br", brotli_compress, id="br", marks=needs_brotli),
    pytest.param(
        "gzip, br", lambda data: brotli_compress(gzip.compress(data)), id="gzip-then-br", marks=needs_brotli
    ),
]


@pytest.mark.parametrize(("encoding", "compress"), COMPRESSORS)
async def test_an_injection_in_a_compressed_request_is_blocked(
    tmp_path: Path, encoding: str, compress: Callable[[bytes], bytes]
) -> None:
    before = metric("llmtrace_shim_enforcement_blocked_total", category="injection")
    async with (
        running_stack(tmp_path, enforcement=EnforcementSettings(mode="block")) as stack,
        aiohttp.ClientSession() as http,
    ):
        body = compress(chat_body(INJECTION))
        async with http.post(stack.shim.base_url + CHAT, data=body, headers=headers(encoding)) as reply:
            assert reply.status == 403
            error = (await reply.json())["error"]
            assert reply.headers["X-LLMTrace-Flagged"] == "true"
        assert error["code"] == "request_blocked"
        assert "prompt_injection" in error["message"]
        assert set(error) >= {"message", "type", "param", "code"}
        assert stack.upstream.requests == []  # never forwarded

        [span] = await stack.spans()
        assert span.status.http_status_code == 403
        assert span.status.error_type == "request_blocked"
        assert span.request.messages[0].parts[0].text == INJECTION  # recorded as the client meant it
        assert not span.request.truncated
        assert "prompt_injection" in {f.type for f in span.findings}
        assert "llmtrace.enforcement.failopen" not in attributes(span)
    assert metric("llmtrace_shim_enforcement_blocked_total", category="injection") == before + 1


async def test_a_clean_compressed_request_reaches_a_decompressing_upstream(tmp_path: Path) -> None:
    # The fake upstream decodes compressed request bodies as many servers do: what it decoded is
    # what the client compressed, and the Content-Length it saw is the compressed body's.
    plain = chat_body("hello there")
    body = gzip.compress(plain)
    async with (
        running_stack(tmp_path, enforcement=EnforcementSettings(mode="block")) as stack,
        aiohttp.ClientSession() as http,
    ):
        async with http.post(stack.shim.base_url + CHAT, data=body, headers=headers("gzip")) as reply:
            assert reply.status == 200
            assert (await reply.json())["choices"][0]["message"]["content"] == "Echo: hello there"
        [received] = stack.upstream.requests
        assert received.body == plain
        assert received.headers["content-encoding"] == "gzip"
        assert received.headers["content-length"] == str(len(body))
        [span] = await stack.spans()
        assert span.request.messages[0].parts[0].text == "hello there"
        assert "llmtrace.enforcement.failopen" not in attributes(span)  # read whole, checked


# --- capture ------------------------------------------------------------------------------------


async def test_log_mode_records_the_messages_and_forwards_the_bytes_verbatim(tmp_path: Path) -> None:
    body = gzip.compress(chat_body("what is the capital of France?"), mtime=1234)
    async with raw_stack(tmp_path, "log") as stack, aiohttp.ClientSession() as http:
        async with http.post(stack.base_url + CHAT, data=body, headers=headers("gzip")) as reply:
            assert reply.status == 200
            assert await reply.read() == ANSWER
        [(lines, received)] = stack.upstream.requests
        assert received == body  # byte for byte, still compressed
        assert header(lines, b"content-encoding") == b"gzip"
        [span] = await stack.spans()
        assert span.request_model == "gpt-4o"
        assert span.request.messages[0].role == "user"
        assert span.request.messages[0].parts[0].text == "what is the capital of France?"
        assert not span.request.body
        assert not span.request.truncated
        assert span.response.choices[0].message.parts[0].text == "ok"


async def test_boundary_defence_leaves_a_compressed_request_as_it_came(tmp_path: Path) -> None:
    plain = json.dumps(
        {
            "model": "gpt-4o",
            "messages": [
                {"role": "user", "content": "summarise the page"},
                {"role": "tool", "tool_call_id": "c1", "content": "page text"},
            ],
        }
    ).encode()
    body = gzip.compress(plain, mtime=1234)
    before = metric("llmtrace_shim_boundary_skipped_total", reason="compressed")
    defence = BoundaryDefenseSettings(enabled=True)
    async with raw_stack(tmp_path, "log", boundary_defense=defence) as stack, aiohttp.ClientSession() as http:
        async with http.post(stack.base_url + CHAT, data=body, headers=headers("gzip")) as reply:
            assert reply.status == 200
        [(_, received)] = stack.upstream.requests
        assert received == body  # not rewritten: the wrapping would need the body re-encoded
        [span] = await stack.spans()
        assert attributes(span)["llmtrace.boundary_defense.skipped"] == "compressed"
        assert span.request.messages[1].parts[0].text == "page text"
    assert metric("llmtrace_shim_boundary_skipped_total", reason="compressed") == before + 1


# --- compression bombs --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["log", "flag"])
async def test_a_gzip_bomb_is_read_up_to_the_limit_and_forwarded(tmp_path: Path, mode: str) -> None:
    prefix = b'{"model": "gpt-4o", "padding": "'
    bomb = gzip_bomb(prefix)
    assert len(bomb) < 1 << 20
    before = metric(FAILOPEN, reason="decode_limit")
    async with raw_stack(tmp_path, mode) as stack, aiohttp.ClientSession() as http:
        started = time.monotonic()
        async with http.post(stack.base_url + CHAT, data=io.BytesIO(bomb), headers=headers("gzip")) as reply:
            assert reply.status == 200  # a policy that cannot block forwards it
            await reply.read()
        # Decoded up to capture.max_body_bytes in log mode, max_request_size_bytes with the check.
        assert time.monotonic() - started < 5
        [(_, received)] = stack.upstream.requests
        assert received == bomb
        [span] = await stack.spans()
        assert span.request.truncated
        assert span.request.body.startswith(prefix.decode())  # the decoded start, not gzip bytes
        assert len(span.request.body) <= 1 << 20  # capture.max_body_bytes
        marks = attributes(span)
        if mode == "flag":
            assert marks["llmtrace.enforcement.failopen"] == "decode_limit"
            assert metric(FAILOPEN, reason="decode_limit") == before + 1
        else:
            assert "llmtrace.enforcement.failopen" not in marks


async def test_a_bomb_is_refused_where_the_policy_can_block(tmp_path: Path) -> None:
    async with raw_stack(tmp_path, "block") as stack, aiohttp.ClientSession() as http:
        body = io.BytesIO(gzip_bomb(b'{"model": "gpt-4o", "padding": "'))
        async with http.post(stack.base_url + CHAT, data=body, headers=headers("gzip")) as reply:
            assert reply.status == 413
            error = (await reply.json())["error"]
        assert error["code"] == "decoded_body_too_large"
        # It names the limit that applies: the larger of the two keys (here the request size).
        assert "max_request_size_bytes and capture.max_body_bytes" in error["message"]
        assert stack.upstream.requests == []  # an upstream would read what the check could not
        [span] = await stack.spans()
        assert span.status.http_status_code == 413
        assert span.status.error_type == "decoded_body_too_large"


# --- bodies that cannot be decoded -------------------------------------------------------------


UNDECODABLE: list[Any] = [
    pytest.param("gzip", b"\x1f\x8b\x08\x00not really gzip at all", id="bad-gzip"),
    pytest.param("zstd", b"(\xb5/\xfd\x00Xa\x00\x00hello", id="unknown-encoding"),
    pytest.param("gzip, gzip, gzip, gzip, gzip", gzip.compress(b"{}"), id="too-many-codings"),
    # Junk after a member: an upstream may read it, or fail; the check cannot judge the body.
    pytest.param("gzip", gzip.compress(b"{}") + b"junk" + gzip.compress(b"{}"), id="junk-between-members"),
]


@pytest.mark.parametrize("mode", ["log", "flag"])
@pytest.mark.parametrize(("encoding", "body"), UNDECODABLE)
async def test_an_undecodable_body_is_forwarded_and_recorded(
    tmp_path: Path, mode: str, encoding: str, body: bytes
) -> None:
    before = metric(FAILOPEN, reason="undecodable_body")
    async with raw_stack(tmp_path, mode) as stack, aiohttp.ClientSession() as http:
        async with http.post(stack.base_url + CHAT, data=body, headers=headers(encoding)) as reply:
            assert reply.status == 200  # the upstream's to judge
            assert await reply.read() == ANSWER
        [(lines, received)] = stack.upstream.requests
        assert received == body
        assert header(lines, b"content-encoding") == encoding.encode()
        [span] = await stack.spans()
        if span.request.body.startswith("["):
            assert span.request.body == f"[{len(body)} bytes, Content-Encoding: {encoding}]"
        else:  # what decoded before the junk (`{}`: read as JSON, no messages)
            assert span.request.truncated
        assert not span.request.messages
        assert span.status.code == span_pb2.STATUS_CODE_OK
        marks = attributes(span)
        if mode == "flag":
            assert marks["llmtrace.enforcement.failopen"] == "undecodable_body"
            assert metric(FAILOPEN, reason="undecodable_body") == before + 1
        else:
            assert "llmtrace.enforcement.failopen" not in marks


@pytest.mark.parametrize(("encoding", "body"), UNDECODABLE)
async def test_an_undecodable_body_is_refused_where_the_policy_can_block(
    tmp_path: Path, encoding: str, body: bytes
) -> None:
    async with raw_stack(tmp_path, "block") as stack, aiohttp.ClientSession() as http:
        async with http.post(stack.base_url + CHAT, data=body, headers=headers(encoding)) as reply:
            assert reply.status == 415
            error = (await reply.json())["error"]
        assert error["code"] == "unsupported_content_encoding"
        assert set(error) >= {"message", "type", "param", "code"}
        assert stack.upstream.requests == []
        [span] = await stack.spans()
        assert span.status.http_status_code == 415
        assert span.request.body == f"[{len(body)} bytes, Content-Encoding: {encoding}]"


async def test_a_repeated_content_encoding_header_is_not_a_way_around_the_check(tmp_path: Path) -> None:
    # Two `Content-Encoding: gzip` lines mean gzip twice; an upstream that reads only the first
    # would decode the injection below once and act on it. Refused: the body is not gzip twice.
    body = gzip.compress(chat_body(INJECTION))
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + f"Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\n".encode()
        + b"Content-Encoding: gzip\r\nContent-Encoding: gzip\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    async with raw_stack(tmp_path, "block") as stack:
        status, _, body = await exchange(stack.base_url, request)
        assert status == 415, body
        assert stack.upstream.requests == []


async def test_zero_padding_between_gzip_members_is_read_through(tmp_path: Path) -> None:
    # Python's gzip (and servers built on it) skip zeros between members and read on: so does the
    # check, which finds the injection in the second member.
    text = chat_body(INJECTION)
    body = gzip.compress(text[:20]) + b"\0" * 8 + gzip.compress(text[20:])
    assert gzip.decompress(body) == text
    async with raw_stack(tmp_path, "block") as stack, aiohttp.ClientSession() as http:
        async with http.post(stack.base_url + CHAT, data=body, headers=headers("gzip")) as reply:
            assert reply.status == 403
        assert stack.upstream.requests == []
        [span] = await stack.spans()
        assert "prompt_injection" in {f.type for f in span.findings}


async def test_a_cut_gzip_body_is_read_as_far_as_it_goes(tmp_path: Path) -> None:
    # The stream breaks off inside the JSON: what decoded is kept, and the span says it was not
    # checked (an upstream cannot read a cut stream either).
    body = gzip.compress(chat_body(INJECTION + " " + "and more words " * 200))[:-40]
    async with raw_stack(tmp_path, "flag") as stack, aiohttp.ClientSession() as http:
        async with http.post(stack.base_url + CHAT, data=body, headers=headers("gzip")) as reply:
            assert reply.status == 200  # the JSON is cut too: nothing to check, forwarded
        [span] = await stack.spans()
        assert span.request.truncated
        assert span.request.body.startswith('{"model": "gpt-4o", "messages"')
        assert attributes(span)["llmtrace.enforcement.failopen"] == "undecodable_body"


# --- decoding, directly -------------------------------------------------------------------------


def test_request_codings() -> None:
    assert request_codings("") == ()
    assert request_codings(" Identity ") == ()
    assert request_codings("GZIP") == ("gzip",)
    assert request_codings("gzip, identity,br") == ("gzip", "br")


def test_decoding_is_bounded() -> None:
    plain = chat_body("hello")
    assert decode_request_body(gzip.compress(plain), ("gzip",), len(plain)).data == plain
    cut = decode_request_body(gzip.compress(plain), ("gzip",), 10)
    assert (cut.data, cut.cut, cut.failed) == (plain[:10], True, False)
    # A million empty gzip members: refused after a few, in milliseconds rather than seconds.
    started = time.monotonic()
    members = decode_request_body(gzip.compress(b"", mtime=0) * 1_000_000, ("gzip",), 1 << 25)
    assert members.failed
    assert time.monotonic() - started < 1
    # The tests' bomb is one (it decodes whole to BOMB_MIB MiB), and is read only up to the limit.
    bomb = gzip_bomb(b"{")
    decoder, data, size = zlib.decompressobj(16 + zlib.MAX_WBITS), bomb, 0
    while data:
        size += len(decoder.decompress(data, 64 << 20))
        data = decoder.unconsumed_tail
    assert decoder.eof
    assert size == 1 + (BOMB_MIB << 20)
    read = decode_request_body(bomb, ("gzip",), 1 << 20)
    assert (len(read.data), read.cut, read.failed) == (1 << 20, True, False)
    # Two members, as a client may send: both read.
    assert decode_request_body(gzip.compress(b"ab") + gzip.compress(b"cd"), ("gzip",), 100).data == b"abcd"


async def test_a_body_answered_before_it_is_read_is_kept_as_a_note_not_decoded(tmp_path: Path) -> None:
    # `OPTIONS *` is answered (400) before the body is read; building its span must not decode a
    # bomb on the event loop (nor would a client gone while the decode ran in its thread).
    bomb = gzip_bomb(b'{"model": "gpt-4o", "padding": "')
    request = (
        b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Encoding: gzip\r\n"
        + f"Content-Length: {len(bomb)}\r\n\r\n".encode()
        + bomb
    )
    async with raw_stack(tmp_path, "block") as stack:
        status, _, body = await exchange(stack.base_url, request)
        assert status == 400, body
        [span] = await stack.spans()
        assert span.request.body == f"[{len(bomb)} bytes, Content-Encoding: gzip]"
