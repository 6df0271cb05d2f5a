"""Disk benchmark: bytes on disk per 1,000,000 spans, and per span.

Method. Measures the seeded database (tools/bench/seed.py) as the core left it: the core
checkpoints on shutdown, so the figure is the database file plus its WAL (normally absent or
empty after the checkpoint). Both the apparent size and the allocated blocks are reported, with
DuckDB's own block accounting (used and free blocks) and the serialised protobuf size of the
same spans (what the clients sent) for comparison. Scaled to 1,000,000 spans when the seed has
a different count.

    .venv/bin/python tools/bench/disk.py [--spans 1000000]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import duckdb

from tools.bench.benchlib import human_bytes
from tools.bench.seed import DEFAULT_SPANS, ensure_seed, print_seed


def run_disk(spans: int = DEFAULT_SPANS, *, verbose: bool = True, show_seed: bool = True) -> dict[str, Any]:
    """Measure the seeded file; returns the figures."""
    seeded = ensure_seed(spans)
    if verbose and show_seed:
        print_seed(seeded)
    db = seeded.path
    wal = db.with_name(db.name + ".wal")
    files = [p for p in (db, wal) if p.exists()]
    apparent = sum(p.stat().st_size for p in files)
    allocated = sum(p.stat().st_blocks * 512 for p in files)
    with contextlib.closing(duckdb.connect(str(db), read_only=True)) as conn:
        counted = conn.execute("SELECT count(*) FROM span_rows").fetchone()
        findings = conn.execute("SELECT count(*) FROM finding_rows").fetchone()
        size = conn.execute(
            "SELECT block_size, total_blocks, used_blocks, free_blocks FROM pragma_database_size()"
        ).fetchone()
    stored = int(counted[0]) if counted else 0
    if stored != spans:
        raise SystemExit(f"{db} holds {stored:,} spans, expected {spans:,}")
    block_size, total_blocks, used_blocks, free_blocks = (int(x) for x in size) if size else (0, 0, 0, 0)
    wire = int(seeded.meta["wire_bytes"])
    result: dict[str, Any] = {
        "spans": stored,
        "findings": int(findings[0]) if findings else 0,
        "db_bytes": db.stat().st_size,
        "wal_bytes": wal.stat().st_size if wal.exists() else 0,
        "bytes": apparent,
        "allocated_bytes": allocated,
        "bytes_per_million": apparent * 1_000_000 / stored,
        "bytes_per_span": apparent / stored,
        "wire_bytes_per_span": wire / stored,
        "block_size": block_size,
        "used_blocks": used_blocks,
        "free_blocks": free_blocks,
        "total_blocks": total_blocks,
    }
    if verbose:
        print_disk(result)
    return result


def print_disk(r: dict[str, Any]) -> None:
    """The disk figures."""
    print(
        f"disk: {r['spans']:,} spans ({r['findings']:,} findings) take {r['bytes']:,} bytes "
        f"({human_bytes(r['bytes'])}: database {r['db_bytes']:,} + WAL {r['wal_bytes']:,}; "
        f"{human_bytes(r['allocated_bytes'])} allocated)"
    )
    print(
        f"  = {human_bytes(r['bytes_per_million'])} per 1,000,000 spans, "
        f"{r['bytes_per_span']:,.0f} bytes per span "
        f"(the spans were {r['wire_bytes_per_span']:,.0f} bytes each as protobuf: "
        f"{r['wire_bytes_per_span'] / r['bytes_per_span']:.2f}x)"
    )
    print(
        f"  DuckDB blocks of {human_bytes(r['block_size'])}: {r['used_blocks']:,} used, "
        f"{r['free_blocks']:,} free, {r['total_blocks']:,} total"
    )


def main(argv: list[str] | None = None) -> int:
    """Command line."""
    parser = argparse.ArgumentParser(description="Bytes on disk per 1,000,000 spans.")
    parser.add_argument("--spans", type=int, default=DEFAULT_SPANS, help="spans in the seeded database")
    args = parser.parse_args(argv)
    run_disk(args.spans)
    return 0


if __name__ == "__main__":
    sys.exit(main())
