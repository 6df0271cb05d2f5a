"""Query benchmark: GetStats and ListSpans latency over the seeded database.

Method. A core is started on a throwaway copy of the seeded database (default 1,000,000 spans,
60% of them in tenant "acme", which every query names). Each query runs 3 times to warm up,
then `--runs` times (default 30) one after the other; the latency of each RPC is measured
in this process (a separate process from the core, on the same machine), from the call to the
decoded response. Reported: p50 and p95 in ms.

    .venv/bin/python tools/bench/query.py [--spans 1000000] [--runs 30]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import grpc
from google.protobuf import duration_pb2

from llmtrace.api.v1 import query_service_pb2, query_service_pb2_grpc
from tools.bench.benchlib import QUERY_TENANT, percentile, print_table, running_core, working_copy
from tools.bench.seed import DEFAULT_SPANS, ensure_seed, print_seed

GOAL_P50_MS = 100.0
WARMUP_RUNS = 3

QueryCall = Callable[[query_service_pb2_grpc.QueryServiceStub], str]


def _stats(**kwargs: Any) -> QueryCall:
    request = query_service_pb2.GetStatsRequest(tenant=QUERY_TENANT, **kwargs)

    def call(stub: query_service_pb2_grpc.QueryServiceStub) -> str:
        response = stub.GetStats(request, timeout=120)
        return f"{response.total.span_count:,} spans, {len(response.groups)} groups"

    return call


def _list(**kwargs: Any) -> QueryCall:
    request = query_service_pb2.ListSpansRequest(tenant=QUERY_TENANT, **kwargs)

    def call(stub: query_service_pb2_grpc.QueryServiceStub) -> str:
        response = stub.ListSpans(request, timeout=120)
        return f"{len(response.spans)} spans, next page: {'yes' if response.next_page_token else 'no'}"

    return call


QUERIES: tuple[tuple[str, QueryCall], ...] = (
    ("GetStats, no grouping", _stats()),
    ("GetStats by model", _stats(group_by=[query_service_pb2.STATS_DIMENSION_MODEL])),
    (
        "GetStats by time, 1-day buckets",
        _stats(
            group_by=[query_service_pb2.STATS_DIMENSION_TIME],
            bucket_width=duration_pb2.Duration(seconds=86_400),
        ),
    ),
    ('ListSpans model = "gpt-4o", page_size 50', _list(filter='model = "gpt-4o"', page_size=50)),
    ("ListSpans default order, no filter", _list()),
)


def _measure(
    name: str, call: QueryCall, stub: query_service_pb2_grpc.QueryServiceStub, runs: int
) -> dict[str, Any]:
    for _ in range(WARMUP_RUNS):
        call(stub)
    times: list[float] = []
    shape = ""
    for _ in range(runs):
        t0 = time.perf_counter()
        shape = call(stub)
        times.append((time.perf_counter() - t0) * 1000)
    return {
        "query": name,
        "p50_ms": percentile(times, 50),
        "p95_ms": percentile(times, 95),
        "min_ms": min(times),
        "max_ms": max(times),
        "result": shape,
    }


def run_queries(
    spans: int = DEFAULT_SPANS, *, runs: int = 30, verbose: bool = True, show_seed: bool = True
) -> list[dict[str, Any]]:
    """Run every query; returns one dict of figures per query."""
    seeded = ensure_seed(spans)
    if verbose and show_seed:
        print_seed(seeded)
        print(f"query: {WARMUP_RUNS} warm-up + {runs} timed runs each, tenant {QUERY_TENANT!r}", flush=True)
    with (
        working_copy(seeded.path) as db,
        running_core(db) as core,
        grpc.insecure_channel(core.grpc_addr) as channel,
    ):
        grpc.channel_ready_future(channel).result(timeout=30)
        stub = query_service_pb2_grpc.QueryServiceStub(channel)
        results = [_measure(name, call, stub, runs) for name, call in QUERIES]
    if verbose:
        print_queries(results)
    return results


def print_queries(results: list[dict[str, Any]]) -> None:
    """The query figures as a table."""
    print_table(
        ("query", "p50 ms", "p95 ms", "min ms", "max ms", f"p50 <= {GOAL_P50_MS:.0f} ms", "result"),
        [
            (
                r["query"],
                f"{r['p50_ms']:.1f}",
                f"{r['p95_ms']:.1f}",
                f"{r['min_ms']:.1f}",
                f"{r['max_ms']:.1f}",
                "met" if r["p50_ms"] <= GOAL_P50_MS else "NOT met",
                r["result"],
            )
            for r in results
        ],
    )


def main(argv: list[str] | None = None) -> int:
    """Command line."""
    parser = argparse.ArgumentParser(description="GetStats and ListSpans latency over a seeded database.")
    parser.add_argument("--spans", type=int, default=DEFAULT_SPANS, help="spans in the seeded database")
    parser.add_argument("--runs", type=int, default=30, help="timed runs per query")
    args = parser.parse_args(argv)
    run_queries(args.spans, runs=args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
