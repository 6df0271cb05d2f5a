"""The core never blocks its event loop: DuckDB, validation and Arrow work run in threads."""

from __future__ import annotations

import asyncio
import asyncio.events
import contextlib
import gc
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from llmtrace.api.v1 import ingest_service_pb2, query_service_pb2
from llmtrace.rpc.query import FULL_VIEW_MAX_PAGE_SIZE
from tests.conftest import RunningCore, core_settings, running_core
from tests.factories import make_span

# A step of the loop that uses more CPU than this on the loop's thread means something ran on it
# that should not have: real blocking (a DuckDB insert or the Arrow build of a 2,500-span batch on
# the loop) takes well over 100 ms of CPU here. CPU time, not wall time: on a loaded machine a
# short step can wait far longer than this for the interpreter lock held by a worker thread
# (decoding or converting a batch), which is not the loop running anything itself.
SLOW_STEP_CPU_SECONDS = 0.05


@contextlib.contextmanager
def slow_loop_steps(limit_s: float) -> Iterator[list[str]]:
    """Every callback or task step run on this thread's event loop that used more than `limit_s`
    of the thread's CPU time, described."""
    slow: list[str] = []
    loop_thread = threading.get_ident()
    original: Callable[[asyncio.events.Handle], None] = asyncio.events.Handle._run

    def timed_run(handle: asyncio.events.Handle) -> None:
        if threading.get_ident() != loop_thread:
            original(handle)
            return
        started = time.thread_time()
        original(handle)
        used = time.thread_time() - started
        if used > limit_s:
            slow.append(f"{handle!r} used {used * 1000:.0f} ms of CPU")

    asyncio.events.Handle._run = timed_run  # type: ignore[method-assign,assignment]
    try:
        yield slow
    finally:
        asyncio.events.Handle._run = original  # type: ignore[method-assign,assignment]


@pytest.fixture
async def core(tmp_path: Path) -> AsyncIterator[RunningCore]:
    # With post-ack analysis on, as in production: its results come back to threads of the core.
    async with running_core(core_settings(tmp_path / "db.duckdb")) as running:
        yield running


async def test_ingest_and_queries_do_not_block_the_loop(core: RunningCore) -> None:
    batches = [
        ingest_service_pb2.IngestSpansRequest(spans=[make_span(prompt="x" * 2048) for _ in range(2500)])
        for _ in range(2)
    ]
    # A full garbage collection late in a long test session (every test's objects and modules
    # alive) can take over 100 ms in whatever step triggers it: that is not the core blocking its
    # loop, so collect first and keep the collector out of the measured window.
    gc.collect()
    gc.disable()
    try:
        with slow_loop_steps(SLOW_STEP_CPU_SECONDS) as slow:
            acks = await asyncio.gather(*(core.ingest.IngestSpans(b) for b in batches))
            for _ in range(3):
                stats = await core.query.GetStats(query_service_pb2.GetStatsRequest(tenant="acme"))
                page = await core.query.ListSpans(
                    query_service_pb2.ListSpansRequest(
                        tenant="acme",
                        page_size=FULL_VIEW_MAX_PAGE_SIZE,
                        view=query_service_pb2.SPAN_VIEW_FULL,
                    )
                )
    finally:
        gc.enable()
    assert sum(a.accepted_spans for a in acks) == 5000
    assert stats.total.span_count == 5000
    assert len(page.spans) == FULL_VIEW_MAX_PAGE_SIZE
    assert not slow, slow
