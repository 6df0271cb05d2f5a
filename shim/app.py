"""`create_app(settings)`: the Sanic application of one shim worker.

Routes the shim owns: `/health` and `/metrics`. Every other path is proxied (`shim.proxy`).
The worker's aiohttp session, spool and shipper are opened in `before_server_start` and closed in
`after_server_stop`, never at import time. Sanic's own limits are derived from our keys so that
they never cut in before ours, and its errors are answered in OpenAI's error shape.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Final

import aiohttp
import orjson
import structlog
from sanic import Request, Sanic
from sanic.config import Config
from sanic.exceptions import BadURL, SanicException
from sanic.response import HTTPResponse

from llmtrace.config.schema import Settings, ShipperSettings
from shim.dead_letter import DeadLetterFile
from shim.errors import ShimError, error_response, sanic_error_code
from shim.metrics import render_metrics
from shim.proxy import METHODS, Proxy
from shim.responses import ShimResponse
from shim.shipper import Shipper
from shim.spool import Spool

#: Sanic's response timeout must outlast ours (time to upstream headers), so 504 comes from us.
_log = structlog.get_logger("llmtrace.shim")

_SANIC_TIMEOUT_MARGIN_S: Final = 5.0
#: Longest upstream response header line (and status line) relayed.
_MAX_UPSTREAM_HEADER_BYTES: Final = 64 * 1024
_PROMETHEUS_TEXT: Final = "text/plain; version=0.0.4; charset=utf-8"
_OWN_PATHS: Final = frozenset({"/health", "/metrics"})
_app_numbers = itertools.count(1)


@dataclass(slots=True)
class ShimContext:
    """Per-worker state, on `app.ctx`."""

    settings: Settings
    core_addr: str
    proxy: Proxy | None = None
    shipper: Shipper | None = None
    session: aiohttp.ClientSession | None = None
    draining: bool = False
    #: Seconds left for the shipper's flush when the worker stops (set by the worker).
    flush_timeout: float = 30.0


def create_app(settings: Settings, *, core_addr: str | None = None) -> Sanic[Config, ShimContext]:
    """The Sanic app of one worker; `core_addr` defaults to `core_addr`, else `grpc.listen_addr`."""
    target = core_addr or settings.core_addr or settings.grpc.listen_addr
    number = next(_app_numbers)
    app: Sanic[Config, ShimContext] = Sanic(
        f"llmtrace_shim_{number}",
        ctx=ShimContext(settings=settings, core_addr=target),
        configure_logging=False,
        request_class=_ShimRequest,  # type: ignore[arg-type]  # Sanic types it for its default ctx
    )
    app.config.update(
        {
            "REQUEST_MAX_SIZE": settings.max_request_size_bytes,
            "RESPONSE_TIMEOUT": (settings.timeout_ms + settings.connection_timeout_ms) / 1000
            + _SANIC_TIMEOUT_MARGIN_S,
            "ACCESS_LOG": False,  # ours goes through structlog (shim.proxy)
            "MOTD": False,
            # Touchup strips unused signal dispatch from Sanic's request handler (about 10% of a
            # request's CPU). It rewrites class-level code, so only the first app in a process may
            # use it: a second one (tests run many) fails with KeyError on every request.
            "TOUCHUP": number == 1,
            "NOISY_EXCEPTIONS": False,
            "GRACEFUL_SHUTDOWN_TIMEOUT": settings.shutdown.timeout_seconds,
        }
    )
    app.before_server_start(_open_resources)
    app.after_server_stop(_close_resources)
    app.add_route(_health, "/health", methods=["GET", "HEAD"], name="health", error_format="json")
    if settings.metrics.enabled:
        # Off, `/metrics` is not the proxy's: it is forwarded like any other path.
        app.add_route(_metrics, "/metrics", methods=["GET", "HEAD"], name="metrics", error_format="json")
    app.add_route(_proxied, "/", methods=METHODS, name="proxy_root", error_format="json")
    app.add_route(_proxied, "/<path:path>", methods=METHODS, name="proxy", error_format="json")
    # error_format is given so Sanic does not parse our handlers' source to guess it.
    app.error_handler.add(SanicException, _sanic_error)
    app.error_handler.add(Exception, unexpected_error)
    return app


async def _open_resources(app: Sanic[Config, ShimContext]) -> None:
    ctx = app.ctx
    settings = ctx.settings
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=60),  # no cap on concurrent streams
        auto_decompress=False,  # compressed bodies pass through untouched
        # HTTPS_PROXY / NO_PROXY are honoured, resolved once per worker (shim.proxy.Upstream).
        trust_env=False,
        cookie_jar=aiohttp.DummyCookieJar(),  # never keep one client's cookies for another
        # aiohttp refuses a response header line over 8,190 bytes, where clients talking to the
        # upstream directly read it (long `Link` or policy headers): relayed as they came.
        max_line_size=_MAX_UPSTREAM_HEADER_BYTES,
        max_field_size=_MAX_UPSTREAM_HEADER_BYTES,
    )
    spool, dead_letters = await asyncio.to_thread(_open_spool, settings.shipper)
    shipper = Shipper(
        settings.shipper,
        ctx.core_addr,
        spool,
        dead_letters,
        max_message_bytes=settings.grpc.max_message_bytes,
    )
    await shipper.start()
    ctx.session, ctx.shipper = session, shipper
    ctx.proxy = Proxy(settings, shipper, session)


def _open_spool(shipper: ShipperSettings) -> tuple[Spool, DeadLetterFile]:
    # `~` expanded as for storage.database_path (and the supervisor's spool check): left as it is,
    # `~/spool` from an environment variable, where no shell expanded it, made a `./~` directory.
    spool = Spool.open(Path(shipper.spool_dir).expanduser(), shipper.spool_max_bytes)
    return spool, DeadLetterFile(Path(shipper.dead_letter_path).expanduser())


async def _close_resources(app: Sanic[Config, ShimContext]) -> None:
    ctx = app.ctx
    if ctx.shipper is not None:
        await ctx.shipper.close(ctx.flush_timeout)
    if ctx.session is not None:
        await ctx.session.close()


ShimApp = Sanic[Config, ShimContext]
ShimRequest = Request[ShimApp, SimpleNamespace]


class _ShimRequest(Request[ShimApp, SimpleNamespace]):
    """Sanic's request, except for the stand-in Sanic builds to answer a request line it could
    not read: given the same unreadable target ("v1/x?key=...", "x:443"), that one failed too,
    so the client got no answer and the log a traceback quoting the target, query included."""

    def __init__(self, url_bytes: bytes, *args: object, **kwargs: object) -> None:
        try:
            super().__init__(url_bytes, *args, **kwargs)  # type: ignore[arg-type]
        except BadURL:
            if kwargs.get("method") != "NONE":  # Sanic's stand-in for an unreadable request
                raise
            super().__init__(b"/", *args, **kwargs)  # type: ignore[arg-type]


async def _proxied(request: ShimRequest, path: str = "") -> HTTPResponse | None:
    proxy = request.app.ctx.proxy
    assert proxy is not None
    return await proxy.handle(request)


async def _health(request: ShimRequest) -> HTTPResponse:
    """200 while this worker can proxy (whatever the core's state), 503 when it cannot."""
    ctx = request.app.ctx
    shipper = ctx.shipper
    if ctx.draining or shipper is None:
        state = {"status": "draining" if ctx.draining else "starting"}
        return ShimResponse(orjson.dumps(state), status=503, content_type="application/json")
    body: dict[str, object] = {
        "status": "ok",
        "core": await shipper.core_status(),
        "core_addr": ctx.core_addr,
        "queued_spans": shipper.queued_spans,
        "spool_bytes": shipper.spool_bytes,
        "spool_max_bytes": ctx.settings.shipper.spool_max_bytes,
    }
    return ShimResponse(orjson.dumps(body), content_type="application/json")


async def _metrics(request: ShimRequest) -> HTTPResponse:
    body = await asyncio.to_thread(render_metrics)  # multiprocess mode reads files
    return ShimResponse(body, content_type=_PROMETHEUS_TEXT)


def _sanic_error(request: ShimRequest, exception: Exception) -> HTTPResponse:
    """Sanic's own refusals (body too large, slow upload, bad HTTP) in OpenAI's error shape."""
    status = getattr(exception, "status_code", 500) or 500
    code = sanic_error_code(status)
    message = str(exception) or code
    if status == 413 and "header" in message.lower():
        message = "request headers exceed the size limit"
    elif status == 413:
        message = (
            f"request body exceeds max_request_size_bytes ({request.app.ctx.settings.max_request_size_bytes})"
        )
    error = ShimError(status, code, message)
    proxy = request.app.ctx.proxy
    # Refused calls leave a trace too; one whose handler ran (cancelled by Sanic's response
    # timeout) has it already, from the handler.
    if proxy is not None and request.path not in _OWN_PATHS and not proxy.handled(request):
        proxy.record_refused(request, error)
    # Sanic's own headers for the refusal: `Allow` on a 405, as RFC 9110 requires.
    headers = {str(k): str(v) for k, v in (getattr(exception, "headers", None) or {}).items()}
    return error_response(status, code, message, headers or None)


def unexpected_error(request: ShimRequest, exception: Exception) -> HTTPResponse:
    """A bug of ours: a 500 in OpenAI's error shape instead of Sanic's, logged with the path
    only (Sanic's own line names the whole URL, whose query may hold a provider key)."""
    _log.error(
        "unexpected error handling a request",
        method=request.method,
        path=request.path,
        error_type=type(exception).__name__,
        exc_info=exception,
    )
    return error_response(500, "internal_error", "the proxy failed to handle this request; see its log")
