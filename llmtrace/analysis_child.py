"""The analysis process: what runs in the core's child process for post-ack analysis.

`AnalysisWorker` (llmtrace/analysis_worker.py) starts one child process (multiprocessing "spawn")
through a `ProcessPoolExecutor` with `init` as its initializer: the child asks to die with the
core (PR_SET_PDEATHSIG), lowers its CPU priority (`NICENESS`), ignores SIGINT (a terminal's Ctrl-C
is the core's to handle) and builds the analyzer once, classifier loaded. Each batch arrives as
serialised spans and leaves as Arrow tables (score rows, finding rows), so the core's interpreter
only serialises and unpickles: conversion, the detector tiers, the classifier and the row building
all run here, on the child's own interpreter lock.

This module must stay light: it is what the child imports (no DuckDB, gRPC or metrics).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import signal
from collections.abc import Sequence
from typing import Any, Final

import pyarrow as pa

from llmtrace.api.v1 import span_pb2
from llmtrace.config.schema import SecurityAnalysisSettings
from llmtrace.rpc.exchange_convert import exchange_from_span
from llmtrace.security.analyze import Analyzer
from llmtrace.security.tiers import Verdict
from llmtrace.store.row_schema import FINDING_ROW_SCHEMA, SCORE_ROW_SCHEMA

#: `span_scores.source` of the scores post-ack analysis writes.
SCORE_SOURCE: Final = "analysis"
#: Added to the child's nice value: on a busy machine the kernel gives ingest the CPU first.
NICENESS: Final = 10
_PR_SET_PDEATHSIG: Final = 1

_FINDING_KEY = tuple[str, str, str]  # type, detector, location

#: The child's analyzer, built by `init`; the error text when it could not be built.
_analyzer: Analyzer | None = None
_init_error: str | None = None


def analysis_finding_id(tenant: str, trace_id: bytes, span_id: bytes, key: _FINDING_KEY) -> str:
    """Deterministic id of an analysis finding: one per (span, type, detector, location)."""
    parts = [b"analysis", tenant.encode(), trace_id, span_id, *(k.encode() for k in key)]
    return hashlib.sha256(b"\x00".join(parts)).hexdigest()[:32]


def build_analysis_rows(
    spans: Sequence[span_pb2.Span], verdicts: Sequence[Verdict], now_us: int
) -> tuple[pa.Table, pa.Table | None, dict[str, int]]:
    """Score rows for every span, finding rows for what is new (None: none), new findings by type."""
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
    return scores, findings, by_type


def analyse_spans(
    analyzer: Analyzer, spans: Sequence[span_pb2.Span], now_us: int
) -> tuple[pa.Table, pa.Table | None, dict[str, int]]:
    """The whole CPU part of one batch: exchanges, verdicts, rows."""
    verdicts = analyzer.analyze_batch([exchange_from_span(span) for span in spans])
    return build_analysis_rows(spans, verdicts, now_us)


# --------------------------------------------------------------------------- in the child


def init(settings: SecurityAnalysisSettings, parent_pid: int) -> None:
    """The child's initializer: die with the core, step back on the CPU, load the analyzer once.

    Never raises (a raising initializer only breaks the pool, its reason lost): a failure to
    build the analyzer is kept and reported by `ready`, which the core calls first.
    """
    global _analyzer, _init_error  # noqa: PLW0603 - one analyzer per process, by design
    die_with_parent()
    if os.getppid() != parent_pid:  # the core died before prctl took effect
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.nice(NICENESS)
    # SCHED_IDLE (Linux): the kernel runs this process only on CPU nobody else wants. Niceness
    # alone is not enough: at nice +10 it still took a third of a core from a saturated proxy on
    # a 2-core machine. When the machine is busy, analysis falls behind and sheds, by design.
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    try:
        _analyzer = Analyzer.load(settings.operating_point, settings.model_path)
    except Exception as exc:  # reported by `ready`, the core refuses to start
        _init_error = f"{type(exc).__name__}: {exc}"


def die_with_parent() -> None:
    # Linux only: the kernel kills this process when the core (the thread that started it, the
    # event loop's) ends, however it ends. Elsewhere a killed core can leave it behind until its
    # next call fails.
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def ready() -> tuple[int, str | None]:
    """The child's pid, and why its analyzer could not be built (None: it is loaded)."""
    if _analyzer is None and _init_error is None:
        return os.getpid(), "the analysis process was not initialised"
    return os.getpid(), _init_error


def analyse_serialized(
    payloads: Sequence[bytes], now_us: int
) -> tuple[pa.Table, pa.Table | None, dict[str, int]]:
    """Analyse a batch of serialised spans: score rows, finding rows, new findings by type."""
    if _analyzer is None:
        raise RuntimeError(_init_error or "the analysis process was not initialised")
    spans = [span_pb2.Span.FromString(payload) for payload in payloads]
    return analyse_spans(_analyzer, spans, now_us)
