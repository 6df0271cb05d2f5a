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


def to_background() -> None:
    """Run every thread of this process on CPU nobody else wants (threads started later inherit)."""
    if not hasattr(os, "SCHED_IDLE") or not Path("/proc/self/task").is_dir():
        with contextlib.suppress(OSError):
            os.nice(FALLBACK_NICENESS)
        return
    for tid in _threads():
        with contextlib.suppress(OSError):  # a thread that just ended
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))


def to_foreground() -> bool:
    """Best effort: every thread back to the normal class; False when the kernel refused."""
    if not hasattr(os, "SCHED_OTHER") or not Path("/proc/self/task").is_dir():
        return False
    done = True
    for tid in _threads():
        try:
            os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
        except PermissionError:
            done = False
        except OSError:
            pass  # a thread that just ended
    return done
