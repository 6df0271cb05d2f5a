"""Processes of their own for `Analyze` calls, so that they never take the core's interpreter lock.

The analyzer is Python-heavy (normalisation, regexes, featurisation): in the core's threads a few
concurrent `Analyze` calls on long texts held the interpreter lock from the ingest thread and the
event loop (measured: 16 callers with 64 KB texts took ingest from 5,300 to 1,400 spans/s, its
p50 from 17 to 69 ms; tools/bench/analyze_load.py). Here each call is serialised, analysed in a
child process ("spawn", `security_analysis.analyze_processes` of them) and its serialised answer
comes back: the core's interpreter only copies bytes. Each process has a single-worker
`ProcessPoolExecutor` of its own, and a call goes to the one holding the fewest calls.

The processes start on the first call, or when the core starts if the shim's inline enforcement
will call the core for every request (`enforcement.depth: full`), and then stay. They ask for
normal CPU priority (the post-ack analysis process steps back; an inline verdict must not: a
core in the background hands down its idle class, which only CAP_SYS_NICE may leave; a warning
says so), ignore SIGINT and die with the core (PR_SET_PDEATHSIG). A process that dies (killed,
out of memory) fails only the calls it held, with `AnalyzeUnavailableError`, and is replaced
when the next call comes to it; one found dead while idle is replaced before a call reaches it.

The functions under "in the child" run in the child: this module imports no gRPC or DuckDB.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import signal
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Final

import structlog

from llmtrace import cpu_priority
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


class _Slot:
    """One Analyze process: its single-worker pool once started, and the calls it holds.

    One pool per process, not one pool of N: a `ProcessPoolExecutor` that loses one process
    fails every call in flight in all of them and stops the others."""

    __slots__ = ("pending", "pool", "starting")

    def __init__(self) -> None:
        self.pool: ProcessPoolExecutor | None = None
        self.starting: asyncio.Future[ProcessPoolExecutor] | None = None
        self.pending = 0


class AnalyzePool:
    """The core's `Analyze` processes: started together, each restarted after its death, killed
    at stop. A call goes to the process holding the fewest calls."""

    def __init__(self, settings: SecurityAnalysisSettings) -> None:
        self._settings = settings
        self._slots = [_Slot() for _ in range(settings.analyze_processes)]
        self._begun = False
        self._stopped = False

    @property
    def pids(self) -> list[int]:
        """The pids of the running processes (none before the first call)."""
        pids: list[int] = []
        for slot in self._slots:
            processes = (getattr(slot.pool, "_processes", None) or {}) if slot.pool is not None else {}
            pids += [process.pid for process in list(processes.values()) if process.pid is not None]
        return sorted(pids)

    async def start(self) -> None:
        """Start every process now rather than on the first call; raises `AnalyzeUnavailableError`."""
        await asyncio.gather(*(self._ready(slot) for slot in self._slots))

    async def analyze(self, request: bytes, operating_point: str) -> bytes:
        """A serialised `AnalyzeRequest` in, the serialised `AnalyzeResponse` out."""
        slot = min(self._slots, key=lambda s: s.pending)
        slot.pending += 1
        # Counted until its process is done with it, not until the caller gives up: a call whose
        # caller went away (the shim's inline check waits 200 ms) still holds its process, and
        # the next call should go to another.
        counted = True
        try:
            pool = await self._ready(slot)
            loop = asyncio.get_running_loop()
            # Submitted from the event loop's thread, which then starts the process if it has
            # not yet: the thread its PR_SET_PDEATHSIG watches lives as long as the core.
            work = pool.submit(analyze_serialized, request, operating_point)
            counted = False
            work.add_done_callback(lambda _: _release_from(loop, slot))
            return await asyncio.wrap_future(work)
        except BrokenProcessPool as exc:
            _log.error("an Analyze process died; the next call starts a new one")
            await self._discard(slot, pool)
            raise AnalyzeUnavailableError("the Analyze process died while analysing; retry") from exc
        except RuntimeError as exc:
            if self._stopped:  # submit refused: the pool was shut down by `stop`
                raise AnalyzeUnavailableError("the core is stopping") from exc
            raise
        finally:
            if counted:
                slot.pending -= 1

    async def stop(self) -> None:
        """Kill the processes (an Analyze call still running fails); idempotent."""
        self._stopped = True
        pools: list[ProcessPoolExecutor] = []
        for slot in self._slots:
            if slot.starting is not None:
                slot.starting.cancel()  # `_start` kills what it started
            if slot.pool is not None:
                pools.append(slot.pool)
                slot.pool = None
        for pool in pools:
            await asyncio.to_thread(_kill, pool)

    async def _ready(self, slot: _Slot) -> ProcessPoolExecutor:
        pool = slot.pool
        if pool is not None:
            if _alive(pool):
                return pool
            # Died while idle (killed, out of memory): replaced before this call is handed over,
            # which it would otherwise fail although the process held nothing of it.
            _log.error("an Analyze process died while idle; starting a new one")
            await self._discard(slot, pool)
        if self._stopped:
            raise AnalyzeUnavailableError("the core is stopping")
        # The first start starts them all, so that none loads its classifier under load later.
        for other in self._slots if not self._begun else (slot,):
            self._begin_start(other)
        self._begun = True
        assert slot.starting is not None
        # Shielded: a caller whose deadline is shorter than a start (the shim's inline check
        # allows 200 ms) must not cancel it for the callers after it.
        return await asyncio.shield(slot.starting)

    def _begin_start(self, slot: _Slot) -> None:
        if slot.pool is None and slot.starting is None:
            starting = slot.starting = asyncio.ensure_future(self._start())
            starting.add_done_callback(lambda task: self._started(slot, task))

    def _started(self, slot: _Slot, task: asyncio.Future[ProcessPoolExecutor]) -> None:
        slot.starting = None
        if task.cancelled() or task.exception() is not None:
            return  # the next call tries again
        pool = task.result()
        if self._stopped:
            pool.shutdown(wait=False, cancel_futures=True)
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                with contextlib.suppress(OSError, ValueError):
                    process.kill()  # reaped by the pool's own thread; no join on the event loop
        else:
            slot.pool = pool

    async def _discard(self, slot: _Slot, pool: ProcessPoolExecutor) -> None:
        if slot.pool is pool:
            slot.pool = None
            await asyncio.to_thread(_kill, pool)

    async def _start(self) -> ProcessPoolExecutor:
        pool = ProcessPoolExecutor(
            max_workers=1,
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
        _log.debug("Analyze process started")
        return pool


def _release_from(loop: asyncio.AbstractEventLoop, slot: _Slot) -> None:
    """Uncount a call whose process is done with it, from the pool's thread."""

    def release() -> None:
        slot.pending -= 1

    with contextlib.suppress(RuntimeError):  # the loop closed: the core has stopped
        loop.call_soon_threadsafe(release)


def _alive(pool: ProcessPoolExecutor) -> bool:
    """Whether the pool's process still runs (a dead one may not have broken the pool yet).

    Its sentinel, readable once the process has exited whoever reaps it, not `is_alive()`: that
    polls waitpid, which fails with ECHILD (taken for "not started yet", so "alive") once the
    pool's own thread has reaped the process.
    """
    if getattr(pool, "_broken", False):
        return False
    try:
        sentinels = [process.sentinel for process in list((getattr(pool, "_processes", None) or {}).values())]
    except ValueError:  # a process object already closed
        return False
    return not multiprocessing.connection.wait(sentinels, timeout=0)


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
    # verdict must not wait for idle CPU. Leaving it needs CAP_SYS_NICE or an RLIMIT_NICE of 20.
    with contextlib.suppress(OSError, AttributeError):
        if os.sched_getscheduler(0) == os.SCHED_IDLE and not cpu_priority.to_foreground():
            _init_warning = (
                "the Analyze process runs at idle CPU priority, inherited from a core in the "
                "background: the kernel refused normal priority (needs CAP_SYS_NICE or an "
                "RLIMIT_NICE of 20); its answers wait for CPU nobody else wants"
            )
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
