"""HTTP/1.1 by hand, for tests that check bytes an HTTP library would hide or refuse to make:
an upstream scripted byte by byte, and a client that reads a response's raw header lines."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

Script = Callable[[asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def scripted_upstream(script: Script) -> AsyncIterator[str]:
    """An upstream that reads one request's head and body, then runs `script` on the socket;
    its base URL."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            await reader.readexactly(length)
            await script(writer)
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


def answering(answer: bytes) -> Script:
    """A script that sends `answer` as it is."""

    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(answer)
        await writer.drain()

    return script


def post(path: str, body: bytes, *headers: str) -> bytes:
    """A JSON POST that asks for the connection to close after its answer."""
    lines = "".join(f"{h}\r\n" for h in headers)
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{lines}"
        f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def raw_response(base_url: str, request: bytes) -> bytes:
    """Send `request` as it is; the response's raw bytes, read to the connection's end."""
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(-1), 10)
    finally:
        writer.close()


async def exchange(base_url: str, request: bytes) -> tuple[int, list[bytes], bytes]:
    """Send `request` as it is; the answer's status, raw header lines and body."""
    head, _, body = (await raw_response(base_url, request)).partition(b"\r\n\r\n")
    status_line, *header_lines = head.split(b"\r\n")
    return int(status_line.split()[1]), header_lines, body
