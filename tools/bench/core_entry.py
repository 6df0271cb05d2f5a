"""How the benchmarks start a core: `llmtrace.cli.main.main`, plus two signals for measuring.

    python tools/bench/core_entry.py OUTDIR [--profile] core --config F --ready-file R

It runs exactly what the `llmtrace core` console script runs. What it adds costs nothing until
a signal arrives:

* SIGUSR2 writes OUTDIR/threads.json, {native thread id: Python thread name}, so the benchmark
  can name the threads whose CPU time it reads from /proc (Python 3.11 does not give OS threads
  their Python names; threads missing from the map are native: DuckDB's and gRPC's workers).
* With --profile, the core runs under yappi (CPU clock, every Python thread; `.venv/bin/pip
  install yappi`, it is not a project dependency). SIGUSR1 resets the profile at the start of
  the timed window and SIGUSR2 writes OUTDIR/profile.txt: functions by own and by inclusive CPU
  time as % of the process's CPU time in the window (utime + stime of all threads). cProfile
  would only see the main thread, while the ingest work runs in the event loop, a thread pool
  (validation, Arrow) and the DuckDB writer thread.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

_CLK_TCK = os.sysconf("SC_CLK_TCK")
TOP = 45


def _cpu() -> float:
    rest = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / _CLK_TCK


def _where(stat: Any) -> str:
    module = str(stat.module)
    in_project = "/llmtrace/" in module
    module = "llmtrace/" + module.rsplit("/llmtrace/", 1)[1] if in_project else Path(module).name
    return f"{stat.name}  ({module}:{stat.lineno})" if stat.lineno else str(stat.name)


def write_profile(yappi: Any, out: Path, window_cpu: float, names: dict[int, str]) -> None:
    """The yappi function and thread statistics as text."""
    rows = list(yappi.get_func_stats())
    own_total = sum(s.tsub for s in rows)
    pct = 100.0 / window_cpu if window_cpu else 0.0
    lines = [
        f"process CPU in the window (utime+stime, all threads): {window_cpu:.2f}s",
        f"CPU attributed to Python functions by yappi: {own_total:.2f}s ({own_total * pct:.0f}%; "
        "the rest is native threads (DuckDB, gRPC) and profiler overhead)",
        "",
    ]
    for title, key in (("by own CPU time (tsub)", "tsub"), ("by inclusive CPU time (ttot)", "ttot")):
        lines.append(f"== top {TOP} functions {title}; % of process CPU in the window")
        lines.append(f"{'own s':>8} {'own %':>6} {'incl s':>8} {'incl %':>6} {'calls':>9}  function")
        for s in sorted(rows, key=lambda s: -float(getattr(s, key)))[:TOP]:
            own, incl = f"{s.tsub:8.2f} {s.tsub * pct:6.1f}", f"{s.ttot:8.2f} {s.ttot * pct:6.1f}"
            lines.append(f"{own} {incl} {s.ncall:9d}  {_where(s)}")
        lines.append("")
    lines.append("== Python threads by CPU time")
    for t in sorted(yappi.get_thread_stats(), key=lambda t: -t.ttot):
        native = getattr(t, "native_id", None) or t.tid
        lines.append(f"{t.ttot:8.2f}s {t.ttot * pct:6.1f}%  {names.get(int(native), t.name)}")
    out.write_text("\n".join(lines) + "\n")


def _thread_names() -> dict[int, str]:
    return {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}


def main() -> int:
    """Run `llmtrace.cli.main.main(argv)` with the measuring signal handlers installed."""
    outdir = Path(sys.argv[1])
    profile = len(sys.argv) > 2 and sys.argv[2] == "--profile"
    argv = sys.argv[3:] if profile else sys.argv[2:]
    yappi: Any = importlib.import_module("yappi") if profile else None
    from llmtrace.cli.main import main as cli_main  # noqa: PLC0415 - after yappi is set up

    window_start = [_cpu()]

    def reset(_sig: int, _frame: FrameType | None) -> None:
        if yappi is not None:
            yappi.clear_stats()
        window_start[0] = _cpu()

    def dump(_sig: int, _frame: FrameType | None) -> None:
        window = _cpu() - window_start[0]
        names = _thread_names()
        if yappi is not None:
            yappi.stop()
            write_profile(yappi, outdir / "profile.txt.tmp", window, names)
            (outdir / "profile.txt.tmp").replace(outdir / "profile.txt")
        # Last and atomic: the benchmark waits for this file, then reads both.
        tmp = outdir / "threads.json.tmp"
        tmp.write_text(json.dumps({str(k): v for k, v in names.items()}))
        tmp.replace(outdir / "threads.json")

    signal.signal(signal.SIGUSR1, reset)
    signal.signal(signal.SIGUSR2, dump)
    if yappi is not None:
        yappi.set_clock_type("cpu")
        yappi.start(builtins=True, profile_threads=True)
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
