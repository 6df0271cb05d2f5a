"""QueryService over real gRPC: every filter and order field, boolean logic, tenants, stats.

One dataset is ingested once (module scope); every expectation is computed in Python from the
spans that were sent, never read back from the store.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import grpc
import pytest
import pytest_asyncio
from google.protobuf import duration_pb2, timestamp_pb2

from llmtrace import limits
from llmtrace.api.v1 import finding_pb2, query_service_pb2, span_pb2
from llmtrace.config.schema import SecurityAnalysisSettings
from llmtrace.query import FieldKind, FieldSpec
from llmtrace.store.catalogs import FINDING_FIELDS, SPAN_FIELDS, TRACE_FIELDS
from tests.conftest import RunningCore, core_settings, running_core
from tests.factories import BASE_NS, MS, expect_failure, ingest_all, make_span

pytestmark = pytest.mark.asyncio(loop_scope="module")

Q = query_service_pb2
ACME, BETA = "acme", "beta"
SEVERITY_SCORES = {1: 10, 2: 30, 3: 60, 4: 80, 5: 95}
SEVERITY_NAMES = {1: "info", 2: "low", 3: "medium", 4: "high", 5: "critical"}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
BUCKET_ORIGIN_US = int((datetime(2000, 1, 3, tzinfo=UTC) - EPOCH).total_seconds()) * 1_000_000


def _us(ts: timestamp_pb2.Timestamp) -> int:
    return ts.seconds * 1_000_000 + ts.nanos // 1000


@dataclass
class SpanModel:
    """A sent span and the value of every filter field, as the store should see it."""

    span: span_pb2.Span
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> bytes:
        return self.span.trace_id + self.span.span_id


@dataclass
class FindingModel:
    finding: finding_pb2.Finding
    values: dict[str, Any]

    @property
    def key(self) -> str:
        return self.finding.id


@dataclass
class TraceModel:
    trace_id: bytes
    spans: list[SpanModel]
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> bytes:
        return self.trace_id


@dataclass
class Dataset:
    spans: dict[str, list[SpanModel]]
    findings: dict[str, list[FindingModel]]
    traces: dict[str, list[TraceModel]]


def _span_values(span: span_pb2.Span) -> dict[str, Any]:
    start, end = _us(span.start_time), _us(span.end_time)
    score: int | None = span.security_score if span.HasField("security_score") else None
    if span.findings:
        worst = max(SEVERITY_SCORES[f.severity] for f in span.findings)
        score = worst if score is None else max(score, worst)
    ttft = span.time_to_first_token
    usage, status = span.usage, span.status
    return {
        "trace_id": span.trace_id,
        "span_id": span.span_id,
        "parent_span_id": span.parent_span_id,
        "name": span.name,
        "agent": span.agent,
        "operation": span.operation,
        "provider": span.provider,
        "model": span.request_model,
        "request_model": span.request_model,
        "response_model": span.response_model,
        "session_id": span.session_id,
        "client_address": span.client_address,
        "server_address": span.server_address,
        "upstream_request_id": span.upstream_request_id,
        "api_key_fingerprint": span.api_key_fingerprint,
        "error_type": status.error_type,
        "error": status.error_message,
        "start_time": start,
        "end_time": end,
        "duration_ms": (end - start) / 1000.0,
        "ttft_ms": (ttft.seconds * 1_000_000 + ttft.nanos // 1000) / 1000.0
        if span.HasField("time_to_first_token")
        else -1.0,
        "status_code": status.http_status_code,
        "is_error": status.code == span_pb2.STATUS_CODE_ERROR or status.http_status_code >= 400,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens or usage.input_tokens + usage.output_tokens,
        "cache_read_input_tokens": usage.cache_read_input_tokens,
        "cache_creation_input_tokens": usage.cache_creation_input_tokens,
        "reasoning_output_tokens": usage.reasoning_output_tokens,
        "usage_estimated": usage.estimated,
        "stream": span.request.parameters.stream if span.request.parameters.HasField("stream") else False,
        "cost_usd": span.cost.total_usd if span.cost.HasField("total_usd") else 0.0,
        "security_score": -1 if score is None else score,
        # Not filter fields, but needed for stats.
        "_ttft_us": ttft.seconds * 1_000_000 + ttft.nanos // 1000
        if span.HasField("time_to_first_token")
        else None,
        "_priced": span.cost.HasField("total_usd"),
        "_scored": score is not None,
    }


def _trace_values(spans: list[SpanModel]) -> dict[str, Any]:
    values = [s.values for s in spans]
    start, end = min(v["start_time"] for v in values), max(v["end_time"] for v in values)
    scores = [v["security_score"] for v in values if v["_scored"]]
    return {
        "trace_id": values[0]["trace_id"],
        "start_time": start,
        "end_time": end,
        "duration_ms": (end - start) / 1000.0,
        "span_count": len(values),
        "error_count": sum(1 for v in values if v["is_error"]),
        "input_tokens": sum(v["input_tokens"] for v in values),
        "output_tokens": sum(v["output_tokens"] for v in values),
        "total_tokens": sum(v["total_tokens"] for v in values),
        "cost_usd": sum(v["cost_usd"] for v in values),
        "max_security_score": max(scores) if scores else -1,
        "session_id": max(v["session_id"] for v in values),
        "_models": sorted({v["model"] for v in values if v["model"]}),
        "_agents": sorted({v["agent"] for v in values if v["agent"]}),
    }


def _build_tenant(
    rng: random.Random, tenant: str, traces: int, finding_ids: Iterable[int]
) -> list[span_pb2.Span]:
    """Spans with varied values, many sharing start times (to exercise tiebreaks)."""
    ids = iter(finding_ids)
    spans: list[span_pb2.Span] = []
    models = {
        "openai": ["gpt-4o", "gpt-4o-mini"],
        "anthropic": ["claude-3-5-sonnet"],
        "azure.ai.openai": ["gpt-4o"],
    }
    hosts = {
        "openai": "api.openai.com",
        "anthropic": "api.anthropic.com",
        "azure.ai.openai": "x.openai.azure.com",
    }
    for t in range(traces):
        trace_id = rng.randbytes(16)
        session = rng.choice(["", "sess-a", "sess-b"])
        root = b""
        for s in range(rng.randint(1, 6)):
            provider = rng.choice(sorted(models))
            model = rng.choice(models[provider]) if rng.random() > 0.1 else ""
            operation = rng.choice(["chat", "embeddings", "execute_tool"])
            start_ns = BASE_NS + rng.randrange(0, 40) * 15_000 * MS
            duration = rng.randrange(10, 5000)
            span = span_pb2.Span(
                trace_id=trace_id,
                span_id=rng.randbytes(8),
                parent_span_id=root,
                tenant=tenant,
                agent=rng.choice(["planner", "writer", "critic", ""]),
                operation=operation,
                provider=provider,
                request_model=model,
                response_model=f"{model}-2024" if model and rng.random() > 0.3 else "",
                name=f"{operation} {model}",
                session_id=session,
                client_address=rng.choice(["10.0.0.1", "10.0.0.2", "192.168.1.5"]),
                user_agent="test/1.0",
                upstream_request_id=f"req_{t:02d}_{s}" if rng.random() > 0.2 else "",
                server_address=hosts[provider],
                api_key_fingerprint=rng.choice(["fp:aaa", "fp:bbb"]),
            )
            span.start_time.FromNanoseconds(start_ns)
            span.end_time.FromNanoseconds(start_ns + duration * MS)
            if rng.random() < 0.7:
                span.time_to_first_token.FromMilliseconds(rng.randrange(0, duration))
            roll = rng.random()
            if roll < 0.15:
                span.status.code = span_pb2.STATUS_CODE_ERROR
                span.status.error_type = "timeout"
                span.status.error_message = f"timed out after {duration} ms"
            elif roll < 0.25:
                span.status.code = span_pb2.STATUS_CODE_OK
                span.status.http_status_code = rng.choice([429, 500])
                span.status.error_type = "upstream_error"
                span.status.error_message = "upstream said no"
            else:
                span.status.code = span_pb2.STATUS_CODE_OK
                span.status.http_status_code = rng.choice([200, 200, 0])
            usage = span.usage
            usage.input_tokens = rng.randrange(0, 5000)
            usage.output_tokens = rng.randrange(0, 2000)
            if rng.random() < 0.3:
                usage.total_tokens = usage.input_tokens + usage.output_tokens + rng.randrange(0, 50)
            usage.cache_read_input_tokens = rng.randrange(0, usage.input_tokens + 1)
            usage.cache_creation_input_tokens = rng.randrange(0, 300)
            usage.reasoning_output_tokens = rng.randrange(0, usage.output_tokens + 1)
            usage.estimated = rng.random() < 0.3
            stream = rng.choice([None, True, False])
            if stream is not None:
                span.request.parameters.stream = stream
            if rng.random() < 0.8:
                span.cost.total_usd = rng.randrange(0, 4096) / 1024  # exact in binary: sums are exact
            if rng.random() < 0.1:
                span.security_score = rng.randrange(0, 101)
            for _ in range(rng.choice([0, 0, 0, 1, 2])):
                n = next(ids)
                finding = span.findings.add(
                    id=f"f-{n:03d}",
                    type=rng.choice(["prompt_injection", "pii_detected", "secret_leakage"]),
                    severity=rng.randint(1, 5),
                    confidence=rng.randrange(0, 9) / 8,
                    detector=rng.choice(["regex.injection", "ml.classifier"]),
                    location=rng.choice(["request.messages[0].content", "response.choices[0]"]),
                    description="found something",
                )
                finding.create_time.FromNanoseconds(BASE_NS + (n // 2) * 1_000_000_000)  # ties in pairs
            spans.append(span)
            if s == 0:
                root = span.span_id
    return spans


def _model(spans: list[span_pb2.Span]) -> tuple[list[SpanModel], list[FindingModel], list[TraceModel]]:
    span_models = [SpanModel(s, _span_values(s)) for s in spans]
    findings: list[FindingModel] = []
    for model in span_models:
        for f in model.span.findings:
            findings.append(
                FindingModel(
                    f,
                    {
                        "id": f.id,
                        "trace_id": model.span.trace_id,
                        "span_id": model.span.span_id,
                        "type": f.type,
                        "severity": int(f.severity),
                        "confidence": f.confidence,
                        "detector": f.detector,
                        "location": f.location,
                        "create_time": _us(f.create_time),
                        "model": model.values["model"],
                        "provider": model.values["provider"],
                        "agent": model.values["agent"],
                    },
                )
            )
    by_trace: dict[bytes, list[SpanModel]] = {}
    for model in span_models:
        by_trace.setdefault(model.span.trace_id, []).append(model)
    traces = [TraceModel(tid, members, _trace_values(members)) for tid, members in by_trace.items()]
    return span_models, findings, traces


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningCore]:
    path = tmp_path_factory.mktemp("query") / "llmtrace.duckdb"
    # Post-ack analysis would add scores and findings of its own; these tests check what was sent
    # (tests/test_analysis_worker.py covers analysis).
    settings = core_settings(path)
    settings = dataclasses.replace(settings, security_analysis=SecurityAnalysisSettings(enabled=False))
    async with running_core(settings) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def data(shared: RunningCore) -> Dataset:
    rng = random.Random(20261127)
    acme = _build_tenant(rng, ACME, 14, range(0, 500))
    acme[0].name = "weird *name*"
    beta = _build_tenant(rng, BETA, 4, range(500, 1000))
    # A beta span with the very ids of an acme span (and a critical finding): tenants never mix.
    twin = span_pb2.Span()
    twin.CopyFrom(acme[1])
    twin.tenant = BETA
    twin.ClearField("findings")
    twin.ClearField("security_score")
    twin.findings.add(
        id="f-beta-twin", type="secret_leakage", severity=finding_pb2.SEVERITY_CRITICAL, confidence=1
    )
    twin.findings[0].create_time.FromNanoseconds(BASE_NS)
    beta.append(twin)
    await ingest_all(shared.ingest, acme + beta, batch_size=40)
    acme_model, beta_model = _model(acme), _model(beta)
    dataset = Dataset(
        spans={ACME: acme_model[0], BETA: beta_model[0]},
        findings={ACME: acme_model[1], BETA: beta_model[1]},
        traces={ACME: acme_model[2], BETA: beta_model[2]},
    )
    assert len(dataset.spans[ACME]) >= 40
    assert len(dataset.findings[ACME]) >= 10
    return dataset


# --- listing helpers ---------------------------------------------------------------------------


async def _span_keys(
    core: RunningCore, tenant: str = ACME, filter: str = "", order_by: str = ""
) -> list[bytes]:
    response = await core.query.ListSpans(
        Q.ListSpansRequest(tenant=tenant, page_size=1000, filter=filter, order_by=order_by)
    )
    assert response.next_page_token == ""
    return [s.trace_id + s.span_id for s in response.spans]


async def _trace_keys(
    core: RunningCore, tenant: str = ACME, filter: str = "", order_by: str = ""
) -> list[bytes]:
    response = await core.query.ListTraces(
        Q.ListTracesRequest(tenant=tenant, page_size=1000, filter=filter, order_by=order_by)
    )
    assert response.next_page_token == ""
    return [t.trace_id for t in response.traces]


async def _finding_keys(
    core: RunningCore, tenant: str = ACME, filter: str = "", order_by: str = ""
) -> list[str]:
    response = await core.query.ListFindings(
        Q.ListFindingsRequest(tenant=tenant, page_size=1000, filter=filter, order_by=order_by)
    )
    assert response.next_page_token == ""
    return [f.id for f in response.findings]


Item = SpanModel | FindingModel | TraceModel


def _sorted(items: Sequence[Item], order: Sequence[tuple[str, bool]], tiebreak: Sequence[str]) -> list[Any]:
    """Keys of `items` sorted by (field, descending) terms, then the ascending tiebreak fields."""
    named = {name for name, _ in order}
    terms = [*order, *((name, False) for name in tiebreak if name not in named)]
    result = list(items)
    for name, descending in reversed(terms):  # stable sorts, least significant first
        result.sort(key=lambda item: item.values[name], reverse=descending)
    return [item.key for item in result]


SPAN_DEFAULT = ([("start_time", True)], ("trace_id", "span_id"))
TRACE_DEFAULT = ([("start_time", True)], ("trace_id",))
FINDING_DEFAULT = ([("create_time", True)], ("id",))


def _literal(spec: FieldSpec, value: Any) -> str:
    """`value` written as a filter literal for the field."""
    if spec.kind is FieldKind.STRING:
        escaped = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("*", "\\*")
        return f'"{escaped}"'
    if spec.kind is FieldKind.BOOL:
        return "true" if value else "false"
    if spec.kind is FieldKind.TIMESTAMP:
        text = (EPOCH + timedelta(microseconds=value)).isoformat(timespec="microseconds")
        return '"' + text.replace("+00:00", "Z") + '"'
    if spec.kind is FieldKind.BYTES_HEX:
        return f'"{bytes(value).hex()}"'
    if spec.kind is FieldKind.ENUM:
        return SEVERITY_NAMES[value]
    if spec.kind is FieldKind.FLOAT:
        return repr(float(value))
    return str(value)


_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: bool(a == b),
    ":": lambda a, b: bool(a == b),
    "!=": lambda a, b: bool(a != b),
    "<": lambda a, b: bool(a < b),
    "<=": lambda a, b: bool(a <= b),
    ">": lambda a, b: bool(a > b),
    ">=": lambda a, b: bool(a >= b),
}


def _cases(spec: FieldSpec, items: Sequence[Item]) -> list[tuple[str, Any]]:
    """(operator, literal value) pairs that each split `items` non-trivially."""
    values = sorted({item.values[spec.name] for item in items})
    assert len(values) >= 2, f"dataset has one value only for {spec.name}"
    pivot = values[len(values) // 2]
    if spec.kind in (FieldKind.BOOL, FieldKind.BYTES_HEX):
        return [("=", pivot), ("!=", pivot), (":", pivot)]
    return [
        ("=", pivot),
        ("!=", pivot),
        ("<", pivot),
        ("<=", pivot),
        (">", pivot),
        (">=", pivot),
        (":", values[0]),
    ]


# --- filters: every field ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SPAN_FIELDS))
async def test_every_span_field_filters(shared: RunningCore, data: Dataset, name: str) -> None:
    spec = SPAN_FIELDS[name]
    spans = data.spans[ACME]
    for op, value in _cases(spec, spans):
        text = f"{name} {op} {_literal(spec, value)}"
        expected = _sorted([s for s in spans if _OPS[op](s.values[name], value)], *SPAN_DEFAULT)
        if op in ("=", ":"):
            assert expected, text

        assert await _span_keys(shared, filter=text) == expected, text


@pytest.mark.parametrize("name", sorted(TRACE_FIELDS))
async def test_every_trace_field_filters(shared: RunningCore, data: Dataset, name: str) -> None:
    spec = TRACE_FIELDS[name]
    traces = data.traces[ACME]
    for op, value in _cases(spec, traces):
        text = f"{name} {op} {_literal(spec, value)}"
        expected = _sorted([t for t in traces if _OPS[op](t.values[name], value)], *TRACE_DEFAULT)
        if op in ("=", ":"):
            assert expected, text

        assert await _trace_keys(shared, filter=text) == expected, text


@pytest.mark.parametrize("name", sorted(FINDING_FIELDS))
async def test_every_finding_field_filters(shared: RunningCore, data: Dataset, name: str) -> None:
    spec = FINDING_FIELDS[name]
    findings = data.findings[ACME]
    for op, value in _cases(spec, findings):
        text = f"{name} {op} {_literal(spec, value)}"
        expected = _sorted([f for f in findings if _OPS[op](f.values[name], value)], *FINDING_DEFAULT)
        if op in ("=", ":"):
            assert expected, text

        assert await _finding_keys(shared, filter=text) == expected, text


async def test_filters_on_the_stats_rpc_use_the_span_fields(shared: RunningCore, data: Dataset) -> None:
    for name in ("provider", "input_tokens", "is_error", "ttft_ms", "security_score"):
        spec = SPAN_FIELDS[name]
        op, value = _cases(spec, data.spans[ACME])[0]
        expected = [s for s in data.spans[ACME] if _OPS[op](s.values[name], value)]

        stats = await shared.query.GetStats(
            Q.GetStatsRequest(tenant=ACME, filter=f"{name} {op} {_literal(spec, value)}")
        )

        assert stats.total.span_count == len(expected)
        assert stats.total.input_tokens == sum(s.values["input_tokens"] for s in expected)


def _is(name: str, value: Any) -> Callable[[SpanModel], bool]:
    return lambda s: bool(s.values[name] == value)


def _gt(name: str, value: Any) -> Callable[[SpanModel], bool]:
    return lambda s: bool(s.values[name] > value)


OPENAI, ANTHROPIC = _is("provider", "openai"), _is("provider", "anthropic")
PLANNER, WRITER = _is("agent", "planner"), _is("agent", "writer")
ERROR, STREAM = _is("is_error", True), _is("stream", True)
BIG = _gt("input_tokens", 2500)

LOGIC_CASES: list[tuple[str, Callable[[SpanModel], bool]]] = [
    ("provider = openai AND input_tokens > 2500", lambda s: OPENAI(s) and BIG(s)),
    ("provider = openai input_tokens > 2500", lambda s: OPENAI(s) and BIG(s)),
    ("provider = openai OR provider = anthropic", lambda s: OPENAI(s) or ANTHROPIC(s)),
    ("NOT provider = openai", lambda s: not OPENAI(s)),
    ("-provider = openai", lambda s: not OPENAI(s)),
    (
        "provider = anthropic AND agent = planner OR agent = writer",
        lambda s: ANTHROPIC(s) and (PLANNER(s) or WRITER(s)),
    ),
    (
        "provider = anthropic agent = planner OR agent = writer",
        lambda s: ANTHROPIC(s) and (PLANNER(s) or WRITER(s)),
    ),
    (
        "(provider = anthropic AND agent = planner) OR agent = writer",
        lambda s: (ANTHROPIC(s) and PLANNER(s)) or WRITER(s),
    ),
    ("NOT agent = planner OR is_error = true", lambda s: (not PLANNER(s)) or ERROR(s)),
    ("NOT (provider = openai OR stream = true)", lambda s: not (OPENAI(s) or STREAM(s))),
    ("NOT NOT provider = openai", OPENAI),
    (
        "((provider = openai) AND ((agent = writer) OR (agent = critic)))",
        lambda s: OPENAI(s) and (WRITER(s) or _is("agent", "critic")(s)),
    ),
    (
        "is_error = true AND NOT stream = true AND input_tokens > 2500 OR provider = openai",
        lambda s: ERROR(s) and not STREAM(s) and (BIG(s) or OPENAI(s)),
    ),
    ('model = "gpt-4o*"', lambda s: str(s.values["model"]).startswith("gpt-4o")),
    ('model = "*-mini"', lambda s: str(s.values["model"]).endswith("-mini")),
    ('model = "*4o*"', lambda s: "4o" in str(s.values["model"])),
    ('model != "gpt*"', lambda s: not str(s.values["model"]).startswith("gpt")),
    ('model : "gpt-4o"', _is("model", "gpt-4o")),
    ('name = "weird \\*name\\*"', _is("name", "weird *name*")),
    ('name = "weird \\**"', lambda s: str(s.values["name"]).startswith("weird *")),
    ("name = 'chat gpt-4o'", _is("name", "chat gpt-4o")),
    (
        'start_time >= "2023-11-14T22:18:20Z" start_time < "2023-11-14T22:20:00.000000+00:00"',
        lambda s: 1_700_000_300_000_000 <= s.values["start_time"] < 1_700_000_400_000_000,
    ),
    ('start_time < "2023-11-14T23:20:00+01:00"', lambda s: s.values["start_time"] < 1_700_000_400_000_000),
    ("cost_usd > .5 AND cost_usd <= 2e0", lambda s: 0.5 < s.values["cost_usd"] <= 2.0),
    ("ttft_ms = -1", _is("ttft_ms", -1.0)),
    ("security_score >= 0", lambda s: s.values["security_score"] >= 0),
]


@pytest.mark.parametrize(("text", "predicate"), LOGIC_CASES, ids=[c[0] for c in LOGIC_CASES])
async def test_boolean_logic_wildcards_and_literals(
    shared: RunningCore, data: Dataset, text: str, predicate: Callable[[SpanModel], bool]
) -> None:
    spans = data.spans[ACME]
    expected = _sorted([s for s in spans if predicate(s)], *SPAN_DEFAULT)
    assert len(expected) > 0 or text.startswith("is_error"), text

    assert await _span_keys(shared, filter=text) == expected


# `field:*` means "has a value": the sentinels that unknown values sort as (-1, 0, false) are not one.
SPAN_PRESENCE: dict[str, Callable[[SpanModel], bool]] = {
    "ttft_ms": lambda s: s.values["_ttft_us"] is not None,
    "cost_usd": lambda s: bool(s.values["_priced"]),
    "stream": lambda s: s.span.request.parameters.HasField("stream"),
    "security_score": lambda s: bool(s.values["_scored"]),
    "parent_span_id": lambda s: s.values["parent_span_id"] != b"",
    "response_model": lambda s: s.values["response_model"] != "",
}


@pytest.mark.parametrize("name", sorted(SPAN_PRESENCE))
async def test_has_value_ignores_sort_sentinels(shared: RunningCore, data: Dataset, name: str) -> None:
    spans = data.spans[ACME]
    present = _sorted([s for s in spans if SPAN_PRESENCE[name](s)], *SPAN_DEFAULT)
    absent = _sorted([s for s in spans if not SPAN_PRESENCE[name](s)], *SPAN_DEFAULT)
    assert present and absent, name

    assert await _span_keys(shared, filter=f"{name}:*") == present
    assert await _span_keys(shared, filter=f"NOT {name}:*") == absent
    assert await _span_keys(shared, filter=f"-{name}:*") == absent


async def test_trace_has_security_score_only_when_a_span_was_scored(
    shared: RunningCore, data: Dataset
) -> None:
    traces = data.traces[ACME]
    scored = _sorted([t for t in traces if any(s.values["_scored"] for s in t.spans)], *TRACE_DEFAULT)
    assert 0 < len(scored) < len(traces)

    assert await _trace_keys(shared, filter="max_security_score:*") == scored


async def test_trace_has_a_cost_only_when_a_span_was_priced(shared: RunningCore) -> None:
    # The trace's cost was summed with a 0.0 fallback, so `cost_usd:*` matched every trace.
    tenant = "trace-costs"
    priced, unpriced = make_span(tenant=tenant), make_span(tenant=tenant)
    unpriced.ClearField("cost")
    await ingest_all(shared.ingest, [priced, unpriced])
    for text, expected in (("cost_usd:*", priced), ("NOT cost_usd:*", unpriced)):
        page = await shared.query.ListTraces(query_service_pb2.ListTracesRequest(tenant=tenant, filter=text))
        assert [t.trace_id for t in page.traces] == [expected.trace_id], text
    assert page.traces[0].cost_usd == 0.0  # an unpriced trace still reads as costing nothing


async def test_finding_filters_combine_with_span_fields(shared: RunningCore, data: Dataset) -> None:
    findings = data.findings[ACME]
    text = 'severity >= high AND (provider = openai OR agent = "writer") confidence > 0.25'
    expected = [
        f
        for f in findings
        if f.values["severity"] >= 4
        and (f.values["provider"] == "openai" or f.values["agent"] == "writer")
        and f.values["confidence"] > 0.25
    ]

    assert await _finding_keys(shared, filter=text) == _sorted(expected, *FINDING_DEFAULT)


# --- order_by: every orderable field, both directions -----------------------------------------------


def _orderable(catalog: dict[str, FieldSpec]) -> list[str]:
    return sorted(name for name, spec in catalog.items() if spec.orderable)


@pytest.mark.parametrize("direction", ["asc", "desc"])
@pytest.mark.parametrize("name", _orderable(SPAN_FIELDS))
async def test_spans_order_by_every_field(
    shared: RunningCore, data: Dataset, name: str, direction: str
) -> None:
    expected = _sorted(data.spans[ACME], [(name, direction == "desc")], ("trace_id", "span_id"))

    assert await _span_keys(shared, order_by=f"{name} {direction}") == expected


@pytest.mark.parametrize("direction", ["asc", "desc"])
@pytest.mark.parametrize("name", _orderable(TRACE_FIELDS))
async def test_traces_order_by_every_field(
    shared: RunningCore, data: Dataset, name: str, direction: str
) -> None:
    expected = _sorted(data.traces[ACME], [(name, direction == "desc")], ("trace_id",))

    assert await _trace_keys(shared, order_by=f"{name} {direction}") == expected


@pytest.mark.parametrize("direction", ["asc", "desc"])
@pytest.mark.parametrize("name", _orderable(FINDING_FIELDS))
async def test_findings_order_by_every_field(
    shared: RunningCore, data: Dataset, name: str, direction: str
) -> None:
    expected = _sorted(data.findings[ACME], [(name, direction == "desc")], ("id",))

    assert await _finding_keys(shared, order_by=f"{name} {direction}") == expected


ORDER_CASES = [
    ("provider, duration_ms desc", [("provider", False), ("duration_ms", True)]),
    ("agent desc, model asc, cost_usd desc", [("agent", True), ("model", False), ("cost_usd", True)]),
    ("  is_error DESC ,start_time  ", [("is_error", True), ("start_time", False)]),
    ("span_id desc, trace_id desc", [("span_id", True), ("trace_id", True)]),
]


@pytest.mark.parametrize(("order_by", "terms"), ORDER_CASES, ids=[c[0] for c in ORDER_CASES])
async def test_spans_order_by_several_fields(
    shared: RunningCore, data: Dataset, order_by: str, terms: list[tuple[str, bool]]
) -> None:
    expected = _sorted(data.spans[ACME], terms, ("trace_id", "span_id"))

    assert await _span_keys(shared, order_by=order_by) == expected


async def test_default_orders(shared: RunningCore, data: Dataset) -> None:
    assert await _span_keys(shared) == _sorted(data.spans[ACME], *SPAN_DEFAULT)
    assert await _trace_keys(shared) == _sorted(data.traces[ACME], *TRACE_DEFAULT)
    assert await _finding_keys(shared) == _sorted(data.findings[ACME], *FINDING_DEFAULT)


async def test_list_traces_returns_exact_summaries(shared: RunningCore, data: Dataset) -> None:
    response = await shared.query.ListTraces(Q.ListTracesRequest(tenant=ACME, page_size=1000))
    by_id = {t.trace_id: t for t in data.traces[ACME]}

    assert len(response.traces) == len(by_id)
    for trace in response.traces:
        want = by_id[trace.trace_id].values
        assert trace.tenant == ACME
        assert _us(trace.start_time) == want["start_time"]
        assert _us(trace.end_time) == want["end_time"]
        assert (trace.span_count, trace.error_count) == (want["span_count"], want["error_count"])
        assert (trace.input_tokens, trace.output_tokens) == (want["input_tokens"], want["output_tokens"])
        assert trace.cost_usd == want["cost_usd"]
        score = trace.max_security_score if trace.HasField("max_security_score") else -1
        assert score == want["max_security_score"]
        assert list(trace.models) == want["_models"]
        assert list(trace.agents) == want["_agents"]
        assert trace.session_id == want["session_id"]
        assert list(trace.spans) == []


async def test_list_findings_returns_exact_findings(shared: RunningCore, data: Dataset) -> None:
    response = await shared.query.ListFindings(Q.ListFindingsRequest(tenant=ACME, page_size=1000))
    sent = {f.finding.id: f for f in data.findings[ACME]}

    assert len(response.findings) == len(sent)
    for got in response.findings:
        model = sent[got.id]
        want = finding_pb2.Finding()
        want.CopyFrom(model.finding)
        want.tenant = ACME
        want.trace_id = model.values["trace_id"]
        want.span_id = model.values["span_id"]
        assert got == want


# --- tenant isolation -------------------------------------------------------------------------------


async def test_tenants_never_see_each_other(shared: RunningCore, data: Dataset) -> None:
    beta_spans = data.spans[BETA]
    acme_spans = data.spans[ACME]
    everything = "input_tokens >= 0"

    assert await _span_keys(shared, BETA, filter=everything) == _sorted(beta_spans, *SPAN_DEFAULT)
    assert await _trace_keys(shared, BETA) == _sorted(data.traces[BETA], *TRACE_DEFAULT)
    assert await _finding_keys(shared, BETA) == _sorted(data.findings[BETA], *FINDING_DEFAULT)
    assert await _span_keys(shared, "gamma") == []
    stats = await shared.query.GetStats(Q.GetStatsRequest(tenant=BETA))
    assert stats.total.span_count == len(beta_spans)
    assert stats.total.input_tokens == sum(s.values["input_tokens"] for s in beta_spans)

    twin_trace = acme_spans[1].span.trace_id
    beta_only = next(s for s in beta_spans if s.span.trace_id != twin_trace)
    acme_only = next(s for s in acme_spans if s.span.trace_id != twin_trace)
    for tenant, span in ((ACME, beta_only.span), (BETA, acme_only.span)):
        missing_span = await expect_failure(
            shared.query.GetSpan(Q.GetSpanRequest(tenant=tenant, span_id=span.span_id))
        )
        missing_trace = await expect_failure(
            shared.query.GetTrace(Q.GetTraceRequest(tenant=tenant, trace_id=span.trace_id))
        )
        assert missing_span.code == missing_trace.code == grpc.StatusCode.NOT_FOUND


async def test_same_ids_in_two_tenants_stay_apart(shared: RunningCore, data: Dataset) -> None:
    acme_span = data.spans[ACME][1]
    trace_model = next(t for t in data.traces[ACME] if t.trace_id == acme_span.span.trace_id)

    acme = await shared.query.GetSpan(
        Q.GetSpanRequest(tenant=ACME, span_id=acme_span.span.span_id, trace_id=acme_span.span.trace_id)
    )
    beta = await shared.query.GetSpan(
        Q.GetSpanRequest(tenant=BETA, span_id=acme_span.span.span_id, trace_id=acme_span.span.trace_id)
    )
    acme_trace = await shared.query.GetTrace(Q.GetTraceRequest(tenant=ACME, trace_id=acme_span.span.trace_id))
    beta_trace = await shared.query.GetTrace(Q.GetTraceRequest(tenant=BETA, trace_id=acme_span.span.trace_id))

    assert [f.id for f in acme.span.findings] == sorted(f.id for f in acme_span.span.findings)
    assert [f.id for f in beta.span.findings] == ["f-beta-twin"]
    acme_score = acme.span.security_score if acme.span.HasField("security_score") else -1
    assert acme_score == acme_span.values["security_score"]
    assert beta.span.security_score == 95
    assert acme_trace.trace.span_count == trace_model.values["span_count"]
    assert beta_trace.trace.span_count == 1
    assert [s.tenant for s in acme_trace.trace.spans] == [ACME] * trace_model.values["span_count"]


# --- GetStats ---------------------------------------------------------------------------------------


def _quantile(values: Sequence[float], q: float) -> float:
    """DuckDB's quantile_cont: linear interpolation between the closest ranks."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q
    low, high = math.floor(rank), math.ceil(rank)
    if low == high:
        return ordered[low]
    return ordered[low] + (rank - low) * (ordered[high] - ordered[low])


def _duration(ms: float | None) -> duration_pb2.Duration | None:
    if ms is None:
        return None
    value = duration_pb2.Duration()
    value.FromMicroseconds(round(ms * 1000))
    return value


def _expected_stats(spans: Sequence[SpanModel]) -> query_service_pb2.Stats:
    values = [s.values for s in spans]
    count = len(values)
    errors = sum(1 for v in values if v["is_error"])
    durations = [v["duration_ms"] for v in values]
    ttfts = [v["_ttft_us"] / 1000.0 for v in values if v["_ttft_us"] is not None]
    return Q.Stats(
        span_count=count,
        trace_count=len({v["trace_id"] for v in values}),
        error_count=errors,
        error_rate=errors / count if count else 0.0,
        input_tokens=sum(v["input_tokens"] for v in values),
        output_tokens=sum(v["output_tokens"] for v in values),
        total_tokens=sum(v["total_tokens"] for v in values),
        cost_usd=sum(v["cost_usd"] for v in values),
        latency_p50=_duration(_quantile(durations, 0.5) if durations else None),
        latency_p95=_duration(_quantile(durations, 0.95) if durations else None),
        latency_p99=_duration(_quantile(durations, 0.99) if durations else None),
        ttft_p50=_duration(_quantile(ttfts, 0.5) if ttfts else None),
    )


def _bucket(start_us: int, width_us: int) -> int:
    return BUCKET_ORIGIN_US + (start_us - BUCKET_ORIGIN_US) // width_us * width_us


KEY_OF: dict[int, str] = {
    Q.STATS_DIMENSION_MODEL: "model",
    Q.STATS_DIMENSION_PROVIDER: "provider",
    Q.STATS_DIMENSION_AGENT: "agent",
}


def _expected_groups(
    spans: Sequence[SpanModel], dims: Sequence[int], width_us: int
) -> list[query_service_pb2.StatsGroup]:
    def key(span: SpanModel) -> tuple[Any, ...]:
        return tuple(
            _bucket(span.values["start_time"], width_us)
            if d == Q.STATS_DIMENSION_TIME
            else span.values[KEY_OF[d]]
            for d in dims
        )

    groups: dict[tuple[Any, ...], list[SpanModel]] = {}
    for span in spans:
        groups.setdefault(key(span), []).append(span)
    out = []
    for group_key in sorted(groups):
        group = Q.StatsGroup(stats=_expected_stats(groups[group_key]))
        for d, value in zip(dims, group_key, strict=True):
            if d == Q.STATS_DIMENSION_TIME:
                group.bucket_start.FromMicroseconds(value)
            else:
                setattr(group, KEY_OF[d], value)
        out.append(group)
    return out


async def _stats(
    core: RunningCore, *, dims: Sequence[int] = (), **fields: Any
) -> query_service_pb2.GetStatsResponse:
    request = Q.GetStatsRequest(tenant=ACME, **fields)
    request.group_by.extend(cast("list[query_service_pb2.StatsDimension.ValueType]", list(dims)))
    return await core.query.GetStats(request)


async def test_stats_totals(shared: RunningCore, data: Dataset) -> None:
    spans = data.spans[ACME]

    response = await _stats(shared)

    expected = _expected_stats(spans)
    assert response.total == expected
    assert list(response.groups) == []
    # The numbers are not degenerate.
    assert 0 < expected.error_count < expected.span_count
    assert expected.latency_p50.ToMicroseconds() < expected.latency_p95.ToMicroseconds()
    assert expected.latency_p95.ToMicroseconds() < expected.latency_p99.ToMicroseconds()
    assert expected.HasField("ttft_p50")


STATS_GROUPINGS: list[tuple[str, list[int], int | None]] = [
    ("model", [Q.STATS_DIMENSION_MODEL], None),
    ("provider", [Q.STATS_DIMENSION_PROVIDER], None),
    ("agent", [Q.STATS_DIMENSION_AGENT], None),
    ("time-default-hour", [Q.STATS_DIMENSION_TIME], None),
    ("time-1-minute", [Q.STATS_DIMENSION_TIME], 60),
    ("time-7-seconds", [Q.STATS_DIMENSION_TIME], 7),
    ("provider-model", [Q.STATS_DIMENSION_PROVIDER, Q.STATS_DIMENSION_MODEL], None),
    ("model-provider", [Q.STATS_DIMENSION_MODEL, Q.STATS_DIMENSION_PROVIDER], None),
    ("time-agent", [Q.STATS_DIMENSION_TIME, Q.STATS_DIMENSION_AGENT], 120),
    (
        "all-four",
        [
            Q.STATS_DIMENSION_AGENT,
            Q.STATS_DIMENSION_TIME,
            Q.STATS_DIMENSION_PROVIDER,
            Q.STATS_DIMENSION_MODEL,
        ],
        300,
    ),
]


@pytest.mark.parametrize(
    ("dims", "width_s"), [c[1:] for c in STATS_GROUPINGS], ids=[c[0] for c in STATS_GROUPINGS]
)
async def test_stats_groups(shared: RunningCore, data: Dataset, dims: list[int], width_s: int | None) -> None:
    spans = data.spans[ACME]
    fields: dict[str, Any] = {}
    if width_s is not None:
        fields["bucket_width"] = duration_pb2.Duration(seconds=width_s)

    response = await _stats(shared, dims=dims, **fields)

    expected = _expected_groups(spans, dims, (width_s or 3600) * 1_000_000)
    assert response.total == _expected_stats(spans)
    assert len(response.groups) == len(expected)
    assert list(response.groups) == expected
    assert len(expected) > 1 or width_s is None  # the dataset spans less than an hour


async def test_stats_with_filter_and_time_window(shared: RunningCore, data: Dataset) -> None:
    start_us, end_us = 1_700_000_150_000_000, 1_700_000_450_000_000
    selected = [
        s
        for s in data.spans[ACME]
        if start_us <= s.values["start_time"] < end_us
        and not s.values["is_error"]
        and s.values["provider"] != "anthropic"
    ]
    window = {
        "start_time": timestamp_pb2.Timestamp(seconds=start_us // 1_000_000),
        "end_time": timestamp_pb2.Timestamp(seconds=end_us // 1_000_000),
    }

    response = await _stats(
        shared,
        dims=[Q.STATS_DIMENSION_PROVIDER, Q.STATS_DIMENSION_TIME],
        filter="is_error = false AND provider != anthropic",
        bucket_width=duration_pb2.Duration(seconds=90),
        **window,
    )

    assert 0 < len(selected) < len(data.spans[ACME])
    assert response.total == _expected_stats(selected)
    dims = [Q.STATS_DIMENSION_PROVIDER, Q.STATS_DIMENSION_TIME]
    assert list(response.groups) == _expected_groups(selected, dims, 90_000_000)


async def test_stats_start_time_is_inclusive_and_end_time_exclusive(
    shared: RunningCore, data: Dataset
) -> None:
    starts = sorted({s.values["start_time"] for s in data.spans[ACME]})
    low, high = starts[1], starts[-2]
    selected = [s for s in data.spans[ACME] if low <= s.values["start_time"] < high]
    start, end = timestamp_pb2.Timestamp(), timestamp_pb2.Timestamp()
    start.FromMicroseconds(low)
    end.FromMicroseconds(high)

    response = await _stats(shared, start_time=start, end_time=end)

    assert response.total.span_count == len(selected)
    assert response.total == _expected_stats(selected)


async def test_stats_of_nothing(shared: RunningCore) -> None:
    response = await _stats(shared, dims=[Q.STATS_DIMENSION_MODEL], filter='provider = "nobody"')

    assert response.total == Q.Stats()
    assert not response.total.HasField("latency_p50")
    assert not response.total.HasField("ttft_p50")
    assert list(response.groups) == []


async def test_stats_of_a_group_without_ttft_leaves_ttft_unset(shared: RunningCore, data: Dataset) -> None:
    without = [s for s in data.spans[ACME] if s.values["_ttft_us"] is None]
    assert without
    response = await _stats(shared, filter="ttft_ms = -1")

    assert response.total == _expected_stats(without)
    assert not response.total.HasField("ttft_p50")
    assert response.total.HasField("latency_p50")


async def _ingest_groups(
    core: RunningCore, tenant: str, count: int, agent_chars: int, model: str = "gpt-4o"
) -> None:
    """`count` spans of `tenant`, each its own agent (zero-padded numbers, so key order is numeric)
    and its own one-second bucket."""
    spans = []
    for i in range(count):
        span = make_span(tenant=tenant, model=model, start_ns=BASE_NS + i * 1_000_000_000)
        span.agent = f"{i:06d}".ljust(agent_chars, "a")
        spans.append(span)
    await ingest_all(core.ingest, spans, batch_size=2000)


async def test_stats_with_more_groups_than_a_response_holds_says_it_cut_them(shared: RunningCore) -> None:
    tenant = "stats-many-groups"
    await _ingest_groups(shared, tenant, 10_003, agent_chars=8)

    for dims, fields in (
        ([Q.STATS_DIMENSION_AGENT], {}),
        ([Q.STATS_DIMENSION_TIME], {"bucket_width": duration_pb2.Duration(seconds=1)}),
    ):
        request = Q.GetStatsRequest(tenant=tenant, **fields)  # type: ignore[arg-type]
        request.group_by.extend(dims)
        response = await shared.query.GetStats(request)

        assert response.truncated
        assert len(response.groups) == 10_000
        assert response.total.span_count == 10_003  # the total still covers every span
        assert sum(g.stats.span_count for g in response.groups) == 10_000
        if dims == [Q.STATS_DIMENSION_AGENT]:
            assert [g.agent[:6] for g in response.groups[:3]] == ["000000", "000001", "000002"]

    narrow = await shared.query.GetStats(
        Q.GetStatsRequest(tenant=tenant, group_by=[Q.STATS_DIMENSION_AGENT], filter='agent = "000007*"')
    )
    assert not narrow.truncated and len(narrow.groups) == 1


async def test_stats_groups_are_cut_to_what_a_default_client_reads(shared: RunningCore) -> None:
    tenant = "stats-long-agents"
    # About 750 bytes a group: 9,000 of them are 6.5 MB.
    await _ingest_groups(shared, tenant, 9_000, agent_chars=limits.MAX_AGENT_CHARS, model="m" * 400)

    request = Q.GetStatsRequest(tenant=tenant, group_by=[Q.STATS_DIMENSION_AGENT, Q.STATS_DIMENSION_MODEL])
    response = await shared.query.GetStats(request)  # a default client: 4 MiB at most

    assert response.truncated
    assert 0 < len(response.groups) < 9_000
    assert response.ByteSize() <= 4 * 1024 * 1024
    assert response.total.span_count == 9_000
