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

    .venv/bin/python tools/bench/ingest.py [--spans 1000000] [--batches 400] [--concurrency 4]
    .venv/bin/python tools/bench/ingest.py --profile /tmp/core-profile.txt   # core under yappi
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import sys
import time
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
    running_core,
    thread_cpu_delta,
    thread_cpu_seconds,
    working_copy,
)
from tools.bench.seed import DEFAULT_SPANS, ensure_seed, print_seed

INGEST_RNG = 4242
GOAL_SPANS_PER_S = 50_000


def run_ingest(
    spans: int = DEFAULT_SPANS,
    *,
    batches: int = 400,
    warmup: int = 8,
    concurrency: int = 4,
    profile: Path | None = None,
    verbose: bool = True,
    show_seed: bool = True,
) -> dict[str, Any]:
    """Run the benchmark; returns its figures."""
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
    with working_copy(seeded.path) as db, running_core(db, profile=profile is not None) as core:
        threads: list[tuple[str, float]] = []
        profile_text: str | None = None

        async def drive() -> tuple[SendResult, SendResult]:
            nonlocal threads, profile_text
            async with IngestClient(core.grpc_addr) as client:
                warm = await client.send(payloads[:warmup], sizes[:warmup], concurrency, core.pid)
                core.start_window()
                before = thread_cpu_seconds(core.pid)
                timed = await client.send(payloads[warmup:], sizes[warmup:], concurrency, core.pid)
                after = thread_cpu_seconds(core.pid)
                names, profile_text = core.end_window()
                threads = thread_cpu_delta(before, after, core.pid, names)
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
        "wall_s": timed.wall_s,
        "spans_per_s": timed.spans_per_s,
        "mb_per_s": timed.mb_per_s,
        "bytes_per_span": timed.request_bytes / max(timed.spans, 1),
        "core_cpu_s": timed.core_cpu_s,
        "core_cpu_pct": timed.core_cpu_pct,
        "core_cpu_us_per_span": 1e6 * timed.core_cpu_s / max(timed.accepted, 1),
        "client_cpu_s": timed.client_cpu_s,
        "rpc_p50_ms": percentile(timed.latencies_s, 50) * 1000,
        "rpc_p99_ms": percentile(timed.latencies_s, 99) * 1000,
        "rpc_max_ms": max(timed.latencies_s) * 1000,
        "warmup_s": warm.wall_s,
        "shutdown_s": stop_s,
        "stored_rows": stored,
        "threads": [(name, round(cpu, 2)) for name, cpu in threads[:8]],
    }
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
    args = parser.parse_args(argv)
    run_ingest(
        args.spans,
        batches=args.batches,
        warmup=args.warmup,
        concurrency=args.concurrency,
        profile=args.profile,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
