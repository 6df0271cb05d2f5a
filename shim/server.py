"""One shim worker's lifecycle: serve on a socket, then drain, flush and stop.

Sanic runs inside our own event loop (`create_server` on a socket we bound), so the worker
controls its shutdown: on SIGTERM it stops accepting, lets in-flight requests finish (up to
`shutdown.timeout_seconds`), aborts what is left, and then the shipper delivers or spools every
captured span before the process exits.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any

import structlog
from sanic import Sanic
from sanic.config import Config
from sanic.server.async_server import AsyncioServer

from llmtrace.config.redact import redact_text
from llmtrace.config.schema import Settings
from shim.app import ShimContext, create_app

#: Allocations between young-generation collections (CPython's default is 700). Each proxied
#: request allocates a few thousand objects (Sanic, aiohttp, the span), almost all freed by
#: reference counting; collecting every 700 of them cost about 3% of a saturated worker's CPU.
GC_YOUNG_THRESHOLD = 20_000

_log = structlog.get_logger("llmtrace.shim")
_POLL_S = 0.05
#: Of the grace period, the share (at most `_FLUSH_MAX_S`) kept for flushing spans to the core.
_FLUSH_SHARE = 0.25
_FLUSH_MAX_S = 5.0


def bind_socket(listen_addr: str) -> socket.socket:
    """A listening TCP socket for `host:port` (port 0 picks a free one); shared by all workers."""
    from llmtrace.config import parse_host_port  # noqa: PLC0415 - keep module import light

    host, port = parse_host_port(listen_addr)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def sock_address(sock: socket.socket) -> str:
    """`host:port` of a bound socket."""
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(slots=True)
class ShimWorker:
    """A running worker: the app and its Sanic server."""

    app: Sanic[Config, ShimContext]
    server: AsyncioServer
    address: str

    @classmethod
    async def start(
        cls, settings: Settings, sock: socket.socket, *, core_addr: str | None = None
    ) -> ShimWorker:
        """Open resources and start accepting on `sock`."""
        app = create_app(settings, core_addr=core_addr)
        server = await app.create_server(sock=sock, return_asyncio_server=True, access_log=False)
        assert server is not None
        # AsyncioServer's lifecycle methods are untyped in Sanic.
        await server.startup()  # type: ignore[no-untyped-call]
        await server.before_start()  # type: ignore[no-untyped-call]
        await server.after_start()  # type: ignore[no-untyped-call]
        await server.start_serving()  # type: ignore[no-untyped-call]
        address = sock_address(sock)
        _log.info(
            "shim serving",
            http=address,
            upstream=redact_text(settings.upstream_url),
            core=app.ctx.core_addr,
            capture=settings.capture.bodies,
        )
        return cls(app, server, address)

    async def stop(self, grace: float) -> None:
        """Stop accepting, drain in-flight requests within `grace`, then flush the shipper."""
        started = time.monotonic()
        ctx = self.app.ctx
        ctx.draining = True
        await self.server.before_stop()  # type: ignore[no-untyped-call]
        listener: asyncio.Server | None = self.server.server
        if listener is not None:
            listener.close()
        connections: set[Any] = self.server.connections
        # The whole stop fits in `grace` (what a Kubernetes grace period is set from): requests
        # drain until a share of it is left for the shipper's flush. A drain that used all of
        # it gave the flush a second more, and a SIGKILL at the end lost what was in memory.
        end = started + grace
        deadline = end - min(grace * _FLUSH_SHARE, _FLUSH_MAX_S)
        while time.monotonic() < deadline:
            for conn in list(connections):
                conn.close_if_idle()
            proxy = ctx.proxy
            if not connections and (proxy is None or proxy.in_flight == 0):
                break
            await asyncio.sleep(_POLL_S)
        for conn in list(connections):
            conn.abort()  # past the grace period: their spans are recorded as client_disconnected
        await asyncio.sleep(0)  # let cancelled handlers record their spans
        ctx.flush_timeout = max(end - time.monotonic(), 0.0)
        await self.server.after_stop()  # type: ignore[no-untyped-call]
        _log.info("shim stopped", seconds=round(time.monotonic() - started, 3))


async def serve_worker(
    settings: Settings,
    sock: socket.socket,
    *,
    core_addr: str | None = None,
    on_ready: Any = None,
) -> int:
    """Run one worker until SIGTERM or SIGINT; returns the exit code."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    worker = await ShimWorker.start(settings, sock, core_addr=core_addr)
    _tune_garbage_collector()
    if on_ready is not None:
        on_ready(worker.address)
    await stop.wait()
    _log.info("shutting down", grace_seconds=settings.shutdown.timeout_seconds)
    await worker.stop(settings.shutdown.timeout_seconds)
    return 0


def _tune_garbage_collector() -> None:
    """Collect cycles less often, and never re-scan what start-up built (modules, the app,
    the protobuf descriptors): those objects live as long as the worker, and a full collection
    that scans them (about 55,000) stalls the event loop for about 6 ms."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)
