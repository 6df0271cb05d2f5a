"""The RPC interceptor: unexpected errors are hidden behind INTERNAL; cancellations are counted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from prometheus_client import REGISTRY

from llmtrace.rpc.interceptors import ObservabilityInterceptor

SERVICE = "test.Probe"


async def _boom(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    raise RuntimeError("secret detail from inside the core")


async def _slow(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    await asyncio.sleep(30)
    return b""


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    server = grpc.aio.server(interceptors=[ObservabilityInterceptor()])
    handlers: dict[str, grpc.RpcMethodHandler[bytes, bytes]] = {
        "Boom": grpc.unary_unary_rpc_method_handler(_boom),
        "Slow": grpc.unary_unary_rpc_method_handler(_slow),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as chan:
        yield chan
    await server.stop(None)


def _call(channel: grpc.aio.Channel, name: str) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
    # No serializers: the probe methods take and return raw bytes.
    call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(f"/{SERVICE}/{name}")
    return call


def _count(method: str, code: str) -> float:
    value = REGISTRY.get_sample_value("llmtrace_core_rpc_total", {"method": method, "code": code})
    return value or 0.0


async def test_unexpected_error_is_internal_without_its_message(channel: grpc.aio.Channel) -> None:
    before = _count(f"/{SERVICE}/Boom", "INTERNAL")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _call(channel, "Boom")(b"", metadata=(("x-request-id", "req-42"),))
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert caught.value.details() == "internal error (request id req-42)"
    assert "secret" not in (caught.value.details() or "")
    assert _count(f"/{SERVICE}/Boom", "INTERNAL") == before + 1


async def test_cancelled_rpc_is_counted_as_cancelled(channel: grpc.aio.Channel) -> None:
    before = _count(f"/{SERVICE}/Slow", "CANCELLED")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _call(channel, "Slow")(b"", timeout=0.2)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    for _ in range(50):  # the server notices the cancellation shortly after the client
        if _count(f"/{SERVICE}/Slow", "CANCELLED") == before + 1:
            break
        await asyncio.sleep(0.05)
    assert _count(f"/{SERVICE}/Slow", "CANCELLED") == before + 1
    assert _count(f"/{SERVICE}/Slow", "OK") == 0
