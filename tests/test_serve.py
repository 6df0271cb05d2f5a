"""`llmtrace serve` and `llmtrace shim` as processes: start order, restarts, workers, no orphans."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from llmtrace.supervisor import CORE_OOM_SCORE_ADJ
from tests.processes import CLI, LlmtraceProcess, cli_env, write_yaml
from tools.fake_upstream import run_fake_upstream

KEY = "sk-test-serve-000000000000000"
pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")


def _config(tmp_path: Path, upstream_url: str, **extra: Any) -> Path:
    return write_yaml(
        tmp_path / "config.yaml",
        {
            "listen_addr": "127.0.0.1:0",
            "upstream_url": upstream_url,
            "grpc": {"listen_addr": "127.0.0.1:0"},
            "metrics": {"listen_addr": "127.0.0.1:0"},
            "storage": {"database_path": str(tmp_path / "llmtrace.duckdb")},
            "shipper": {"spool_dir": str(tmp_path / "spool"), "flush_interval_ms": 50},
            "shutdown": {"timeout_seconds": 5},
            **extra,
        },
    )


async def _chat(http: aiohttp.ClientSession, base: str, text: str) -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": text}]}
    headers = {"Authorization": f"Bearer {KEY}"}
    async with http.post(f"http://{base}/v1/chat/completions", json=body, headers=headers) as r:
        assert r.status == 200, await r.text()
        assert (await r.json())["choices"][0]["message"]["content"] == f"Echo: {text}"


def _alive(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    try:
        return "State:\tZ" not in status.read_text()
    except FileNotFoundError:
        return False


def _thread_policies(pid: int) -> set[int]:
    return {os.sched_getscheduler(int(t.name)) for t in Path(f"/proc/{pid}/task").iterdir()}


async def _policies(pid: int) -> set[int]:
    """The scheduling policies of a process's threads, once they settle (the core steps back
    just after it starts serving)."""
    policies: set[int] = set()
    for _ in range(50):
        policies = _thread_policies(pid)
        if policies == {os.SCHED_IDLE}:
            break
        await asyncio.sleep(0.1)
    return policies


def _span_count(tmp_path: Path, grpc_addr: str) -> int | None:
    result = subprocess.run(
        [*CLI, "sql", "SELECT count(*) AS n FROM spans", "--format", "csv", "--grpc-listen-addr", grpc_addr],
        capture_output=True,
        text=True,
        env=cli_env(),
        cwd=tmp_path,
        check=False,
    )
    lines = result.stdout.strip().splitlines()
    return int(lines[-1]) if result.returncode == 0 and lines else None


async def _wait_for_count(tmp_path: Path, grpc_addr: str, expected: int) -> int | None:
    count = None
    for _ in range(100):
        count = await asyncio.to_thread(_span_count, tmp_path, grpc_addr)
        if count == expected:
            break
        await asyncio.sleep(0.2)
    return count


def _oom_score_adj(pid: int) -> int:
    return int(Path(f"/proc/{pid}/oom_score_adj").read_text())


async def test_serve_restarts_a_crashed_core_and_stops_in_order(tmp_path: Path) -> None:
    async with run_fake_upstream() as upstream:
        config = _config(tmp_path, upstream.base_url)
        serve = LlmtraceProcess.start(tmp_path, "serve", "serve", "--config", str(config))
        try:
            ready = await asyncio.to_thread(serve.wait_ready)
            # By default the core runs on CPU the proxy leaves, every thread of it, once it serves;
            # the proxy is on every client's path.
            assert await _policies(ready["core_pid"]) == {os.SCHED_IDLE}
            assert os.sched_getscheduler(ready["worker_pids"][0]) == os.SCHED_OTHER
            # Out of memory, the kernel ends the core (restarted below), not the proxy.
            assert _oom_score_adj(ready["core_pid"]) == CORE_OOM_SCORE_ADJ
            assert _oom_score_adj(ready["worker_pids"][0]) == _oom_score_adj(os.getpid())
            async with aiohttp.ClientSession() as http:
                await _chat(http, ready["http"], "before the crash")
                os.kill(ready["core_pid"], signal.SIGKILL)
                await _chat(http, ready["http"], "during the crash")  # the proxy keeps working
                # The supervisor restarts the core on the same address; the spooled span arrives.
                assert await _wait_for_count(tmp_path, ready["grpc"], 2) == 2, serve.log()
            assert "child exited; restarting" in serve.log()
            assert serve.stop(signal.SIGTERM) == 0, serve.log()
            log = serve.log()
            assert log.rindex("shim stopped") < log.rindex("core stopped")  # workers first, core last
        finally:
            serve.kill()


async def test_killed_supervisor_leaves_no_orphan_holding_the_database(tmp_path: Path) -> None:
    async with run_fake_upstream() as upstream:
        config = _config(tmp_path, upstream.base_url)
        serve = LlmtraceProcess.start(tmp_path, "serve", "serve", "--config", str(config))
        try:
            ready = await asyncio.to_thread(serve.wait_ready)
            children = [ready["core_pid"], *ready["worker_pids"]]
            assert all(_alive(pid) for pid in children)
            serve.process.kill()
            serve.process.wait()
            for _ in range(100):
                if not any(_alive(pid) for pid in children):
                    break
                await asyncio.sleep(0.1)
            assert not any(_alive(pid) for pid in children)
            # The database lock is free: a new core opens the same file.
            again = LlmtraceProcess.start(tmp_path, "core", "core", "--config", str(config))
            try:
                await asyncio.to_thread(again.wait_ready)
            finally:
                again.stop()
        finally:
            serve.kill()


async def test_several_workers_share_the_port_and_sum_their_metrics(tmp_path: Path) -> None:
    async with run_fake_upstream() as upstream:
        config = _config(tmp_path, upstream.base_url, workers=2, core_priority="normal")
        serve = LlmtraceProcess.start(tmp_path, "serve", "serve", "--config", str(config))
        try:
            ready = await asyncio.to_thread(serve.wait_ready)
            assert len(ready["worker_pids"]) == 2
            assert os.sched_getscheduler(ready["core_pid"]) == os.SCHED_OTHER  # as configured
            async with aiohttp.ClientSession() as http:
                # Fresh connections spread over the workers; 40 calls reach both in practice.
                for i in range(40):
                    async with aiohttp.ClientSession() as one:
                        await _chat(one, ready["http"], f"call {i}")
                assert await _wait_for_count(tmp_path, ready["grpc"], 40) == 40
                async with http.get(f"http://{ready['http']}/metrics") as r:
                    metrics = await r.text()
            line = next(ln for ln in metrics.splitlines() if ln.startswith("llmtrace_shim_requests_total{"))
            assert float(line.rsplit(" ", 1)[1]) == 40.0  # summed over both workers
            assert serve.stop(signal.SIGTERM) == 0, serve.log()
        finally:
            serve.kill()


async def test_a_restarted_core_keeps_out_of_the_workers_metrics(tmp_path: Path) -> None:
    # With several workers the supervisor points prometheus_client at a shared directory; a core
    # restarted after that inherited it and its metrics showed on the proxy's /metrics.
    async with run_fake_upstream() as upstream:
        config = _config(tmp_path, upstream.base_url, workers=2)
        serve = LlmtraceProcess.start(tmp_path, "serve", "serve", "--config", str(config))
        try:
            ready = await asyncio.to_thread(serve.wait_ready)
            os.kill(ready["core_pid"], signal.SIGKILL)
            async with aiohttp.ClientSession() as http:
                await _chat(http, ready["http"], "after the restart")
                assert await _wait_for_count(tmp_path, ready["grpc"], 1) == 1, serve.log()
                async with http.get(f"http://{ready['http']}/metrics") as r:
                    metrics = await r.text()
            assert "llmtrace_shim_requests_total" in metrics
            assert "llmtrace_core_" not in metrics and "llmtrace_analysis_" not in metrics
            assert serve.stop(signal.SIGTERM) == 0, serve.log()
        finally:
            serve.kill()


async def test_shim_alone_spools_until_the_core_appears(tmp_path: Path) -> None:
    async with run_fake_upstream() as upstream:
        grpc_port = _free_port()
        config = _config(tmp_path, upstream.base_url, grpc={"listen_addr": f"127.0.0.1:{grpc_port}"})
        shim = LlmtraceProcess.start(tmp_path, "shim", "shim", "--config", str(config))
        try:
            ready = await asyncio.to_thread(shim.wait_ready)
            assert ready["grpc"] == f"127.0.0.1:{grpc_port}"
            async with aiohttp.ClientSession() as http:
                for i in range(3):
                    await _chat(http, ready["http"], f"no core yet {i}")
                async with http.get(f"http://{ready['http']}/health") as r:
                    health = await r.json()
            assert r.status == 200 and health["core"] == "unreachable"
            core = LlmtraceProcess.start(tmp_path, "core", "core", "--config", str(config))
            try:
                await asyncio.to_thread(core.wait_ready)
                assert await _wait_for_count(tmp_path, ready["grpc"], 3) == 3, shim.log()
            finally:
                assert shim.stop() == 0
                core.stop()
        finally:
            shim.kill()


def _free_port() -> int:
    import socket  # noqa: PLC0415

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_an_unwritable_ready_file_stops_everything_with_an_error(tmp_path: Path) -> None:
    # Whoever waits for the ready file would wait forever: serve says so, exits 1 and leaves no
    # child holding the port or the database lock.
    blocker = tmp_path / "afile"
    blocker.write_text("")
    config = _config(tmp_path, "http://127.0.0.1:9")
    result = await asyncio.to_thread(
        subprocess.run,
        [*CLI, "serve", "--config", str(config), "--ready-file", str(blocker / "ready.json")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=cli_env(),
        cwd=tmp_path,
        timeout=90,
        check=False,
    )
    log = result.stdout.decode(errors="replace")
    assert result.returncode == 1, log
    assert "cannot write the ready file" in log and "Traceback" not in log
    again = LlmtraceProcess.start(tmp_path, "core", "core", "--config", str(config))
    try:
        await asyncio.to_thread(again.wait_ready)  # the database lock is free
    finally:
        again.stop()


@pytest.mark.parametrize("command", ["serve", "shim"])
@pytest.mark.parametrize(
    ("spool_dir", "problem"),
    [
        # Before, the worker's spool raised NotADirectoryError: a traceback, and `serve` restarted it.
        ("afile/spool", "is not a directory"),
        # /proc refuses a new directory to anyone, root included. Before, the worker raised from
        # inside (a traceback) and `serve` waited 120 s for it before giving up without the reason.
        ("/proc/llmtrace-spool", "cannot create it"),
    ],
)
async def test_a_spool_directory_that_cannot_be_used_is_a_clear_error_at_once(
    tmp_path: Path, command: str, spool_dir: str, problem: str
) -> None:
    (tmp_path / "afile").write_text("")
    config = _config(tmp_path, "http://127.0.0.1:9")
    started = time.monotonic()
    result = await asyncio.to_thread(
        subprocess.run,
        [*CLI, command, "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=cli_env(LLMTRACE_SHIPPER_SPOOL_DIR=str(tmp_path / spool_dir)),
        cwd=tmp_path,
        timeout=90,
        check=False,
    )
    log = result.stdout.decode(errors="replace")
    assert result.returncode == 1, log
    assert "shipper.spool_dir" in log and problem in log and "Traceback" not in log
    assert time.monotonic() - started < 30
