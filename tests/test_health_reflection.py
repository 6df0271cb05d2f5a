"""Health checking, server reflection, Prometheus metrics and request ids of a running core."""

from __future__ import annotations

import asyncio
import contextlib
import re
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from llmtrace.api.v1 import ingest_service_pb2, query_service_pb2
from tests.conftest import RunningCore, core_settings, running_core
from tests.factories import BASE_NS, ingest_all, make_span

pytestmark = pytest.mark.asyncio(loop_scope="module")

Q = query_service_pb2
INGEST_SERVICE = "llmtrace.api.v1.IngestService"
QUERY_SERVICE = "llmtrace.api.v1.QueryService"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningCore]:
    path = tmp_path_factory.mktemp("health") / "llmtrace.duckdb"
    async with running_core(core_settings(path)) as running:
        yield running


# --- health ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("service", ["", INGEST_SERVICE, QUERY_SERVICE])
async def test_health_reports_serving(shared: RunningCore, service: str) -> None:
    stub: Any = health_pb2_grpc.HealthStub(shared.channel)

    response = await stub.Check(health_pb2.HealthCheckRequest(service=service))

    assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_health_of_an_unknown_service_is_not_found(shared: RunningCore) -> None:
    stub: Any = health_pb2_grpc.HealthStub(shared.channel)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))

    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_health_watch_streams_the_status_and_its_change(tmp_path: Any) -> None:
    # Watch (what gRPC clients with a health-check config and some load balancers use) failed
    # every call with INTERNAL: the interceptor iterated the coroutine that writes its updates.
    async with running_core(core_settings(tmp_path / "db.duckdb")) as core:
        stub: Any = health_pb2_grpc.HealthStub(core.channel)
        call = stub.Watch(health_pb2.HealthCheckRequest(service=QUERY_SERVICE))
        first = await asyncio.wait_for(call.read(), 10)
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        stopping = asyncio.create_task(core.core.stop())
        second = await asyncio.wait_for(call.read(), 10)
        assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
        call.cancel()
        await stopping


# --- reflection -----------------------------------------------------------------------------------


async def _reflect(core: RunningCore, request: reflection_pb2.ServerReflectionRequest) -> Any:
    stub: Any = reflection_pb2_grpc.ServerReflectionStub(core.channel)
    responses = [r async for r in stub.ServerReflectionInfo(iter([request]))]
    assert len(responses) == 1
    return responses[0]


async def test_reflection_lists_the_services(shared: RunningCore) -> None:
    response = await _reflect(shared, reflection_pb2.ServerReflectionRequest(list_services=""))

    names = {service.name for service in response.list_services_response.service}
    assert {INGEST_SERVICE, QUERY_SERVICE, "grpc.health.v1.Health"} <= names


@pytest.mark.parametrize(
    ("symbol", "file_name", "service", "methods"),
    [
        (
            INGEST_SERVICE,
            "llmtrace/api/v1/ingest_service.proto",
            "IngestService",
            ["IngestSpans", "StreamSpans"],
        ),
        (
            QUERY_SERVICE,
            "llmtrace/api/v1/query_service.proto",
            "QueryService",
            ["ListTraces", "GetTrace", "ListSpans", "GetSpan", "ListFindings", "GetStats", "ExecuteSql"],
        ),
    ],
)
async def test_reflection_describes_each_service(
    shared: RunningCore, symbol: str, file_name: str, service: str, methods: list[str]
) -> None:
    response = await _reflect(shared, reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol))

    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in response.file_descriptor_response.file_descriptor_proto
    ]
    by_name = {f.name: f for f in files}
    assert file_name in by_name
    described = by_name[file_name]
    assert described.package == "llmtrace.api.v1"
    [found] = [s for s in described.service if s.name == service]
    assert [m.name for m in found.method] == methods


async def test_reflection_resolves_message_symbols(shared: RunningCore) -> None:
    response = await _reflect(
        shared, reflection_pb2.ServerReflectionRequest(file_containing_symbol="llmtrace.api.v1.Span")
    )

    first = descriptor_pb2.FileDescriptorProto.FromString(
        response.file_descriptor_response.file_descriptor_proto[0]
    )
    assert first.name == "llmtrace/api/v1/span.proto"
    assert "Span" in [m.name for m in first.message_type]


async def test_reflection_of_an_unknown_symbol_is_an_error_response(shared: RunningCore) -> None:
    response = await _reflect(
        shared, reflection_pb2.ServerReflectionRequest(file_containing_symbol="llmtrace.api.v1.Nope")
    )

    assert response.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


# --- metrics --------------------------------------------------------------------------------------


def _scrape_sync(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        body: bytes = response.read()
        assert response.status == 200
    return body.decode()


async def _metrics(core: RunningCore) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the core's metrics endpoint, keyed by name and labels."""
    assert core.bound.metrics is not None
    text = await asyncio.to_thread(_scrape_sync, core.bound.metrics)
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def _rpc_total(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], method: str, code: str) -> float:
    return samples.get(("llmtrace_core_rpc_total", frozenset({("method", method), ("code", code)})), 0.0)


async def test_metrics_count_rpcs_by_method_and_code(shared: RunningCore) -> None:
    method = f"/{QUERY_SERVICE}/ListSpans"
    before = await _metrics(shared)

    await shared.query.ListSpans(Q.ListSpansRequest(tenant="acme"))
    await shared.query.ListSpans(Q.ListSpansRequest(tenant="acme"))
    with pytest.raises(grpc.aio.AioRpcError):
        await shared.query.ListSpans(Q.ListSpansRequest(tenant=""))
    after = await _metrics(shared)

    assert _rpc_total(after, method, "OK") - _rpc_total(before, method, "OK") == 2
    assert _rpc_total(after, method, "INVALID_ARGUMENT") - _rpc_total(before, method, "INVALID_ARGUMENT") == 1
    histogram = ("llmtrace_core_rpc_duration_seconds_count", frozenset({("method", method)}))
    assert after[histogram] - before.get(histogram, 0.0) == 3


async def test_metrics_count_accepted_and_rejected_spans(shared: RunningCore) -> None:
    accepted = ("llmtrace_core_spans_accepted_total", frozenset[tuple[str, str]]())
    rejected = ("llmtrace_core_spans_rejected_total", frozenset[tuple[str, str]]())
    before = await _metrics(shared)

    await ingest_all(shared.ingest, [make_span(start_ns=BASE_NS) for _ in range(3)])
    await shared.ingest.IngestSpans(
        ingest_service_pb2.IngestSpansRequest(spans=[make_span(start_ns=BASE_NS), make_span(tenant="")])
    )
    after = await _metrics(shared)

    assert after[accepted] - before.get(accepted, 0.0) == 4
    assert after[rejected] - before.get(rejected, 0.0) == 1
    method = f"/{INGEST_SERVICE}/IngestSpans"
    assert _rpc_total(after, method, "OK") - _rpc_total(before, method, "OK") == 2


# --- request ids ----------------------------------------------------------------------------------

Invoke = Callable[[RunningCore, tuple[tuple[str, str], ...]], Awaitable[grpc.aio.Metadata]]


def _unary(make_call: Callable[[RunningCore, tuple[tuple[str, str], ...]], Any]) -> Invoke:
    async def invoke(core: RunningCore, metadata: tuple[tuple[str, str], ...]) -> grpc.aio.Metadata:
        call = make_call(core, metadata)
        with contextlib.suppress(grpc.aio.AioRpcError):  # failures must carry the request id too
            await call
        trailing: grpc.aio.Metadata = await call.trailing_metadata()
        return trailing

    return invoke


async def _stream(core: RunningCore, metadata: tuple[tuple[str, str], ...]) -> grpc.aio.Metadata:
    request = ingest_service_pb2.StreamSpansRequest(sequence=1, spans=[make_span(start_ns=BASE_NS)])
    call = core.ingest.StreamSpans(iter([request]), metadata=metadata)
    acks = [ack async for ack in call]
    assert [a.sequence for a in acks] == [1]
    trailing: grpc.aio.Metadata = await call.trailing_metadata()
    return trailing


SPAN_ID = b"\x01" * 8
TRACE_ID = b"\x01" * 16
RPCS: dict[str, Invoke] = {
    "IngestSpans": _unary(
        lambda c, m: c.ingest.IngestSpans(
            ingest_service_pb2.IngestSpansRequest(spans=[make_span(start_ns=BASE_NS)]), metadata=m
        )
    ),
    "StreamSpans": _stream,
    "ListTraces": _unary(lambda c, m: c.query.ListTraces(Q.ListTracesRequest(tenant="acme"), metadata=m)),
    "GetTrace": _unary(
        lambda c, m: c.query.GetTrace(Q.GetTraceRequest(tenant="acme", trace_id=TRACE_ID), metadata=m)
    ),
    "ListSpans": _unary(lambda c, m: c.query.ListSpans(Q.ListSpansRequest(tenant="acme"), metadata=m)),
    "GetSpan": _unary(
        lambda c, m: c.query.GetSpan(Q.GetSpanRequest(tenant="acme", span_id=SPAN_ID), metadata=m)
    ),
    "ListFindings": _unary(
        lambda c, m: c.query.ListFindings(Q.ListFindingsRequest(tenant="acme"), metadata=m)
    ),
    "GetStats": _unary(lambda c, m: c.query.GetStats(Q.GetStatsRequest(tenant="acme"), metadata=m)),
    "ExecuteSql": _unary(
        lambda c, m: c.query.ExecuteSql(Q.ExecuteSqlRequest(tenant="acme", query="SELECT 1"), metadata=m)
    ),
    "ListSpans-invalid": _unary(lambda c, m: c.query.ListSpans(Q.ListSpansRequest(tenant=""), metadata=m)),
    "ExecuteSql-refused": _unary(
        lambda c, m: c.query.ExecuteSql(
            Q.ExecuteSqlRequest(tenant="acme", query="DROP TABLE spans"), metadata=m
        )
    ),
}


def _request_ids(metadata: grpc.aio.Metadata) -> list[str]:
    return [str(value) for key, value in metadata if key == "x-request-id"]


@pytest.mark.parametrize("rpc", RPCS)
async def test_every_rpc_returns_a_request_id(shared: RunningCore, rpc: str) -> None:
    first = _request_ids(await RPCS[rpc](shared, ()))
    second = _request_ids(await RPCS[rpc](shared, ()))

    assert len(first) == len(second) == 1
    assert re.fullmatch(r"[0-9a-f]{16}", first[0])
    assert first != second


@pytest.mark.parametrize("rpc", RPCS)
async def test_a_client_request_id_is_echoed(shared: RunningCore, rpc: str) -> None:
    trailing = await RPCS[rpc](shared, (("x-request-id", f"client-{rpc}-42"),))

    assert _request_ids(trailing) == [f"client-{rpc}-42"]


async def test_an_overlong_client_request_id_is_replaced(shared: RunningCore) -> None:
    trailing = await RPCS["ListSpans"](shared, (("x-request-id", "x" * 129),))

    [request_id] = _request_ids(trailing)
    assert re.fullmatch(r"[0-9a-f]{16}", request_id)
