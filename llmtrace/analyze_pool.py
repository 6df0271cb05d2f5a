"""Processes of their own for `Analyze` calls, so that they never take the core's interpreter lock.

The analyzer is Python-heavy (normalisation, regexes, featurisation): in the core's threads a few
concurrent `Analyze` calls on long texts held the interpreter lock from the ingest thread and the
event loop (measured: 16 callers with 64 KB texts took ingest from 5,300 to 1,400 spans/s, its
p50 from 17 to 69 ms; tools/bench/analyze_load.py). Here each call is serialised, analysed in a
child process ("spawn", `security_analysis.analyze_processes` of them) and its serialised answer
comes back: the core's interpreter only copies bytes.

The processes start on the first call, or when the core starts if the shim's inline enforcement
will call the core for every request (`enforcement.depth: full`), and then stay. They run at
normal CPU priority (the post-ack analysis process steps back; an inline verdict must not),
ignore SIGINT and die with the core (PR_SET_PDEATHSIG). A process that dies (killed, out of
memory) fails the calls it held with `AnalyzeUnavailableError`; the next call starts fresh ones.

The functions under "in the child" run in the child: this module imports no gRPC or DuckDB.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Final

import structlog

from llmtrace.api.v1 import analysis_service_pb2
from llmtrace.config.schema import SecurityAnalysisSettings
from llmtrace.rpc.exchange_convert import exchange_from_parts, findings_to_pb
from llmtrace.security.analyze import Analyzer
from llmtrace.security.classifier.model import ModelError

_log = structlog.get_logger("llmtrace.analyze")

#: How long a fresh process may take to import and load the classifier.
START_TIMEOUT_S: Final = 60.0
_mp = multiprocessing.get_context("spawn")


class AnalyzeUnavailableError(RuntimeError):
    """No process can answer: it would not start, or it died holding the call."""


class AnalyzePool:
    """The core's `Analyze` processes: started once, restarted after a crash, killed at stop."""

    def __init__(self, settings: SecurityAnalysisSettings) -> None:
        self._settings = settings
        self._pool: ProcessPoolExecutor | None = None
        self._starting: asyncio.Future[ProcessPoolExecutor] | None = None
        self._stopped = False

    @property
    def pids(self) -> list[int]:
        """The pids of the running processes (none before the first call)."""
        pool = self._pool
        processes = (getattr(pool, "_processes", None) or {}) if pool is not None else {}
        return sorted(process.pid for process in list(processes.values()) if process.pid is not None)

    async def start(self) -> None:
        """Start the processes now rather than on the first call; raises `AnalyzeUnavailableError`."""
        await self._ready()

    async def analyze(self, request: bytes, operating_point: str) -> bytes:
        """A serialised `AnalyzeRequest` in, the serialised `AnalyzeResponse` out."""
        pool = await self._ready()
        loop = asyncio.get_running_loop()
        try:
            # Submitted from the event loop's thread, which then starts any new process: the
            # thread its PR_SET_PDEATHSIG watches lives as long as the core.
            return await loop.run_in_executor(pool, analyze_serialized, request, operating_point)
        except BrokenProcessPool as exc:
            _log.error("an Analyze process died; the next call starts a new one")
            if self._pool is pool:
                self._pool = None
                _kill(pool)
            raise AnalyzeUnavailableError("the Analyze process died while analysing; retry") from exc
        except RuntimeError as exc:
            if "shutdown" in str(exc):  # submit refused: the core is stopping
                raise AnalyzeUnavailableError("the core is stopping") from exc
            raise

    async def stop(self) -> None:
        """Kill the processes (an Analyze call still running fails); idempotent."""
        self._stopped = True
        if self._starting is not None:
            self._starting.cancel()  # `_start` kills what it started
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(_kill, pool)

    async def _ready(self) -> ProcessPoolExecutor:
        pool = self._pool
        if pool is not None:
            return pool
        if self._stopped:
            raise AnalyzeUnavailableError("the core is stopping")
        if self._starting is None:
            # A task of its own, shielded: a caller whose deadline is shorter than a start (the
            # shim's inline check allows 200 ms) must not cancel it for the callers after it.
            self._starting = asyncio.ensure_future(self._start())
            self._starting.add_done_callback(self._started)
        return await asyncio.shield(self._starting)

    def _started(self, task: asyncio.Future[ProcessPoolExecutor]) -> None:
        self._starting = None
        if task.cancelled() or task.exception() is not None:
            return  # the next call tries again
        if self._stopped:
            _kill(task.result())
        else:
            self._pool = task.result()

    async def _start(self) -> ProcessPoolExecutor:
        pool = ProcessPoolExecutor(
            max_workers=self._settings.analyze_processes,
            mp_context=_mp,
            initializer=init,
            initargs=(self._settings, os.getpid()),
        )
        loop = asyncio.get_running_loop()
        try:
            ready = loop.run_in_executor(pool, check_ready)
            error, warning = await asyncio.wait_for(ready, START_TIMEOUT_S)
        except BaseException as exc:
            await asyncio.to_thread(_kill, pool)
            if isinstance(exc, Exception):
                reason = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
                raise AnalyzeUnavailableError(f"the Analyze process did not start: {reason}") from exc
            raise
        if error is not None:
            await asyncio.to_thread(_kill, pool)
            raise AnalyzeUnavailableError(f"the Analyze process cannot load its analyzer: {error}")
        if warning is not None:
            _log.warning(warning)
        _log.debug("Analyze processes started", processes=self._settings.analyze_processes)
        return pool


def _kill(pool: ProcessPoolExecutor) -> None:
    """Kill the pool's processes and reap them (a few seconds at most)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for process in processes:
        with contextlib.suppress(OSError, ValueError):
            process.kill()
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        with contextlib.suppress(OSError, ValueError, AssertionError):
            process.join(5.0)


# --------------------------------------------------------------------------- in the child

#: The child's analyzer, built by `init`; the error text when it could not be built.
_analyzer: Analyzer | None = None
_init_error: str | None = None
_init_warning: str | None = None


def init(settings: SecurityAnalysisSettings, parent_pid: int) -> None:
    """The child's initializer: die with the core, leave Ctrl-C to it, build the analyzer once.

    Never raises (a raising initializer only breaks the pool, its reason lost): a failure is kept
    and reported by `check_ready`, which the core calls first.
    """
    global _analyzer, _init_error, _init_warning  # noqa: PLW0603 - one analyzer per process, by design
    from llmtrace.analysis_child import die_with_parent  # noqa: PLC0415 - the child's import only

    die_with_parent()
    if os.getppid() != parent_pid:  # the core died before prctl took effect
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A core in the background (`core_priority`) hands its idle scheduling class down; an inline
    # verdict must not wait for idle CPU. Allowed unprivileged since Linux 2.6.39; else kept.
    with contextlib.suppress(OSError, AttributeError):
        if os.sched_getscheduler(0) == os.SCHED_IDLE:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    try:
        _analyzer = Analyzer.load(settings.operating_point, settings.model_path)
    except ModelError as exc:
        if settings.enabled:
            _init_error = f"cannot load the security classifier: {exc}"
        else:
            # As documented: without post-ingest analysis, Analyze runs the regex and tool-call
            # tiers when the classifier cannot be loaded.
            _analyzer = Analyzer(operating_point=settings.operating_point)
            _init_warning = f"security classifier not loaded; Analyze runs without it: {exc}"
    except Exception as exc:
        _init_error = f"{type(exc).__name__}: {exc}"


def check_ready() -> tuple[str | None, str | None]:
    """Why this process cannot analyse (None: it can), and a warning for the core's log."""
    if _analyzer is None and _init_error is None:
        return "the Analyze process was not initialised", None
    return _init_error, _init_warning


def analyze_serialized(request: bytes, operating_point: str) -> bytes:
    """Analyse one serialised `AnalyzeRequest` (already validated by the core) at `operating_point`."""
    if _analyzer is None:
        raise RuntimeError(_init_error or "the Analyze process was not initialised")
    parsed = analysis_service_pb2.AnalyzeRequest.FromString(request)
    exchange = exchange_from_parts(
        text=parsed.text,
        request=parsed.request if parsed.HasField("request") else None,
        response=parsed.response if parsed.HasField("response") else None,
    )
    verdict = _analyzer.analyze(exchange, operating_point)
    answer = analysis_service_pb2.AnalyzeResponse(
        findings=findings_to_pb(verdict.findings), score=verdict.score, flagged=verdict.flagged
    )
    return answer.SerializeToString()
