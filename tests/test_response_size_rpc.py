"""Responses a client can read: pages cut to a size as well as to `page_size`.

Each span here carries a 900,000-character prompt. Five of them are past 4 MiB, the receive
limit of a gRPC client left at its defaults (the stubs here are), so a page or a trace of them
used to fail whole with RESOURCE_EXHAUSTED and no token to get past it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from llmtrace.api.v1 import ingest_service_pb2, query_service_pb2, span_pb2
from llmtrace.config.schema import SecurityAnalysisSettings, Settings
from llmtrace.store.reader import Row, StoreReader
from tests.conftest import RunningCore, core_settings, running_core
from tests.factories import BASE_NS, MS, make_span

pytestmark = pytest.mark.asyncio(loop_scope="module")

TENANT = "acme"
PROMPT_CHARS = 900_000
SPANS = 6


def _settings(path: Path, max_message_bytes: int = 64 * 1024 * 1024) -> Settings:
    settings = core_settings(path)
    return dataclasses.replace(
        settings,
        grpc=dataclasses.replace(settings.grpc, max_message_bytes=max_message_bytes),
        # The classifier reading megabytes of prompt would only slow these tests down.
        security_analysis=SecurityAnalysisSettings(enabled=False),
    )


def _big_spans(trace_id: bytes) -> list[span_pb2.Span]:
    spans = []
    for i in range(SPANS):
        span = make_span(tenant=TENANT, prompt=f"{i}" * PROMPT_CHARS, start_ns=BASE_NS + i * MS)
        span.trace_id = trace_id
        spans.append(span)
    return spans


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stored(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[RunningCore, list[span_pb2.Span]]]:
    path = tmp_path_factory.mktemp("sizes") / "llmtrace.duckdb"
    spans = _big_spans(os.urandom(16))
    async with running_core(_settings(path)) as core:
        for span in spans:
            reply = await core.ingest.IngestSpans(ingest_service_pb2.IngestSpansRequest(spans=[span]))
            assert reply.accepted_spans == 1
        yield core, spans


async def test_a_page_of_large_spans_is_cut_and_goes_on_with_its_token(
    stored: tuple[RunningCore, list[span_pb2.Span]],
) -> None:
    core, spans = stored
    seen: list[bytes] = []
    pages = 0
    token = ""
    while True:
        page = await core.query.ListSpans(
            query_service_pb2.ListSpansRequest(
                tenant=TENANT, view=query_service_pb2.SPAN_VIEW_FULL, page_size=50, page_token=token
            )
        )
        pages += 1
        assert 0 < len(page.spans) < SPANS
        assert page.ByteSize() <= 4 * 1024 * 1024
        assert all(len(s.request.messages[1].parts[0].text) == PROMPT_CHARS for s in page.spans)
        seen += [s.span_id for s in page.spans]
        token = page.next_page_token
        if not token:
            break
    assert pages > 1
    assert sorted(seen) == sorted(s.span_id for s in spans)  # each once, none skipped


async def test_a_trace_too_large_for_one_response_says_it_is_truncated(
    stored: tuple[RunningCore, list[span_pb2.Span]],
) -> None:
    core, spans = stored
    reply = await core.query.GetTrace(
        query_service_pb2.GetTraceRequest(tenant=TENANT, trace_id=spans[0].trace_id)
    )
    trace = reply.trace
    assert trace.spans_truncated
    assert 0 < len(trace.spans) < SPANS
    assert [s.span_id for s in trace.spans] == [s.span_id for s in spans[: len(trace.spans)]]  # oldest first
    assert trace.span_count == SPANS


async def test_sql_rows_past_the_message_size_are_cut_and_marked_truncated(tmp_path: Path) -> None:
    async with running_core(_settings(tmp_path / "db.duckdb", max_message_bytes=3 * 1024 * 1024)) as core:
        for span in _big_spans(os.urandom(16)):
            await core.ingest.IngestSpans(ingest_service_pb2.IngestSpansRequest(spans=[span]))
        result = await core.query.ExecuteSql(
            query_service_pb2.ExecuteSqlRequest(tenant=TENANT, query="SELECT request_messages FROM spans")
        )
        assert result.truncated
        assert 0 < len(result.rows) < SPANS


async def test_one_span_larger_than_any_response_is_a_clear_error(tmp_path: Path) -> None:
    # Stored under a larger limit, read under a smaller one.
    path = tmp_path / "db.duckdb"
    span = _big_spans(os.urandom(16))[0]
    async with running_core(_settings(path)) as core:
        await core.ingest.IngestSpans(ingest_service_pb2.IngestSpansRequest(spans=[span]))
    async with running_core(_settings(path, max_message_bytes=512 * 1024)) as core:
        for call in (
            core.query.GetSpan(query_service_pb2.GetSpanRequest(tenant=TENANT, span_id=span.span_id)),
            core.query.ListSpans(
                query_service_pb2.ListSpansRequest(tenant=TENANT, view=query_service_pb2.SPAN_VIEW_FULL)
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await call
            assert failed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "grpc.max_message_bytes" in (failed.value.details() or "")
        basic = await core.query.ListSpans(query_service_pb2.ListSpansRequest(tenant=TENANT))
        assert [s.span_id for s in basic.spans] == [span.span_id]


async def test_a_full_page_reads_no_further_than_a_response_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Rows past what one response carries are not read: a page of large spans was read whole
    # (a thousand rows, content and all) only to send a few of them.
    read: list[int] = []
    fetch_bounded = StoreReader.fetch_bounded

    async def counting(self: StoreReader, *args: Any, **kwargs: Any) -> tuple[list[Row], bool]:
        rows, cut = await fetch_bounded(self, *args, **kwargs)
        read.append(len(rows))
        return rows, cut

    monkeypatch.setattr(StoreReader, "fetch_bounded", counting)
    async with running_core(_settings(tmp_path / "db.duckdb", max_message_bytes=1024 * 1024)) as core:
        trace_id = os.urandom(16)
        for span in _big_spans(trace_id):
            await core.ingest.IngestSpans(ingest_service_pb2.IngestSpansRequest(spans=[span]))
        page = await core.query.ListSpans(
            query_service_pb2.ListSpansRequest(
                tenant=TENANT, view=query_service_pb2.SPAN_VIEW_FULL, page_size=50
            )
        )
        reply = await core.query.GetTrace(query_service_pb2.GetTraceRequest(tenant=TENANT, trace_id=trace_id))
    assert len(page.spans) == 1 and page.next_page_token
    assert len(reply.trace.spans) == 1 and reply.trace.spans_truncated
    assert read == [3, 3]  # 900 KB each against twice the 1 MiB a response may hold


async def test_full_view_pages_hold_at_most_a_hundred_spans(tmp_path: Path) -> None:
    async with running_core(_settings(tmp_path / "db.duckdb")) as core:
        spans = [make_span(tenant=TENANT, start_ns=BASE_NS + i * MS) for i in range(150)]
        await core.ingest.IngestSpans(ingest_service_pb2.IngestSpansRequest(spans=spans))
        full = await core.query.ListSpans(
            query_service_pb2.ListSpansRequest(
                tenant=TENANT, view=query_service_pb2.SPAN_VIEW_FULL, page_size=1000
            )
        )
        basic = await core.query.ListSpans(query_service_pb2.ListSpansRequest(tenant=TENANT, page_size=1000))
    assert len(full.spans) == 100 and full.next_page_token
    assert len(basic.spans) == 150
