"""Nothing lost: a core killed under load, and a shim stopped under load, lose no span."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc

from llmtrace.api.v1 import query_service_pb2, query_service_pb2_grpc
from llmtrace.config.schema import ShipperSettings, ShutdownSettings
from shim.server import ShimWorker, bind_socket
from tests.conftest import core_settings, running_core, running_shim, shim_settings
from tests.processes import LlmtraceProcess, write_yaml
from tests.test_shipper import _FakeCore
from tools.fake_upstream import FakeUpstreamConfig, run_fake_upstream

KEY = "sk-test-delivery-00000000000000"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _until(condition: Callable[[], bool], wait_s: float = 60.0) -> None:
    for _ in range(int(wait_s / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in time")


async def _count(grpc_addr: str, tenant: str) -> tuple[int, int]:
    """(rows, distinct span ids) of the tenant's spans, through ExecuteSql."""
    async with grpc.aio.insecure_channel(grpc_addr) as channel:
        reply = await query_service_pb2_grpc.QueryServiceStub(channel).ExecuteSql(
            query_service_pb2.ExecuteSqlRequest(
                tenant=tenant, query="SELECT count(*) AS n, count(DISTINCT span_id) AS d FROM spans"
            )
        )
    row = reply.rows[0].values
    return int(row[0].int_value), int(row[1].int_value)


async def _load(base_url: str, total: int, concurrency: int, tenant: str, done: list[str]) -> list[str]:
    """Send `total` chat calls; returns the upstream request ids of the ones answered with 200."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)
    errors: list[str] = []

    async def worker(http: aiohttp.ClientSession) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            body = {"model": "gpt-4o", "messages": [{"role": "user", "content": f"request {i}"}]}
            headers = {"Authorization": f"Bearer {KEY}", "X-LLMTrace-Tenant": tenant}
            try:
                async with http.post(base_url + "/v1/chat/completions", json=body, headers=headers) as r:
                    await r.read()
                    if r.status == 200:
                        done.append(r.headers["x-request-id"])
                    else:
                        errors.append(str(r.status))
            except aiohttp.ClientError as exc:
                errors.append(type(exc).__name__)

    async with aiohttp.ClientSession() as http:
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
    return errors


async def test_core_killed_under_load_loses_nothing(tmp_path: Path) -> None:
    grpc_addr = f"127.0.0.1:{_free_port()}"
    config = write_yaml(
        tmp_path / "core.yaml",
        {
            "grpc": {"listen_addr": grpc_addr},
            "metrics": {"enabled": False},
            "storage": {"database_path": str(tmp_path / "db.duckdb")},
        },
    )
    core = LlmtraceProcess.start(tmp_path, "core", "core", "--config", str(config))
    core.wait_ready()
    settings = shim_settings(
        tmp_path,
        "http://unused",
        shipper=ShipperSettings(
            spool_dir=str(tmp_path / "spool"),
            dead_letter_path=str(tmp_path / "dead.jsonl"),
            flush_interval_ms=20,
            batch_max_spans=50,
            retry_initial_ms=50,
            retry_max_ms=300,
            rpc_timeout_ms=2000,
        ),
    )
    done: list[str] = []
    try:
        async with run_fake_upstream() as upstream:
            settings = dataclasses.replace(settings, upstream_url=upstream.base_url)
            async with running_shim(settings, grpc_addr) as shim:
                load = asyncio.create_task(_load(shim.base_url, 1000, 16, "acme", done))
                await _until(lambda: len(done) >= 250)
                core.stop(signal.SIGKILL)  # mid-load: batches in flight and queued
                await _until(lambda: len(done) >= 600)
                core = LlmtraceProcess.start(tmp_path, "core2", "core", "--config", str(config))
                core.wait_ready()
                errors = await load
                assert not errors
                assert len(done) == 1000
                for _ in range(300):
                    rows, distinct = await _count(grpc_addr, "acme")
                    if rows >= 1000:
                        break
                    await asyncio.sleep(0.1)
        assert (rows, distinct) == (1000, 1000)
    finally:
        core.stop()


async def test_a_stop_with_a_request_that_never_ends_fits_in_the_grace_period(tmp_path: Path) -> None:
    # The drain took the whole grace period and the flush a second more: past a Kubernetes grace
    # period set from shutdown.timeout_seconds, the SIGKILL lost what was still in memory.
    # (The span of the cut request is spooled, its send to the hung core given up.)
    grace = 2.0
    config = FakeUpstreamConfig(chunk_delay_s=5.0)  # its next chunk comes after the grace period
    # A core that never answers: the flush waits for it as long as it is allowed to.
    async with run_fake_upstream(config) as upstream, _FakeCore(None) as core:
        settings = shim_settings(tmp_path, upstream.base_url)
        settings = dataclasses.replace(settings, shutdown=ShutdownSettings(timeout_seconds=grace))
        sock = bind_socket(settings.listen_addr)
        worker = await ShimWorker.start(settings, sock, core_addr=core.addr)
        try:
            async with aiohttp.ClientSession() as http:
                body = {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
                request = asyncio.ensure_future(
                    http.post(
                        f"http://{worker.address}/v1/chat/completions",
                        json=body,
                        headers={"Authorization": "Bearer sk-test-0123456789"},
                    )
                )
                await _until(
                    lambda: worker.app.ctx.proxy is not None and worker.app.ctx.proxy.in_flight == 1,
                    wait_s=10,
                )
                started = asyncio.get_running_loop().time()
                await worker.stop(grace)
                assert asyncio.get_running_loop().time() - started < grace + 0.5
                spooled = await asyncio.to_thread(
                    lambda: list(Path(settings.shipper.spool_dir).rglob("*.batch"))
                )
                assert spooled  # the cut request's span waits there for the core
                request.cancel()
        finally:
            sock.close()


async def test_shim_sigterm_under_load_loses_nothing(tmp_path: Path) -> None:
    async with run_fake_upstream() as upstream, running_core(core_settings(tmp_path / "db.duckdb")) as core:
        config = write_yaml(
            tmp_path / "shim.yaml",
            {
                "listen_addr": "127.0.0.1:0",
                "upstream_url": upstream.base_url,
                "core_addr": core.bound.grpc,
                "shipper": {"spool_dir": str(tmp_path / "spool"), "flush_interval_ms": 50},
                "logging": {"access_log": False},
            },
        )
        shim = LlmtraceProcess.start(tmp_path, "shim", "shim", "--config", str(config))
        try:
            ready = shim.wait_ready()
            done: list[str] = []
            load = asyncio.create_task(_load(f"http://{ready['http']}", 2000, 16, "acme", done))
            await _until(lambda: len(done) >= 300)
            shim.process.send_signal(signal.SIGTERM)
            await load
            code = await asyncio.to_thread(shim.process.wait, 60)
            assert code == 0, shim.log()
        finally:
            shim.kill()
        assert len(done) >= 300
        rows, distinct = await _count(core.bound.grpc, "acme")
        assert rows == distinct
        # Every call the client saw answered is in the core; nothing was left in the spool.
        async with grpc.aio.insecure_channel(core.bound.grpc) as channel:
            reply = await query_service_pb2_grpc.QueryServiceStub(channel).ExecuteSql(
                query_service_pb2.ExecuteSqlRequest(
                    tenant="acme", query="SELECT upstream_request_id FROM spans"
                )
            )
        stored = {r.values[0].string_value for r in reply.rows}
        assert set(done) <= stored
        leftovers: list[Any] = [
            p for p in (tmp_path / "spool").rglob("*") if p.is_file() and p.suffix != ".lock"
        ]
        assert not [p for p in leftovers if p.name != "lock"], leftovers
