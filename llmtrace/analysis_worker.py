"""Post-ack analysis: every ingested span is analysed after its batch is committed and acked.

Ingest hands committed spans to `AnalysisWorker.offer`, which only appends them to a bounded
in-memory queue (`security_analysis.queue_max_spans`) and never waits: when the queue is full
the surplus is shed (stored, not analysed) and counted. One background task takes batches of up
to `batch_max_spans`, serialises them and has the analysis process analyse them with a time limit
(`timeout_ms`); the findings and the span's score go to the store through the single writer, as
rows (`finding_rows`, `span_scores` with source `analysis`), never UPDATEs.

The analysis process (llmtrace/analysis_child.py) is one child process ("spawn", through a
`ProcessPoolExecutor` of one worker) with its own interpreter: the analyzer is Python-heavy
(regexes, featurisation), and in a thread of the core it would take the interpreter lock from
the event loop and the ingest thread. It runs at a lower CPU priority (nice +10), loads the
classifier once when the core starts (the core does not start if it cannot), and dies with the
core (PR_SET_PDEATHSIG). A batch that outlives `timeout_ms` is abandoned by killing the process;
a process that dies (killed, out of memory) fails its batch. Either way the batch is retried in
halves a bounded number of times, so that one span that breaks analysis costs its batch-mates
nothing; what still fails stays stored without findings, the failure is counted, and a fresh
process takes the next batch.

Findings a span already carried (the shim's inline check) are kept and not repeated: a new
finding with the same (type, detector, location) as one the span has is dropped. Ids are
deterministic, so analysing a span twice (a replayed batch, a re-queue) adds nothing.

On start, spans ingested in the last day that have no analysis score (acked but not analysed
before a restart, or shed) are queued again. On stop the queue is dropped (those spans are
re-queued at the next start) and the analysis process is killed: stopping never waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Final, TypeVar

import pyarrow as pa
import structlog
from prometheus_client import Counter, Gauge, Histogram

from llmtrace import analysis_child
from llmtrace.analysis_child import SCORE_SOURCE, analysis_finding_id, build_analysis_rows
from llmtrace.api.v1 import span_pb2
from llmtrace.config.schema import SecurityAnalysisSettings
from llmtrace.rpc.row_convert import span_from_row
from llmtrace.store import queries
from llmtrace.store.reader import Row, StoreReader
from llmtrace.store.writer import AnalysisWrite, StoreWriter, WriterClosedError

__all__ = [
    "SCORE_SOURCE",
    "AnalysisStartError",
    "AnalysisWorker",
    "analysis_finding_id",
    "build_analysis_rows",
]

_log = structlog.get_logger("llmtrace.analysis")

#: How far back the start-up re-queue looks for unanalysed spans.
REQUEUE_MAX_AGE_S: Final = 86_400
#: How long the analysis process may take to start and load the classifier.
START_TIMEOUT_S: Final = 120.0
#: Least time between two starts of the analysis process (a process that keeps dying or timing
#: out is not restarted in a busy loop).
RESTART_MIN_INTERVAL_S: Final = 1.0
#: Splits in halves one queued batch may have, after crashes of the analysis process, to find the
#: span that crashes it: enough to isolate one or two such spans in a batch of 256 (15 splits).
MAX_CRASHES_PER_BATCH: Final = 16
#: Splits in halves one queued batch may have, after timeouts, to find a slow span: each costs the
#: timeout and a process start, so fewer than for crashes; 3 leave a slow span in a group of an
#: eighth of the batch, and analyse the rest.
MAX_TIMEOUTS_PER_BATCH: Final = 3
_mp = multiprocessing.get_context("spawn")
_T = TypeVar("_T")

SPANS_ANALYSED = Counter(
    "llmtrace_analysis_spans", "Spans analysed after ingest (findings and score stored)."
)
SPANS_SHED = Counter(
    "llmtrace_analysis_spans_shed",
    "Spans stored without post-ingest analysis because the analysis queue was full.",
)
FAILURES = Counter(
    "llmtrace_analysis_failures",
    "Spans whose post-ingest analysis failed (stored without new findings), by reason: "
    "timeout, crash (the analysis process died), error, store.",
    ["reason"],
)
FINDINGS = Counter(
    "llmtrace_analysis_findings", "Findings stored by post-ingest analysis, by type.", ["type"]
)
BATCH_DURATION = Histogram(
    "llmtrace_analysis_batch_duration_seconds",
    "Time to analyse one batch of spans after ingest (conversion, analyzer, rows), in seconds.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
QUEUE_SPANS = Gauge("llmtrace_analysis_queue_spans", "Spans waiting for post-ingest analysis.")
PROCESS_STARTS = Counter(
    "llmtrace_analysis_process_starts",
    "Starts of the analysis process: one at core start, one after each crash or timeout.",
)


def _alive(pool: ProcessPoolExecutor) -> bool:
    """Whether the pool's process still runs (a dead one may not have broken the pool yet)."""
    processes = getattr(pool, "_processes", None) or {}
    return all(process.is_alive() for process in list(processes.values()))


async def _result_within(future: asyncio.Future[_T], timeout_s: float) -> _T:
    """The future's result, or TimeoutError after `timeout_s`; a future not awaited to the end
    (timed out, or the wait cancelled by a stop) is cancelled, so a later error of its killed
    process is nobody's to report.

    `asyncio.wait`, not `wait_for`: in Python 3.11 `wait_for` returns the result instead of
    raising when a cancellation lands as the result arrives, and a stop would then wait forever.
    """
    try:
        done, _ = await asyncio.wait({future}, timeout=timeout_s)
    finally:
        if not future.done():
            future.cancel()
    if not done:
        raise TimeoutError
    return future.result()


class AnalysisStartError(RuntimeError):
    """The analysis process could not start or load the analyzer."""


class AnalysisWorker:
    """The bounded queue of committed spans, the task that drains it and the analysis process."""

    def __init__(self, settings: SecurityAnalysisSettings, writer: StoreWriter) -> None:
        self._settings = settings
        self._writer = writer
        self._capacity = max(0, settings.queue_max_spans)
        self._max_bytes = max(0, settings.queue_max_bytes)
        self._batch = max(1, settings.batch_max_spans)
        self._timeout_s = max(0.001, settings.timeout_ms / 1000)
        # Spans with their serialized size: the queue is bounded in bytes too, since a span may
        # hold megabytes of content and ten thousand of them would not fit in memory.
        self._queue: deque[tuple[span_pb2.Span, int]] = deque()
        self._queue_bytes = 0
        self._ready = asyncio.Event()
        # One process: analysis gets one core at most, at a lower priority than ingest.
        self._pool: ProcessPoolExecutor | None = None
        self._pid: int | None = None
        self._started_at = -RESTART_MIN_INTERVAL_S
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._crashes_left = MAX_CRASHES_PER_BATCH
        self._timeouts_left = MAX_TIMEOUTS_PER_BATCH

    @property
    def enabled(self) -> bool:
        """`security_analysis.enabled`: when false nothing is queued or analysed."""
        return self._settings.enabled

    @property
    def pid(self) -> int | None:
        """The analysis process's pid; None when none runs (disabled, stopped, restarting)."""
        return self._pid

    async def start(self, reader: StoreReader | None = None) -> None:
        """Start the analysis process (classifier loaded) and the task that feeds it; given a
        reader, also queue again the recent spans that were never analysed.

        Raises `AnalysisStartError` when the process cannot start or load the analyzer.
        """
        if not self.enabled or self._tasks or self._closed:
            return
        await self._start_process()
        self._tasks.append(asyncio.create_task(self._run(), name="analysis-worker"))
        if reader is not None:
            self._tasks.append(asyncio.create_task(self._requeue(reader), name="analysis-requeue"))

    def offer(self, spans: Sequence[span_pb2.Span]) -> int:
        """Queue committed spans for analysis without waiting; returns how many were shed.

        The queue takes the messages over: their raw request and response bodies, which the
        analyzer does not read, are cleared. Ingest hands over copies of their own, made without
        the bodies (`llmtrace.rpc.ingest`): a span still inside its request's memory would keep
        the whole request alive while it waits here.
        """
        if not self.enabled or self._closed or not spans:
            return 0
        shed = 0
        for span in spans:
            if len(self._queue) >= self._capacity:
                shed += 1
                continue
            span.request.ClearField("body")
            span.response.ClearField("body")
            size = span.ByteSize()
            if self._queue_bytes + size > self._max_bytes and self._queue:
                shed += 1  # an empty queue takes one span however large: it is analysed alone
                continue
            self._queue.append((span, size))
            self._queue_bytes += size
        QUEUE_SPANS.set(len(self._queue))
        if self._queue:
            self._ready.set()
        if shed:
            SPANS_SHED.inc(shed)
        return shed

    async def stop(self) -> None:
        """Stop at once: queued spans are dropped (re-queued at the next start), the analysis
        process killed. Never waits for the analyzer."""
        if self._closed:
            return
        self._closed = True
        dropped = len(self._queue)
        self._queue.clear()
        self._queue_bytes = 0
        QUEUE_SPANS.set(0)
        for task in self._tasks:
            task.cancel()
        # The loop also ends on `_closed`: a cancellation that lands as an awaited result arrives
        # can be swallowed by the awaiting call (Python 3.11's `wait_for` does), and the task must
        # still end rather than wait for spans that will never come.
        self._ready.set()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:  # the process must be killed whatever a task died of
                _log.exception("analysis task failed", task=task.get_name())
        await self._kill_process()
        if dropped:
            _log.info("analysis queue dropped at shutdown", spans=dropped)

    async def _start_process(self) -> ProcessPoolExecutor:
        """A fresh analysis process, analyzer loaded; raises `AnalysisStartError`."""
        await self._kill_process()
        wait_s = self._started_at + RESTART_MIN_INTERVAL_S - time.monotonic()
        if wait_s > 0:
            await asyncio.sleep(wait_s)
        self._started_at = time.monotonic()
        PROCESS_STARTS.inc()
        pool = ProcessPoolExecutor(
            max_workers=1,
            mp_context=_mp,
            initializer=analysis_child.init,
            initargs=(self._settings, os.getpid()),
        )
        self._pool = pool
        loop = asyncio.get_running_loop()
        try:
            # Submitted from the event loop's thread, so the process is started by it: the thread
            # its PR_SET_PDEATHSIG watches lives as long as the core.
            ready = loop.run_in_executor(pool, analysis_child.ready)
            pid, error = await _result_within(ready, START_TIMEOUT_S)
        except asyncio.CancelledError:
            await self._kill_process()
            raise
        except Exception as exc:
            await self._kill_process()
            reason = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
            raise AnalysisStartError(f"the analysis process did not start: {reason}") from exc
        if error is not None:
            await self._kill_process()
            raise AnalysisStartError(f"the analysis process cannot load the security classifier: {error}")
        self._pid = pid
        _log.debug("analysis process started", pid=pid)
        return pool

    async def _kill_process(self) -> None:
        """Kill the analysis process, if any, and reap it (a few seconds at most)."""
        pool, self._pool, self._pid = self._pool, None, None
        if pool is None:
            return
        processes = list((getattr(pool, "_processes", None) or {}).values())
        for process in processes:
            with contextlib.suppress(OSError, ValueError):
                process.kill()
        pool.shutdown(wait=False, cancel_futures=True)

        def reap() -> None:
            for process in processes:
                with contextlib.suppress(OSError, ValueError, AssertionError):
                    process.join(5.0)

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.to_thread(reap), 6.0)

    async def _run(self) -> None:
        while not self._closed:
            await self._ready.wait()
            if not self._queue:
                self._ready.clear()
                continue
            batch = []
            for _ in range(min(self._batch, len(self._queue))):
                span, size = self._queue.popleft()
                self._queue_bytes -= size
                batch.append(span)
            QUEUE_SPANS.set(len(self._queue))
            self._crashes_left = MAX_CRASHES_PER_BATCH
            self._timeouts_left = MAX_TIMEOUTS_PER_BATCH
            try:
                await self._process(batch)
            except asyncio.CancelledError:
                raise
            except Exception:  # never let one batch end the worker
                _log.exception("analysis batch failed")
                FAILURES.labels("error").inc(len(batch))

    async def _submit(
        self, batch: list[span_pb2.Span]
    ) -> asyncio.Future[tuple[pa.Table, pa.Table | None, dict[str, int]]]:
        """Hand a batch to the analysis process, starting one first when none runs.

        A process that died while idle is found broken here, before the batch is handed over:
        the batch goes to a fresh process instead and is not a failure.
        """
        payloads = [span.SerializeToString() for span in batch]
        now_us = time.time_ns() // 1000
        loop = asyncio.get_running_loop()
        if self._pool is not None and not _alive(self._pool):
            _log.warning("the analysis process died while idle; starting another")
            await self._kill_process()
        for attempt in range(2):
            pool = self._pool or await self._start_process()
            try:
                return loop.run_in_executor(pool, analysis_child.analyse_serialized, payloads, now_us)
            except BrokenProcessPool:
                if attempt:
                    raise
                _log.warning("the analysis process died; starting another")
                await self._kill_process()
        raise AssertionError("unreachable")

    async def _process(self, batch: list[span_pb2.Span]) -> None:
        if self._closed:
            return  # stopping: the spans are queued again at the next start
        try:
            future = await self._submit(batch)
        except (AnalysisStartError, BrokenProcessPool) as exc:
            FAILURES.labels("crash").inc(len(batch))
            _log.error("no analysis process; spans stay stored unanalysed", spans=len(batch), error=str(exc))
            return
        started = time.perf_counter()
        try:
            scores, findings, by_type = await _result_within(future, self._timeout_s)
        except TimeoutError:
            # A running analysis cannot be interrupted but its process can: kill it rather than
            # let it finish work whose result is thrown away. The next batch starts another.
            await self._kill_process()
            # One slow span must not cost its batch-mates their analysis: retry in halves, a few
            # times (each try waits out the timeout).
            if self._timeouts_left > 0:
                self._timeouts_left -= 1
                if await self._split(batch):
                    return
            FAILURES.labels("timeout").inc(len(batch))
            _log.warning(
                "analysis timed out; spans stay stored unanalysed, the analysis process is restarted",
                spans=len(batch),
            )
            return
        except BrokenProcessPool:
            await self._kill_process()
            # Each crash costs a process start (a second or more): a batch on which every try
            # crashes (memory runs out whatever it holds) is given up after a bounded number.
            if self._crashes_left > 0:
                self._crashes_left -= 1
                if await self._split(batch):
                    return
            FAILURES.labels("crash").inc(len(batch))
            _log.warning("the analysis process died; spans stay stored unanalysed", spans=len(batch))
            return
        except Exception:
            if await self._split(batch):
                return
            FAILURES.labels("error").inc(len(batch))
            _log.exception("analysis failed; spans stay stored unanalysed", spans=len(batch))
            return
        BATCH_DURATION.observe(time.perf_counter() - started)
        try:
            await self._writer.write(AnalysisWrite(scores=scores, findings=findings))
        except (WriterClosedError, RuntimeError):
            FAILURES.labels("store").inc(len(batch))
            _log.warning("analysis results not stored", spans=len(batch))
            return
        SPANS_ANALYSED.inc(len(batch))
        for kind, count in by_type.items():
            FINDINGS.labels(kind).inc(count)

    async def _split(self, batch: list[span_pb2.Span]) -> bool:
        """Retry a failed batch in halves, so that one span that breaks analysis (a crash, an
        error, a timeout) costs only itself, or a small group: the others get analysed. False for
        a single span: it failed."""
        if len(batch) < 2:
            return False
        middle = len(batch) // 2
        await self._process(batch[:middle])
        await self._process(batch[middle:])
        return True

    async def _requeue(self, reader: StoreReader) -> None:
        """Queue recent spans that have no analysis score (acked, then the core stopped)."""
        since_us = (time.time_ns() // 1000) - REQUEUE_MAX_AGE_S * 1_000_000
        try:
            rows, found = await queries.unanalysed_spans(
                reader,
                since_us=since_us,
                source=SCORE_SOURCE,
                limit=self._capacity,
                max_bytes=self._max_bytes,
            )
            spans = await asyncio.to_thread(_spans_to_requeue, rows, found) if rows else []
        except asyncio.CancelledError:
            raise
        except Exception:
            _log.exception("cannot list unanalysed spans; they stay unanalysed")
            return
        if not spans:
            return
        shed = self.offer(spans)
        _log.info("unanalysed spans queued again", spans=len(spans) - shed, shed=shed)


def _spans_to_requeue(rows: list[Row], found: list[Row]) -> list[span_pb2.Span]:
    """Stored span rows as spans to analyse, with the findings they already have (not repeated)."""
    spans = [span_from_row(row) for row in rows]
    index = {(s.tenant, s.trace_id, s.span_id): s for s in spans}
    for f in found:
        span = index.get((f["tenant"], f["trace_id"], f["span_id"]))
        if span is not None:
            span.findings.add(type=f["type"], detector=f["detector"], location=f["location"])
    return spans
