"""`llmtrace serve` and `llmtrace shim`: the process tree and its supervision.

`serve` starts the core first (a child process, the only one that opens the DuckDB file), waits
until it serves, then starts the shim workers on one shared listening socket. A crashed core or
worker is restarted. On SIGTERM or SIGINT the workers are stopped first (they drain and flush
their spans to the core) and the core last. Every child asks the kernel for SIGTERM when the
supervisor dies (PR_SET_PDEATHSIG), so a killed supervisor never leaves a core holding the
database lock. `shim` with one worker and no core runs the worker in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import multiprocessing
import multiprocessing.connection
import os
import queue
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Final

import structlog

from llmtrace.config.redact import redact_text
from llmtrace.config.schema import Settings
from llmtrace.logs import configure_logging

_log = structlog.get_logger("llmtrace.supervisor")
_PR_SET_PDEATHSIG: Final = 1
_CORE_START_TIMEOUT_S: Final = 120.0
_RESTART_BACKOFF_S: Final = (0.5, 1.0, 2.0, 5.0)
_mp = multiprocessing.get_context("spawn")


def _die_with_parent() -> None:
    # Linux only; elsewhere a killed supervisor can orphan its children (documented).
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    # Our own process group: a terminal's Ctrl-C reaches the supervisor only, which then stops
    # the children in order (workers first, core last).
    with contextlib.suppress(OSError):
        os.setpgrp()


def _orphaned(parent_pid: int) -> bool:
    # The supervisor died before prctl took effect: we were re-parented (to init or a
    # subreaper). Compared with the pid it had, not with 1: it may itself be pid 1 in a container.
    return os.getppid() != parent_pid


#: The core's `oom_score_adj`: under memory pressure the kernel ends the core, which comes back
#: with everything it acknowledged, before the proxy, which holds clients and unshipped spans.
CORE_OOM_SCORE_ADJ: Final = 500


def _first_to_go_when_memory_runs_out() -> None:
    # Raising one's own score needs no privilege. The likeliest cause is a tenant's SQL query
    # (docs/sql.md), which runs in the core.
    with contextlib.suppress(OSError):
        Path("/proc/self/oom_score_adj").write_text(f"{CORE_OOM_SCORE_ADJ}\n")


#: Where prometheus_client's multiprocess mode keeps the workers' values (`workers` > 1).
_PROMETHEUS_DIR_VAR: Final = "PROMETHEUS_MULTIPROC_DIR"


def _core_child(settings: Settings, ready_file: str, parent_pid: int) -> None:
    _die_with_parent()
    if _orphaned(parent_pid):
        sys.exit(1)
    _first_to_go_when_memory_runs_out()
    configure_logging(settings.logging.level, settings.logging.format)
    from llmtrace.server import run_core  # noqa: PLC0415 - heavy import, child only

    sys.exit(run_core(settings, ready_file=ready_file, background=core_in_background(settings)))


def core_in_background(settings: Settings) -> bool:
    """Whether `serve` runs the core on CPU the proxy leaves (`core_priority: background`).

    Not when inline enforcement asks the core (`enforcement.depth: full`): the core is then on
    the clients' path, and in the background a busy machine would time its answers out, so that
    requests would be checked by the regex tiers alone (the proxy's fallback), without the
    classifier, exactly when the proxy is loaded.
    """
    if settings.core_priority != "background":
        return False
    from shim.enforcement import asks_core  # noqa: PLC0415 - the shim's policy, read once here

    return not asks_core(settings.enforcement)


def _shim_child(settings: Settings, sock: socket.socket, core_addr: str, ready: Any, parent_pid: int) -> None:
    _die_with_parent()
    if _orphaned(parent_pid):
        sys.exit(1)
    configure_logging(settings.logging.level, settings.logging.format)
    sys.exit(run_worker(settings, sock, core_addr=core_addr, on_ready=lambda _addr: ready.put(os.getpid())))


def run_worker(settings: Settings, sock: socket.socket, *, core_addr: str, on_ready: Any = None) -> int:
    """Run one shim worker in this process until SIGTERM/SIGINT."""
    os.umask(0o077)  # spool and dead-letter files hold prompts
    from shim.server import serve_worker  # noqa: PLC0415 - heavy import

    with asyncio.Runner(loop_factory=_event_loop_factory()) as runner:
        return runner.run(serve_worker(settings, sock, core_addr=core_addr, on_ready=on_ready))


def _event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (Sanic's own choice on Linux), else asyncio's loop.

    The worker is event-loop-bound; uvloop's faster socket I/O is measured in docs/benchmarks.md.
    """
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:
        return None
    return uvloop.new_event_loop


@dataclass(slots=True)
class _Child:
    name: str
    process: BaseProcess
    restarts: int = 0


class Supervisor:
    """Starts, restarts and stops the core and the shim workers."""

    def __init__(self, settings: Settings, *, with_core: bool, core_addr: str | None, ready_file: str | None):
        self._settings = settings
        self._with_core = with_core
        self._core_addr = core_addr or settings.core_addr or settings.grpc.listen_addr
        self._ready_file = ready_file
        self._tmp = Path(tempfile.mkdtemp(prefix="llmtrace-"))
        self._core: _Child | None = None
        self._core_bound: dict[str, Any] = {}
        self._workers: list[_Child] = []
        self._sock: socket.socket | None = None
        self._ready: Any = _mp.Queue()
        self._stopping = False
        self._signal = ""

    # -- core --------------------------------------------------------------------------------

    def _start_core(self) -> None:
        ready = self._tmp / "core-ready.json"
        ready.unlink(missing_ok=True)
        settings = self._settings
        if self._core_bound:  # a restart keeps the addresses the workers already use
            settings = replace(settings, grpc=replace(settings.grpc, listen_addr=self._core_bound["grpc"]))
        process = _mp.Process(
            target=_core_child, args=(settings, str(ready), os.getpid()), name="llmtrace-core"
        )
        # The workers' shared metrics directory is theirs: a core restarted after it was set
        # would write its own metrics there, and the proxy's /metrics would show them.
        multiproc_dir = os.environ.pop(_PROMETHEUS_DIR_VAR, None)
        try:
            process.start()
        finally:
            if multiproc_dir is not None:
                os.environ[_PROMETHEUS_DIR_VAR] = multiproc_dir
        if self._core is None:
            self._core = _Child("core", process)
        else:
            self._core.process = process
        deadline = time.monotonic() + _CORE_START_TIMEOUT_S
        while not ready.exists():
            if self._stopping:
                raise _StopRequested
            if not process.is_alive():
                raise SupervisorError(f"the core exited during start-up (exit code {process.exitcode})")
            if time.monotonic() > deadline:
                process.terminate()
                raise SupervisorError("the core did not start in time")
            time.sleep(0.05)
        self._core_bound = json.loads(ready.read_text())
        self._core_addr = self._core_bound["grpc"]

    # -- shim workers ------------------------------------------------------------------------

    def _start_worker(self, index: int) -> None:
        assert self._sock is not None
        process = _mp.Process(
            target=_shim_child,
            args=(self._settings, self._sock, self._core_addr, self._ready, os.getpid()),
            name=f"llmtrace-shim-{index}",
        )
        process.start()
        if index < len(self._workers):
            self._workers[index].process = process
        else:
            self._workers.append(_Child(f"shim-{index}", process))

    def _wait_workers_ready(self, count: int) -> None:
        deadline = time.monotonic() + _CORE_START_TIMEOUT_S
        ready = 0
        while ready < count:
            if self._stopping:
                raise _StopRequested
            # A worker that failed while starting (its error is in the log above) would otherwise
            # be waited for until the deadline.
            for child in self._workers:
                if (code := child.process.exitcode) is not None:
                    message = f"shim worker {child.name} exited while starting (exit code {code})"
                    raise SupervisorError(message)
            if time.monotonic() > deadline:
                raise SupervisorError("a shim worker did not start in time")
            # Short waits, so that a SIGTERM during start-up is acted on at once.
            with contextlib.suppress(queue.Empty):
                self._ready.get(timeout=0.2)
                ready += 1

    # -- run ---------------------------------------------------------------------------------

    def run(self) -> int:
        """Start everything, supervise until SIGTERM/SIGINT, stop in order; returns the exit code."""
        from shim.server import bind_socket, sock_address  # noqa: PLC0415

        os.umask(0o077)
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        signal.set_wakeup_fd(wake_w.fileno())
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        try:
            if self._with_core:
                self._start_core()
            try:
                self._sock = bind_socket(self._settings.listen_addr)
            except OSError as exc:
                raise SupervisorError(f"cannot listen on {self._settings.listen_addr}: {exc}") from exc
            workers = self._settings.workers
            if workers > 1:
                os.environ[_PROMETHEUS_DIR_VAR] = str(self._tmp)
            for index in range(workers):
                self._start_worker(index)
            self._wait_workers_ready(workers)
            http = sock_address(self._sock)
            _log.info("llmtrace serving", http=http, core=self._core_addr, workers=workers)
            if self._ready_file:
                _write_ready(
                    self._ready_file,
                    {
                        "http": http,
                        "grpc": self._core_addr,
                        "metrics": self._core_bound.get("metrics"),
                        "pid": os.getpid(),
                        "core_pid": self._core.process.pid if self._core else None,
                        "worker_pids": [w.process.pid for w in self._workers],
                    },
                )
            self._supervise(wake_r)
        except _StopRequested:
            pass
        except SupervisorError as exc:
            _log.error("cannot start", error=str(exc))
            self._stop_all()
            return 1
        _log.info("shutting down", signal=self._signal)
        self._stop_all()
        return 0

    def _on_signal(self, signum: int, _frame: object) -> None:
        # Nothing but flags here: a handler that logs could wait forever for the lock of the log
        # line the main thread was writing when the signal came.
        if not self._stopping:
            self._signal = signal.Signals(signum).name
        self._stopping = True

    def _supervise(self, wake: socket.socket) -> None:
        while not self._stopping:
            children = [c for c in (self._core, *self._workers) if c is not None]
            multiprocessing.connection.wait([c.process.sentinel for c in children] + [wake], timeout=1.0)
            with contextlib.suppress(BlockingIOError):
                wake.recv(4096)
            if self._stopping:
                return
            for child in children:
                if child.process.is_alive():
                    continue
                code = child.process.exitcode
                delay = _RESTART_BACKOFF_S[min(child.restarts, len(_RESTART_BACKOFF_S) - 1)]
                _log.error("child exited; restarting", child=child.name, exit_code=code, in_seconds=delay)
                _mark_dead(child.process.pid)
                time.sleep(delay)
                child.restarts += 1
                if self._stopping:
                    return
                try:
                    if child is self._core:
                        self._start_core()
                    else:
                        self._start_worker(self._workers.index(child))
                        self._wait_workers_ready(1)
                except SupervisorError as exc:
                    # Keep supervising: the next round finds it down again and retries, later.
                    _log.error("restart failed; retrying", child=child.name, error=str(exc))

    def _stop_all(self) -> None:
        grace = self._settings.shutdown.timeout_seconds + 10
        # Workers first: they drain requests and flush spans to a still-running core.
        for child in self._workers:
            _terminate(child.process)
        for child in self._workers:
            _join(child, grace)
        if self._core is not None:
            _terminate(self._core.process)
            _join(self._core, grace)
        if self._sock is not None:
            self._sock.close()
        for path in self._tmp.iterdir():
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self._tmp.rmdir()


class SupervisorError(RuntimeError):
    """A child could not be started."""


class _StopRequested(Exception):  # noqa: N818 - a signal, not an error
    """SIGTERM or SIGINT came while children were starting."""


def _terminate(process: BaseProcess) -> None:
    if process.is_alive():
        with contextlib.suppress(ProcessLookupError):
            process.terminate()


def _join(child: _Child, timeout: float) -> None:
    child.process.join(timeout)
    if child.process.is_alive():
        _log.error("child did not stop in time; killing it", child=child.name)
        child.process.kill()
        child.process.join()


def _mark_dead(pid: int | None) -> None:
    if pid is not None and os.environ.get(_PROMETHEUS_DIR_VAR):
        from prometheus_client import multiprocess  # noqa: PLC0415

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def _write_json(path: str, data: dict[str, Any]) -> None:
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(target)


def _write_ready(path: str, data: dict[str, Any]) -> None:
    """The ready file, or a SupervisorError: whoever waits for it would wait forever."""
    try:
        _write_json(path, data)
    except OSError as exc:
        raise SupervisorError(f"cannot write the ready file {path}: {exc.strerror or exc}") from exc


def _spool_dir_problem(spool_dir: str) -> str:
    """Why the spool cannot live at `spool_dir` ("" if it can), creating it: a file in the way or
    a directory that cannot be made would otherwise surface as a traceback from inside a worker."""
    path = Path(spool_dir).expanduser()
    for candidate in (path, *path.parents):
        if candidate.exists():
            if not candidate.is_dir():
                return f"{candidate} is not a directory"
            break
    try:  # made here as the worker would make it (owner-only), to report why it cannot be
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create it: {exc.strerror or exc}"
    if not os.access(path, os.W_OK | os.X_OK):
        return "not writable by this user"
    return ""


def run_serve(
    settings: Settings, *, with_core: bool, core_addr: str | None = None, ready_file: str | None = None
) -> int:
    """Entry point of `llmtrace serve` (with_core) and `llmtrace shim`."""
    problem = _spool_dir_problem(settings.shipper.spool_dir)
    if problem:
        _log.error("cannot start", error=f"shipper.spool_dir {settings.shipper.spool_dir}: {problem}")
        return 1
    if settings.upstream_url.rstrip("/").endswith("/v1"):
        _log.warning(
            "upstream_url ends in /v1; request paths already start with /v1, so calls would go to "
            "/v1/v1/...: set upstream_url to the API root, e.g. https://api.openai.com",
            upstream_url=redact_text(settings.upstream_url),
        )
    if not with_core and settings.workers == 1:
        from shim.server import bind_socket  # noqa: PLC0415

        try:
            sock = bind_socket(settings.listen_addr)
        except OSError as exc:
            _log.error("cannot start", error=f"cannot listen on {settings.listen_addr}: {exc}")
            return 1

        def ready(address: str) -> None:
            if ready_file:
                _write_ready(ready_file, {"http": address, "grpc": target, "pid": os.getpid()})

        target = core_addr or settings.core_addr or settings.grpc.listen_addr
        try:
            return run_worker(settings, sock, core_addr=target, on_ready=ready)
        except SupervisorError as exc:
            _log.error("cannot start", error=str(exc))
            return 1
    return Supervisor(settings, with_core=with_core, core_addr=core_addr, ready_file=ready_file).run()
