"""Proxy benchmark: what the shim adds to a call, what it sustains, and what it holds in memory.

Everything runs on this machine, side by side in one run: the fake OpenAI-compatible upstream
(`python -m tools.fake_upstream`), `llmtrace serve` at its default configuration (only ports and
paths changed: capture and shipping to the core on, the access log off as by default), a bare
Sanic + aiohttp passthrough (tools/bench/passthrough.py) and the load generators (wrk, and aiohttp in this
process). Figures:

1. Added latency, non-streaming chat, one connection (`wrk -t1 -c1`): p50 and p99 direct to the
   fake upstream and through the shim, in alternating rounds; the median of the rounds is kept.
2. Throughput, one shim worker, 32 connections (`wrk -t2 -c32`, after a warm-up): direct, the
   passthrough (on uvloop, as Sanic and the shim run, and on the asyncio loop for comparison)
   and the shim, in alternating rounds; CPU of every process over each run from /proc/<pid>/stat;
   afterwards the spans the core holds are counted over ExecuteSql.
3. Time to first token: sequential streaming chat requests from an aiohttp client, direct and
   through the shim interleaved; time from sending to the first body chunk.
4. Memory: a shim alone (`llmtrace shim`, shipping to the same core) in front of a fake upstream
   that waits `--hold-chunk-delay` seconds between chunks; VmRSS of the shim worker at idle (after
   a warm-up) and while it holds `--hold-connections` concurrent streams that have all received
   their first chunk.

    .venv/bin/python tools/bench/proxy.py                 # full run (about 3 minutes)
    .venv/bin/python tools/bench/proxy.py --quick         # smoke run (about 40 seconds)
    .venv/bin/python tools/bench/proxy.py --json FILE     # also write the figures to FILE

wrk is installed with apt-get when it is missing (as root, or through sudo). Results also go to
bench-data/proxy-results.json. See docs/benchmarks.md ("Proxy").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import aiohttp
import grpc

from llmtrace.api.v1 import query_service_pb2, query_service_pb2_grpc
from tools.bench.benchlib import (
    BENCH_DATA,
    REPO,
    machine_facts,
    percentile,
    process_cpu_seconds,
    thread_cpu_seconds,
)

WRK_SCRIPT = Path(__file__).resolve().parent / "wrk" / "chat.lua"
RESULTS_FILE = BENCH_DATA / "proxy-results.json"
AUTH = "Bearer sk-bench-0000000000000000"

GOAL_ADDED_P50_MS = 0.5
GOAL_ADDED_P99_MS = 2.0
GOAL_RPS = 3000.0
GOAL_RATIO = 0.80
GOAL_TTFT_ADDED_P50_MS = 1.0

_START_TIMEOUT_S = 60.0


# --------------------------------------------------------------------------- wrk


def ensure_wrk() -> str:
    """The path of wrk, installing the Debian package first when it is missing."""
    found = shutil.which("wrk")
    if found:
        return found
    apt = shutil.which("apt-get")
    prefix: list[str] = []
    if os.geteuid() != 0:
        sudo = shutil.which("sudo")
        prefix = [sudo, "-n"] if sudo else []
    if apt is None or (os.geteuid() != 0 and not prefix):
        raise SystemExit("wrk is not installed; install it (Debian/Ubuntu: apt-get install -y wrk) and rerun")
    print("wrk is missing: installing it with apt-get install -y wrk ...", flush=True)
    install = [*prefix, apt, "install", "-y", "-q", "wrk"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(install, env=env, stdout=subprocess.DEVNULL, check=False).returncode != 0:
        subprocess.run([*prefix, apt, "update", "-q"], env=env, stdout=subprocess.DEVNULL, check=False)
        subprocess.run(install, env=env, stdout=subprocess.DEVNULL, check=False)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("could not install wrk with apt-get; install it by hand and rerun")
    return found


@dataclass
class WrkRun:
    """One wrk run: its figures, and the CPU each watched process used over it."""

    target: str
    connections: int
    requests: int
    duration_s: float
    rps: float
    p50_us: float
    p90_us: float
    p99_us: float
    mean_us: float
    max_us: float
    errors: dict[str, int]
    cpu_pct: dict[str, float] = field(default_factory=dict)
    """% of one core over the run, per process (200% = both cores of a 2-core machine)."""
    proxy_threads_pct: dict[str, float] = field(default_factory=dict)
    """% of one core over the run, per thread of the `proxy` process (by OS thread name)."""


def run_wrk(
    wrk: str,
    target: str,
    addr: str,
    *,
    threads: int,
    connections: int,
    duration_s: float,
    watch: dict[str, int] | None = None,
) -> WrkRun:
    """Run wrk with the chat script against `addr`; CPU of `watch` processes (and wrk) over it."""
    cmd = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        "--latency",
        "-s",
        str(WRK_SCRIPT),
        f"http://{addr}",
    ]
    watch = watch or {}
    proxy_pid = watch.get("proxy")
    threads0 = thread_cpu_seconds(proxy_pid) if proxy_pid else {}
    before = {name: process_cpu_seconds(pid) for name, pid in watch.items()}
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    after = {name: process_cpu_seconds(pid) for name, pid in watch.items()}
    threads1 = thread_cpu_seconds(proxy_pid) if proxy_pid else {}
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    data = json.loads(line.split(" ", 1)[1])
    duration = data["duration_us"] / 1e6
    cpu = {name: 100.0 * (after[name] - before[name]) / duration for name in watch}
    wrk_cpu = (children1.ru_utime + children1.ru_stime) - (children0.ru_utime + children0.ru_stime)
    cpu["wrk"] = 100.0 * wrk_cpu / wall
    per_thread: dict[str, float] = {}
    for tid, (comm, used) in threads1.items():
        label = "main (event loop)" if tid == proxy_pid else comm
        delta = used - threads0.get(tid, (comm, 0.0))[1]
        per_thread[label] = per_thread.get(label, 0.0) + 100.0 * delta / duration
    return WrkRun(
        target=target,
        connections=connections,
        requests=int(data["requests"]),
        duration_s=duration,
        rps=data["requests"] / duration,
        p50_us=float(data["p50_us"]),
        p90_us=float(data["p90_us"]),
        p99_us=float(data["p99_us"]),
        mean_us=float(data["mean_us"]),
        max_us=float(data["max_us"]),
        errors={k: int(data[k]) for k in ("connect", "read", "write", "status", "timeout")},
        cpu_pct=cpu,
        proxy_threads_pct={k: v for k, v in sorted(per_thread.items(), key=lambda kv: -kv[1]) if v >= 0.5},
    )


# --------------------------------------------------------------------------- processes


@dataclass
class Proc:
    """A child process with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        """Its process id."""
        return self.popen.pid

    def tail(self, lines: int = 30) -> str:
        """The end of its log."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM, then SIGKILL when it does not stop in time."""
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


def free_port() -> int:
    """A TCP port nothing listens on right now (for programs that cannot report port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Processes:
    """Starts children into a work directory and stops them all (last started first)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._procs: list[Proc] = []

    def start(
        self, name: str, cmd: Sequence[str], *, cwd: Path | None = None, env: dict[str, str] | None = None
    ) -> Proc:
        """Start `cmd` with stdout and stderr into `<workdir>/<name>.log`."""
        log = self.workdir / f"{name}.log"
        env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        with log.open("wb") as out:
            popen = subprocess.Popen(
                list(cmd), stdout=out, stderr=subprocess.STDOUT, cwd=cwd or REPO, env=env
            )
        proc = Proc(name, popen, log)
        self._procs.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        """Stop one child now."""
        proc.stop()
        if proc in self._procs:
            self._procs.remove(proc)

    def stop_all(self) -> None:
        """Stop every child still running."""
        for proc in reversed(self._procs):
            proc.stop()
        self._procs.clear()


def wait_ready(proc: Proc, ready: Path, timeout: float = _START_TIMEOUT_S) -> dict[str, Any]:
    """The JSON a server writes to its ready file once serving."""
    deadline = time.monotonic() + timeout
    while True:
        if ready.exists():
            with contextlib.suppress(ValueError):
                data: dict[str, Any] = json.loads(ready.read_text())
                return data
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{proc.name} not ready after {timeout:.0f}s:\n{proc.tail()}")
        time.sleep(0.05)


def wait_port(proc: Proc, port: int, timeout: float = _START_TIMEOUT_S) -> None:
    """Wait until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{proc.name} not listening after {timeout:.0f}s:\n{proc.tail()}")
        time.sleep(0.05)


def start_fake_upstream(procs: Processes, name: str, chunk_delay_s: float = 0.0) -> tuple[Proc, str]:
    """A fake upstream on a free port; returns it and its `host:port`."""
    port = free_port()
    cmd = [sys.executable, "-m", "tools.fake_upstream", "--port", str(port)]
    if chunk_delay_s:
        cmd += ["--chunk-delay", str(chunk_delay_s)]
    proc = procs.start(name, cmd)
    wait_port(proc, port)
    return proc, f"127.0.0.1:{port}"


def start_shim(
    procs: Processes, name: str, core: str, upstream: str, env: dict[str, str] | None = None
) -> tuple[Proc, str, int]:
    """`llmtrace shim` alone (the worker is the process itself), shipping to `core`; (proc, addr, pid)."""
    workdir = procs.workdir / name
    workdir.mkdir()
    ready = workdir / "ready.json"
    proc = procs.start(
        name,
        [
            sys.executable,
            "-m",
            "llmtrace.cli.main",
            "shim",
            "--core",
            core,
            "--listen-addr",
            "127.0.0.1:0",
            "--upstream-url",
            f"http://{upstream}",
            "--ready-file",
            str(ready),
        ],
        cwd=workdir,
        env=env,
    )
    info = wait_ready(proc, ready)
    return proc, str(info["http"]), int(info["pid"])


def vm_rss_kib(pid: int) -> int:
    """VmRSS of a process, KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def open_fds(pid: int) -> int:
    """Open file descriptors of a process."""
    return sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())


def raise_nofile(want: int) -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE (children inherit it) as far as allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


# --------------------------------------------------------------------------- core queries


def count_spans(grpc_addr: str) -> int:
    """`SELECT count(*) FROM spans` for tenant `default`, over the core's ExecuteSql."""
    with grpc.insecure_channel(grpc_addr) as channel:
        stub = query_service_pb2_grpc.QueryServiceStub(channel)
        response = stub.ExecuteSql(
            query_service_pb2.ExecuteSqlRequest(tenant="default", query="SELECT count(*) FROM spans"),
            timeout=30,
        )
    value = response.rows[0].values[0]
    kind = value.WhichOneof("value")
    return int(getattr(value, kind)) if kind else 0


def wait_spans(
    grpc_addr: str, at_least: int, *, stable_s: float = 5.0, timeout: float = 60.0
) -> tuple[int, float]:
    """Poll the span count until it reaches `at_least` or stops growing; (count, seconds waited)."""
    started = time.monotonic()
    last, stable_since = -1, started
    while True:
        count = count_spans(grpc_addr)
        now = time.monotonic()
        if count >= at_least:
            return count, now - started
        if count != last:
            last, stable_since = count, now
        elif now - stable_since > stable_s or now - started > timeout:
            return count, now - started
        time.sleep(0.25)


# --------------------------------------------------------------------------- streaming clients


def _stream_body(text: str) -> bytes:
    return json.dumps(
        {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": text}]}
    ).encode()


_HEADERS = {"Authorization": AUTH, "Content-Type": "application/json"}


async def _ttft_once(session: aiohttp.ClientSession, url: str, body: bytes) -> float:
    t0 = time.perf_counter()
    async with session.post(url, data=body, headers=_HEADERS) as response:
        first = await response.content.readany()
        ttft = time.perf_counter() - t0
        if response.status != 200 or not first:
            raise RuntimeError(f"streaming call to {url} answered {response.status}")
        await response.read()
    return ttft


async def measure_ttft(direct: str, shim: str, requests: int, warmup: int) -> dict[str, list[float]]:
    """Sequential streaming chats, direct and via the shim interleaved; seconds to the first chunk."""
    body = _stream_body("Stream a short answer about benchmarks, please.")
    urls = {"direct": f"http://{direct}/v1/chat/completions", "shim": f"http://{shim}/v1/chat/completions"}
    out: dict[str, list[float]] = {"direct": [], "shim": []}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        for i in range(warmup + requests):
            order = ("direct", "shim") if i % 2 == 0 else ("shim", "direct")
            for name in order:
                ttft = await _ttft_once(session, urls[name], body)
                if i >= warmup:
                    out[name].append(ttft)
    return out


async def hold_streams(shim: str, pid: int, connections: int, wait_s: float) -> dict[str, Any]:
    """Open `connections` concurrent streams through the shim; the worker's RSS once all flow."""
    # About 120 words: as many chunks, so each stream lasts minutes at a 1 s chunk delay.
    body = _stream_body(" ".join(f"word{i}" for i in range(120)))
    url = f"http://{shim}/v1/chat/completions"
    first = 0
    all_flowing = asyncio.Event()
    release = asyncio.Event()
    failures: list[str] = []

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal first
        try:
            async with session.post(url, data=body, headers=_HEADERS) as response:
                chunk = await response.content.readany()
                if response.status != 200 or not chunk:
                    failures.append(f"status {response.status}")
                    return
                first += 1
                if first == connections:
                    all_flowing.set()
                await release.wait()
        except (aiohttp.ClientError, TimeoutError) as exc:
            failures.append(f"{type(exc).__name__}: {exc}")

    timeout_cfg = aiohttp.ClientTimeout(total=None, sock_connect=60, sock_read=120)
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout_cfg) as session:
        t0 = time.perf_counter()
        tasks = [asyncio.create_task(one(session)) for _ in range(connections)]
        waiter = asyncio.create_task(all_flowing.wait())
        everyone = asyncio.gather(*tasks, return_exceptions=True)
        pending: list[asyncio.Future[Any]] = [waiter, everyone]
        await asyncio.wait(pending, timeout=wait_s, return_when="FIRST_COMPLETED")
        opened_s = time.perf_counter() - t0
        await asyncio.sleep(1.0)  # let the worker settle with every stream open
        rss = vm_rss_kib(pid)
        fds = open_fds(pid)
        flowing = first
        release.set()
        waiter.cancel()
        for task in tasks:
            task.cancel()
        await everyone
    return {
        "flowing": flowing,
        "failures": len(failures),
        "failure_sample": failures[:3],
        "open_s": opened_s,
        "rss_kib": rss,
        "worker_fds": fds,
    }


async def _warm_json(addr: str, requests: int) -> None:
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "warm up"}]}).encode()
    async with aiohttp.ClientSession() as session:
        for _ in range(requests):
            async with session.post(f"http://{addr}/v1/chat/completions", data=body, headers=_HEADERS) as r:
                await r.read()


# --------------------------------------------------------------------------- the benchmark


@dataclass
class Options:
    """What to run, and for how long."""

    latency_duration_s: float = 5.0
    latency_rounds: int = 3
    duration_s: float = 10.0
    warmup_s: float = 2.0
    rounds: int = 2
    connections: int = 32
    ttft_requests: int = 300
    ttft_warmup: int = 20
    hold_connections: int = 1000
    hold_chunk_delay_s: float = 1.0


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _print(msg: str) -> None:
    print(msg, flush=True)


def run_proxy(opts: Options) -> dict[str, Any]:
    """Run every part; returns all figures (also the summary rows under `rows`)."""
    wrk = ensure_wrk()
    nofile = raise_nofile(opts.hold_connections * 3 + 1024)
    workdir = Path(tempfile.mkdtemp(prefix="llmtrace-bench-proxy-"))
    procs = Processes(workdir)
    results: dict[str, Any] = {"options": asdict(opts), "rlimit_nofile": list(nofile)}
    try:
        results.update(_run(opts, wrk, procs, workdir))
    except BaseException:
        _print(f"--- logs kept in {workdir}")
        procs.stop_all()
        raise
    procs.stop_all()
    shutil.rmtree(workdir, ignore_errors=True)
    return results


def _run(opts: Options, wrk: str, procs: Processes, workdir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    upstream, upstream_addr = start_fake_upstream(procs, "fake-upstream")
    # llmtrace serve at its default configuration; only addresses and paths are changed.
    serve_dir = workdir / "serve"
    serve_dir.mkdir()
    config = serve_dir / "llmtrace.yaml"
    config.write_text(
        "listen_addr: 127.0.0.1:0\n"
        f"upstream_url: http://{upstream_addr}\n"
        "grpc:\n  listen_addr: 127.0.0.1:0\n"
        "metrics:\n  listen_addr: 127.0.0.1:0\n"
        f"storage:\n  database_path: {json.dumps(str(serve_dir / 'llmtrace.duckdb'))}\n"
    )
    ready = serve_dir / "ready.json"
    serve = procs.start(
        "serve",
        [
            sys.executable,
            "-m",
            "llmtrace.cli.main",
            "serve",
            "--config",
            str(config),
            "--ready-file",
            str(ready),
        ],
        cwd=serve_dir,
    )
    info = wait_ready(serve, ready)
    shim_addr, grpc_addr = str(info["http"]), str(info["grpc"])
    worker_pid, core_pid = int(info["worker_pids"][0]), int(info["core_pid"])
    passthroughs: dict[str, str] = {}
    passthrough_pids: dict[str, int] = {}
    for loop in ("uvloop", "asyncio"):
        pt_ready = workdir / f"passthrough-{loop}.json"
        pt = procs.start(
            f"passthrough-{loop}",
            [
                sys.executable,
                str(Path(__file__).with_name("passthrough.py")),
                "--upstream",
                f"http://{upstream_addr}",
                "--listen",
                "127.0.0.1:0",
                "--loop",
                loop,
                "--ready-file",
                str(pt_ready),
            ],
        )
        pt_info = wait_ready(pt, pt_ready)
        passthroughs[loop] = str(pt_info["http"])
        passthrough_pids[loop] = int(pt_info["pid"])
    # The same shim with its access log on (a separate `llmtrace shim`, same core): shows what
    # the per-request log line costs; informational, the goals are measured on `serve`.
    _, quiet_addr, quiet_pid = start_shim(
        procs, "shim-access-log", grpc_addr, upstream_addr, env={"LLMTRACE_LOGGING_ACCESS_LOG": "true"}
    )
    _print(
        f"fake upstream {upstream_addr} (pid {upstream.pid}); llmtrace serve: shim {shim_addr} "
        f"(worker pid {worker_pid}), core {grpc_addr} (pid {core_pid}); passthrough "
        + ", ".join(f"{k} {v}" for k, v in passthroughs.items())
    )

    # ------------------------------------------------------------------ 1. added latency
    _print(
        f"\n--- 1. latency, non-streaming chat, wrk -t1 -c1, {opts.latency_rounds} rounds x "
        f"{opts.latency_duration_s:.0f}s per target"
    )
    for addr in (upstream_addr, shim_addr):  # warm both paths (pools, caches)
        run_wrk(wrk, "warm-up", addr, threads=1, connections=1, duration_s=opts.warmup_s)
    lat_runs: dict[str, list[WrkRun]] = {"direct": [], "shim": []}
    for r in range(opts.latency_rounds):
        order = [("direct", upstream_addr), ("shim", shim_addr)]
        if r % 2:
            order.reverse()
        for name, addr in order:
            run = run_wrk(wrk, name, addr, threads=1, connections=1, duration_s=opts.latency_duration_s)
            lat_runs[name].append(run)
            _print(
                f"  round {r + 1} {name:6} p50 {run.p50_us / 1000:.3f} ms  p99 {run.p99_us / 1000:.3f} ms  "
                f"{run.rps:,.0f} req/s  errors {sum(run.errors.values())}"
            )
    lat: dict[str, dict[str, Any]] = {
        name: {
            "p50_ms": _median([x.p50_us for x in runs]) / 1000,
            "p99_ms": _median([x.p99_us for x in runs]) / 1000,
            "mean_ms": _median([x.mean_us for x in runs]) / 1000,
            "errors": sum(sum(x.errors.values()) for x in runs),
            "runs": [asdict(x) for x in runs],
        }
        for name, runs in lat_runs.items()
    }
    added_p50 = lat["shim"]["p50_ms"] - lat["direct"]["p50_ms"]
    added_p99 = lat["shim"]["p99_ms"] - lat["direct"]["p99_ms"]
    out["latency"] = {**lat, "added_p50_ms": added_p50, "added_p99_ms": added_p99}
    _print(
        f"  median of rounds: direct p50 {lat['direct']['p50_ms']:.3f} / "
        f"p99 {lat['direct']['p99_ms']:.3f} ms; shim p50 {lat['shim']['p50_ms']:.3f} / "
        f"p99 {lat['shim']['p99_ms']:.3f} ms; "
        f"added p50 {added_p50:.3f} ms, p99 {added_p99:.3f} ms"
    )

    # ------------------------------------------------------------------ 2. throughput
    _print(
        f"\n--- 2. throughput, wrk -t2 -c{opts.connections}, {opts.rounds} rounds x {opts.duration_s:.0f}s "
        f"per target (after {opts.warmup_s:.0f}s warm-up each)"
    )
    targets: list[tuple[str, str, dict[str, int]]] = [
        ("direct", upstream_addr, {"upstream": upstream.pid}),
        (
            "passthrough (uvloop)",
            passthroughs["uvloop"],
            {"proxy": passthrough_pids["uvloop"], "upstream": upstream.pid},
        ),
        (
            "passthrough (asyncio loop)",
            passthroughs["asyncio"],
            {"proxy": passthrough_pids["asyncio"], "upstream": upstream.pid},
        ),
        ("shim", shim_addr, {"proxy": worker_pid, "core": core_pid, "upstream": upstream.pid}),
        (
            "shim, access log on",
            quiet_addr,
            {"proxy": quiet_pid, "core": core_pid, "upstream": upstream.pid},
        ),
    ]
    # Spans of the latency runs may still be on their way: start from a settled count.
    spans_before, _ = wait_spans(grpc_addr, 1 << 62, stable_s=1.5, timeout=30.0)
    shim_requests = 0
    tp_runs: dict[str, list[WrkRun]] = {name: [] for name, _, _ in targets}
    for r in range(opts.rounds):
        for name, addr, watch in targets if r % 2 == 0 else list(reversed(targets)):
            warm = run_wrk(
                wrk, "warm-up", addr, threads=2, connections=opts.connections, duration_s=opts.warmup_s
            )
            run = run_wrk(
                wrk,
                name,
                addr,
                threads=2,
                connections=opts.connections,
                duration_s=opts.duration_s,
                watch=watch,
            )
            if name.startswith("shim"):
                shim_requests += warm.requests + run.requests
            tp_runs[name].append(run)
            cpu = ", ".join(f"{k} {v:.0f}%" for k, v in run.cpu_pct.items())
            if name.startswith("shim"):
                cpu += (
                    " (proxy threads: "
                    + ", ".join(f"{k} {v:.0f}%" for k, v in run.proxy_threads_pct.items())
                    + ")"
                )
            _print(
                f"  round {r + 1} {name:26} {run.rps:8,.0f} req/s  p50 {run.p50_us / 1000:.2f} ms  "
                f"p99 {run.p99_us / 1000:.2f} ms  errors {sum(run.errors.values())}  CPU: {cpu}"
            )
    spans_after, waited = wait_spans(grpc_addr, spans_before + shim_requests)
    tp: dict[str, Any] = {}
    for name, runs in tp_runs.items():
        keys = sorted({k for x in runs for k in x.cpu_pct})
        tp[name] = {
            "rps": _median([x.rps for x in runs]),
            "p50_ms": _median([x.p50_us for x in runs]) / 1000,
            "p99_ms": _median([x.p99_us for x in runs]) / 1000,
            "errors": sum(sum(x.errors.values()) for x in runs),
            "cpu_pct": {k: _median([x.cpu_pct.get(k, 0.0) for x in runs]) for k in keys},
            "proxy_threads_pct": {
                k: _median([x.proxy_threads_pct.get(k, 0.0) for x in runs])
                for k in sorted({k for x in runs for k in x.proxy_threads_pct})
            },
            "runs": [asdict(x) for x in runs],
        }
    ratio = tp["shim"]["rps"] / tp["passthrough (uvloop)"]["rps"]
    ratio_asyncio = tp["shim"]["rps"] / tp["passthrough (asyncio loop)"]["rps"]
    spans_delivered = spans_after - spans_before
    out["throughput"] = {
        **tp,
        "shim_vs_passthrough": ratio,
        "shim_vs_passthrough_asyncio": ratio_asyncio,
        "shim_requests_completed": shim_requests,
        "spans_delivered": spans_delivered,
        "spans_wait_s": waited,
    }
    _print(
        "  median of rounds: "
        + "; ".join(f"{name} {v['rps']:,.0f} req/s" for name, v in tp.items())
        + f"; shim/passthrough {ratio:.0%} (uvloop), {ratio_asyncio:.0%} (asyncio loop)"
    )
    _print(
        f"  spans the core received for the two shims' throughput runs: {spans_delivered:,} "
        f"(wrk completed {shim_requests:,} requests; counted {waited:.1f}s after the last run)"
    )

    # ------------------------------------------------------------------ 3. time to first token
    _print(f"\n--- 3. time to first token, {opts.ttft_requests} sequential streaming chats per target")
    ttft = asyncio.run(measure_ttft(upstream_addr, shim_addr, opts.ttft_requests, opts.ttft_warmup))
    tt: dict[str, Any] = {}
    for name, values in ttft.items():
        ms = [v * 1000 for v in values]
        tt[name] = {"p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99), "n": len(ms)}
    tt["added_p50_ms"] = tt["shim"]["p50_ms"] - tt["direct"]["p50_ms"]
    tt["added_p99_ms"] = tt["shim"]["p99_ms"] - tt["direct"]["p99_ms"]
    out["ttft"] = tt
    _print(
        f"  direct p50 {tt['direct']['p50_ms']:.3f} / p99 {tt['direct']['p99_ms']:.3f} ms; shim p50 "
        f"{tt['shim']['p50_ms']:.3f} / p99 {tt['shim']['p99_ms']:.3f} ms; "
        f"added p50 {tt['added_p50_ms']:.3f} ms, p99 {tt['added_p99_ms']:.3f} ms"
    )

    # ------------------------------------------------------------------ 4. memory
    _print(
        f"\n--- 4. memory: {opts.hold_connections} concurrent streams through `llmtrace shim` "
        f"(upstream chunk delay {opts.hold_chunk_delay_s:g}s)"
    )
    # The throughput runs are done: stop what the memory part does not need, to free CPU.
    for proc in list(procs._procs):
        if proc.name.startswith("passthrough"):
            procs.stop(proc)
    slow, slow_addr = start_fake_upstream(procs, "fake-upstream-slow", opts.hold_chunk_delay_s)
    shim_proc, hold_addr, hold_pid = start_shim(procs, "shim-hold", grpc_addr, slow_addr)
    asyncio.run(_warm_json(hold_addr, 200))  # non-streaming answers come without chunk delays
    time.sleep(1.0)
    idle_kib = vm_rss_kib(hold_pid)
    _print(f"  shim worker pid {hold_pid}: idle VmRSS {idle_kib / 1024:.1f} MiB (after 200 warm-up calls)")
    held = asyncio.run(hold_streams(hold_addr, hold_pid, opts.hold_connections, wait_s=120.0))
    per_conn_kib = (held["rss_kib"] - idle_kib) / max(held["flowing"], 1)
    out["memory"] = {
        "connections": opts.hold_connections,
        "idle_rss_kib": idle_kib,
        "held_rss_kib": held["rss_kib"],
        "per_connection_kib": per_conn_kib,
        **{k: v for k, v in held.items() if k != "rss_kib"},
    }
    _print(
        f"  {held['flowing']} of {opts.hold_connections} streams flowing after {held['open_s']:.1f}s "
        f"({held['failures']} failed{': ' + '; '.join(held['failure_sample']) if held['failures'] else ''}); "
        f"VmRSS {held['rss_kib'] / 1024:.1f} MiB, {held['worker_fds']} fds; "
        f"{per_conn_kib:.1f} KiB per connection over idle"
    )
    procs.stop(shim_proc)
    procs.stop(slow)
    out["rows"] = summary_rows(out)
    return out


def summary_rows(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(figure, measured, goal, met?) rows."""
    lat, tp, tt, mem = r["latency"], r["throughput"], r["ttft"], r["memory"]

    def met(ok: bool) -> str:
        return "yes" if ok else "**no**"

    shim_cpu = tp["shim"]["cpu_pct"]
    return [
        (
            "non-streaming chat, 1 connection: direct p50 / p99",
            f"{lat['direct']['p50_ms']:.3f} / {lat['direct']['p99_ms']:.3f} ms",
            "-",
            "-",
        ),
        (
            "non-streaming chat, 1 connection: via shim p50 / p99",
            f"{lat['shim']['p50_ms']:.3f} / {lat['shim']['p99_ms']:.3f} ms",
            "-",
            "-",
        ),
        (
            "added latency p50",
            f"{lat['added_p50_ms']:.3f} ms",
            f"<= {GOAL_ADDED_P50_MS} ms",
            met(lat["added_p50_ms"] <= GOAL_ADDED_P50_MS),
        ),
        (
            "added latency p99",
            f"{lat['added_p99_ms']:.3f} ms",
            f"<= {GOAL_ADDED_P99_MS:.0f} ms",
            met(lat["added_p99_ms"] <= GOAL_ADDED_P99_MS),
        ),
        (
            "throughput, 32 connections: direct to fake upstream",
            f"{tp['direct']['rps']:,.0f} req/s",
            "-",
            "-",
        ),
        (
            "throughput: bare passthrough (uvloop / asyncio loop)",
            f"{tp['passthrough (uvloop)']['rps']:,.0f} / "
            f"{tp['passthrough (asyncio loop)']['rps']:,.0f} req/s",
            "-",
            "-",
        ),
        (
            "throughput: shim, 1 worker, capture + shipping on",
            f"{tp['shim']['rps']:,.0f} req/s",
            f">= {GOAL_RPS:,.0f} req/s",
            met(tp["shim"]["rps"] >= GOAL_RPS),
        ),
        (
            "throughput: the same shim with its access log on",
            f"{tp['shim, access log on']['rps']:,.0f} req/s",
            "-",
            "-",
        ),
        (
            "shim / passthrough (uvloop; asyncio loop)",
            f"{tp['shim_vs_passthrough']:.0%} ({tp['shim_vs_passthrough_asyncio']:.0%})",
            f">= {GOAL_RATIO:.0%}",
            met(tp["shim_vs_passthrough"] >= GOAL_RATIO),
        ),
        (
            "CPU during shim run (% of one core)",
            ", ".join(f"{k} {v:.0f}%" for k, v in shim_cpu.items())
            + " (shim threads: "
            + ", ".join(
                f"{k} {v:.0f}%"
                for k, v in sorted(tp["shim"]["proxy_threads_pct"].items(), key=lambda kv: -kv[1])
                if v >= 1
            )
            + ")",
            "-",
            "-",
        ),
        (
            "spans in the core after both shims' runs",
            f"{tp['spans_delivered']:,} for {tp['shim_requests_completed']:,} requests",
            "all",
            met(tp["spans_delivered"] >= tp["shim_requests_completed"]),
        ),
        (
            "streaming TTFT: direct / via shim p50",
            f"{tt['direct']['p50_ms']:.3f} / {tt['shim']['p50_ms']:.3f} ms",
            "-",
            "-",
        ),
        (
            "streaming TTFT added p50 (p99)",
            f"{tt['added_p50_ms']:.3f} ms ({tt['added_p99_ms']:.3f} ms)",
            f"<= {GOAL_TTFT_ADDED_P50_MS:.0f} ms p50",
            met(tt["added_p50_ms"] <= GOAL_TTFT_ADDED_P50_MS),
        ),
        (
            f"shim worker RSS: idle / {mem['flowing']:,} streams open",
            f"{mem['idle_rss_kib'] / 1024:.1f} / {mem['held_rss_kib'] / 1024:.1f} MiB",
            "-",
            "-",
        ),
        ("shim memory per open stream", f"{mem['per_connection_kib']:.1f} KiB", "-", "-"),
    ]


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def quick_options() -> Options:
    """A short smoke run of every part (about 40 s)."""
    return Options(
        latency_duration_s=2,
        latency_rounds=1,
        duration_s=3,
        warmup_s=1,
        rounds=1,
        ttft_requests=50,
        ttft_warmup=5,
        hold_connections=200,
    )


def options_from(args: argparse.Namespace) -> Options:
    """Options from the command line (`--quick` shortens everything)."""
    opts = quick_options() if args.quick else Options()
    for name in ("duration", "rounds", "connections", "hold_connections"):
        value = getattr(args, name)
        if value is not None:
            setattr(opts, {"duration": "duration_s"}.get(name, name), value)
    if args.ttft_requests is not None:
        opts.ttft_requests = args.ttft_requests
    return opts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The proxy benchmark's flags."""
    parser.add_argument("--quick", action="store_true", help="short smoke run (about 40 s)")
    parser.add_argument("--duration", type=float, help="seconds per throughput run (default 10)")
    parser.add_argument("--rounds", type=int, help="throughput rounds per target (default 2)")
    parser.add_argument("--connections", type=int, help="wrk connections for throughput (default 32)")
    parser.add_argument("--ttft-requests", type=int, help="streaming requests per target (default 300)")
    parser.add_argument("--hold-connections", type=int, help="concurrent streams for memory (default 1000)")


def main(argv: list[str] | None = None) -> int:
    """Command line."""
    parser = argparse.ArgumentParser(description="Proxy benchmark: added latency, throughput, TTFT, memory.")
    add_arguments(parser)
    parser.add_argument(
        "--json", type=Path, default=RESULTS_FILE, help=f"results file (default {RESULTS_FILE})"
    )
    args = parser.parse_args(argv)
    opts = options_from(args)
    facts = machine_facts()
    facts["date"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    _print("machine: " + "; ".join(f"{k} {v}" for k, v in facts.items()))
    results = run_proxy(opts)
    facts["loadavg_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    _print(
        f"\n=== proxy summary ({facts['date']}, {facts['nproc']} x {facts['cpu']}, "
        f"load {facts['loadavg_after']})\n"
    )
    _print(markdown_table(("figure", "measured", "goal", "met?"), results["rows"]))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": facts, **results}, indent=2) + "\n")
    _print(f"\nfigures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
