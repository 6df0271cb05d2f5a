"""Shared fixtures: a real core on port 0 with a fresh database per test, and a real shim."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import openai
import pytest

from llmtrace.api.v1 import ingest_service_pb2_grpc, query_service_pb2, query_service_pb2_grpc
from llmtrace.api.v1.span_pb2 import Span
from llmtrace.config import GrpcSettings, MetricsSettings, Settings, StorageSettings
from llmtrace.config.schema import LoggingSettings, ShipperSettings
from llmtrace.server import BoundAddresses, Core
from shim.server import ShimWorker, bind_socket
from tools.fake_upstream import FakeUpstream, FakeUpstreamConfig, run_fake_upstream

if TYPE_CHECKING:
    # Typing-only classes from mypy-protobuf: the stubs' types on an aio channel.
    from llmtrace.api.v1.ingest_service_pb2_grpc import IngestServiceAsyncStub
    from llmtrace.api.v1.query_service_pb2_grpc import QueryServiceAsyncStub


@dataclass
class RunningCore:
    """A started core and stubs connected to it."""

    core: Core
    bound: BoundAddresses
    channel: grpc.aio.Channel
    ingest: IngestServiceAsyncStub
    query: QueryServiceAsyncStub
    database_path: Path


def core_settings(database_path: Path) -> Settings:
    """Settings for a core on free ports with its database at `database_path`."""
    return Settings(
        grpc=GrpcSettings(listen_addr="127.0.0.1:0"),
        metrics=MetricsSettings(listen_addr="127.0.0.1:0"),
        storage=StorageSettings(database_path=str(database_path)),
    )


@asynccontextmanager
async def running_core(settings: Settings) -> AsyncIterator[RunningCore]:
    """A core started with `settings`; stopped (and its database closed) on exit."""
    instance = Core(settings)
    bound = await instance.start()
    channel = grpc.aio.insecure_channel(bound.grpc)
    try:
        yield RunningCore(
            core=instance,
            bound=bound,
            channel=channel,
            ingest=ingest_service_pb2_grpc.IngestServiceStub(channel),
            query=query_service_pb2_grpc.QueryServiceStub(channel),
            database_path=Path(settings.storage.database_path),
        )
    finally:
        await channel.close()
        await instance.stop()


@pytest.fixture
async def core(tmp_path: Path) -> AsyncIterator[RunningCore]:
    """A running core on a fresh database, for one test."""
    async with running_core(core_settings(tmp_path / "llmtrace.duckdb")) as running:
        yield running


@dataclass
class RunningShim:
    """A started shim worker (the production `ShimWorker`) on a free port."""

    worker: ShimWorker
    base_url: str
    """`http://127.0.0.1:PORT`; the OpenAI SDK's base_url is this plus `/v1`."""
    settings: Settings


def shim_settings(tmp_path: Path, upstream_url: str, **changes: object) -> Settings:
    """Settings for a shim on a free port with its spool under `tmp_path`."""
    settings = Settings(
        listen_addr="127.0.0.1:0",
        upstream_url=upstream_url,
        shipper=ShipperSettings(
            spool_dir=str(tmp_path / "spool"),
            dead_letter_path=str(tmp_path / "spool" / "dead-letter.jsonl"),
            flush_interval_ms=20,
        ),
        logging=LoggingSettings(access_log=False),
    )
    return dataclasses.replace(settings, **changes)  # type: ignore[arg-type]


@asynccontextmanager
async def running_shim(settings: Settings, core_addr: str) -> AsyncIterator[RunningShim]:
    """A shim worker shipping to `core_addr`; stopped (drained and flushed) on exit."""
    sock = bind_socket(settings.listen_addr)
    worker = await ShimWorker.start(settings, sock, core_addr=core_addr)
    try:
        yield RunningShim(worker=worker, base_url=f"http://{worker.address}", settings=settings)
    finally:
        await worker.stop(settings.shutdown.timeout_seconds)
        sock.close()


@dataclass
class Stack:
    """Fake upstream, core and shim, wired together for end-to-end tests."""

    upstream: FakeUpstream
    core: RunningCore
    shim: RunningShim

    async def spans(self, tenant: str = "default", expected: int = 1, wait_s: float = 10.0) -> list[Span]:
        """The tenant's spans in the core, waiting until `expected` have arrived."""
        return await wait_for_spans(self.core, tenant, expected, wait_s)


async def wait_for_spans(
    core: RunningCore, tenant: str = "default", expected: int = 1, wait_s: float = 10.0
) -> list[Span]:
    """The tenant's spans (full view), polling until at least `expected` are there or time is up."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        spans: list[Span] = []
        token = ""
        while True:  # a page stops at 4 MiB, or at the core's message size, whatever page_size says
            page = await core.query.ListSpans(
                query_service_pb2.ListSpansRequest(
                    tenant=tenant, page_size=1000, view=query_service_pb2.SPAN_VIEW_FULL, page_token=token
                )
            )
            spans += page.spans
            token = page.next_page_token
            if not token:
                break
        if len(spans) >= expected or loop.time() > deadline:
            return spans
        await asyncio.sleep(0.02)


@asynccontextmanager
async def running_stack(
    tmp_path: Path, upstream_config: FakeUpstreamConfig | None = None, **shim_changes: object
) -> AsyncIterator[Stack]:
    """Fake upstream + core + shim on free ports."""
    async with (
        run_fake_upstream(upstream_config) as upstream,
        running_core(core_settings(tmp_path / "llmtrace.duckdb")) as core,
        running_shim(shim_settings(tmp_path, upstream.base_url, **shim_changes), core.bound.grpc) as shim,
    ):
        yield Stack(upstream=upstream, core=core, shim=shim)


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    """Fake upstream, core and shim for one test, at default settings."""
    async with running_stack(tmp_path) as running:
        yield running


OpenAIFactory = Callable[..., openai.AsyncOpenAI]


@pytest.fixture
async def make_client() -> AsyncIterator[OpenAIFactory]:
    """`make_client(base_url=..., api_key=..., ...)`: async OpenAI clients closed after the test.

    Unclosed clients would close their connections from a finalizer after the loop is gone.
    """
    made: list[openai.AsyncOpenAI] = []

    def factory(**kwargs: Any) -> openai.AsyncOpenAI:
        kwargs.setdefault("max_retries", 0)
        client = openai.AsyncOpenAI(**kwargs)
        made.append(client)
        return client

    yield factory
    for client in made:
        await client.close()
