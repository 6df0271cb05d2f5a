"""The proxied route: forward any request upstream verbatim and stream the answer back.

Per request: resolve identity from headers, forward with the worker's pooled aiohttp session
(bytes untouched: `auto_decompress=False`, hop-by-hop and `X-LLMTrace-*` headers removed), send
each upstream chunk to the client as it arrives, and tee it into the response capture. Once the
client has its answer, the exchange becomes a span and goes to the shipper; the client never
waits for the core. Failures to reach the upstream are the only answers the shim makes up
(502, 504), each shaped like an OpenAI error and recorded as a span.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

# Public in the standard library for decades but missing from typeshed.
from urllib.request import proxy_bypass_environment  # type: ignore[attr-defined]

import aiohttp
import orjson
import structlog
from prometheus_client import Counter, Histogram
from sanic import Request
from sanic.compat import Header
from sanic.exceptions import SanicException, ServerError, ServiceUnavailable
from sanic.http import Http, Stage
from sanic.response import BaseHTTPResponse, HTTPResponse
from yarl import URL

from llmtrace import limits
from llmtrace.api.v1 import span_pb2
from llmtrace.capture import ParsedRequest, ResponseCapture, build_span, parse_request
from llmtrace.capture.content_filter import BODIES_FULL, normalize_mode
from llmtrace.capture.decode import readable_accept_encoding
from llmtrace.capture.exchange import ExchangeMeta
from llmtrace.capture.model import API_CHAT_COMPLETIONS, API_MESSAGES
from llmtrace.capture.raw import MAX_RAW_BODY_BYTES
from llmtrace.capture.request_parse import (
    DecodedBody,
    decode_request_body,
    parse_decoded_request,
    reads_json,
    request_codings,
    requested_model,
)
from llmtrace.capture.response_parse import MAX_SKIMMED_BYTES
from llmtrace.capture.routes import route_of
from llmtrace.capture.span import exchange_span
from llmtrace.config.schema import Settings
from llmtrace.credential_params import mask_credential_params
from llmtrace.security.findings import Finding
from shim import metrics
from shim.boundary import BoundaryDefense
from shim.enforcement import BLOCK, category_of
from shim.errors import ShimError, sanic_error_code
from shim.guard import Guard, block_message
from shim.headers import (
    MASK,
    HeaderError,
    forwardable,
    header_text,
    key_fingerprint,
    masked_query,
    returnable,
    stored_request_headers,
    stored_response_headers,
)
from shim.identity import IdentityError, fallback_identity, resolve_identity
from shim.responses import header_lines
from shim.shipper import Shipper
from shim.streaming_checks import StreamCheck, core_locations

_log = structlog.get_logger("llmtrace.shim.capture")
_access = structlog.get_logger("llmtrace.shim.access")

#: Any app's request: the proxy reads only the request itself, never `request.app`.
AnyRequest = Request[Any, Any]
#: Headers aiohttp would add on its own; the client's request is forwarded as it came.
_NO_AUTO_HEADERS: Final = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
METHODS: Final = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
#: Request bodies of these types are never sent to the core unread (parse_request summarises them).
_NOT_RAW_TYPES: Final = ("multipart/", "application/octet-stream", "audio/", "image/", "video/")
FLAGGED_HEADER: Final = "X-LLMTrace-Flagged"
FINDINGS_HEADER: Final = "X-LLMTrace-Findings"
ERROR_BLOCKED: Final = "request_blocked"
ERROR_UNREADABLE_BODY: Final = "unreadable_body"
#: A key spelt so that a case-insensitive JSON reader (Go's) takes it for one the check reads.
ERROR_AMBIGUOUS_FIELD: Final = "ambiguous_field"
ERROR_STREAM_STOPPED: Final = "stream_stopped"
ERROR_RESPONSE_TIMEOUT: Final = "response_timeout"
#: Why a compressed request body could not be read whole (`llmtrace.enforcement.failopen`, and
#: the failopen counter's reason, when the inline check could see only part of it, or none).
UNREAD_UNDECODABLE: Final = "undecodable_body"
UNREAD_DECODE_LIMIT: Final = "decode_limit"
#: Why boundary defence left a chat request as it came, beside `boundary.Wrapped.skipped`'s reasons.
BOUNDARY_SKIPPED_COMPRESSED: Final = "compressed"


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where proxied requests go: `upstream_url` with each request path appended as it came."""

    base: str
    server_address: str
    #: HTTP(S) proxy to reach it through, from HTTPS_PROXY/HTTP_PROXY/NO_PROXY; None for direct.
    proxy: str | None

    @classmethod
    def from_url(cls, url: str, environ: Mapping[str, str] | None = None) -> Upstream:
        """From `upstream_url` (credentials in it are never reported as the server address).

        The proxy environment is read once here rather than by aiohttp's `trust_env`, which
        re-reads it (and ~/.netrc, in a thread) on every request: measured at a quarter of the
        shim's throughput.
        """
        parts = urlsplit(url)
        proxies = {
            key.lower()[: -len("_proxy")]: value
            for key, value in (os.environ if environ is None else environ).items()
            if key.lower() in ("http_proxy", "https_proxy", "no_proxy") and value
        }
        proxy = proxies.get(parts.scheme)
        if proxy and proxy_bypass_environment(parts.hostname or "", proxies):
            proxy = None
        return cls(base=url.rstrip("/"), server_address=parts.netloc.rpartition("@")[2], proxy=proxy)


@functools.cache
def _requests_counter(operation: str, status_class: int) -> Counter:
    # labels() validates and locks on every call; the label sets here are few and fixed.
    return metrics.REQUESTS.labels(operation, f"{status_class}xx")


@functools.cache
def _duration_histogram(operation: str) -> Histogram:
    return metrics.REQUEST_DURATION.labels(operation)


class Proxy:
    """The proxied route of one worker: forwarding, capture and hand-off to the shipper."""

    def __init__(self, settings: Settings, shipper: Shipper, session: aiohttp.ClientSession) -> None:
        self.settings = settings
        self.upstream = Upstream.from_url(settings.upstream_url)
        self.shipper = shipper
        self.session = session
        self.timeout = aiohttp.ClientTimeout(
            total=None,  # never bound a whole stream
            sock_connect=settings.connection_timeout_ms / 1000,
            # Bounds the wait for response headers and every gap between body chunks.
            sock_read=settings.timeout_ms / 1000,
        )
        self.in_flight = 0
        # Security features; each is None (or False) when off, so that the default `log` mode
        # costs one attribute test per request and nothing more.
        self.guard = Guard.from_settings(settings, shipper.channel)
        self.boundary = (
            BoundaryDefense(settings.boundary_defense) if settings.boundary_defense.enabled else None
        )
        self.before_forward = self.guard is not None or self.boundary is not None
        streaming = settings.streaming_analysis
        self.stream_checks = streaming.enabled
        self.early_stop = streaming.enabled and streaming.early_stop_on_critical
        # Bodies up to this size go to the core unread (llmtrace.capture.raw): at `full` the core
        # may see them, and nothing here needs them read. -1: every exchange is read here (also
        # at a capture limit of 0, which a raw exchange cannot say: there 0 means "not set").
        limit = min(settings.capture.max_body_bytes, MAX_RAW_BODY_BYTES)
        self.raw_limit = (
            limit
            if limit > 0
            and normalize_mode(settings.capture.bodies) == BODIES_FULL
            and not self.before_forward
            and not self.stream_checks
            else -1
        )
        # Most bytes a compressed request body is decoded to for reading: what capture keeps,
        # or, with the inline check, as much as a plain body may be (the upstream reads it all);
        # never past the core's own bound on one decompression. A few hundred bytes can decode to
        # that much: reading costs what the bytes decode to, not what the client sent.
        wanted = settings.capture.max_body_bytes
        if self.guard is not None:
            wanted = max(settings.max_request_size_bytes, wanted)
        self.decode_limit = min(wanted, MAX_SKIMMED_BYTES)
        #: Whether a compressed body the check cannot read whole is refused rather than forwarded.
        self.refuses_unread = self.guard is not None and self.guard.policy.can_block
        # Bound once: a module-level structlog logger is a lazy proxy that rebinds per call.
        self.access_log = _access.bind() if settings.logging.access_log else None

    async def handle(self, request: AnyRequest) -> HTTPResponse | None:
        """Sanic handler for every route the shim does not own."""
        started = time.perf_counter()
        request.ctx.llmtrace_handled = True  # this request's span is the handler's to record
        exchange = Exchange(self, request, time.time_ns())
        self.in_flight += 1  # after: a request counted must reach the `finally` that uncounts it
        try:
            return await exchange.run()
        except asyncio.CancelledError:
            # Sanic cancels the handler when the client goes away, or when its own response
            # timeout passes (a backstop behind ours; it answers 503 itself, and this span is
            # that answer's: `shim.app` records no other). Leaving the `async with` closes the
            # upstream connection, which cancels the upstream request too.
            if _sanic_response_timeout(request):
                exchange.meta.http_status = 503
                exchange.fail(ERROR_RESPONSE_TIMEOUT, "the proxy's response timeout passed")
            else:
                exchange.fail("client_disconnected", "the client closed the connection")
            raise
        except SanicException as exc:
            # Sanic answers it (`shim.app`, its status in OpenAI's shape); the span says the same.
            exchange.meta.http_status = exc.status_code
            exchange.fail(sanic_error_code(exc.status_code), str(exc) or type(exc).__name__)
            raise
        except Exception as exc:
            # A bug of ours: the client gets a 500 (`shim.app.unexpected_error`), the span says so.
            exchange.meta.http_status = 500
            exchange.fail("internal_error", f"the proxy failed to handle this request: {type(exc).__name__}")
            raise
        finally:
            self.in_flight -= 1
            exchange.finish(time.perf_counter() - started)

    @staticmethod
    def handled(request: AnyRequest) -> bool:
        """Whether `handle` took `request` (and so records its span, whatever happens to it)."""
        return getattr(request.ctx, "llmtrace_handled", False) is True

    def record_refused(self, request: AnyRequest, error: ShimError) -> None:
        """Record a span for a request refused before our handler ran (Sanic's body limit)."""
        exchange = Exchange(self, request, time.time_ns(), read_body=False)
        exchange.meta.http_status = error.status
        exchange.fail(error.code, error.message)
        exchange.finish(0.0)


#: Two line ends in a row: where an SSE event ends. A line ends in CRLF, LF or CR, in any mix
#: (a CR just before an LF is the first half of a CRLF, not a line end of its own).
_EVENT_END: Final = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r(?!\n)|\n)")


class _Relayed(HTTPResponse):
    """The upstream's answer as it came: no content type of Sanic's own added where the upstream
    sent none (`content-type: None` otherwise), and its `Alt-Svc` kept, where Sanic's HTTP/1
    writer would replace it with an empty one (`shim.responses`)."""

    __slots__ = ("_alt_svc",)

    def __init__(self, *, status: int, headers: Header) -> None:
        self._alt_svc = headers.popall("alt-svc", [])
        super().__init__(status=status, headers=headers)

    @property
    def processed_headers(self) -> Iterator[tuple[bytes, bytes]]:
        return header_lines(self.headers, self._alt_svc)


class _WholeEvents:
    """Cuts a plain SSE stream's chunks after their last blank line, holding the rest back.

    Lines may end in CRLF, LF or CR, mixed (`_EVENT_END`). A chunk with no line end in it goes
    out as it comes; so does a partial event that grows past `MAX_HELD` (a client cannot use it
    before it ends anyway).
    """

    MAX_HELD: Final = 1 << 20

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held = b""

    def take(self, chunk: bytes) -> bytes:
        """What of the stream so far can go out now: everything up to the last event's end."""
        data = self._held + chunk
        if data.endswith(b"\n\n"):  # the usual case: whole events
            self._held = b""
            return data
        cut = -1
        for end in _EVENT_END.finditer(data):
            cut = end.end()
        if cut < 0:
            if (b"\n" not in data and b"\r" not in data) or len(data) > self.MAX_HELD:
                self._held = b""
                return data
            self._held = data
            return b""
        self._held = data[cut:]
        return data[:cut]

    def rest(self) -> bytes:
        """The bytes held back when the stream ends (a last event without its blank line)."""
        rest, self._held = self._held, b""
        return rest


#: The event that ends a stream: `[DONE]` (OpenAI chat and completions), `message_stop`
#: (Anthropic), the Responses API's last events, named by an `event:` line or only by their data's
#: `type` (`event:` lines are optional). Lines may end in CR alone, as `_EVENT_END` allows.
_CLOSING_EVENT: Final = re.compile(
    rb"(?:\A|(?<=[\r\n]))(?:"
    rb"(?:data: ?\[DONE\]|event: ?(?:message_stop|response\.(?:completed|incomplete|failed)))"
    rb"[ \t]*(?=[\r\n]|\Z)"
    rb'|data: ?\{[^\r\n]*"type": ?"response\.(?:completed|incomplete|failed)"'
    rb")"
)


def _split_closing(events: bytes) -> tuple[bytes, bytes]:
    """Whole SSE events cut where the stream's closing event begins: (before it, from it on)."""
    found = _CLOSING_EVENT.search(events)
    if found is None:
        return events, b""
    start = 0
    for end in _EVENT_END.finditer(events, 0, found.start()):
        start = end.end()
    return events[:start], events[start:]


def _sanic_response_timeout(request: AnyRequest) -> bool:
    """Whether Sanic cancelled the handler for its response timeout (it sets the exception first)."""
    stream = request.stream
    return isinstance(stream, Http) and isinstance(stream.exception, ServiceUnavailable)


def _after_head(request: AnyRequest) -> None:
    """Sanic (25.x) leaves HEAD's body-ignoring send in place once the headers are out, and the
    send it makes itself after the handler then fails (awaiting a plain function), logging a
    traceback for every HEAD: the response is complete, so clear it."""
    stream = request.stream
    if isinstance(stream, Http) and stream.head_only and stream.stage is Stage.IDLE:
        stream.response_func = None  # type: ignore[assignment]  # Sanic's own "no response" value


def _end_aborted_response(request: AnyRequest) -> None:
    """Mark the response to `request`, whose connection was aborted, as finished for Sanic
    (25.x): there is nothing left to write, and the connection is not reused."""
    stream = request.stream
    if isinstance(stream, Http):
        stream.response_func = None  # type: ignore[assignment]  # Sanic's own "no response" value
        stream.stage = Stage.IDLE
        stream.keep_alive = False


class Exchange:
    """One request's way through the proxy, and what it leaves behind for the span."""

    __slots__ = (
        "_capture",
        "_check",
        "_codings",
        "_identity",
        "_parsed",
        "_proxy",
        "_raw",
        "_reads_raw",
        "_request",
        "_unread",
        "body",
        "extra_headers",
        "identity_error",
        "meta",
    )

    def __init__(self, proxy: Proxy, request: AnyRequest, started_ns: int, *, read_body: bool = True) -> None:
        self._proxy = proxy
        self._request = request
        self._capture: ResponseCapture | None = None
        #: The streaming checks of a streamed answer (streaming_analysis), once the answer started.
        self._check: StreamCheck | None = None
        self._parsed: ParsedRequest | None = None
        headers = request.headers
        self.identity_error: IdentityError | None = None
        try:
            identity = resolve_identity(headers)
        except IdentityError as exc:
            # The client gets a 400 and nothing is forwarded. The span keeps no content: it goes
            # to a tenant the headers did not all vouch for (`default` when the tenant header
            # itself is bad), whose readers must not see this caller's prompt.
            identity = fallback_identity(headers)
            self.identity_error = exc
            read_body = False
        self._identity = identity  # its traceparent is built only for a client that sent one
        self.body: bytes = request.body if read_body else b""
        #: The codings of a compressed body (`Content-Encoding`), undone to read it; () if plain.
        self._codings: tuple[str, ...] = (
            request_codings(",".join(headers.getall("content-encoding")))
            if "content-encoding" in headers
            else ()
        )
        #: Why a compressed body could not be read whole (UNREAD_*); "" when it could.
        self._unread = ""
        #: The answer kept unread for the core (None: read here, or no answer yet).
        self._raw: _RawAnswer | None = None
        #: Whether this exchange's bodies go to the core unread (see `Proxy.raw_limit`). Not a
        #: compressed request body: a raw exchange has no field for its encoding, so the core
        #: would read the compressed bytes as the body.
        self._reads_raw = (
            len(self.body) <= proxy.raw_limit
            and not self._codings
            and not headers.get("content-type", "").lower().startswith(_NOT_RAW_TYPES)
        )
        #: Response headers the shim adds (X-LLMTrace-Flagged, X-LLMTrace-Findings).
        self.extra_headers: dict[str, str] | None = None
        pairs = list(headers.items())
        self.meta = ExchangeMeta(
            trace_id=identity.trace_id,
            span_id=identity.span_id,
            parent_span_id=identity.parent_span_id,
            tenant=identity.tenant,
            agent=identity.agent,
            session_id=identity.session_id,
            method=request.method,
            path=request.path,
            query=masked_query(request.query_string),
            client_address=request.client_ip or "",
            user_agent=header_text(headers.get("user-agent", "")),
            server_address=proxy.upstream.server_address,
            api_key_fingerprint=key_fingerprint(pairs),
            request_headers=stored_request_headers(pairs),
            start_unix_nano=started_ns,
            request_body_truncated=len(self.body) > proxy.settings.capture.max_body_bytes,
        )

    def fail(self, error_type: str, message: str) -> None:
        """Record our own failure; the first one recorded wins."""
        if not self.meta.error_type:
            self.meta.error_type = error_type
            self.meta.error_message = message

    async def run(self) -> HTTPResponse | None:
        """Forward and relay; returns a response only when the shim answers itself."""
        if self.identity_error is not None:
            return self._answer(ShimError(400, "invalid_llmtrace_header", str(self.identity_error)))
        proxy, request = self._proxy, self._request
        if not request.path.startswith("/"):  # "OPTIONS *": no upstream URL can be made of it
            message = "the request target must be a path starting with '/'"
            return self._answer(ShimError(400, "invalid_request_target", message))
        if self._codings and self.body:
            refusal = await self._read_encoded()
            if refusal is not None:
                return refusal
        if proxy.before_forward:
            refusal = await self._before_forward()
            if refusal is not None:
                return refusal
        query = request.query_string
        url = URL(proxy.upstream.base + request.path + ("?" + query if query else ""), encoded=True)
        try:
            headers = forwardable(request.headers.items())
        except HeaderError as exc:
            return self._answer(ShimError(400, "invalid_header", str(exc)))
        if "traceparent" in headers:
            headers["traceparent"] = self._identity.traceparent()  # same trace, our span as the parent
        if proxy.stream_checks and "accept-encoding" in headers:
            # An answer the checks cannot decode (zstd) would pass them unread.
            accepted = readable_accept_encoding(",".join(headers.popall("accept-encoding")))
            if accepted:
                headers["Accept-Encoding"] = accepted
        try:
            upstream = await proxy.session.request(
                request.method,
                url,
                headers=headers,
                data=self.body or None,
                skip_auto_headers=_NO_AUTO_HEADERS,
                allow_redirects=False,
                timeout=proxy.timeout,
                proxy=proxy.upstream.proxy,
            )
        except TimeoutError as exc:  # aiohttp's connect and read timeouts are TimeoutErrors
            where = proxy.upstream.server_address
            return self._answer(
                ShimError(
                    504,
                    "upstream_timeout",
                    f"the upstream {where} did not answer in time "
                    f"(timeout_ms={proxy.settings.timeout_ms}): {type(exc).__name__}",
                )
            )
        except aiohttp.ClientResponseError as exc:  # it answered, with a head that cannot be read
            where = proxy.upstream.server_address
            message = f"the upstream {where} sent a response the proxy cannot read: {_error_text(exc)}"
            return self._answer(ShimError(502, "upstream_bad_response", message))
        except aiohttp.ClientError as exc:
            where = proxy.upstream.server_address
            reason = _error_text(exc)
            return self._answer(
                ShimError(502, "upstream_unreachable", f"cannot reach the upstream {where}: {reason}")
            )
        async with upstream:
            if upstream.status < 200:
                # aiohttp passes over 100 and 103; what is left (101 Switching Protocols) takes
                # the connection over, which a proxy of requests and answers cannot relay.
                where = proxy.upstream.server_address
                return self._answer(
                    ShimError(
                        502,
                        "upstream_bad_response",
                        f"the upstream {where} answered {upstream.status} {upstream.reason or ''}".rstrip()
                        + ", which the proxy does not relay",
                    )
                )
            await self._relay(upstream)
        return None

    async def _before_forward(self) -> HTTPResponse | None:
        """Inline enforcement and boundary defence; a response when the request is refused."""
        proxy, meta = self._proxy, self.meta
        guard = proxy.guard
        if guard is not None and self.body:
            if proxy.refuses_unread and self._unreadable_json():
                error = ShimError(
                    400,
                    ERROR_UNREADABLE_BODY,
                    "the request body is not a JSON object the proxy's inline check can read "
                    "(UTF-8, UTF-16 or UTF-32, nothing after the object); it was not forwarded",
                )
                meta.http_status = error.status
                self.fail(error.code, error.message)
                return error.response()
            misspelt = self.parsed_request.misspelt_key if proxy.refuses_unread else ""
            if misspelt:
                shown = json.dumps(misspelt[:64])  # ASCII, whatever the key holds
                error = ShimError(
                    400,
                    ERROR_AMBIGUOUS_FIELD,
                    f"the request body has a field {shown}, which some upstreams read as a field the "
                    "proxy's inline check reads under its exact name; it was not forwarded",
                )
                meta.http_status = error.status
                self.fail(error.code, error.message)
                return error.response()
            inspection = await guard.inspect(self.parsed_request, meta)
            if inspection.failed_open:
                meta.set_attribute("llmtrace.enforcement.failopen", inspection.failed_open)
            if self._unread:
                # A compressed body checked only as far as it could be decoded (none of it, for
                # an unknown or corrupt encoding); a policy that can block refused it already.
                metrics.ENFORCEMENT_FAILOPEN.labels(self._unread).inc()
                if not inspection.failed_open:
                    meta.set_attribute("llmtrace.enforcement.failopen", self._unread)
            if inspection.scanned:  # else the score stays unset: not analysed, rather than 0
                meta.add_findings(inspection.findings)
                meta.security_score = inspection.score
            decision = inspection.decision
            if decision.flagged:
                meta.set_attribute("llmtrace.enforcement.action", decision.action)
                self.extra_headers = {
                    FLAGGED_HEADER: "true",
                    FINDINGS_HEADER: decision.findings_header(),
                }
            if decision.action == BLOCK:
                error = ShimError(403, ERROR_BLOCKED, block_message(decision))
                meta.http_status = error.status
                self.fail(error.code, error.message)
                return error.response(self.extra_headers)
        boundary = proxy.boundary
        if boundary is not None and self.body and route_of(self._request.path).api == API_CHAT_COMPLETIONS:
            if self._codings:  # compressed: forwarded as it came, never rewritten
                metrics.BOUNDARY_SKIPPED.labels(BOUNDARY_SKIPPED_COMPRESSED).inc()
                meta.set_attribute("llmtrace.boundary_defense.skipped", BOUNDARY_SKIPPED_COMPRESSED)
                return None
            wrapped = boundary.apply(self.body)
            if wrapped.skipped:
                metrics.BOUNDARY_SKIPPED.labels(wrapped.skipped).inc()
                meta.set_attribute("llmtrace.boundary_defense.skipped", wrapped.skipped)
            if wrapped.messages:
                mode = "shadow" if boundary.shadow else "wrapped"
                metrics.BOUNDARY_REQUESTS.labels(mode).inc()
                metrics.BOUNDARY_MESSAGES.labels(mode).inc(wrapped.messages)
                meta.set_attribute(f"llmtrace.boundary_defense.{mode}_messages", wrapped.messages)
                if wrapped.body is not None:
                    self.parsed_request  # noqa: B018 - capture records the request as the client sent it
                    self.body = wrapped.body
        return None

    async def _relay(self, upstream: aiohttp.ClientResponse) -> None:
        meta = self.meta
        meta.http_status = upstream.status
        # Values as Sanic writes them back (UTF-8, other bytes as surrogates): byte for byte.
        raw = [(k.decode("latin-1"), v.decode("utf-8", "surrogateescape")) for k, v in upstream.raw_headers]
        meta.response_headers = stored_response_headers(raw)
        meta.upstream_request_id = header_text(
            upstream.headers.get("x-request-id") or upstream.headers.get("request-id") or ""
        )
        out_headers = returnable(raw)
        if self.extra_headers is not None:
            for name, value in self.extra_headers.items():
                out_headers[name] = value
        content_type = upstream.headers.get("content-type", "")
        if content_type[:17].lower() == "text/event-stream":
            out_headers["X-Accel-Buffering"] = "no"  # tell nginx & co. not to buffer the stream
        content_encoding = upstream.headers.get("content-encoding", "")
        check: StreamCheck | None = None
        if self._reads_raw:
            self._raw = _RawAnswer(upstream.status, content_type, content_encoding)
        else:
            capture = self._capture = self._response_capture(upstream.status, content_type, content_encoding)
            if self._proxy.stream_checks and capture.streaming:
                check = self._check = StreamCheck()
                capture.listen(check.on_text, check.on_arguments, check.on_reasoning)
        response = await self._request.respond(_Relayed(status=upstream.status, headers=out_headers))
        if response is None:  # Sanic returns None only when a response was already sent
            return
        if self._request.method == "HEAD":
            await self._end(response)  # headers only: there is no body to relay
            _after_head(self._request)
            return
        if check is not None:
            assert self._capture is not None
            await self._relay_checked(upstream, response, self._capture, check)
            return
        try:
            async for chunk in upstream.content.iter_any():
                if not await self._send_or_fail(response, chunk):
                    return
                if meta.ttft_nano is None:
                    meta.ttft_nano = time.time_ns() - meta.start_unix_nano
                self._take(chunk)  # after the send: capture never delays the client
        except (TimeoutError, aiohttp.ClientError) as exc:
            self._upstream_broke(exc)
            return
        await response.eof()

    def _response_capture(self, status: int, content_type: str, content_encoding: str) -> ResponseCapture:
        return ResponseCapture(
            self.parsed_request,
            status=status,
            content_type=content_type,
            content_encoding=content_encoding,
            max_body_bytes=self._proxy.settings.capture.max_body_bytes,
            method=self.meta.method,
        )

    def _take(self, chunk: bytes) -> None:
        """Keep a chunk of the answer: unread for the core while it fits, else read here."""
        raw = self._raw
        if raw is not None:
            if raw.size + len(chunk) <= self._proxy.raw_limit:
                raw.chunks.append(chunk)
                raw.size += len(chunk)
                return
            # Too large for the core to take whole: read it here from now on, from the start.
            self._raw = None
            capture = self._capture = self._response_capture(
                raw.status, raw.content_type, raw.content_encoding
            )
            for kept in raw.chunks:
                capture.feed(kept)
        if self._capture is not None:
            self._capture.feed(chunk)

    def _upstream_broke(self, exc: Exception) -> None:
        # The upstream died or stalled mid-answer. Abort the client's connection so it sees an
        # incomplete response, exactly as it would talking to the upstream directly.
        kind = "upstream_timeout" if isinstance(exc, TimeoutError) else "upstream_stream_cut"
        self.fail(kind, f"the upstream response ended early: {_error_text(exc)}")
        self._abort_client()

    def _abort_client(self) -> None:
        """Close the client's connection mid-response, so that it sees the answer is incomplete."""
        transport = self._request.transport
        if isinstance(transport, asyncio.Transport):
            transport.abort()
        # The response is over: without this Sanic would try to end it and, short of its
        # Content-Length, log an error and a traceback for a cut that is already recorded.
        _end_aborted_response(self._request)

    async def _relay_checked(
        self,
        upstream: aiohttp.ClientResponse,
        response: BaseHTTPResponse,
        capture: ResponseCapture,
        check: StreamCheck,
    ) -> None:
        """`_relay`'s loop with the streaming checks: each chunk goes out, then its text is scanned."""
        meta = self.meta
        early_stop = self._proxy.early_stop
        # A stop event can only follow a whole event: a plain stream that may be stopped goes out
        # up to its last blank line, the partial event after it with the next chunk.
        events = _WholeEvents() if early_stop and not _encoded(upstream) else None
        try:
            async for chunk in upstream.content.iter_any():
                out, closing = (chunk, b"") if events is None else _split_closing(events.take(chunk))
                if out:
                    if not await self._send_or_fail(response, out):
                        return
                    if meta.ttft_nano is None:
                        meta.ttft_nano = time.time_ns() - meta.start_unix_nano
                capture.feed(chunk)
                if self._record_stream_findings(check.scan()) and early_stop and check.critical is not None:
                    if events is not None:
                        capture.stopped()  # what `events` held back is not the client's
                    await self._stop_stream(upstream, response, check)
                    return
                # The closing event goes out only after what came with it was checked: a stop
                # after `[DONE]` would go unseen (SDKs stop reading there).
                if closing and not await self._send_or_fail(response, closing):
                    return
        except (TimeoutError, aiohttp.ClientError) as exc:
            self._upstream_broke(exc)
            return
        if events is not None and (rest := events.rest()) and not await self._send_or_fail(response, rest):
            return
        # Text still pending (none unless the last chunk was empty); a last event without its
        # blank line is parsed, and scanned, only when the capture finishes (`finish`).
        self._record_stream_findings(check.scan())
        await self._end(response)

    async def _send_or_fail(self, response: BaseHTTPResponse, data: bytes) -> bool:
        """Send `data` to the client; False (recorded) when the client has gone."""
        try:
            await response.send(data)
        except (ConnectionError, ServerError) as exc:
            self.fail("client_disconnected", f"the client closed the connection: {type(exc).__name__}")
            return False
        return True

    def _record_stream_findings(self, found: list[Finding]) -> bool:
        """Put findings of the streamed answer on the span, its score and the counter."""
        if not found:
            return False
        meta = self.meta
        meta.add_findings(found)
        meta.security_score = max(meta.security_score or 0, *(f.severity.base_score for f in found))
        for finding in found:
            metrics.STREAM_FINDINGS.labels(category_of(finding.type)).inc()
        return True

    async def _end(self, response: BaseHTTPResponse) -> None:
        """End the client's response; a client already gone is recorded, never raised."""
        try:
            await response.send("", True)  # eof
        except (ConnectionError, ServerError) as exc:
            self.fail("client_disconnected", f"the client closed the connection: {type(exc).__name__}")

    async def _stop_stream(
        self, upstream: aiohttp.ClientResponse, response: BaseHTTPResponse, check: StreamCheck
    ) -> None:
        """End the stream after a critical finding: one error event, then the end; the upstream
        request is cancelled by closing its connection."""
        finding = check.critical
        assert finding is not None
        message = (
            f"stream stopped by LLMTrace: the answer contained {finding.type} "
            f"({finding.description or finding.detector}) in {finding.location}"
        )
        metrics.STREAM_EARLY_STOPS.inc()
        self.fail(ERROR_STREAM_STOPPED, message)
        self.meta.set_attribute("llmtrace.streaming_analysis.stopped", finding.type)
        upstream.close()
        # An event can be added only to a plain (uncompressed, unframed) stream. Any other is
        # cut, as an upstream that died would cut it: ended cleanly, it would read as a whole
        # answer (no error, no [DONE], no finish reason), and the client would use it as one.
        if _encoded(upstream) or "content-length" in upstream.headers:
            self._abort_client()
            return
        try:
            await response.send(_stop_event(self.parsed_request.api, message))
        except (ConnectionError, ServerError):
            return
        await self._end(response)

    def _unreadable_json(self) -> bool:
        """Whether the body of a JSON API route could not be read as a JSON object. An upstream
        may read it all the same (Go's decoder ignores what follows the object; some read any
        content type), so where a finding could block, it is refused, unchecked, not forwarded.
        (A compressed body the check cannot read is refused apart, with 415 or 413.)"""
        return (
            not self._codings
            and bool(self.parsed_request.raw_body)
            and self._request.method not in ("GET", "HEAD")
            and reads_json(self._request.path)
        )

    @property
    def parsed_request(self) -> ParsedRequest:
        """The request body read for capture, parsed once, lazily: before forwarding when
        enforcement needs it, else when the upstream's headers arrive (the response capture needs
        the request's API and stream flag), while the request is already on its way upstream."""
        if self._parsed is None:
            if self._codings and self.body:
                self._parsed = self._encoded_note()
            else:
                self._parsed = parse_request(
                    self._request.path,
                    self.body,
                    self._request.headers.get("content-type", ""),
                    max_body_bytes=self._proxy.settings.capture.max_body_bytes,
                    check_spelling=self._proxy.refuses_unread,
                )
        return self._parsed

    async def _read_encoded(self) -> HTTPResponse | None:
        """Read a compressed request body from a decoded copy, up to `Proxy.decode_limit` of it
        (the client's bytes are forwarded as they came), off the event loop: a few hundred bytes
        can decode to the limit. Where the policy can block, a body the check cannot read whole is
        refused: forwarded, it would reach an upstream that reads it unchecked."""
        proxy = self._proxy
        decoded = await asyncio.to_thread(decode_request_body, self.body, self._codings, proxy.decode_limit)
        self._note_decoded(decoded)
        if self._unread and proxy.refuses_unread:
            self._parsed = self._encoded_note()  # a note, not the body
            if decoded.cut:
                error = ShimError(
                    413,
                    "decoded_body_too_large",
                    f"the request body decodes to more than {proxy.decode_limit} bytes (the larger "
                    "of max_request_size_bytes and capture.max_body_bytes), which the proxy's inline "
                    "check cannot read whole",
                )
            else:
                encoding = ", ".join(self._codings)[: limits.MAX_NAME_CHARS]
                error = ShimError(
                    415,
                    "unsupported_content_encoding",
                    f"the request body could not be decoded as Content-Encoding: {encoding!r} "
                    "(gzip, deflate and br are read), so the proxy's inline check cannot read it",
                )
            return self._answer(error)
        self._parsed = await asyncio.to_thread(self._parse_decoded, decoded)
        return None

    def _encoded_note(self) -> ParsedRequest:
        """What the span keeps of a compressed body `_read_encoded` has not read (an answer given
        before it ran, a client gone while it ran): a note of its size and encoding. Decoding it
        here, on the event loop, would stall every other request for as long as a bomb takes."""
        return self._parse_decoded(DecodedBody(b"", failed=True))

    def _note_decoded(self, decoded: DecodedBody) -> None:
        if decoded.cut:
            self._unread = UNREAD_DECODE_LIMIT
        elif decoded.failed:
            self._unread = UNREAD_UNDECODABLE
        if decoded.data or not decoded.failed:  # else the span keeps a note, not the body
            self.meta.request_body_truncated = (
                decoded.cut
                or decoded.failed
                or len(decoded.data) > self._proxy.settings.capture.max_body_bytes
            )

    def _parse_decoded(self, decoded: DecodedBody) -> ParsedRequest:
        return parse_decoded_request(
            self._request.path,
            self.body,
            self._request.headers.get("content-type", ""),
            self._codings,
            decoded,
            max_body_bytes=self._proxy.settings.capture.max_body_bytes,
            check_spelling=self._proxy.refuses_unread,
        )

    def _answer(self, error: ShimError) -> HTTPResponse:
        self.meta.http_status = error.status
        self.fail(error.code, error.message)
        # A flagged request the upstream never answered: the 502/504 carries the flag headers too.
        return error.response(self.extra_headers)

    def finish(self, seconds: float) -> None:
        """Build the span and hand it to the shipper; never raises into the request."""
        meta = self.meta
        meta.end_unix_nano = time.time_ns()
        try:
            span = self._raw_span() if self._capture is None and self._reads_raw else self._read_span()
        except Exception:
            metrics.CAPTURE_FAILURES.inc()
            _log.exception("cannot build the span of an exchange", path=meta.path, tenant=meta.tenant)
            return
        self._proxy.shipper.submit(span)
        operation = route_of(meta.path).operation or "other"
        _requests_counter(operation, meta.http_status // 100).inc()
        _duration_histogram(operation).observe(seconds)
        if meta.error_type:
            metrics.SHIM_ERRORS.labels(meta.error_type).inc()
        access_log = self._proxy.access_log
        if access_log is not None:
            access_log.info(
                "request",
                method=meta.method,
                path=meta.path,
                status=meta.http_status,
                duration_ms=round(seconds * 1000, 3),
                tenant=meta.tenant,
                model=self._requested_model()[: limits.MAX_NAME_CHARS],
                error=meta.error_type or None,
            )

    def _requested_model(self) -> str:
        if self._parsed is not None:
            return self._parsed.model
        # The core reads the body (a raw exchange): the model alone is far cheaper than all of it.
        return requested_model(self._request.path, self.body, self._request.headers.get("content-type", ""))

    def _read_span(self) -> span_pb2.Span:
        """The span, bodies read here."""
        meta = self.meta
        capture_settings = self._proxy.settings.capture
        response = self._capture.finish() if self._capture is not None else None
        if self._check is not None:
            # A last event without its blank line reached the checks only now.
            self._record_stream_findings(self._check.scan())
            if self._check.findings and meta.findings and response is not None:
                meta.findings = core_locations(meta.findings, response)
        return build_span(
            meta,
            self.parsed_request,
            response,
            bodies=capture_settings.bodies,
            max_body_bytes=capture_settings.max_body_bytes,
        )

    def _raw_span(self) -> span_pb2.Span:
        """The span, bodies attached unread for the core (llmtrace.capture.raw)."""
        meta = self.meta
        span = exchange_span(meta, bodies=BODIES_FULL)
        raw = span.raw_exchange
        raw.method = meta.method
        raw.path = meta.path
        # Header values may hold bytes that are not UTF-8 (lone surrogates): a span cannot.
        raw.request_content_type = header_text(self._request.headers.get("content-type", ""))
        raw.request_body = self.body
        raw.max_body_bytes = self._proxy.raw_limit
        answer = self._raw
        if answer is not None:
            raw.has_response = True
            raw.response_status = answer.status
            raw.response_content_type = header_text(answer.content_type)
            raw.response_content_encoding = header_text(answer.content_encoding)
            raw.response_body = b"".join(answer.chunks)
        return span


@dataclass(slots=True)
class _RawAnswer:
    """An answer kept as received, for the core to read."""

    status: int
    content_type: str
    content_encoding: str
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0


def _encoded(upstream: aiohttp.ClientResponse) -> bool:
    """Whether the answer's bytes are not its text as they are (`identity` means they are)."""
    return upstream.headers.get("content-encoding", "").strip().lower() not in ("", "identity")


def _error_text(exc: Exception) -> str:
    """What went wrong upstream, for the client and the span, without the request's credentials.

    aiohttp's own text of a malformed answer names the request URL, query and all
    (`ClientResponseError`: "..., url='https://host/v1/models?key=...'"): its message alone is
    kept, and credential-looking query parameters are masked in whatever is left.
    """
    if isinstance(exc, aiohttp.ClientResponseError):
        text = f"{type(exc).__name__}: {exc.message}"
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return mask_credential_params(text, MASK)


def _stop_event(api: str, message: str) -> bytes:
    """The last SSE event of a stopped stream: an error the client's SDK raises.

    OpenAI SDKs raise `APIError` on a `data: {"error": {...}}` event; Anthropic's on `event: error`.
    """
    error = {
        "message": message,
        "type": "llmtrace_stream_stopped",
        "param": None,
        "code": ERROR_STREAM_STOPPED,
    }
    if api == API_MESSAGES:
        payload = {"type": "error", "error": {"type": "llmtrace_stream_stopped", "message": message}}
        return b"event: error\ndata: " + orjson.dumps(payload) + b"\n\n"
    return b"data: " + orjson.dumps({"error": error}) + b"\n\n"
