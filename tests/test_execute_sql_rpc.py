"""ExecuteSql over real gRPC: results, row caps, tenant scoping, refusals and the time limit."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from llmtrace.api.v1 import finding_pb2, query_service_pb2
from llmtrace.config import SqlSettings
from tests.conftest import RunningCore, core_settings, running_core
from tests.factories import BASE_NS, MS, expect_failure, ingest_all, make_finding, make_span
from tests.sql_rows import plain_rows

pytestmark = pytest.mark.asyncio(loop_scope="module")

Q = query_service_pb2
ACME, BETA = "acme", "beta"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningCore]:
    path = tmp_path_factory.mktemp("sql") / "llmtrace.duckdb"
    async with running_core(core_settings(path)) as running:
        acme = [
            make_span(tenant=ACME, start_ns=BASE_NS + i * 1000 * MS, model=f"model-{i}") for i in range(5)
        ]
        for i, span in enumerate(acme):
            span.span_id = bytes([0, 0, 0, 0, 0, 0, 0, i + 1])
            span.usage.input_tokens = 100 * (i + 1)
        acme[1].trace_id = acme[0].trace_id
        acme[0].findings.append(make_finding("prompt_injection", finding_pb2.SEVERITY_HIGH, 0.5))
        acme[2].findings.append(make_finding("pii_detected", finding_pb2.SEVERITY_LOW, 0.25))
        beta = [make_span(tenant=BETA, start_ns=BASE_NS, model="beta-secret-model") for _ in range(2)]
        beta[0].findings.append(make_finding("secret_leakage", finding_pb2.SEVERITY_CRITICAL, 1.0))
        await ingest_all(running.ingest, acme + beta)
        yield running


async def _sql(core: RunningCore, query: str, tenant: str = ACME, max_rows: int = 0) -> Q.ExecuteSqlResponse:
    return await core.query.ExecuteSql(Q.ExecuteSqlRequest(tenant=tenant, query=query, max_rows=max_rows))


def _columns(response: Q.ExecuteSqlResponse) -> list[tuple[str, str]]:
    return [(c.name, c.type) for c in response.columns]


async def test_select_over_spans(shared: RunningCore) -> None:
    response = await _sql(
        shared,
        "SELECT span_id, request_model, input_tokens, start_time, duration_ms, is_error "
        "FROM spans ORDER BY span_id",
    )

    assert _columns(response) == [
        ("span_id", "VARCHAR"),
        ("request_model", "VARCHAR"),
        ("input_tokens", "BIGINT"),
        ("start_time", "TIMESTAMP WITH TIME ZONE"),
        ("duration_ms", "DOUBLE"),
        ("is_error", "BOOLEAN"),
    ]
    assert plain_rows(response) == [
        [
            f"000000000000000{i + 1}",
            f"model-{i}",
            100 * (i + 1),
            f"2023-11-14T22:13:{20 + i}+00:00",
            120.0,
            False,
        ]
        for i in range(5)
    ]
    assert response.truncated is False


async def test_select_over_findings_and_traces(shared: RunningCore) -> None:
    findings = await _sql(shared, "SELECT type, severity, confidence FROM findings ORDER BY type")
    traces = await _sql(
        shared, "SELECT span_count, input_tokens, models FROM traces ORDER BY span_count DESC, input_tokens"
    )

    assert _columns(findings) == [("type", "VARCHAR"), ("severity", "VARCHAR"), ("confidence", "DOUBLE")]
    assert plain_rows(findings) == [["pii_detected", "low", 0.25], ["prompt_injection", "high", 0.5]]
    assert [name for name, _ in _columns(traces)] == ["span_count", "input_tokens", "models"]
    assert _columns(traces)[0][1] == "BIGINT"
    assert _columns(traces)[2][1] == "VARCHAR[]"
    assert plain_rows(traces) == [
        [2, 300, ["model-0", "model-1"]],
        [1, 300, ["model-2"]],
        [1, 400, ["model-3"]],
        [1, 500, ["model-4"]],
    ]


async def test_aggregates_joins_and_ctes(shared: RunningCore) -> None:
    response = await _sql(
        shared,
        "WITH flagged AS (SELECT span_id FROM findings) "
        "SELECT s.request_model, count(f.span_id) AS n FROM spans AS s "
        "LEFT JOIN flagged AS f ON f.span_id = s.span_id GROUP BY ALL ORDER BY 1",
    )

    assert plain_rows(response) == [
        ["model-0", 1],
        ["model-1", 0],
        ["model-2", 1],
        ["model-3", 0],
        ["model-4", 0],
    ]


async def test_result_value_types(shared: RunningCore) -> None:
    response = await _sql(
        shared,
        "SELECT NULL AS n, true AS b, 1.5::DOUBLE AS d, 2.25::DECIMAL(10, 2) AS dec, 'x'::BLOB AS bl, "
        "[1, 2] AS l, {'k': 'v'} AS st, DATE '2024-02-29' AS dt, INTERVAL 90 MINUTE AS iv, "
        "18446744073709551615::UBIGINT AS big, (-170141183460469231731687303715884105727)::HUGEINT AS huge, "
        "42::HUGEINT AS small",
    )

    assert plain_rows(response) == [
        [
            None,
            True,
            1.5,
            2.25,
            b"x",
            [1, 2],
            {"k": "v"},
            "2024-02-29",
            "1:30:00",
            "18446744073709551615",
            "-170141183460469231731687303715884105727",
            42,
        ]
    ]


async def test_max_rows_truncates(shared: RunningCore) -> None:
    query = "SELECT span_id FROM spans ORDER BY span_id"

    three = await _sql(shared, query, max_rows=3)
    five = await _sql(shared, query, max_rows=5)
    default = await _sql(shared, query)

    assert (len(three.rows), three.truncated) == (3, True)
    assert plain_rows(three) == plain_rows(five)[:3]
    assert (len(five.rows), five.truncated) == (5, False)
    assert (len(default.rows), default.truncated) == (5, False)


async def test_server_row_cap_wins_over_a_larger_request(tmp_path: Path) -> None:
    settings = core_settings(tmp_path / "capped.duckdb")
    settings = dataclasses.replace(settings, sql=SqlSettings(max_rows=2, timeout_seconds=10.0))
    async with running_core(settings) as capped:
        await ingest_all(capped.ingest, [make_span(start_ns=BASE_NS + i * MS) for i in range(4)])

        asked_more = await _sql(capped, "SELECT * FROM spans", max_rows=100)
        asked_none = await _sql(capped, "SELECT * FROM spans")

        assert (len(asked_more.rows), asked_more.truncated) == (2, True)
        assert (len(asked_none.rows), asked_none.truncated) == (2, True)


async def test_each_tenant_sees_only_its_rows(shared: RunningCore) -> None:
    for view, acme_count, beta_count in (("spans", 5, 2), ("findings", 2, 1), ("traces", 4, 2)):
        acme = await _sql(shared, f"SELECT DISTINCT tenant, count(*) OVER () FROM {view}", ACME)
        beta = await _sql(shared, f"SELECT DISTINCT tenant, count(*) OVER () FROM {view}", BETA)
        gamma = await _sql(shared, f"SELECT count(*) FROM {view}", "gamma")
        assert plain_rows(acme) == [[ACME, acme_count]], view
        assert plain_rows(beta) == [[BETA, beta_count]], view
        assert plain_rows(gamma) == [[0]], view

    leak = await _sql(
        shared,
        "SELECT count(*) FROM spans WHERE tenant <> 'acme' OR request_model = 'beta-secret-model' "
        "UNION ALL SELECT count(*) FROM (SELECT * FROM findings, traces) WHERE tenant = 'beta'",
        ACME,
    )
    assert plain_rows(leak) == [[0], [0]]


REFUSALS: list[tuple[str, grpc.StatusCode]] = [
    ("SELECT * FROM read_text('/etc/passwd')", grpc.StatusCode.PERMISSION_DENIED),
    ("SELECT * FROM read_csv('/etc/passwd')", grpc.StatusCode.PERMISSION_DENIED),
    ("SELECT * FROM '/etc/passwd'", grpc.StatusCode.PERMISSION_DENIED),
    ("COPY (SELECT 1) TO '/tmp/llmtrace-test-x.csv'", grpc.StatusCode.PERMISSION_DENIED),
    ("ATTACH '/tmp/llmtrace-test-x.db' AS x", grpc.StatusCode.PERMISSION_DENIED),
    ("SELECT 1; SELECT 2", grpc.StatusCode.INVALID_ARGUMENT),
    ("SELECT * FROM span_rows", grpc.StatusCode.PERMISSION_DENIED),
    ("SELECT * FROM core_meta", grpc.StatusCode.PERMISSION_DENIED),
    ("SELECT * FROM main.spans", grpc.StatusCode.PERMISSION_DENIED),
    ("INSTALL httpfs", grpc.StatusCode.PERMISSION_DENIED),
    ("LOAD httpfs", grpc.StatusCode.PERMISSION_DENIED),
    ("SELECT * FROM duckdb_settings()", grpc.StatusCode.PERMISSION_DENIED),
    ("SELECT getenv('HOME')", grpc.StatusCode.PERMISSION_DENIED),
    ("SELECT current_setting('threads')", grpc.StatusCode.PERMISSION_DENIED),
    ("PRAGMA version", grpc.StatusCode.PERMISSION_DENIED),
    ("SET threads = 1", grpc.StatusCode.PERMISSION_DENIED),
    ("CREATE TABLE x AS SELECT 1", grpc.StatusCode.PERMISSION_DENIED),
    ("DELETE FROM spans", grpc.StatusCode.PERMISSION_DENIED),
    ("DESCRIBE spans", grpc.StatusCode.PERMISSION_DENIED),
    ("SELEC 1", grpc.StatusCode.INVALID_ARGUMENT),
    ("", grpc.StatusCode.INVALID_ARGUMENT),
    ("SELECT nope FROM spans", grpc.StatusCode.INVALID_ARGUMENT),
]


@pytest.mark.parametrize(("query", "code"), REFUSALS, ids=[q or "<empty>" for q, _ in REFUSALS])
async def test_refused_queries(shared: RunningCore, query: str, code: grpc.StatusCode) -> None:
    failure = await expect_failure(_sql(shared, query))

    assert failure.code == code, failure
    assert failure.reason == "SQL_REFUSED"
    assert failure.domain == "llmtrace.dev"
    assert failure.fields == ["query"]
    assert failure.violations[0][1] == failure.message
    assert failure.request_id


async def test_refusals_leave_no_trace(shared: RunningCore) -> None:
    for query, _ in REFUSALS:
        await expect_failure(_sql(shared, query))

    for leftover in ("/tmp/llmtrace-test-x.csv", "/tmp/llmtrace-test-x.db"):
        assert not await asyncio.to_thread(Path(leftover).exists)
    count = await _sql(shared, "SELECT count(*) FROM spans")
    assert plain_rows(count) == [[5]]


async def test_slow_query_hits_the_deadline(tmp_path: Path) -> None:
    settings = core_settings(tmp_path / "slow.duckdb")
    settings = dataclasses.replace(settings, sql=SqlSettings(max_rows=100, timeout_seconds=0.3))
    slow = (
        "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 1000000000) "
        "SELECT count(*) FROM r"
    )
    async with running_core(settings) as core:
        started = time.monotonic()
        failure = await expect_failure(_sql(core, slow))
        elapsed = time.monotonic() - started
        after = await _sql(core, "SELECT 42")

        assert failure.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert failure.reason == "SQL_TIMEOUT"
        assert failure.message == "query exceeded 0.3 s"
        assert 0.3 <= elapsed < 5.0
        assert plain_rows(after) == [[42]]
