"""A bare HTTP passthrough: the yardstick the shim's throughput is compared with.

Minimal Sanic + aiohttp forwarder in one worker process, with no capture, no spans, no
metrics and no access log: one pooled `aiohttp.ClientSession` (opened in a
`before_server_start` listener, `auto_decompress=False`) forwards the method, path, query,
headers (less hop-by-hop ones and `Host`) and body, and streams the answer back chunk by chunk
with `request.respond` / `send` / `eof`, as the shim does. Sanic's other settings are its
defaults, touchup included (it strips unused signal dispatch from the request handler, as in
the shim's workers): without it this yardstick was about 40% slower per request.

    .venv/bin/python tools/bench/passthrough.py --upstream http://127.0.0.1:8089 --listen 127.0.0.1:8090
    .venv/bin/python tools/bench/passthrough.py --upstream URL --listen 127.0.0.1:0 --ready-file r.json

`--loop uvloop` (the default) is how Sanic runs an app on its own; `--loop asyncio` runs it on
the standard asyncio loop (for comparison; the shim runs on uvloop, as Sanic does).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Final

import aiohttp
from sanic import Request, Sanic
from sanic.compat import Header
from sanic.config import Config
from sanic.response import HTTPResponse
from yarl import URL

from shim.headers import HOP_BY_HOP

# The shim's own hop-by-hop rule, so both forward the same headers.
_HOP_BY_HOP: Final = HOP_BY_HOP
_REQUEST_DROPPED: Final = _HOP_BY_HOP | {"host", "content-length"}
_NO_AUTO_HEADERS: Final = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
_METHODS: Final = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")

App = Sanic[Config, SimpleNamespace]


def create_app(upstream: str, ready_file: Path | None, sock: socket.socket) -> App:
    """The passthrough app forwarding to `upstream` (an API root such as http://host:port)."""
    app: App = Sanic("bench_passthrough", configure_logging=False)
    app.config.update({"MOTD": False, "ACCESS_LOG": False, "NOISY_EXCEPTIONS": False})
    base = upstream.rstrip("/")

    async def open_session(app: App) -> None:
        app.ctx.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close_session(app: App) -> None:
        await app.ctx.session.close()

    async def announce(app: App) -> None:
        if ready_file is not None:
            host, port = sock.getsockname()[:2]
            tmp = ready_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"http": f"{host}:{port}", "pid": os.getpid()}))
            tmp.replace(ready_file)

    async def forward(request: Request[Any, Any], path: str = "") -> HTTPResponse | None:
        session: aiohttp.ClientSession = request.app.ctx.session
        query = request.query_string
        url = URL(base + request.path + ("?" + query if query else ""), encoded=True)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _REQUEST_DROPPED}
        async with session.request(
            request.method,
            url,
            headers=headers,
            data=request.body or None,
            skip_auto_headers=_NO_AUTO_HEADERS,
            allow_redirects=False,
        ) as upstream_response:
            out = Header()
            for raw_name, raw_value in upstream_response.raw_headers:
                name = raw_name.decode("latin-1")
                if name.lower() not in _HOP_BY_HOP:
                    out.add(name, raw_value.decode("latin-1"))
            response = await request.respond(status=upstream_response.status, headers=out)
            if response is None:
                return None
            async for chunk in upstream_response.content.iter_any():
                await response.send(chunk)
            await response.eof()
        return None

    app.before_server_start(open_session)
    app.after_server_start(announce)
    app.after_server_stop(close_session)
    app.add_route(forward, "/", methods=_METHODS, name="root", error_format="json")
    app.add_route(forward, "/<path:path>", methods=_METHODS, name="forward", error_format="json")
    return app


def main(argv: list[str] | None = None) -> None:
    """Command line: serve until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--upstream", required=True, help="API root to forward to, e.g. http://127.0.0.1:8089"
    )
    parser.add_argument("--listen", default="127.0.0.1:0", help="host:port (port 0 picks a free one)")
    parser.add_argument("--ready-file", type=Path, help="write {http, pid} as JSON here once serving")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop", help="event loop")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, int(port)))
    sock.listen(1024)
    app = create_app(args.upstream, args.ready_file, sock)
    app.config.USE_UVLOOP = args.loop == "uvloop"
    app.run(sock=sock, single_process=True, access_log=False)


if __name__ == "__main__":
    main()
