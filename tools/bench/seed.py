"""Seed the benchmark database: N spans (default 1,000,000) through the real ingest path.

A core is started on a fresh file under bench-data/, and batches of 500 spans (2 KB prompts,
start times spread evenly over the last 30 days, 20 models of 5 providers, 10 agents, 3 tenants,
about 2% errors, about 3% with a finding) are sent with IngestSpans. The core is then stopped,
which checkpoints, and the file is kept as bench-data/<key>.duckdb with a <key>.json beside it
that records how seeding went. The key holds a version string (SEED_VERSION, bumped when the
generated data changes), the schema version with a hash of the migrations, and the span count,
so reruns reuse the file and a change of generator or schema makes a new one.

Seeding reports its own spans/s: batches are generated and serialised in chunks before each
chunk is sent, and only the sending is timed.

    .venv/bin/python tools/bench/seed.py [--spans 1000000] [--force]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from llmtrace.store.migrations import MIGRATIONS, latest_version
from tools.bench.benchlib import (
    BATCH_SPANS,
    BENCH_DATA,
    DAY_S,
    IngestClient,
    SendResult,
    SpanGenerator,
    generate_batches,
    human_bytes,
    machine_facts,
    percentile,
    running_core,
)

#: Bump when the generated data changes (generator, distributions, batch layout).
SEED_VERSION = "1"
SEED_RNG = 20261127
CHUNK_BATCHES = 100  # 50,000 spans (~140 MB) generated, then sent, at a time
DEFAULT_SPANS = 1_000_000


@dataclass(frozen=True)
class Seeded:
    """A seeded database and the record of how it was made."""

    path: Path
    meta: dict[str, Any]
    cached: bool


def schema_fingerprint() -> str:
    """Schema version and a hash of every migration statement (catches edits of a migration too)."""
    text = "\n".join(s for m in MIGRATIONS for s in (str(m.version), *m.statements))
    return f"{latest_version()}.{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def seed_key(spans: int) -> str:
    """File name stem of the seeded database for this many spans."""
    return f"seed-v{SEED_VERSION}-schema{schema_fingerprint()}-{spans}"


def seed_paths(spans: int) -> tuple[Path, Path]:
    """(database file, metadata json) of the seeded database."""
    key = seed_key(spans)
    return BENCH_DATA / f"{key}.duckdb", BENCH_DATA / f"{key}.json"


def ensure_seed(spans: int = DEFAULT_SPANS, *, concurrency: int = 4, force: bool = False) -> Seeded:
    """The seeded database, made now unless a complete one is cached."""
    db, meta_path = seed_paths(spans)
    if not force and db.exists() and meta_path.exists():
        return Seeded(db, json.loads(meta_path.read_text()), cached=True)
    return Seeded(db, _seed(spans, concurrency), cached=False)


def _seed(spans: int, concurrency: int) -> dict[str, Any]:
    if spans % BATCH_SPANS:
        raise SystemExit(f"--spans must be a multiple of {BATCH_SPANS}")
    db, meta_path = seed_paths(spans)
    BENCH_DATA.mkdir(exist_ok=True)
    meta_path.unlink(missing_ok=True)
    partial = db.with_name(db.name + ".partial")
    for stale in (db, db.with_name(db.name + ".wal"), partial, partial.with_name(partial.name + ".wal")):
        stale.unlink(missing_ok=True)
    batches = spans // BATCH_SPANS
    print(f"seeding {spans:,} spans ({batches:,} batches of {BATCH_SPANS}) into {db.name} ...", flush=True)
    gen = SpanGenerator(SEED_RNG)
    now = time.time()
    first, last = now - 30 * DAY_S, now - 3600
    step = (last - first) / batches
    total = SendResult()
    gen_s = 0.0
    started = time.perf_counter()
    with running_core(partial, log_level="warning") as core:

        async def send_all() -> None:
            nonlocal gen_s
            async with IngestClient(core.grpc_addr) as client:
                for chunk_start in range(0, batches, CHUNK_BATCHES):
                    count = min(CHUNK_BATCHES, batches - chunk_start)
                    t0 = time.perf_counter()
                    payloads, sizes = generate_batches(
                        gen,
                        count,
                        BATCH_SPANS,
                        first + chunk_start * step,
                        first + (chunk_start + count) * step,
                    )
                    gen_s += time.perf_counter() - t0
                    total.add(await client.send(payloads, sizes, concurrency, core.pid))
                    done = chunk_start + count
                    print(
                        f"  {done * BATCH_SPANS:>9,} spans  {total.spans_per_s:>8,.0f} spans/s sending",
                        flush=True,
                    )

        asyncio.run(send_all())
        stop_s = core.stop()
    elapsed = time.perf_counter() - started
    if total.accepted != spans:
        raise SystemExit(f"seeding accepted {total.accepted} of {spans} spans")
    partial.replace(db)
    wal = partial.with_name(partial.name + ".wal")
    if wal.exists():
        wal.replace(db.with_name(db.name + ".wal"))
    meta: dict[str, Any] = {
        "key": seed_key(spans),
        "spans": spans,
        "batches": batches,
        "concurrency": concurrency,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_facts(),
        "wire_bytes": total.request_bytes,
        "send_s": round(total.wall_s, 3),
        "spans_per_s": round(total.spans_per_s, 1),
        "mb_per_s": round(total.mb_per_s, 2),
        "core_cpu_s": round(total.core_cpu_s, 2),
        "core_cpu_pct": round(total.core_cpu_pct, 1),
        "client_cpu_s": round(total.client_cpu_s, 2),
        "rpc_p50_ms": round(percentile(total.latencies_s, 50) * 1000, 1),
        "rpc_p99_ms": round(percentile(total.latencies_s, 99) * 1000, 1),
        "generate_s": round(gen_s, 1),
        "shutdown_checkpoint_s": round(stop_s, 2),
        "elapsed_s": round(elapsed, 1),
    }
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")  # written last: marks the file complete
    return meta


def print_seed(seeded: Seeded) -> None:
    """The seeding figures."""
    m = seeded.meta
    how = f"cached, made {m['created']}" if seeded.cached else "just made"
    print(f"seed database: {seeded.path} ({how})")
    print(
        f"  seeding ingest: {m['spans']:,} spans in {m['send_s']:.1f}s sending = "
        f"{m['spans_per_s']:,.0f} spans/s, "
        f"{m['mb_per_s']:.1f} MB/s; core CPU {m['core_cpu_s']:.1f}s ({m['core_cpu_pct']:.0f}% of one core); "
        f"RPC p50 {m['rpc_p50_ms']} ms, p99 {m['rpc_p99_ms']} ms"
    )
    print(
        f"  generating the batches took {m['generate_s']}s (not timed); "
        f"final checkpoint on shutdown {m['shutdown_checkpoint_s']}s; "
        f"wire size {human_bytes(m['wire_bytes'])}"
    )


def main(argv: list[str] | None = None) -> int:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--spans", type=int, default=DEFAULT_SPANS, help="spans to seed (multiple of 500)")
    parser.add_argument("--concurrency", type=int, default=4, help="IngestSpans RPCs in flight")
    parser.add_argument("--force", action="store_true", help="reseed even if a cached file exists")
    parser.add_argument("--clean", action="store_true", help="delete every cached seed file first")
    args = parser.parse_args(argv)
    if args.clean and BENCH_DATA.exists():
        shutil.rmtree(BENCH_DATA)
    print_seed(ensure_seed(args.spans, concurrency=args.concurrency, force=args.force))
    return 0


if __name__ == "__main__":
    sys.exit(main())
