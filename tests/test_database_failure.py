"""A database DuckDB gave up on (a checkpoint that failed on a full disk): the core stops serving
and exits non-zero, to be started again, instead of failing every call while reporting SERVING."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, NoReturn

import duckdb
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmtrace.api.v1 import ingest_service_pb2, ingest_service_pb2_grpc
from llmtrace.server import serve_core
from llmtrace.store.reader import StoreReader
from llmtrace.store.writer import StoreWriter
from tests.conftest import core_settings
from tests.factories import make_span

FATAL = "FATAL Error: Failed to create checkpoint because of error: No space left on device"


async def _ready(path: Path, task: asyncio.Task[int]) -> dict[str, Any]:
    for _ in range(600):
        text = await asyncio.to_thread(lambda: path.read_text() if path.exists() else "")
        if text:
            ready: dict[str, Any] = json.loads(text)
            return ready
        assert not task.done(), "the core ended before it was ready"
        await asyncio.sleep(0.05)
    raise AssertionError("the core never got ready")


async def test_a_fatal_write_error_stops_the_core_with_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fatal(*args: object, **kwargs: object) -> NoReturn:
        raise duckdb.FatalException(FATAL)

    monkeypatch.setattr(StoreWriter, "_insert_tables", fatal)
    ready_file = tmp_path / "ready.json"
    core = asyncio.create_task(serve_core(core_settings(tmp_path / "db.duckdb"), str(ready_file)))
    ready = await _ready(ready_file, core)
    async with grpc.aio.insecure_channel(ready["grpc"]) as channel:
        ingest = ingest_service_pb2_grpc.IngestServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await ingest.IngestSpans(ingest_service_pb2.IngestSpansRequest(spans=[make_span()]))
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE  # not acknowledged: the shim retries
        health: Any = health_pb2_grpc.HealthStub(channel)
        try:
            status = (await health.Check(health_pb2.HealthCheckRequest(), timeout=5)).status
        except grpc.aio.AioRpcError:
            status = None  # already gone
        assert status in (health_pb2.HealthCheckResponse.NOT_SERVING, None)
    assert await asyncio.wait_for(core, 60) == 1


async def test_a_reader_reports_a_database_duckdb_gave_up_on(tmp_path: Path) -> None:
    seen: list[BaseException] = []
    conn = duckdb.connect(str(tmp_path / "db.duckdb"))
    reader = StoreReader(conn, on_fatal=seen.append)

    def query(cursor: duckdb.DuckDBPyConnection) -> NoReturn:
        raise duckdb.FatalException(FATAL)

    try:
        with pytest.raises(duckdb.FatalException):
            await reader.run(query)
        assert [str(e) for e in seen] == [FATAL]
        assert await reader.fetch("SELECT 1 AS one") == [{"one": 1}]  # other errors: not reported
        with pytest.raises(duckdb.CatalogException):
            await reader.fetch("SELECT * FROM no_such_table")
        assert len(seen) == 1
    finally:
        reader.close()
        conn.close()
