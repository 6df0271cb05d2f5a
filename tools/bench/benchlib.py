"""Shared parts of the benchmarks: the core as a child process, CPU accounting, span batches.

The benchmarks are scripts, not tests. They start a real core (`llmtrace core`, through
tools/bench/core_entry.py, which adds two signal handlers for measuring) in its own process and
talk to it over gRPC from this process, so client and core share the machine the way a proxy and
its core would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import platform
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from llmtrace.api.v1 import finding_pb2, ingest_service_pb2, span_pb2

REPO = Path(__file__).resolve().parents[2]
BENCH_DATA = REPO / "bench-data"
INGEST_METHOD = "/llmtrace.api.v1.IngestService/IngestSpans"
BATCH_SPANS = 500
DAY_S = 86_400

_CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- machine and numbers


def machine_facts() -> dict[str, str]:
    """What the figures were measured on."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = "unknown"
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1])
        mem = f"{kib / 1024 / 1024:.1f} GiB"
    import duckdb  # noqa: PLC0415 - only for its version

    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "memory": mem,
        "python": platform.python_version(),
        "duckdb": duckdb.__version__,
        "grpcio": grpc.__version__,
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear between closest ranks; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


# --------------------------------------------------------------------------- CPU accounting


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/<pid>/stat."""
    return _stat_cpu(Path(f"/proc/{pid}/stat"))


def thread_cpu_seconds(pid: int) -> dict[int, tuple[str, float]]:
    """Per thread of `pid`: (thread name, utime + stime)."""
    out: dict[int, tuple[str, float]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError):
            name = (task / "comm").read_text().strip()
            out[int(task.name)] = (name, _stat_cpu(task / "stat"))
    return out


def _stat_cpu(path: Path) -> float:
    # Fields after "pid (comm)": state is field 3, utime field 14, stime field 15.
    rest = path.read_text().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / _CLK_TCK


def self_cpu_seconds() -> float:
    """CPU seconds of this (client) process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def thread_cpu_delta(
    before: dict[int, tuple[str, float]],
    after: dict[int, tuple[str, float]],
    pid: int,
    python_names: dict[int, str],
) -> list[tuple[str, float]]:
    """(thread, CPU seconds used between the snapshots), busiest first.

    Threads are named by their Python name when they have one, else as native threads with
    their OS name (gRPC names its threads; DuckDB's workers inherit "python").
    """
    rows: list[tuple[str, float]] = []
    for tid, (comm, cpu) in after.items():
        used = cpu - before.get(tid, (comm, 0.0))[1]
        if used <= 0:
            continue
        if tid == pid:
            label = "MainThread (event loop, gRPC server)"
        elif tid in python_names:
            label = python_names[tid]
        else:
            label = f"native:{comm}" if comm != "python" else "native (DuckDB worker)"
        rows.append((f"{label}[{tid}]", used))
    return sorted(rows, key=lambda r: -r[1])


# --------------------------------------------------------------------------- the core process


@dataclass
class CoreProcess:
    """A core started by `running_core`; stopped (SIGTERM, graceful, checkpoint) by `stop`."""

    proc: subprocess.Popen[bytes]
    grpc_addr: str
    pid: int
    workdir: Path
    log_path: Path
    startup_s: float
    profiling: bool
    stopped: bool = field(default=False)

    def log_tail(self, lines: int = 30) -> str:
        """The end of the core's log (stderr)."""
        return _tail(self.log_path, lines)

    def start_window(self) -> None:
        """Mark the start of a measured window (resets the profile when profiling)."""
        self.proc.send_signal(signal.SIGUSR1)
        time.sleep(0.2)

    def end_window(self) -> tuple[dict[int, str], str | None]:
        """End the window: Python thread names by native id, and the profile text if profiling."""
        names_file, profile_file = self.workdir / "threads.json", self.workdir / "profile.txt"
        names_file.unlink(missing_ok=True)
        self.proc.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + 120
        while not names_file.exists():  # written last, and atomically, by core_entry.py
            if time.monotonic() > deadline:
                raise RuntimeError(f"core did not write its thread names:\n{self.log_tail()}")
            time.sleep(0.05)
        names = {int(k): str(v) for k, v in json.loads(names_file.read_text()).items()}
        return names, profile_file.read_text() if self.profiling else None

    def stop(self, timeout: float = 600.0) -> float:
        """SIGTERM and wait; returns the seconds the graceful stop (drain, commit, checkpoint) took."""
        if self.stopped:
            return 0.0
        self.stopped = True
        started = time.perf_counter()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"core did not stop within {timeout:.0f}s:\n{self.log_tail()}") from None
        if code != 0:
            raise RuntimeError(f"core exited with {code}:\n{self.log_tail()}")
        return time.perf_counter() - started


def core_command(config: Path, ready: Path, outdir: Path, *, profile: bool = False) -> list[str]:
    """The core's command line: `llmtrace core` through tools/bench/core_entry.py."""
    entry = str(Path(__file__).with_name("core_entry.py"))
    flags = ["--profile"] if profile else []
    return [
        sys.executable,
        entry,
        str(outdir),
        *flags,
        "core",
        "--config",
        str(config),
        "--ready-file",
        str(ready),
    ]


@contextlib.contextmanager
def running_core(
    database: Path, *, log_level: str = "info", profile: bool = False, timeout: float = 300.0
) -> Iterator[CoreProcess]:
    """Start a core on `database` (ports chosen by the OS), yield it once SERVING, stop it after."""
    workdir = Path(tempfile.mkdtemp(prefix="llmtrace-bench-core-"))
    config = workdir / "core.yaml"
    ready = workdir / "ready.json"
    log_path = workdir / "core.log"
    config.write_text(
        "grpc:\n  listen_addr: 127.0.0.1:0\n"
        "metrics:\n  listen_addr: 127.0.0.1:0\n"
        f"storage:\n  database_path: {json.dumps(str(database))}\n"
        f"logging:\n  level: {log_level}\n"
    )
    started = time.perf_counter()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            core_command(config, ready, workdir, profile=profile),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    try:
        while not ready.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"core exited with {proc.returncode} before serving:\n{_tail(log_path)}")
            if time.perf_counter() - started > timeout:
                raise RuntimeError(f"core not serving after {timeout:.0f}s:\n{_tail(log_path)}")
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        core = CoreProcess(
            proc=proc,
            grpc_addr=str(info["grpc"]),
            pid=int(info["pid"]),
            workdir=workdir,
            log_path=log_path,
            startup_s=time.perf_counter() - started,
            profiling=profile,
        )
        try:
            yield core
        except BaseException:
            print(f"--- end of the core's log:\n{_tail(log_path, 60)}\n---", file=sys.stderr)
            raise
        core.stop()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def _tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


@contextlib.contextmanager
def working_copy(database: Path) -> Iterator[Path]:
    """A throwaway copy of a database file (and its WAL) next to it, removed afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix="run-", dir=database.parent))
    try:
        copy = tmp / database.name
        shutil.copyfile(database, copy)
        wal = database.with_name(database.name + ".wal")
        if wal.exists():
            shutil.copyfile(wal, copy.with_name(copy.name + ".wal"))
        yield copy
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- sending batches


@dataclass
class SendResult:
    """What a run of IngestSpans calls did."""

    batches: int = 0
    spans: int = 0
    accepted: int = 0
    rejected: int = 0
    request_bytes: int = 0
    wall_s: float = 0.0
    core_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)

    def add(self, other: SendResult) -> None:
        """Accumulate another run (seeding sends in chunks)."""
        self.batches += other.batches
        self.spans += other.spans
        self.accepted += other.accepted
        self.rejected += other.rejected
        self.request_bytes += other.request_bytes
        self.wall_s += other.wall_s
        self.core_cpu_s += other.core_cpu_s
        self.client_cpu_s += other.client_cpu_s
        self.latencies_s.extend(other.latencies_s)

    @property
    def spans_per_s(self) -> float:
        """Accepted spans per wall-clock second."""
        return self.accepted / self.wall_s if self.wall_s else 0.0

    @property
    def mb_per_s(self) -> float:
        """Request payload (serialised protobuf) in MB (10^6 bytes) per second."""
        return self.request_bytes / 1e6 / self.wall_s if self.wall_s else 0.0

    @property
    def core_cpu_pct(self) -> float:
        """Core CPU as % of one core over the run (200% = both cores of a 2-core machine)."""
        return 100.0 * self.core_cpu_s / self.wall_s if self.wall_s else 0.0


class IngestClient:
    """A gRPC channel to the core and a raw-bytes IngestSpans method (no client-side protobuf)."""

    def __init__(self, addr: str) -> None:
        self._channel = grpc.aio.insecure_channel(
            addr,
            options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)],
        )
        # request_serializer=None: the payloads are already serialised IngestSpansRequest bytes.
        self._call: grpc.aio.UnaryUnaryMultiCallable[bytes, ingest_service_pb2.IngestSpansResponse]
        self._call = self._channel.unary_unary(
            INGEST_METHOD,
            request_serializer=None,
            response_deserializer=ingest_service_pb2.IngestSpansResponse.FromString,
        )

    async def __aenter__(self) -> IngestClient:
        await asyncio.wait_for(self._channel.channel_ready(), 30)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._channel.close()

    async def send(
        self, payloads: Sequence[bytes], spans_per_batch: Sequence[int], concurrency: int, core_pid: int
    ) -> SendResult:
        """Send every payload with `concurrency` RPCs in flight; wall and CPU time around it all."""
        result = SendResult(
            batches=len(payloads), spans=sum(spans_per_batch), request_bytes=sum(len(p) for p in payloads)
        )
        next_index = iter(range(len(payloads)))
        latencies: list[float] = []

        async def worker() -> None:
            for i in next_index:
                t0 = time.perf_counter()
                response: ingest_service_pb2.IngestSpansResponse = await self._call(payloads[i], timeout=300)
                latencies.append(time.perf_counter() - t0)
                result.accepted += response.accepted_spans
                result.rejected += response.partial_success.rejected_spans
                if response.partial_success.rejected_spans:
                    raise RuntimeError(f"spans rejected: {response.partial_success.error_message}")

        core0, client0, t0 = process_cpu_seconds(core_pid), self_cpu_seconds(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
        result.wall_s = time.perf_counter() - t0
        result.core_cpu_s = process_cpu_seconds(core_pid) - core0
        result.client_cpu_s = self_cpu_seconds() - client0
        result.latencies_s = latencies
        return result


# --------------------------------------------------------------------------- realistic spans

TENANTS = (("acme", 0.6), ("globex", 0.25), ("initech", 0.15))
QUERY_TENANT = "acme"

#: (provider, model, server, input $/Mtok, output $/Mtok, relative traffic)
MODELS: tuple[tuple[str, str, str, float, float, float], ...] = (
    ("openai", "gpt-4o", "api.openai.com", 2.5, 10.0, 18),
    ("openai", "gpt-4o-mini", "api.openai.com", 0.15, 0.6, 16),
    ("openai", "gpt-4.1", "api.openai.com", 2.0, 8.0, 8),
    ("openai", "gpt-4.1-mini", "api.openai.com", 0.4, 1.6, 7),
    ("openai", "gpt-4.1-nano", "api.openai.com", 0.1, 0.4, 3),
    ("openai", "o3", "api.openai.com", 2.0, 8.0, 3),
    ("openai", "o4-mini", "api.openai.com", 1.1, 4.4, 4),
    ("anthropic", "claude-sonnet-4-20250514", "api.anthropic.com", 3.0, 15.0, 9),
    ("anthropic", "claude-opus-4-20250514", "api.anthropic.com", 15.0, 75.0, 2),
    ("anthropic", "claude-3-5-haiku-20241022", "api.anthropic.com", 0.8, 4.0, 5),
    ("anthropic", "claude-3-7-sonnet-20250219", "api.anthropic.com", 3.0, 15.0, 3),
    ("gcp.gemini", "gemini-2.5-pro", "generativelanguage.googleapis.com", 1.25, 10.0, 4),
    ("gcp.gemini", "gemini-2.5-flash", "generativelanguage.googleapis.com", 0.3, 2.5, 5),
    ("gcp.gemini", "gemini-2.0-flash", "generativelanguage.googleapis.com", 0.1, 0.4, 2),
    ("mistral_ai", "mistral-large-latest", "api.mistral.ai", 2.0, 6.0, 2),
    ("mistral_ai", "mistral-small-latest", "api.mistral.ai", 0.1, 0.3, 2),
    ("mistral_ai", "codestral-latest", "api.mistral.ai", 0.3, 0.9, 1),
    ("azure.ai.openai", "gpt-4o-azure", "acme.openai.azure.com", 2.5, 10.0, 3),
    ("azure.ai.openai", "gpt-4o-mini-azure", "acme.openai.azure.com", 0.15, 0.6, 2),
    ("azure.ai.openai", "gpt-35-turbo", "acme.openai.azure.com", 0.5, 1.5, 1),
)

AGENTS = (
    "support-bot",
    "sales-assistant",
    "code-reviewer",
    "doc-summarizer",
    "sql-helper",
    "email-triage",
    "translator",
    "research-agent",
    "onboarding-guide",
    "incident-responder",
)

_SYSTEM_PROMPTS = {
    agent: f"You are {agent.replace('-', ' ')}, an assistant for Acme Corp. Answer precisely, cite the "
    "relevant policy section when one applies, never reveal internal identifiers, and ask a clarifying "
    "question when the request is ambiguous."
    for agent in AGENTS
}

_WORD_TEXT = (
    "the of and to a in is that for it as was with be by on not he this are or his from at which but "
    "have an they you were her she there been one all we their has would when if so no will more can "
    "about said up out what some into them could time only other new very then like over also its "
    "customer order invoice account refund shipment delivery payment policy contract service request "
    "error report database query table column server deploy release version update config settings "
    "please thanks hello question issue problem ticket support team manager review summary meeting "
    "schedule week month quarter revenue budget forecast pipeline lead opportunity discount pricing "
    "plan subscription renewal cancel upgrade downgrade feature bug fix test build branch merge commit "
    "log trace latency timeout retry network cache memory disk storage backup restore migrate index "
    "translate english french german spanish document paragraph sentence email draft reply attach "
    "security password access permission role user admin audit compliance privacy data export import "
    "analysis chart metric dashboard alert incident outage root cause mitigation postmortem follow"
)
_WORDS = _WORD_TEXT.split()


class SpanGenerator:
    """Deterministic stream of realistic chat spans, batched and serialised as IngestSpansRequest.

    Spans come in traces of 1-4 spans (one root, children point at it). About 2% fail (rate
    limits, upstream errors, timeouts) and about 3% carry a finding. Each user prompt is about
    2 KB of word salad cut from a pre-generated corpus, so no two prompts are alike.
    """

    def __init__(self, seed: int, prompt_chars: int = 2048) -> None:
        self._rng = random.Random(seed)
        self._prompt_chars = prompt_chars
        corpus_words = self._rng.choices(_WORDS, k=400_000)
        for i in range(0, len(corpus_words), 14):
            corpus_words[i] = corpus_words[i].capitalize()
            if i:
                corpus_words[i - 1] += "."
        self._corpus = " ".join(corpus_words)
        self._tenants = [t for t, _ in TENANTS]
        self._tenant_weights = [w for _, w in TENANTS]
        self._model_weights = [m[5] for m in MODELS]
        self._pending: list[span_pb2.Span] = []

    def _text(self, chars: int) -> str:
        start = self._corpus.find(" ", self._rng.randrange(0, len(self._corpus) - chars - 64)) + 1
        return self._corpus[start : start + chars]

    def batch(self, n: int, start_s: float, end_s: float) -> tuple[bytes, int]:
        """One serialised IngestSpansRequest of `n` spans whose start times lie in [start_s, end_s)."""
        spans: list[span_pb2.Span] = []
        while len(spans) < n:
            if not self._pending:
                self._pending = self._trace(start_s, end_s)
            spans.append(self._pending.pop())
        return ingest_service_pb2.IngestSpansRequest(spans=spans).SerializeToString(), n

    def _trace(self, start_s: float, end_s: float) -> list[span_pb2.Span]:
        rng = self._rng
        tenant = rng.choices(self._tenants, self._tenant_weights)[0]
        agent = rng.choice(AGENTS)
        trace_id = rng.randbytes(16)
        session = f"sess-{rng.getrandbits(48):012x}"
        t = start_s + rng.random() * (end_s - start_s)
        root: bytes = b""
        out: list[span_pb2.Span] = []
        for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4))):
            span = self._span(tenant, agent, trace_id, root, session, t)
            root = root or span.span_id
            t += (span.end_time.ToNanoseconds() - span.start_time.ToNanoseconds()) / 1e9 + rng.random()
            out.append(span)
        out.reverse()  # popped from the end: root first
        return out

    def _span(
        self, tenant: str, agent: str, trace_id: bytes, parent: bytes, session: str, start: float
    ) -> span_pb2.Span:
        rng = self._rng
        provider, model, server, in_price, out_price, _ = rng.choices(MODELS, self._model_weights)[0]
        prompt = self._text(rng.randint(self._prompt_chars - 256, self._prompt_chars + 256))
        duration_ms = rng.randint(300, 9000)
        start_ns = int(start * 1e9)
        span = span_pb2.Span(
            trace_id=trace_id,
            span_id=rng.randbytes(8),
            parent_span_id=parent,
            tenant=tenant,
            agent=agent,
            operation="chat",
            provider=provider,
            request_model=model,
            response_model=model,
            name=f"chat {model}",
            session_id=session,
            client_address=f"10.0.{rng.randint(0, 15)}.{rng.randint(1, 254)}",
            user_agent="OpenAI/Python 1.54.3",
            upstream_request_id=f"req_{rng.getrandbits(96):024x}",
            server_address=server,
            api_key_fingerprint=f"sk-…{rng.choice(('a1f3', '9c2e', '77d0', 'b4b4'))}",
        )
        span.start_time.FromNanoseconds(start_ns)
        span.end_time.FromNanoseconds(start_ns + duration_ms * 1_000_000)
        messages = span.request.messages
        messages.add(role="system").parts.add(
            type=span_pb2.CONTENT_PART_TYPE_TEXT, text=_SYSTEM_PROMPTS[agent]
        )
        messages.add(role="user").parts.add(type=span_pb2.CONTENT_PART_TYPE_TEXT, text=prompt)
        params = span.request.parameters
        params.temperature = rng.choice((0.0, 0.2, 0.7, 1.0))
        params.max_tokens = rng.choice((256, 512, 1024, 4096))
        params.stream = rng.random() < 0.6
        input_tokens = (len(prompt) + len(_SYSTEM_PROMPTS[agent])) // 4
        span.usage.input_tokens = input_tokens
        span.attributes.add(key="llmtrace.shim.version").value.string_value = "0.1.0"
        span.attributes.add(key="llmtrace.route").value.string_value = "/v1/chat/completions"
        roll = rng.random()
        if roll < 0.02:  # failed call: no answer, no output tokens
            code, etype, msg = rng.choice(
                (
                    (429, "rate_limited", "Rate limit reached for requests"),
                    (500, "upstream_error", "The server had an error while processing your request"),
                    (0, "timeout", "upstream did not answer within 60s"),
                )
            )
            span.status.code = span_pb2.STATUS_CODE_ERROR
            span.status.http_status_code = code or 504
            span.status.error_type = etype
            span.status.error_message = msg
        else:
            span.status.code = span_pb2.STATUS_CODE_OK
            span.status.http_status_code = 200
            span.time_to_first_token.FromMilliseconds(rng.randint(150, min(2500, duration_ms)))
            answer = self._text(rng.randint(200, 900))
            choice = span.response.choices.add(index=0, finish_reason="stop")
            choice.message.role = "assistant"
            choice.message.parts.add(type=span_pb2.CONTENT_PART_TYPE_TEXT, text=answer)
            span.response.id = f"chatcmpl-{rng.getrandbits(64):016x}"
            output_tokens = len(answer) // 4
            span.usage.output_tokens = output_tokens
            span.usage.total_tokens = input_tokens + output_tokens
            span.cost.input_usd = input_tokens * in_price / 1e6
            span.cost.output_usd = output_tokens * out_price / 1e6
            span.cost.total_usd = span.cost.input_usd + span.cost.output_usd
        if roll > 0.97:
            span.findings.append(self._finding(rng))
        return span

    @staticmethod
    def _finding(rng: random.Random) -> finding_pb2.Finding:
        kind, detector, severity, excerpt = rng.choice(
            (
                (
                    "prompt_injection",
                    "regex.injection",
                    finding_pb2.SEVERITY_HIGH,
                    "ignore previous instructions",
                ),
                ("pii.email", "regex.pii", finding_pb2.SEVERITY_MEDIUM, "j***@example.com"),
                ("secret.api_key", "regex.secrets", finding_pb2.SEVERITY_CRITICAL, "sk-…9c2e"),
                ("jailbreak", "heuristic.jailbreak", finding_pb2.SEVERITY_HIGH, "you are DAN now"),
            )
        )
        return finding_pb2.Finding(
            type=kind,
            severity=severity,
            confidence=round(rng.uniform(0.5, 1.0), 2),
            detector=detector,
            location="request.messages[1].content",
            description=f"{kind.replace('_', ' ')} detected",
            excerpt=excerpt,
        )


def generate_batches(
    gen: SpanGenerator, count: int, spans_per_batch: int, start_s: float, end_s: float
) -> tuple[list[bytes], list[int]]:
    """`count` serialised batches whose start times advance evenly from start_s to end_s."""
    payloads: list[bytes] = []
    sizes: list[int] = []
    step = (end_s - start_s) / max(count, 1)
    for i in range(count):
        payload, n = gen.batch(spans_per_batch, start_s + i * step, start_s + (i + 1) * step)
        payloads.append(payload)
        sizes.append(n)
    return payloads, sizes


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain text table with aligned columns."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            print("  ".join("-" * w for w in widths))
