"""Every benchmark in sequence (seed if needed, ingest, query, disk, proxy), then a summary table.

    .venv/bin/python tools/bench/run_all.py                 # the full 1,000,000-span run (`make bench`)
    .venv/bin/python tools/bench/run_all.py --spans 100000 --batches 100 --proxy-quick   # a quick smoke run
    .venv/bin/python tools/bench/run_all.py --skip-proxy    # the core's benchmarks only

See docs/benchmarks.md for what each figure measures and how.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tools.bench.benchlib import REPO, human_bytes, machine_facts, print_table
from tools.bench.disk import run_disk
from tools.bench.ingest import GOAL_SPANS_PER_S, run_ingest
from tools.bench.proxy import RESULTS_FILE as PROXY_RESULTS_FILE
from tools.bench.proxy import Options as ProxyOptions
from tools.bench.proxy import quick_options, run_proxy
from tools.bench.query import GOAL_P50_MS, run_queries
from tools.bench.seed import DEFAULT_SPANS, ensure_seed, print_seed


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", "--no-optional-locks", *args], cwd=REPO, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return done.stdout.strip()


def _section(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Command line."""
    parser = argparse.ArgumentParser(description="Run every benchmark and print a summary.")
    parser.add_argument("--spans", type=int, default=DEFAULT_SPANS, help="spans in the seeded database")
    parser.add_argument("--batches", type=int, default=400, help="timed ingest batches of 500 spans")
    parser.add_argument("--concurrency", type=int, default=4, help="IngestSpans RPCs in flight")
    parser.add_argument("--runs", type=int, default=30, help="timed runs per query")
    parser.add_argument("--reseed", action="store_true", help="reseed even if a cached file exists")
    parser.add_argument("--skip-proxy", action="store_true", help="leave out the proxy benchmark")
    parser.add_argument("--proxy-quick", action="store_true", help="short proxy benchmark (smoke run)")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    args = parser.parse_args(argv)

    facts = machine_facts()
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    facts["commit"] = _git("rev-parse", "--short", "HEAD") + (" + uncommitted changes" if dirty else "")
    facts["date"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    print("machine: " + "; ".join(f"{k} {v}" for k, v in facts.items()))

    _section(f"seed ({args.spans:,} spans)")
    seeded = ensure_seed(args.spans, concurrency=args.concurrency, force=args.reseed)
    print_seed(seeded)
    _section("ingest")
    ingest = run_ingest(args.spans, batches=args.batches, concurrency=args.concurrency, show_seed=False)
    _section("query")
    queries = run_queries(args.spans, runs=args.runs, show_seed=False)
    _section("disk")
    disk = run_disk(args.spans, show_seed=False)
    proxy: dict[str, Any] | None = None
    if not args.skip_proxy:
        _section("proxy")
        proxy = run_proxy(quick_options() if args.proxy_quick else ProxyOptions())
        PROXY_RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
        PROXY_RESULTS_FILE.write_text(json.dumps({"machine": facts, **proxy}, indent=2) + "\n")

    seed = seeded.meta
    n = f"{args.spans:,}"
    rows: list[tuple[str, str, str, str]] = [
        (
            f"seeding ingest, empty -> {n} spans",
            f"{seed['spans_per_s']:,.0f} spans/s" + (" (cached)" if seeded.cached else ""),
            "-",
            "-",
        ),
        (
            f"ingest into {n} spans",
            f"{ingest['spans_per_s']:,.0f} spans/s",
            f">= {GOAL_SPANS_PER_S:,} spans/s",
            "yes" if ingest["spans_per_s"] >= GOAL_SPANS_PER_S else "NO",
        ),
        ("ingest payload", f"{ingest['mb_per_s']:.1f} MB/s", "-", "-"),
        (
            "ingest core CPU",
            f"{ingest['core_cpu_pct']:.0f}% of one core ({ingest['core_cpu_us_per_span']:.0f} us/span)",
            "-",
            "-",
        ),
        (
            "ingest RPC latency p50 / p99",
            f"{ingest['rpc_p50_ms']:.0f} / {ingest['rpc_p99_ms']:.0f} ms",
            "-",
            "-",
        ),
    ]
    for q in queries:
        rows.append(
            (
                q["query"],
                f"p50 {q['p50_ms']:.1f} ms, p95 {q['p95_ms']:.1f} ms",
                f"p50 <= {GOAL_P50_MS:.0f} ms",
                "yes" if q["p50_ms"] <= GOAL_P50_MS else "NO",
            )
        )
    rows.append(
        (
            "disk per 1,000,000 spans",
            f"{human_bytes(disk['bytes_per_million'])} ({disk['bytes_per_span']:,.0f} B/span)",
            "-",
            "-",
        )
    )
    if proxy is not None:
        proxy_rows: list[tuple[str, str, str, str]] = proxy["rows"]
        rows += [(f"proxy: {a}", b, c, "NO" if d == "**no**" else d) for a, b, c, d in proxy_rows]
    facts["loadavg_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    _section(f"summary ({facts['date']}, {facts['nproc']} x {facts['cpu']}, load {facts['loadavg_after']})")
    print_table(("figure", "value", "goal", "met?"), rows)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": facts,
                    "seed": seed,
                    "ingest": ingest,
                    "query": queries,
                    "disk": disk,
                    "proxy": proxy,
                },
                indent=2,
            )
            + "\n"
        )
        print(f"\nfigures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
