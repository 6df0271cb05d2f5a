"""Post-ack analysis: every ingested span is analysed after its batch is committed and acked.

Ingest hands committed spans to `AnalysisWorker.offer`, which only appends them to a bounded
in-memory queue (`security_analysis.queue_max_spans`) and never waits: when the queue is full
the surplus is shed (stored, not analysed) and counted. One background task takes batches of up
to `batch_max_spans`, converts them to exchanges and runs the analyzer in a thread of its own
with a time limit (`timeout_ms`); the findings and the span's score go to the store through the
single writer, as rows (`finding_rows`, `span_scores` with source `analysis`), never UPDATEs.

Findings a span already carried (the shim's inline check) are kept and not repeated: a new
finding with the same (type, detector, location) as one the span has is dropped. Ids are
deterministic, so analysing a span twice (a replayed batch, a re-queue) adds nothing.

On start, spans ingested in the last day that have no analysis score (acked but not analysed
before a restart, or shed) are queued again. On stop the queue is dropped (those spans are
re-queued at the next start) and a running analysis is abandoned: stopping never waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

import pyarrow as pa
import structlog
from prometheus_client import Counter, Gauge, Histogram

from llmtrace.api.v1 import span_pb2
from llmtrace.config.schema import SecurityAnalysisSettings
from llmtrace.rpc.exchange_convert import exchange_from_span
from llmtrace.rpc.row_convert import span_from_row
from llmtrace.security.analyze import Analyzer
from llmtrace.security.tiers import Verdict
from llmtrace.store import queries
from llmtrace.store.reader import StoreReader
from llmtrace.store.row_schema import FINDING_ROW_SCHEMA, SCORE_ROW_SCHEMA
from llmtrace.store.writer import AnalysisWrite, StoreWriter, WriterClosedError

_log = structlog.get_logger("llmtrace.analysis")

#: `span_scores.source` of the scores this worker writes.
SCORE_SOURCE: Final = "analysis"
#: How far back the start-up re-queue looks for unanalysed spans.
REQUEUE_MAX_AGE_S: Final = 86_400

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
    "timeout, error, store.",
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

_FINDING_KEY = tuple[str, str, str]  # type, detector, location


def analysis_finding_id(tenant: str, trace_id: bytes, span_id: bytes, key: _FINDING_KEY) -> str:
    """Deterministic id of an analysis finding: one per (span, type, detector, location)."""
    parts = [b"analysis", tenant.encode(), trace_id, span_id, *(k.encode() for k in key)]
    return hashlib.sha256(b"\x00".join(parts)).hexdigest()[:32]


def build_analysis_rows(
    spans: Sequence[span_pb2.Span], verdicts: Sequence[Verdict], now_us: int
) -> tuple[AnalysisWrite, dict[str, int]]:
    """Score rows for every span and finding rows for what is new; also new findings by type."""
    scols: dict[str, list[Any]] = {name: [] for name in SCORE_ROW_SCHEMA.names}
    fcols: dict[str, list[Any]] = {name: [] for name in FINDING_ROW_SCHEMA.names}
    by_type: dict[str, int] = {}
    for span, verdict in zip(spans, verdicts, strict=True):
        scols["tenant"].append(span.tenant)
        scols["trace_id"].append(span.trace_id)
        scols["span_id"].append(span.span_id)
        scols["source"].append(SCORE_SOURCE)
        scols["score"].append(verdict.score)
        scols["create_time"].append(now_us)
        seen: set[_FINDING_KEY] = {(f.type, f.detector, f.location) for f in span.findings}
        for finding in verdict.findings:  # most severe first: the kept one of a repeat is the worst
            key = (finding.type, finding.detector, finding.location)
            if key in seen:
                continue
            seen.add(key)
            by_type[finding.type] = by_type.get(finding.type, 0) + 1
            fcols["tenant"].append(span.tenant)
            fcols["id"].append(analysis_finding_id(span.tenant, span.trace_id, span.span_id, key))
            fcols["trace_id"].append(span.trace_id)
            fcols["span_id"].append(span.span_id)
            fcols["type"].append(finding.type)
            fcols["severity"].append(finding.severity.rank)
            fcols["confidence"].append(finding.confidence)
            fcols["detector"].append(finding.detector)
            fcols["location"].append(finding.location)
            fcols["description"].append(finding.description)
            fcols["excerpt"].append(finding.excerpt)
            fcols["metadata"].append(json.dumps({"source": SCORE_SOURCE}))
            fcols["create_time"].append(now_us)
    scores = pa.Table.from_arrays(
        [pa.array(scols[f.name], type=f.type) for f in SCORE_ROW_SCHEMA], schema=SCORE_ROW_SCHEMA
    )
    findings = None
    if fcols["id"]:
        findings = pa.Table.from_arrays(
            [pa.array(fcols[f.name], type=f.type) for f in FINDING_ROW_SCHEMA], schema=FINDING_ROW_SCHEMA
        )
    return AnalysisWrite(scores=scores, findings=findings), by_type


def analyse_spans(analyzer: Analyzer, spans: Sequence[span_pb2.Span]) -> tuple[AnalysisWrite, dict[str, int]]:
    """The whole CPU part of one batch: exchanges, verdicts, rows (run in the analysis thread)."""
    verdicts = analyzer.analyze_batch([exchange_from_span(span) for span in spans])
    return build_analysis_rows(spans, verdicts, time.time_ns() // 1000)


class AnalysisWorker:
    """The bounded queue of committed spans and the task that analyses them."""

    def __init__(
        self, settings: SecurityAnalysisSettings, writer: StoreWriter, analyzer: Analyzer | None = None
    ) -> None:
        self._settings = settings
        self._writer = writer
        self._analyzer = analyzer or Analyzer.from_settings(settings)
        self._capacity = max(0, settings.queue_max_spans)
        self._batch = max(1, settings.batch_max_spans)
        self._timeout_s = max(0.001, settings.timeout_ms / 1000)
        self._queue: deque[span_pb2.Span] = deque()
        self._ready = asyncio.Event()
        # One thread: the analyzer is pure Python and holds the GIL; more threads would only take
        # it from the event loop and the ingest threads.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="analysis")
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    @property
    def enabled(self) -> bool:
        """`security_analysis.enabled`: when false nothing is queued or analysed."""
        return self._settings.enabled

    def start(self, reader: StoreReader | None = None) -> None:
        """Start the analysis task (and, given a reader, the re-queue of unanalysed spans)."""
        if not self.enabled or self._tasks:
            return
        self._tasks.append(asyncio.create_task(self._run(), name="analysis-worker"))
        if reader is not None:
            self._tasks.append(asyncio.create_task(self._requeue(reader), name="analysis-requeue"))

    def offer(self, spans: Sequence[span_pb2.Span]) -> int:
        """Queue committed spans for analysis without waiting; returns how many were shed.

        The queue takes the messages over: their raw request and response bodies, which the
        analyzer does not read, are cleared so that a full queue holds content only once.
        """
        if not self.enabled or self._closed or not spans:
            return 0
        room = self._capacity - len(self._queue)
        taken = spans if room >= len(spans) else spans[: max(0, room)]
        shed = len(spans) - len(taken)
        if taken:
            for span in taken:
                span.request.ClearField("body")
                span.response.ClearField("body")
            self._queue.extend(taken)
            QUEUE_SPANS.set(len(self._queue))
            self._ready.set()
        if shed:
            SPANS_SHED.inc(shed)
        return shed

    async def stop(self) -> None:
        """Stop at once: queued spans are dropped (re-queued at the next start), a running analysis
        abandoned. Never waits for the analyzer."""
        if self._closed:
            return
        self._closed = True
        dropped = len(self._queue)
        self._queue.clear()
        QUEUE_SPANS.set(0)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._pool.shutdown(wait=False, cancel_futures=True)
        if dropped:
            _log.info("analysis queue dropped at shutdown", spans=dropped)

    async def _run(self) -> None:
        while True:
            await self._ready.wait()
            if not self._queue:
                self._ready.clear()
                continue
            count = min(self._batch, len(self._queue))
            batch = [self._queue.popleft() for _ in range(count)]
            QUEUE_SPANS.set(len(self._queue))
            try:
                await self._process(batch)
            except asyncio.CancelledError:
                raise
            except Exception:  # never let one batch end the worker
                _log.exception("analysis batch failed")
                FAILURES.labels("error").inc(len(batch))

    async def _process(self, batch: list[span_pb2.Span]) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        future = loop.run_in_executor(self._pool, analyse_spans, self._analyzer, batch)
        try:
            rows, by_type = await asyncio.wait_for(asyncio.shield(future), self._timeout_s)
        except TimeoutError:
            FAILURES.labels("timeout").inc(len(batch))
            _log.warning("analysis timed out; spans stay stored unanalysed", spans=len(batch))
            # The thread cannot be interrupted: let it finish before the next batch so that
            # analysis never uses more than its one thread.
            with contextlib.suppress(Exception):
                await future
            return
        except Exception:
            FAILURES.labels("error").inc(len(batch))
            _log.exception("analysis failed; spans stay stored unanalysed", spans=len(batch))
            return
        BATCH_DURATION.observe(time.perf_counter() - started)
        try:
            await self._writer.write(rows)
        except (WriterClosedError, RuntimeError):
            FAILURES.labels("store").inc(len(batch))
            _log.warning("analysis results not stored", spans=len(batch))
            return
        SPANS_ANALYSED.inc(len(batch))
        for kind, count in by_type.items():
            FINDINGS.labels(kind).inc(count)

    async def _requeue(self, reader: StoreReader) -> None:
        """Queue recent spans that have no analysis score (acked, then the core stopped)."""
        since_us = (time.time_ns() // 1000) - REQUEUE_MAX_AGE_S * 1_000_000
        try:
            rows, found = await queries.unanalysed_spans(
                reader, since_us=since_us, source=SCORE_SOURCE, limit=self._capacity
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            _log.exception("cannot list unanalysed spans; they stay unanalysed")
            return
        if not rows:
            return

        def convert() -> list[span_pb2.Span]:
            spans = [span_from_row(row) for row in rows]
            index = {(s.tenant, s.trace_id, s.span_id): s for s in spans}
            for f in found:
                span = index.get((f["tenant"], f["trace_id"], f["span_id"]))
                if span is not None:
                    span.findings.add(type=f["type"], detector=f["detector"], location=f["location"])
            return spans

        spans = await asyncio.to_thread(convert)
        shed = self.offer(spans)
        _log.info("unanalysed spans queued again", spans=len(spans) - shed, shed=shed)
