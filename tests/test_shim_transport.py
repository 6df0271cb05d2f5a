"""Transport guarantees: chunk-by-chunk streaming, verbatim forwarding, trace context, no key leaks."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import duckdb
import pytest

from llmtrace.config.schema import MetricsSettings
from tests.conftest import OpenAIFactory, Stack, running_stack
from tools.fake_upstream import FakeUpstreamConfig

KEY = "sk-proj-SECRETKEY0123456789abcdefXYZ"
LLMTRACE_KEY = "llmt-secret-key-must-not-leak-42"


async def test_stream_arrives_chunk_by_chunk(make_client: OpenAIFactory, tmp_path: Path) -> None:
    async with running_stack(tmp_path, FakeUpstreamConfig(chunk_delay_s=1.0)) as stack:
        client = make_client(api_key=KEY, base_url=stack.shim.base_url + "/v1", max_retries=0)
        started = time.monotonic()
        stream = await client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "two words"}], stream=True
        )
        arrivals = [time.monotonic() - started async for _ in stream]
    # One second between upstream chunks must show as one second between client arrivals: the
    # i-th chunk arrives no earlier than about i seconds after the first (buffering would bring
    # them all at once). Measured from the first, so one late chunk cannot shrink a later gap.
    assert len(arrivals) >= 4
    assert all(at - arrivals[0] >= 0.8 * i for i, at in enumerate(arrivals)), arrivals


async def test_response_headers_and_verbatim_request(stack: Stack) -> None:
    body = b'{"model":"gpt-4o",  "messages":[{"role":"user","content":"keep   my   spacing"}]}'
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            stack.shim.base_url + "/v1/chat/completions?api-version=2024-06-01&key=hidden",
            data=body,
            headers={
                "Authorization": f"Bearer {KEY}",
                "Content-Type": "application/json",
                "X-LLMTrace-Tenant": "t1",
                "X-LLMTrace-Key": LLMTRACE_KEY,
                "X-Custom": "kept",
                "Connection": "keep-alive, X-Hop",
                "X-Hop": "dropped",
            },
        ) as r,
    ):
        assert r.status == 200
        await r.read()
    forwarded = stack.upstream.last_request
    assert forwarded.body == body  # byte for byte
    assert forwarded.query_string == "api-version=2024-06-01&key=hidden"
    assert forwarded.headers["x-custom"] == "kept"
    assert "x-hop" not in forwarded.headers
    assert not [h for h in forwarded.headers if h.startswith("x-llmtrace")]
    assert "user-agent" not in forwarded.headers or "aiohttp" in forwarded.headers["user-agent"]
    (span,) = await stack.spans("t1")
    query = {a.key: a.value.string_value for a in span.attributes}.get("url.query", "")
    assert "hidden" not in query and "api-version=2024-06-01" in query


async def test_sse_responses_carry_no_buffering_header(stack: Stack) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            stack.shim.base_url + "/v1/chat/completions",
            json={"model": "gpt-4o", "messages": [{"role": "user", "content": "s"}], "stream": True},
            headers={"Authorization": f"Bearer {KEY}"},
        ) as r,
    ):
        assert r.headers["X-Accel-Buffering"] == "no"
        assert r.headers["Content-Type"].startswith("text/event-stream")
        text = (await r.read()).decode()
    assert text.rstrip().endswith("data: [DONE]")


async def test_traceparent_is_honoured_and_forwarded(make_client: OpenAIFactory, stack: Stack) -> None:
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    client = make_client(
        api_key=KEY,
        base_url=stack.shim.base_url + "/v1",
        max_retries=0,
        default_headers={"traceparent": f"00-{trace_id}-{parent}-01"},
    )
    await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "t"}])
    (span,) = await stack.spans()
    assert span.trace_id.hex() == trace_id
    assert span.parent_span_id.hex() == parent
    forwarded = stack.upstream.last_request.headers["traceparent"]
    assert forwarded == f"00-{trace_id}-{span.span_id.hex()}-01"


async def test_session_header_groups_calls_into_one_trace(make_client: OpenAIFactory, stack: Stack) -> None:
    client = make_client(
        api_key=KEY,
        base_url=stack.shim.base_url + "/v1",
        max_retries=0,
        default_headers={"X-LLMTrace-Session": "conversation-7", "X-LLMTrace-Agent-ID": "legacy-agent"},
    )
    for text in ("one", "two"):
        await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": text}])
    spans = await stack.spans(expected=2)
    assert len({s.trace_id for s in spans}) == 1
    assert {s.session_id for s in spans} == {"conversation-7"}
    assert {s.agent for s in spans} == {"legacy-agent"}


async def test_health_and_metrics(make_client: OpenAIFactory, stack: Stack) -> None:
    client = make_client(api_key=KEY, base_url=stack.shim.base_url + "/v1", max_retries=0)
    await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "m"}])
    await stack.spans()
    async with aiohttp.ClientSession() as http:
        async with http.get(stack.shim.base_url + "/health") as r:
            health: dict[str, Any] = await r.json()
            assert r.status == 200
        async with http.get(stack.shim.base_url + "/metrics") as r:
            metrics = await r.text()
    assert health["status"] == "ok" and health["core"] == "reachable"
    assert health["spool_bytes"] == 0
    assert 'llmtrace_shim_requests_total{operation="chat",status_class="2xx"}' in metrics
    assert "llmtrace_shim_spans_shipped_total" in metrics


async def test_health_reports_a_down_core_without_failing(make_client: OpenAIFactory, tmp_path: Path) -> None:
    async with running_stack(tmp_path) as stack:
        await stack.core.core.stop()
        async with aiohttp.ClientSession() as http, http.get(stack.shim.base_url + "/health") as r:
            assert r.status == 200
            assert (await r.json())["core"] == "unreachable"
        # The proxy still works while the core is down; the span waits in the spool.
        client = make_client(api_key=KEY, base_url=stack.shim.base_url + "/v1", max_retries=0)
        answer = await client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "still here"}]
        )
        assert answer.choices[0].message.content == "Echo: still here"


@pytest.mark.parametrize("bodies", ["full", "redacted", "metadata"])
async def test_no_key_in_database_spool_or_logs(
    make_client: OpenAIFactory,
    tmp_path: Path,
    bodies: str,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from llmtrace.config.schema import CaptureSettings, LoggingSettings  # noqa: PLC0415

    async with running_stack(
        tmp_path,
        capture=CaptureSettings(bodies=bodies),
        logging=LoggingSettings(access_log=True),
    ) as stack:
        headers = {"X-LLMTrace-Key": LLMTRACE_KEY, "api-key": KEY, "Cookie": "session=" + KEY}
        client = make_client(
            api_key=KEY, base_url=stack.shim.base_url + "/v1", max_retries=0, default_headers=headers
        )
        await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "k"}])
        stream = await client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "k"}], stream=True
        )
        _ = [c async for c in stream]
        await stack.spans(expected=2)
        await stack.core.core.stop()  # checkpoint: everything in the file
        # Shipped while the core is down: this one lands in the spool.
        await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "s"}])
        await asyncio.sleep(0.3)
    secrets = (KEY, LLMTRACE_KEY)
    files = _files(tmp_path)
    assert any(p.suffix == ".duckdb" for p in files)
    for path in files:
        data = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in data, path
    with duckdb.connect(str(tmp_path / "llmtrace.duckdb"), read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM span_rows").fetchall()[0][0] == 2
    captured = capsys.readouterr()
    logs = captured.out + captured.err + caplog.text
    for secret in secrets:
        assert secret not in logs
    # The access log names the requested model, whoever reads the body (shim or core).
    access = [line for line in logs.splitlines() if "request" in line and "/v1/chat/completions" in line]
    assert len(access) == 3 and all("model=gpt-4o" in line for line in access), access


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


async def test_head_and_unknown_routes_pass_through(stack: Stack) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    async with aiohttp.ClientSession() as http:
        results = []
        for base in (stack.upstream.base_url, stack.shim.base_url):
            async with http.head(base + "/v1/models", headers=headers) as r:
                head = (r.status, r.headers.get("Content-Type"), await r.read())
            async with http.get(base + "/v1/no/such/route?x=1", headers=headers) as r:
                unknown = (r.status, await r.read())
            results.append((head, unknown))
    assert results[0] == results[1]
    spans = await stack.spans(expected=2)
    assert sorted(s.status.http_status_code for s in spans) == sorted([results[0][0][0], results[0][1][0]])


async def test_metrics_off_leaves_the_path_to_the_upstream(tmp_path: Path) -> None:
    # `metrics.enabled: false` said "do not serve metrics"; the proxy port served them anyway.
    off = MetricsSettings(enabled=False, listen_addr="127.0.0.1:0")
    headers = {"Authorization": f"Bearer {KEY}"}
    async with (
        running_stack(tmp_path, metrics=off) as stack,
        aiohttp.ClientSession() as http,
        http.get(stack.shim.base_url + "/metrics", headers=headers) as r,
    ):
        body = await r.text()
    assert "llmtrace_shim_requests_total" not in body
    assert [request.path for request in stack.upstream.requests] == ["/metrics"]
