"""Scores written after ingest (rows in span_scores) show on spans however they are queried."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from llmtrace.api.v1 import ingest_service_pb2, query_service_pb2
from llmtrace.config import Settings
from llmtrace.config.schema import SecurityAnalysisSettings
from llmtrace.store.database import open_database
from tests.conftest import core_settings, running_core
from tests.factories import make_span


def _without_analysis(path: Path) -> Settings:
    # The rows are written by hand below; the core's own analysis would add (and re-queue) others.
    return dataclasses.replace(core_settings(path), security_analysis=SecurityAnalysisSettings(enabled=False))


async def test_analysed_scores_raise_the_span_score_in_every_query(tmp_path: Path) -> None:
    path = tmp_path / "llmtrace.duckdb"
    plain, scored, ingested = make_span(), make_span(), make_span(security_score=30)
    async with running_core(_without_analysis(path)) as core:
        await core.ingest.IngestSpans(ingest_service_pb2.IngestSpansRequest(spans=[plain, scored, ingested]))
    # Analysis stores its scores as rows of their own; write two as it would.
    conn = open_database(path)
    conn.executemany(
        "INSERT INTO span_scores VALUES ('acme', ?, ?, ?, ?, now())",
        [
            [scored.trace_id, scored.span_id, "analysis", 80],
            [ingested.trace_id, ingested.span_id, "analysis", 10],
        ],
    )
    conn.close()
    expected = {plain.span_id: None, scored.span_id: 80, ingested.span_id: 30}
    async with running_core(_without_analysis(path)) as core:
        for order_by in ("", "security_score desc"):  # without and with the join before LIMIT
            page = await core.query.ListSpans(
                query_service_pb2.ListSpansRequest(tenant="acme", order_by=order_by)
            )
            got = {s.span_id: s.security_score if s.HasField("security_score") else None for s in page.spans}
            assert got == expected, order_by
        flagged = await core.query.ListSpans(
            query_service_pb2.ListSpansRequest(tenant="acme", filter="security_score >= 50")
        )
        assert [s.span_id for s in flagged.spans] == [scored.span_id]
        one = await core.query.GetSpan(
            query_service_pb2.GetSpanRequest(tenant="acme", span_id=scored.span_id)
        )
        assert one.span.security_score == 80
