"""Keyset pagination over real gRPC with 10,000 spans: no gap, no repeat, exact order, exact end.

Spans share a few start times, token counts and costs, so most pages cut through runs of equal
sort keys and only the tiebreak (trace_id, span_id) keeps the order total.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio

from llmtrace.api.v1 import finding_pb2, query_service_pb2, span_pb2
from tests.conftest import RunningCore, core_settings, running_core
from tests.factories import BASE_NS, MS, ingest_all

pytestmark = pytest.mark.asyncio(loop_scope="module")

Q = query_service_pb2
TENANT = "acme"
SPANS = 10_000
SPANS_PER_TRACE = 5


@dataclass(frozen=True)
class Row:
    """Sort-relevant values of one stored item, keyed by filter field name."""

    key: bytes | str
    values: dict[str, Any]


@dataclass
class Dataset:
    spans: list[Row]
    traces: list[Row]
    findings: list[Row]


def _build(rng: random.Random) -> tuple[list[span_pb2.Span], Dataset]:
    spans: list[span_pb2.Span] = []
    rows: list[Row] = []
    findings: list[Row] = []
    traces: dict[bytes, list[dict[str, Any]]] = {}
    trace_id = b""
    for i in range(SPANS):
        if i % SPANS_PER_TRACE == 0:
            trace_id = rng.randbytes(16)
        start_us = BASE_NS // 1000 + rng.randrange(50) * 1000 * 1000  # 50 distinct start times
        duration_ms = rng.randrange(1, 2000)
        span = span_pb2.Span(
            trace_id=trace_id,
            span_id=rng.randbytes(8),
            tenant=TENANT,
            provider=rng.choice(["openai", "anthropic"]),
            request_model="gpt-4o",
            operation="chat",
        )
        span.start_time.FromMicroseconds(start_us)
        span.end_time.FromMicroseconds(start_us + duration_ms * 1000)
        span.usage.input_tokens = rng.randrange(100)  # 100 distinct values
        span.usage.output_tokens = rng.randrange(10)
        if rng.random() < 0.9:
            span.cost.total_usd = rng.randrange(64) / 64
        if i % 7 == 0:
            n = len(findings)
            finding = span.findings.add(
                id=f"f-{n:05d}",
                type="prompt_injection",
                severity=rng.randint(1, 5),
                confidence=rng.randrange(5) / 4,
                detector="regex.injection",
            )
            finding.create_time.FromNanoseconds(BASE_NS + rng.randrange(20) * 1000 * MS)
            findings.append(
                Row(
                    finding.id,
                    {
                        "id": finding.id,
                        "create_time": finding.create_time.seconds * 10**6
                        + finding.create_time.nanos // 1000,
                        "severity": int(finding.severity),
                        "confidence": finding.confidence,
                    },
                )
            )
        values = {
            "trace_id": span.trace_id,
            "span_id": span.span_id,
            "start_time": start_us,
            "end_time": start_us + duration_ms * 1000,
            "input_tokens": span.usage.input_tokens,
            "cost_usd": span.cost.total_usd if span.cost.HasField("total_usd") else 0.0,
            "provider": span.provider,
        }
        spans.append(span)
        rows.append(Row(span.trace_id + span.span_id, values))
        traces.setdefault(span.trace_id, []).append(values)
    trace_rows = [
        Row(
            tid,
            {
                "trace_id": tid,
                "start_time": min(v["start_time"] for v in members),
                "span_count": len(members),
                "input_tokens": sum(v["input_tokens"] for v in members),
                "cost_usd": sum(v["cost_usd"] for v in members),
            },
        )
        for tid, members in traces.items()
    ]
    return spans, Dataset(rows, trace_rows, findings)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningCore]:
    path = tmp_path_factory.mktemp("pagination") / "llmtrace.duckdb"
    async with running_core(core_settings(path)) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def data(shared: RunningCore) -> Dataset:
    spans, dataset = _build(random.Random(7))
    await ingest_all(shared.ingest, spans, batch_size=500)
    stats = await shared.query.GetStats(Q.GetStatsRequest(tenant=TENANT))
    assert stats.total.span_count == SPANS
    return dataset


def _sorted(rows: Sequence[Row], order: Sequence[tuple[str, bool]], tiebreak: Sequence[str]) -> list[Any]:
    named = {name for name, _ in order}
    terms = [*order, *((name, False) for name in tiebreak if name not in named)]
    result = list(rows)
    for name, descending in reversed(terms):
        result.sort(key=lambda row: row.values[name], reverse=descending)
    return [row.key for row in result]


async def _page_spans(
    core: RunningCore, page_size: int | Sequence[int], order_by: str = "", filter: str = ""
) -> list[list[bytes]]:
    """Every page of ListSpans, as lists of keys; asserts the token is empty only at the end."""
    sizes = [page_size] if isinstance(page_size, int) else list(page_size)
    pages: list[list[bytes]] = []
    token = ""
    while True:
        size = sizes[len(pages) % len(sizes)]
        response = await core.query.ListSpans(
            Q.ListSpansRequest(
                tenant=TENANT, page_size=size, page_token=token, order_by=order_by, filter=filter
            )
        )
        pages.append([s.trace_id + s.span_id for s in response.spans])
        token = response.next_page_token
        if not token:
            return pages
        assert len(response.spans) == size, "a page before the last one is short"


def _check_pages(pages: list[list[Any]], expected: list[Any], sizes: int | Sequence[int]) -> None:
    flat = [key for page in pages for key in page]
    assert len(flat) == len(set(flat)), "an item was returned twice"
    assert len(flat) == len(expected), "items are missing"
    assert flat == expected
    size_list = [sizes] if isinstance(sizes, int) else list(sizes)
    for i, page in enumerate(pages[:-1]):
        assert len(page) == size_list[i % len(size_list)]
    assert 0 < len(pages[-1]) <= size_list[(len(pages) - 1) % len(size_list)]


SPAN_ORDERS: list[tuple[str, list[tuple[str, bool]]]] = [
    ("", [("start_time", True)]),
    ("start_time desc", [("start_time", True)]),
    ("input_tokens asc", [("input_tokens", False)]),
    ("cost_usd desc, start_time", [("cost_usd", True), ("start_time", False)]),
]


@pytest.mark.parametrize("page_size", [1000, 333])
@pytest.mark.parametrize(("order_by", "terms"), SPAN_ORDERS, ids=[o or "default" for o, _ in SPAN_ORDERS])
async def test_list_spans_pages_cover_everything_once_in_order(
    shared: RunningCore, data: Dataset, page_size: int, order_by: str, terms: list[tuple[str, bool]]
) -> None:
    expected = _sorted(data.spans, terms, ("trace_id", "span_id"))

    pages = await _page_spans(shared, page_size, order_by)

    _check_pages(pages, expected, page_size)
    assert len(pages) == -(-SPANS // page_size)


async def test_list_spans_pages_with_a_filter(shared: RunningCore, data: Dataset) -> None:
    text = "provider = openai AND (input_tokens < 30 OR cost_usd >= 0.5)"
    matching = [
        r
        for r in data.spans
        if r.values["provider"] == "openai" and (r.values["input_tokens"] < 30 or r.values["cost_usd"] >= 0.5)
    ]
    expected = _sorted(matching, [("cost_usd", True), ("start_time", False)], ("trace_id", "span_id"))

    pages = await _page_spans(shared, 250, "cost_usd desc, start_time", text)

    assert 1000 < len(expected) < SPANS
    _check_pages(pages, expected, 250)


async def test_page_size_may_change_between_pages(shared: RunningCore, data: Dataset) -> None:
    expected = _sorted(data.spans, [("input_tokens", True)], ("trace_id", "span_id"))
    sizes = [1, 999, 17, 1000, 250]

    pages = await _page_spans(shared, sizes, "input_tokens desc")

    _check_pages(pages, expected, sizes)


async def test_default_page_size_is_50(shared: RunningCore, data: Dataset) -> None:
    expected = _sorted(data.spans, [("start_time", True)], ("trace_id", "span_id"))

    response = await shared.query.ListSpans(Q.ListSpansRequest(tenant=TENANT))

    assert [s.trace_id + s.span_id for s in response.spans] == expected[:50]
    assert response.next_page_token


async def test_token_is_empty_exactly_when_the_last_item_is_returned(
    shared: RunningCore, data: Dataset
) -> None:
    openai = [r for r in data.spans if r.values["provider"] == "openai" and r.values["input_tokens"] == 3]
    count = len(openai)
    assert count > 2
    text = "provider = openai AND input_tokens = 3"

    exact = await shared.query.ListSpans(Q.ListSpansRequest(tenant=TENANT, page_size=count, filter=text))
    larger = await shared.query.ListSpans(Q.ListSpansRequest(tenant=TENANT, page_size=count + 1, filter=text))
    smaller = await shared.query.ListSpans(
        Q.ListSpansRequest(tenant=TENANT, page_size=count - 1, filter=text)
    )
    last = await shared.query.ListSpans(
        Q.ListSpansRequest(tenant=TENANT, page_size=count, filter=text, page_token=smaller.next_page_token)
    )
    nothing = await shared.query.ListSpans(Q.ListSpansRequest(tenant=TENANT, filter="input_tokens > 1000"))

    assert (len(exact.spans), exact.next_page_token) == (count, "")
    assert (len(larger.spans), larger.next_page_token) == (count, "")
    assert len(smaller.spans) == count - 1
    assert smaller.next_page_token
    assert (len(last.spans), last.next_page_token) == (1, "")
    assert (len(nothing.spans), nothing.next_page_token) == (0, "")


async def test_rows_inserted_between_pages_do_not_shift_unread_pages(
    shared: RunningCore, data: Dataset
) -> None:
    """Spans inserted before the cursor never appear; those after it do, in place."""
    tenant = "inserts"
    rng = random.Random(11)

    def span(start_offset_s: int) -> span_pb2.Span:
        item = span_pb2.Span(trace_id=rng.randbytes(16), span_id=rng.randbytes(8), tenant=tenant)
        item.start_time.FromNanoseconds(BASE_NS + start_offset_s * 1000 * MS)
        item.end_time.FromNanoseconds(BASE_NS + start_offset_s * 1000 * MS + MS)
        return item

    original = [span(i % 10) for i in range(100)]
    await ingest_all(shared.ingest, original)

    first = await shared.query.ListSpans(
        Q.ListSpansRequest(tenant=tenant, page_size=40, order_by="start_time")
    )
    cursor = first.spans[-1]
    earlier = [span(0) for _ in range(20)]  # sort before the cursor (start 0 s < cursor's)
    later = [span(50) for _ in range(5)]  # sort after everything
    await ingest_all(shared.ingest, earlier + later)
    keys: list[bytes] = [s.trace_id + s.span_id for s in first.spans]
    token = first.next_page_token
    while token:
        page = await shared.query.ListSpans(
            Q.ListSpansRequest(tenant=tenant, page_size=40, order_by="start_time", page_token=token)
        )
        keys.extend(s.trace_id + s.span_id for s in page.spans)
        token = page.next_page_token

    def start_key(s: span_pb2.Span) -> tuple[int, bytes, bytes]:
        return (s.start_time.seconds, s.trace_id, s.span_id)

    assert cursor.start_time.seconds > BASE_NS // 10**9
    expected = [s.trace_id + s.span_id for s in sorted(original + later, key=start_key)]
    assert keys == expected


async def test_span_pages_stay_exact_while_existing_traces_grow(shared: RunningCore) -> None:
    """docs/query.md's way to page traces exactly while they still grow: page their spans.

    (ListTraces itself can repeat or skip a trace here, as documented: its aggregates move.)
    """
    tenant = "growing"
    rng = random.Random(12)
    trace_ids = [rng.randbytes(16) for _ in range(4)]

    def span(trace_id: bytes, start_offset_s: int) -> span_pb2.Span:
        item = span_pb2.Span(trace_id=trace_id, span_id=rng.randbytes(8), tenant=tenant)
        item.start_time.FromNanoseconds(BASE_NS + start_offset_s * 1000 * MS)
        item.end_time.FromNanoseconds(BASE_NS + start_offset_s * 1000 * MS + 100 * MS)
        return item

    original = [span(t, 40 - 10 * i) for i, t in enumerate(trace_ids)]  # starts 40, 30, 20, 10 s
    await ingest_all(shared.ingest, original)
    first = await shared.query.ListSpans(Q.ListSpansRequest(tenant=tenant, page_size=2))
    # The new spans join a trace already listed and one still unread, on either side of the
    # cursor; the first would move its trace behind the cursor of a ListTraces walk (a repeat).
    joined = [span(trace_ids[0], 5), span(trace_ids[3], 50)]
    await ingest_all(shared.ingest, joined)
    keys = [s.trace_id + s.span_id for s in first.spans]
    token = first.next_page_token
    while token:
        page = await shared.query.ListSpans(Q.ListSpansRequest(tenant=tenant, page_size=2, page_token=token))
        keys.extend(s.trace_id + s.span_id for s in page.spans)
        token = page.next_page_token

    # Start times are distinct: the 5 s span sorts after the cursor (descending) and is read in
    # place; the 50 s one sorts before it and is not seen.
    expected = sorted([*original, joined[0]], key=lambda s: -s.start_time.seconds)
    assert keys == [s.trace_id + s.span_id for s in expected]
    assert {key[:16] for key in keys} == set(trace_ids)


TRACE_ORDERS: list[tuple[str, list[tuple[str, bool]]]] = [
    ("", [("start_time", True)]),
    ("span_count desc, cost_usd", [("span_count", True), ("cost_usd", False)]),
    ("input_tokens", [("input_tokens", False)]),
]


@pytest.mark.parametrize(("order_by", "terms"), TRACE_ORDERS, ids=[o or "default" for o, _ in TRACE_ORDERS])
async def test_list_traces_pages(
    shared: RunningCore, data: Dataset, order_by: str, terms: list[tuple[str, bool]]
) -> None:
    expected = _sorted(data.traces, terms, ("trace_id",))
    pages: list[list[bytes]] = []
    token = ""
    while True:
        response = await shared.query.ListTraces(
            Q.ListTracesRequest(tenant=TENANT, page_size=150, page_token=token, order_by=order_by)
        )
        pages.append([t.trace_id for t in response.traces])
        token = response.next_page_token
        if not token:
            break

    assert len(expected) == SPANS // SPANS_PER_TRACE
    _check_pages(pages, expected, 150)


FINDING_ORDERS: list[tuple[str, list[tuple[str, bool]]]] = [
    ("", [("create_time", True)]),
    ("severity desc, confidence", [("severity", True), ("confidence", False)]),
    ("confidence desc, create_time desc", [("confidence", True), ("create_time", True)]),
]


@pytest.mark.parametrize(
    ("order_by", "terms"), FINDING_ORDERS, ids=[o or "default" for o, _ in FINDING_ORDERS]
)
async def test_list_findings_pages(
    shared: RunningCore, data: Dataset, order_by: str, terms: list[tuple[str, bool]]
) -> None:
    expected = _sorted(data.findings, terms, ("id",))
    pages: list[list[str]] = []
    token = ""
    while True:
        response = await shared.query.ListFindings(
            Q.ListFindingsRequest(tenant=TENANT, page_size=97, page_token=token, order_by=order_by)
        )
        pages.append([f.id for f in response.findings])
        token = response.next_page_token
        if not token:
            break

    assert len(expected) == -(-SPANS // 7)
    _check_pages(pages, expected, 97)


async def test_findings_filter_pages(shared: RunningCore, data: Dataset) -> None:
    matching = [r for r in data.findings if r.values["severity"] >= finding_pb2.SEVERITY_MEDIUM]
    expected = _sorted(matching, [("create_time", True)], ("id",))
    pages: list[list[str]] = []
    token = ""
    while True:
        response = await shared.query.ListFindings(
            Q.ListFindingsRequest(tenant=TENANT, page_size=64, page_token=token, filter="severity >= medium")
        )
        pages.append([f.id for f in response.findings])
        token = response.next_page_token
        if not token:
            break

    _check_pages(pages, expected, 64)
