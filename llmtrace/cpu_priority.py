"""The core's CPU priority beside the proxy under `llmtrace serve` (`core_priority`).

In the background the core runs in Linux's idle scheduling class: the kernel places a waking
task on a CPU that runs only idle-class work as if it were free and preempts that work at once,
so the core's ingest bursts never make the proxy (or, on a shared machine, its client and
upstream) wait for a CPU. Measured in docs/benchmarks.md ("Proxy"); nice +10 did not do it.

The core steps back only once it serves (an idle-class start-up on a busy machine took minutes)
and steps forward again when asked to stop, so that it drains and exits in time. Stepping
forward needs CAP_SYS_NICE or an RLIMIT_NICE of 20 (Linux lets an unprivileged thread leave the
idle class only within that limit); without them the core stops at idle priority, its data
committed all the same. Policies are per thread on Linux: every thread of the process is set.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Final

#: Added to the nice value where the idle class is not available (not Linux).
FALLBACK_NICENESS: Final = 10


def _threads() -> list[int]:
    try:
        return [int(entry.name) for entry in Path("/proc/self/task").iterdir()]
    except OSError:
        return [0]  # no /proc: the calling thread only


def _set_all(policy: int) -> bool:
    """Set every thread's policy, again for threads started meanwhile (they inherit from their
    starter, which may not have been set yet); False when the kernel refused."""
    done: set[int] = set()
    allowed = True
    while pending := [tid for tid in _threads() if tid not in done]:
        for tid in pending:
            done.add(tid)
            try:
                os.sched_setscheduler(tid, policy, os.sched_param(0))
            except PermissionError:
                allowed = False
            except OSError:
                pass  # a thread that just ended
    return allowed


def to_background() -> None:
    """Run every thread of this process on CPU nobody else wants (threads started later inherit)."""
    if not hasattr(os, "SCHED_IDLE") or not Path("/proc/self/task").is_dir():
        with contextlib.suppress(OSError):
            os.nice(FALLBACK_NICENESS)
        return
    _set_all(os.SCHED_IDLE)


def to_foreground() -> bool:
    """Best effort: every thread back to the normal class; False when the kernel refused (or,
    off Linux, where the nice value stays: an unprivileged process cannot lower it)."""
    if not hasattr(os, "SCHED_IDLE") or not Path("/proc/self/task").is_dir():
        return False
    return _set_all(os.SCHED_OTHER)
