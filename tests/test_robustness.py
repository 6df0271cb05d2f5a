"""Edge cases found in review: bad finding times, huge traces, an unwritable ready file."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from llmtrace.api.v1 import ingest_service_pb2, query_service_pb2
from tests.conftest import RunningCore
from tests.factories import make_finding, make_span


async def test_finding_with_an_impossible_create_time_rejects_only_its_span(core: RunningCore) -> None:
    good, far_future, bad_nanos = make_span(), make_span(), make_span()
    for span in (far_future, bad_nanos):
        span.findings.append(make_finding())
    far_future.findings[0].create_time.seconds = 10**15
    bad_nanos.findings[0].create_time.nanos = -1
    reply = await core.ingest.IngestSpans(
        ingest_service_pb2.IngestSpansRequest(spans=[good, far_future, bad_nanos])
    )
    assert reply.accepted_spans == 1
    fields = [v.field for r in reply.partial_success.rejections for v in r.violations]
    assert fields == ["spans[1].findings[0].create_time", "spans[2].findings[0].create_time.nanos"]


async def test_get_trace_says_when_it_returns_only_the_first_10000_spans(core: RunningCore) -> None:
    trace_id = os.urandom(16)
    spans = [
        make_span(trace_id=trace_id, start_ns=1_790_000_000_000_000_000 + i * 1_000) for i in range(10_001)
    ]
    for start in range(0, len(spans), 2_500):
        await core.ingest.IngestSpans(
            ingest_service_pb2.IngestSpansRequest(spans=spans[start : start + 2_500])
        )
    got = await core.query.GetTrace(
        query_service_pb2.GetTraceRequest(
            tenant="acme", trace_id=trace_id, view=query_service_pb2.SPAN_VIEW_BASIC
        )
    )
    assert got.trace.span_count == 10_001
    assert got.trace.spans_truncated
    assert len(got.trace.spans) == 10_000
    assert got.trace.spans[0].span_id == spans[0].span_id


async def test_an_unwritable_ready_file_stops_the_core_cleanly(tmp_path: Path) -> None:
    config = tmp_path / "llmtrace.yaml"
    config.write_text(
        f"grpc:\n  listen_addr: 127.0.0.1:0\nmetrics:\n  listen_addr: 127.0.0.1:0\n"
        f"storage:\n  database_path: {tmp_path / 'llmtrace.duckdb'}\n"
    )
    result = await asyncio.to_thread(
        subprocess.run,
        [
            *(sys.executable, "-m", "llmtrace.cli.main", "core", "--config", str(config)),
            *("--ready-file", str(tmp_path / "missing-dir" / "ready.json")),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "cannot write the ready file" in result.stderr
    assert "core stopped" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "llmtrace.duckdb.wal").exists()
