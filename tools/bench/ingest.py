"""Ingest benchmark: sustained spans/s through IngestSpans into a database that holds N spans.

Method. The seeded database (tools/bench/seed.py, default 1,000,000 spans) is copied to a
throwaway file, so every run starts from the same N spans. A core is started on the copy in its
own process. This process builds every request (batches of 500 chat spans with ~2 KB prompts,
fresh ids, recent timestamps) and serialises it BEFORE timing, then sends the raw bytes through
a generic unary method with no request serializer, with `--concurrency` RPCs in flight. A few
warm-up batches go first and are not timed. Reported: accepted spans/s and request MB/s over
the wall-clock time of the timed batches; the core's CPU seconds over that window from
/proc/<pid>/stat (utime + stime, all threads) as % of one core; per-RPC latency p50/p99 seen
by the client. After the core stops, the copy is opened to check the row count.

Post-ack analysis (`security_analysis.enabled`, on by default) is part of what the core does
per span. `--analysis off|on` sets it for the run (through LLMTRACE_SECURITY_ANALYSIS_ENABLED);
`--analysis compare` runs the same batches twice, off then on, each on a fresh copy, and prints
both. With analysis on, the run also reports, from the core's /metrics: spans analysed and shed
in the timed window, the CPU of the core's child processes (the analysis process), and the
analysis rate alone (`--drain-s` seconds after the last ack, while the queue is still full).
Before sending, a core that analyses is given time to queue again the seeded spans of the last
day that have no analysis score (a one-off read at start-up), so the window measures steady
state: a full queue, shedding.

    .venv/bin/python tools/bench/ingest.py [--spans 1000000] [--batches 400] [--concurrency 4]
    .venv/bin/python tools/bench/ingest.py --analysis compare     # ingest with analysis off vs on
    .venv/bin/python tools/bench/ingest.py --profile /tmp/core-profile.txt   # core under yappi
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import duckdb

from tools.bench.benchlib import (
    BATCH_SPANS,
    IngestClient,
    SendResult,
    SpanGenerator,
    generate_batches,
    human_bytes,
    percentile,
    process_cpu_seconds,
    running_core,
    thread_cpu_delta,
    thread_cpu_seconds,
    working_copy,
)
from tools.bench.seed import DEFAULT_SPANS, ensure_seed, print_seed

INGEST_RNG = 4242
GOAL_SPANS_PER_S = 50_000
ANALYSIS_ENV = "LLMTRACE_SECURITY_ANALYSIS_ENABLED"
DRAIN_S = 10.0
REQUEUE_WAIT_S = 60.0
_ANALYSIS_METRICS = (
    "llmtrace_analysis_spans_total",
    "llmtrace_analysis_spans_shed_total",
    "llmtrace_analysis_failures_total",
    "llmtrace_analysis_queue_spans",
)


@contextlib.contextmanager
def _analysis_env(analysis: bool | None) -> Iterator[None]:
    """Set `security_analysis.enabled` for the core started inside (None: the configured default)."""
    before = os.environ.get(ANALYSIS_ENV)
    if analysis is not None:
        os.environ[ANALYSIS_ENV] = "true" if analysis else "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ANALYSIS_ENV, None)
        else:
            os.environ[ANALYSIS_ENV] = before


def _analysis_metrics(metrics_addr: str | None) -> dict[str, float]:
    """The core's post-ack analysis counters (sums over labels); empty without metrics."""
    if not metrics_addr:
        return {}
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    with urllib.request.urlopen(f"http://{metrics_addr}/metrics", timeout=10) as response:
        text = response.read().decode()
    out = dict.fromkeys(_ANALYSIS_METRICS, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in out:
                out[sample.name] += sample.value
    return out


def _children_cpu_seconds(pid: int) -> float:
    """utime + stime of the live child processes of `pid` (the analysis process), 0 without any."""
    total = 0.0
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                for child in (task / "children").read_text().split():
                    with contextlib.suppress(OSError, ValueError):
                        total += process_cpu_seconds(int(child))
    return total


def _wait_for_requeue(log_path: Path, timeout_s: float = REQUEUE_WAIT_S) -> None:
    """Wait until the core has queued again the seeded spans that have no analysis score.

    At start-up a core that analyses reads the unanalysed spans of the last day (the seeded ones)
    and queues them: a one-off read kept out of the timed window, which measures steady state.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            text = log_path.read_text(errors="replace")
            if "unanalysed spans queued again" in text or "cannot list unanalysed spans" in text:
                return
        time.sleep(0.1)


def run_ingest(
    spans: int = DEFAULT_SPANS,
    *,
    batches: int = 400,
    warmup: int = 8,
    concurrency: int = 4,
    profile: Path | None = None,
    verbose: bool = True,
    show_seed: bool = True,
    analysis: bool | None = None,
    drain_s: float = DRAIN_S,
) -> dict[str, Any]:
    """Run the benchmark; returns its figures.

    `analysis` sets `security_analysis.enabled` for the core (None: its default, on).
    """
    if profile is not None and importlib.util.find_spec("yappi") is None:
        raise SystemExit("--profile needs yappi (not a project dependency): .venv/bin/pip install yappi")
    seeded = ensure_seed(spans, concurrency=concurrency)
    if verbose and show_seed:
        print_seed(seeded)
    gen = SpanGenerator(INGEST_RNG)
    now = time.time()
    t0 = time.perf_counter()
    payloads, sizes = generate_batches(gen, warmup + batches, BATCH_SPANS, now - 3600, now - 60)
    prep_s = time.perf_counter() - t0
    wire = sum(len(p) for p in payloads[warmup:])
    if verbose:
        print(
            f"ingest: {batches} batches x {BATCH_SPANS} spans ({human_bytes(wire)} serialised, "
            f"{wire / (batches * BATCH_SPANS):,.0f} B/span) + {warmup} warm-up batches, prepared in "
            f"{prep_s:.1f}s; {concurrency} RPCs in flight; database starts at {spans:,} spans",
            flush=True,
        )
    return _measure(
        seeded.path,
        spans,
        payloads,
        sizes,
        batches=batches,
        warmup=warmup,
        concurrency=concurrency,
        profile=profile,
        verbose=verbose,
        analysis=analysis,
        drain_s=drain_s,
    )


def run_compare(
    spans: int = DEFAULT_SPANS,
    *,
    batches: int = 400,
    warmup: int = 8,
    concurrency: int = 4,
    drain_s: float = DRAIN_S,
) -> dict[str, dict[str, Any]]:
    """The same batches with post-ack analysis off, then on, each into a fresh copy."""
    seeded = ensure_seed(spans, concurrency=concurrency)
    print_seed(seeded)
    gen = SpanGenerator(INGEST_RNG)
    now = time.time()
    payloads, sizes = generate_batches(gen, warmup + batches, BATCH_SPANS, now - 3600, now - 60)
    print(
        f"ingest, analysis off vs on: {batches} batches x {BATCH_SPANS} spans + {warmup} warm-up "
        f"batches; {concurrency} RPCs in flight; database starts at {spans:,} spans",
        flush=True,
    )
    results: dict[str, dict[str, Any]] = {}
    for name, enabled in (("off", False), ("on", True)):
        print(f"security_analysis.enabled: {str(enabled).lower()}", flush=True)
        results[name] = _measure(
            seeded.path,
            spans,
            payloads,
            sizes,
            batches=batches,
            warmup=warmup,
            concurrency=concurrency,
            profile=None,
            verbose=True,
            analysis=enabled,
            drain_s=drain_s,
        )
    off, on = results["off"]["spans_per_s"], results["on"]["spans_per_s"]
    print(f"acked spans/s: analysis off {off:,.0f}, on {on:,.0f} ({100 * (on - off) / off:+.0f}%)")
    return results


def _measure(
    seed_path: Path,
    spans: int,
    payloads: list[bytes],
    sizes: list[int],
    *,
    batches: int,
    warmup: int,
    concurrency: int,
    profile: Path | None,
    verbose: bool,
    analysis: bool | None,
    drain_s: float,
) -> dict[str, Any]:
    with (
        _analysis_env(analysis),
        working_copy(seed_path) as db,
        running_core(db, profile=profile is not None) as core,
    ):
        threads: list[tuple[str, float]] = []
        profile_text: str | None = None
        metrics_addr = json.loads((core.workdir / "ready.json").read_text()).get("metrics")
        if analysis is not False:
            _wait_for_requeue(core.log_path)
        counters: dict[str, dict[str, float]] = {}
        drained_s = [0.0]
        child_cpu_s = 0.0

        async def drive() -> tuple[SendResult, SendResult]:
            nonlocal threads, profile_text, child_cpu_s
            async with IngestClient(core.grpc_addr) as client:
                warm = await client.send(payloads[:warmup], sizes[:warmup], concurrency, core.pid)
                core.start_window()
                counters["start"] = await asyncio.to_thread(_analysis_metrics, metrics_addr)
                before = thread_cpu_seconds(core.pid)
                children0 = _children_cpu_seconds(core.pid)
                timed = await client.send(payloads[warmup:], sizes[warmup:], concurrency, core.pid)
                after = thread_cpu_seconds(core.pid)
                child_cpu_s = _children_cpu_seconds(core.pid) - children0
                counters["end"] = await asyncio.to_thread(_analysis_metrics, metrics_addr)
                names, profile_text = core.end_window()
                threads = thread_cpu_delta(before, after, core.pid, names)
                if counters["end"] and counters["end"]["llmtrace_analysis_queue_spans"] > 0 and drain_s > 0:
                    # Analysis alone: nothing is ingested now, the queue is still full. Measured
                    # until it empties or `drain_s` is up, whichever comes first.
                    drain_started = time.perf_counter()
                    while time.perf_counter() - drain_started < drain_s:
                        await asyncio.sleep(0.25)
                        counters["drained"] = await asyncio.to_thread(_analysis_metrics, metrics_addr)
                        drained_s[0] = time.perf_counter() - drain_started
                        if counters["drained"]["llmtrace_analysis_queue_spans"] == 0:
                            break
                return warm, timed

        warm, timed = asyncio.run(drive())
        if profile is not None and profile_text is not None:
            profile.write_text(profile_text)
        stop_s = core.stop()
        with contextlib.closing(duckdb.connect(str(db), read_only=True)) as conn:
            row = conn.execute("SELECT count(*) FROM span_rows").fetchone()
        stored = int(row[0]) if row else -1
    expected = spans + (warmup + batches) * BATCH_SPANS
    if stored != expected:
        raise SystemExit(f"expected {expected:,} rows after the run, found {stored:,}")
    result: dict[str, Any] = {
        "start_spans": spans,
        "batches": batches,
        "spans": timed.accepted,
        "concurrency": concurrency,
        "analysis": analysis,
        "wall_s": timed.wall_s,
        "spans_per_s": timed.spans_per_s,
        "mb_per_s": timed.mb_per_s,
        "bytes_per_span": timed.request_bytes / max(timed.spans, 1),
        "core_cpu_s": timed.core_cpu_s,
        "core_cpu_pct": timed.core_cpu_pct,
        "core_cpu_us_per_span": 1e6 * timed.core_cpu_s / max(timed.accepted, 1),
        "child_cpu_s": child_cpu_s,
        "client_cpu_s": timed.client_cpu_s,
        "rpc_p50_ms": percentile(timed.latencies_s, 50) * 1000,
        "rpc_p99_ms": percentile(timed.latencies_s, 99) * 1000,
        "rpc_max_ms": max(timed.latencies_s) * 1000,
        "warmup_s": warm.wall_s,
        "shutdown_s": stop_s,
        "stored_rows": stored,
        "threads": [(name, round(cpu, 2)) for name, cpu in threads[:8]],
    }
    start, end = counters.get("start"), counters.get("end")
    if start and end:
        analysed = end["llmtrace_analysis_spans_total"] - start["llmtrace_analysis_spans_total"]
        result["analysed_spans"] = analysed
        result["analysed_per_s"] = analysed / timed.wall_s if timed.wall_s else 0.0
        result["shed_spans"] = (
            end["llmtrace_analysis_spans_shed_total"] - start["llmtrace_analysis_spans_shed_total"]
        )
        result["analysis_failures"] = (
            end["llmtrace_analysis_failures_total"] - start["llmtrace_analysis_failures_total"]
        )
        drained = counters.get("drained")
        if drained:
            alone = drained["llmtrace_analysis_spans_total"] - end["llmtrace_analysis_spans_total"]
            result["analysed_alone_per_s"] = alone / drained_s[0] if drained_s[0] else 0.0
    if verbose:
        print_ingest(result)
        if profile is not None:
            print(f"  core profile (yappi, timed window) written to {profile}")
    return result


def print_ingest(r: dict[str, Any]) -> None:
    """The ingest figures."""
    goal = "met" if r["spans_per_s"] >= GOAL_SPANS_PER_S else "NOT met"
    print(
        f"  {r['spans']:,} spans in {r['wall_s']:.2f}s = {r['spans_per_s']:,.0f} spans/s "
        f"(goal >= {GOAL_SPANS_PER_S:,}: {goal}), {r['mb_per_s']:.1f} MB/s"
    )
    print(
        f"  core CPU {r['core_cpu_s']:.2f}s = {r['core_cpu_pct']:.0f}% of one core "
        f"({r['core_cpu_us_per_span']:.0f} us of CPU per span); client CPU {r['client_cpu_s']:.2f}s"
    )
    print(
        f"  RPC latency p50 {r['rpc_p50_ms']:.1f} ms, p99 {r['rpc_p99_ms']:.1f} ms, "
        f"max {r['rpc_max_ms']:.1f} ms; "
        f"warm-up {r['warmup_s']:.2f}s; graceful stop (commit + checkpoint) {r['shutdown_s']:.1f}s"
    )
    if r.get("child_cpu_s"):
        print(f"  core's child processes (analysis) CPU {r['child_cpu_s']:.2f}s in the window")
    if "analysed_spans" in r and r.get("analysis") is not False:
        print(
            f"  analysis in the window: {r['analysed_spans']:,.0f} spans analysed "
            f"({r['analysed_per_s']:,.0f}/s), {r['shed_spans']:,.0f} shed, "
            f"{r['analysis_failures']:,.0f} failed"
        )
    if "analysed_alone_per_s" in r:
        print(f"  analysis alone after the last ack: {r['analysed_alone_per_s']:,.0f} spans/s")
    print("  core threads by CPU time in the window:")
    for name, cpu in r["threads"]:
        print(f"    {cpu:6.2f}s {100 * cpu / r['core_cpu_s']:5.1f}%  {name}")
    print(f"  rows in the database afterwards: {r['stored_rows']:,}")


def main(argv: list[str] | None = None) -> int:
    """Command line."""
    parser = argparse.ArgumentParser(description="Sustained IngestSpans throughput over a seeded database.")
    parser.add_argument("--spans", type=int, default=DEFAULT_SPANS, help="spans already in the database")
    parser.add_argument("--batches", type=int, default=400, help="timed batches of 500 spans")
    parser.add_argument("--warmup", type=int, default=8, help="untimed batches sent first")
    parser.add_argument("--concurrency", type=int, default=4, help="IngestSpans RPCs in flight")
    parser.add_argument(
        "--profile",
        type=Path,
        help="run the core under yappi (.venv/bin/pip install yappi) and write its CPU profile "
        "of the timed window to this file (yappi slows the Python parts: use it for shares, "
        "not for throughput)",
    )
    parser.add_argument(
        "--analysis",
        choices=("default", "off", "on", "compare"),
        default="default",
        help="security_analysis.enabled for the core (default: as configured, on); compare: the "
        "same batches with analysis off, then on",
    )
    parser.add_argument(
        "--drain-s", type=float, default=DRAIN_S, help="seconds to measure analysis alone after the last ack"
    )
    args = parser.parse_args(argv)
    if args.analysis == "compare":
        run_compare(
            args.spans,
            batches=args.batches,
            warmup=args.warmup,
            concurrency=args.concurrency,
            drain_s=args.drain_s,
        )
        return 0
    run_ingest(
        args.spans,
        batches=args.batches,
        warmup=args.warmup,
        concurrency=args.concurrency,
        profile=args.profile,
        analysis={"default": None, "off": False, "on": True}[args.analysis],
        drain_s=args.drain_s,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
