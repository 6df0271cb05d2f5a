"""Shared fixtures: a real core on port 0 with a fresh database per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest

from llmtrace.api.v1 import ingest_service_pb2_grpc, query_service_pb2_grpc
from llmtrace.config import GrpcSettings, MetricsSettings, Settings, StorageSettings
from llmtrace.server import BoundAddresses, Core

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
