"""The core never blocks its event loop: DuckDB, validation and Arrow work run in threads."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from llmtrace.api.v1 import ingest_service_pb2, query_service_pb2
from llmtrace.config.schema import SecurityAnalysisSettings
from tests.conftest import RunningCore, core_settings, running_core
from tests.factories import make_span

# A step of the loop longer than this means something ran on it that should not have. Generous,
# because this machine is shared: real blocking (a DuckDB insert or a 500-span Arrow build on the
# loop) takes well over 100 ms for a 2,500-span batch here.
SLOW_CALLBACK_SECONDS = 0.1


@pytest.fixture
async def core(tmp_path: Path) -> AsyncIterator[RunningCore]:
    # Ingest and queries only: post-ack analysis runs beside them in the same process (its results
    # are unpickled and written by threads of the core) and, on a loaded CI machine, the interpreter
    # lock those threads hold can stretch a loop step past the limit without anything blocking.
    settings = dataclasses.replace(
        core_settings(tmp_path / "db.duckdb"), security_analysis=SecurityAnalysisSettings(enabled=False)
    )
    async with running_core(settings) as running:
        yield running


async def test_ingest_and_queries_do_not_block_the_loop(
    core: RunningCore, caplog: pytest.LogCaptureFixture
) -> None:
    loop = asyncio.get_running_loop()
    # A full garbage collection late in a long test session (every test's objects and modules
    # alive) can take over 100 ms in whatever step triggers it: that is not the core blocking its
    # loop, so collect first and keep the collector out of the measured window.
    gc.collect()
    gc.disable()
    loop.set_debug(True)
    loop.slow_callback_duration = SLOW_CALLBACK_SECONDS
    caplog.set_level(logging.WARNING, logger="asyncio")
    try:
        batches = [
            ingest_service_pb2.IngestSpansRequest(spans=[make_span(prompt="x" * 2048) for _ in range(2500)])
            for _ in range(2)
        ]
        acks = await asyncio.gather(*(core.ingest.IngestSpans(b) for b in batches))
        assert sum(a.accepted_spans for a in acks) == 5000
        for _ in range(3):
            stats = await core.query.GetStats(query_service_pb2.GetStatsRequest(tenant="acme"))
            page = await core.query.ListSpans(
                query_service_pb2.ListSpansRequest(
                    tenant="acme", page_size=200, view=query_service_pb2.SPAN_VIEW_FULL
                )
            )
        assert stats.total.span_count == 5000
        assert len(page.spans) == 200
    finally:
        loop.set_debug(False)
        gc.enable()
    slow = [r.getMessage() for r in caplog.records if "took" in r.getMessage()]
    assert not slow, slow
