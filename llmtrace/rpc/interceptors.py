"""Server interceptor: request ids, one structured log line and metrics per RPC.

A client may send `x-request-id`; otherwise one is made. It is bound into structlog's context
variables for everything logged while the RPC runs, and returned as trailing metadata.
Unexpected exceptions are logged with their traceback and reported to the client as INTERNAL
with the request id only, never the exception text. Requests are decoded here, not by grpc: a
request grpc cannot decode would be answered UNKNOWN (or INTERNAL mid-stream) before any handler
or log saw it; here it is INVALID_ARGUMENT with reason MALFORMED_REQUEST.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import structlog
from google.protobuf.message import DecodeError

from llmtrace.rpc import metrics
from llmtrace.rpc.errors import abort, invalid_argument

_log = structlog.get_logger("llmtrace.rpc")
_QUIET_PREFIXES = ("/grpc.health.", "/grpc.reflection.")


def _request_id(details: grpc.HandlerCallDetails) -> str:
    for key, value in details.invocation_metadata or ():
        if key == "x-request-id" and isinstance(value, str) and 0 < len(value) <= 128:
            return value
    return uuid.uuid4().hex[:16]


def _code_name(context: grpc.aio.ServicerContext[Any, Any], failed: bool) -> str:
    code = context.code()
    if code is None:
        return "INTERNAL" if failed else "OK"
    if isinstance(code, grpc.StatusCode):
        return code.name
    return grpc.StatusCode(code).name if isinstance(code, tuple) else str(code)


class _Call:
    """Bookkeeping for one RPC."""

    def __init__(self, method: str, request_id: str) -> None:
        self.method = method
        self.request_id = request_id
        self.start = time.perf_counter()
        self.ended = False

    def begin(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        structlog.contextvars.bind_contextvars(request_id=self.request_id, rpc=self.method)
        context.set_trailing_metadata((("x-request-id", self.request_id),))

    def end(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        error: BaseException | None,
        *,
        cancelled: bool = False,
    ) -> None:
        self.ended = True
        elapsed = time.perf_counter() - self.start
        failed = error is not None and not isinstance(error, _AbortErrors)
        # A cancelled RPC (client gone, deadline passed) has no status set by us: say so.
        code = "CANCELLED" if cancelled else _code_name(context, failed)
        metrics.RPC_TOTAL.labels(self.method, code).inc()
        metrics.RPC_DURATION.labels(self.method).observe(elapsed)
        if failed:
            _log.error("rpc failed", code=code, duration_ms=round(elapsed * 1000, 3), exc_info=error)
        elif not self.method.startswith(_QUIET_PREFIXES):
            _log.info("rpc", code=code, duration_ms=round(elapsed * 1000, 3))
        structlog.contextvars.unbind_contextvars("request_id", "rpc")

    async def internal(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error (request id {self.request_id})")


# grpc.aio raises this (an internal class) from context.abort(); it is an expected outcome.
_AbortErrors: tuple[type[BaseException], ...] = (grpc.aio.AbortError,)


class ObservabilityInterceptor(grpc.aio.ServerInterceptor):
    """Logs, times and counts every RPC; hides unexpected exceptions behind INTERNAL."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method: str = handler_call_details.method
        request_id = _request_id(handler_call_details)
        decode = handler.request_deserializer
        if handler.unary_unary is not None:
            behavior = handler.unary_unary if decode is None else _decoding_unary(handler.unary_unary, decode)
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(behavior, method, request_id),
                request_deserializer=None,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            behavior = (
                handler.stream_stream if decode is None else _decoding_stream(handler.stream_stream, decode)
            )
            return grpc.stream_stream_rpc_method_handler(
                _wrap_stream(behavior, method, request_id),
                request_deserializer=None,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream, method, request_id),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


@contextlib.asynccontextmanager
async def _observed(
    method: str, request_id: str, context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[None]:
    """Bookkeeping around one RPC, unary or streaming: log, count, and hide unexpected errors."""
    call = _Call(method, request_id)
    call.begin(context)
    error: BaseException | None = None
    try:
        yield
    except asyncio.CancelledError:
        call.end(context, None, cancelled=True)
        raise
    except _AbortErrors as exc:
        error = exc
        raise
    except Exception as exc:  # report as INTERNAL without leaking details
        error = exc
        call.end(context, error)
        await call.internal(context)
        raise
    finally:
        if not call.ended:
            call.end(context, error)


Context = grpc.aio.ServicerContext[Any, Any]


async def _decoded(raw: bytes, decode: Callable[[bytes], Any], context: Context) -> Any:
    try:
        return decode(raw)
    except DecodeError as exc:
        await abort(
            context,
            invalid_argument([("", f"the request cannot be decoded: {exc}")], reason="MALFORMED_REQUEST"),
        )


def _decoding_unary(behavior: Any, decode: Callable[[bytes], Any]) -> Any:
    async def decoding(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return await behavior(await _decoded(raw, decode, context), context)

    return decoding


def _decoding_stream(behavior: Any, decode: Callable[[bytes], Any]) -> Any:
    async def requests(raws: AsyncIterator[bytes], context: Context) -> AsyncIterator[Any]:
        async for raw in raws:
            yield await _decoded(raw, decode, context)

    if inspect.iscoroutinefunction(behavior):  # it writes with context.write (see _wrap_stream)

        async def writing(raws: AsyncIterator[bytes], context: Context) -> Any:
            return await behavior(requests(raws, context), context)

        return writing

    def decoding(raws: AsyncIterator[bytes], context: Context) -> Any:
        return behavior(requests(raws, context), context)

    return decoding


def _wrap_unary(behavior: Any, method: str, request_id: str) -> Any:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        async with _observed(method, request_id, context):
            return await behavior(request, context)

    return wrapped


def _wrap_stream(behavior: Any, method: str, request_id: str) -> Any:
    if inspect.iscoroutinefunction(behavior):
        # A coroutine that streams with context.write() rather than yielding (grpc's own health
        # Watch): iterated as a generator, it failed every call with INTERNAL.
        return _wrap_unary(behavior, method, request_id)

    async def wrapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        async with _observed(method, request_id, context):
            async for response in behavior(request, context):
                yield response

    return wrapped
