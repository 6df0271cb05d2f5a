"""The core process: gRPC server lifecycle around the store.

Start-up opens the database (the only writer), applies migrations, starts the writer thread,
the post-ack analysis worker and its analysis process, the gRPC server (Ingest, Query, Analysis,
health, reflection) and the metrics endpoint, then reports SERVING. Shutdown on SIGTERM/SIGINT:
NOT_SERVING, stop accepting, let in-flight RPCs finish (an RPC still running after
`shutdown.timeout_seconds` is cancelled), stop the analysis worker (its process is killed; queued
spans are analysed after the next start), commit everything the writer holds, checkpoint, close.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from llmtrace import cpu_priority
from llmtrace.analysis_worker import AnalysisStartError, AnalysisWorker
from llmtrace.analyze_pool import AnalyzePool, AnalyzeUnavailableError
from llmtrace.api.v1 import (
    analysis_service_pb2,
    analysis_service_pb2_grpc,
    ingest_service_pb2,
    query_service_pb2,
    query_service_pb2_grpc,
)
from llmtrace.config import Settings, parse_host_port
from llmtrace.query import PageTokenCodec
from llmtrace.rpc.analysis import AnalysisServicer
from llmtrace.rpc.ingest import IngestServicer
from llmtrace.rpc.interceptors import ObservabilityInterceptor
from llmtrace.rpc.query import PageSizes, QueryServicer
from llmtrace.store.database import DatabaseOpenError, open_database
from llmtrace.store.finding_ids import FindingIds
from llmtrace.store.migrations import MigrationError, apply_migrations, current_version, latest_version
from llmtrace.store.reader import StoreReader
from llmtrace.store.writer import StoreWriter

_log = structlog.get_logger("llmtrace.core")

SERVICE_NAMES = (
    ingest_service_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name,
    query_service_pb2.DESCRIPTOR.services_by_name["QueryService"].full_name,
    analysis_service_pb2.DESCRIPTOR.services_by_name["AnalysisService"].full_name,
)


class StartupError(RuntimeError):
    """The core cannot start (locked database, stale schema, address in use)."""


@dataclass(frozen=True)
class BoundAddresses:
    """Where the core actually listens (ports resolved when configured as 0)."""

    grpc: str
    metrics: str | None


def _open_store(settings: Settings) -> duckdb.DuckDBPyConnection:
    try:
        conn = open_database(settings.storage.database_path)
    except DatabaseOpenError as exc:
        raise StartupError(str(exc)) from exc
    if settings.storage.auto_migrate:
        try:
            applied = apply_migrations(conn)
        except MigrationError as exc:
            conn.close()
            raise StartupError(str(exc)) from exc
        if applied:
            _log.info("migrations applied", versions=applied)
    else:
        version = current_version(conn)
        if version != latest_version():
            conn.close()
            remedy = (
                "upgrade llmtrace (a newer build migrated it)"
                if version > latest_version()
                else "run `llmtrace migrate` (storage.auto_migrate is false)"
            )
            raise StartupError(
                f"database schema is at version {version}, this build needs {latest_version()}; {remedy}"
            )
    return conn


def _page_token_key(conn: duckdb.DuckDBPyConnection) -> bytes:
    rows = conn.execute("SELECT value FROM core_meta WHERE key = 'page_token_key'").fetchall()
    if not rows:
        raise StartupError("database has no page token key; is the schema complete?")
    return bytes(rows[0][0])


def _inline_full(settings: Settings) -> bool:
    from shim.enforcement import asks_core  # noqa: PLC0415 - the shim's policy, read once here

    return asks_core(settings.enforcement)


class Core:
    """One core process's resources."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._conn: duckdb.DuckDBPyConnection | None = None
        self._writer: StoreWriter | None = None
        self._reader: StoreReader | None = None
        self._sql_reader: StoreReader | None = None
        # One thread: validation and Arrow building hold the GIL, so a second thread only adds
        # contention with the writer thread (measured: same throughput, slower commits).
        self._cpu = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-cpu")
        # Analyze RPCs get processes of their own: they never take this interpreter from ingest,
        # and a post-ingest batch never delays an inline verdict.
        self._analyze_pool = AnalyzePool(settings.security_analysis)
        self._analysis: AnalysisWorker | None = None
        self._analyze_warmup: asyncio.Future[None] | None = None
        self._server: grpc.aio.Server | None = None
        self._ingest: IngestServicer | None = None
        self._health = health.aio.HealthServicer()
        self._metrics_server: Any = None
        self._stopped = False
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Set once DuckDB gave up on the database (`llmtrace.store.failure`): the core stops
        #: serving and its process should end, to be started again.
        self.database_failed = asyncio.Event()
        self._not_serving: asyncio.Future[None] | None = None

    async def start(self) -> BoundAddresses:
        """Open the store and start serving; returns the bound addresses."""
        settings = self.settings
        self._loop = asyncio.get_running_loop()
        self._conn = await asyncio.to_thread(_open_store, settings)
        self._writer = StoreWriter(self._conn, on_fatal=self._fatal)
        self._writer.start()
        self._reader = StoreReader(self._conn, on_fatal=self._fatal)
        # Ad-hoc SQL gets threads of its own, so slow operator queries never starve the List RPCs.
        self._sql_reader = StoreReader(
            self._conn, threads=2, timeout_s=settings.sql.timeout_seconds + 5, on_fatal=self._fatal
        )
        codec = PageTokenCodec(_page_token_key(self._conn))
        self._analysis = AnalysisWorker(settings.security_analysis, self._writer)
        try:
            await self._analysis.start(self._reader)
        except AnalysisStartError as exc:
            raise StartupError(str(exc)) from exc
        if _inline_full(settings):
            # The shim will call Analyze for every request, with a short deadline: have its
            # processes ready now rather than fail the first calls open while they start.
            self._analyze_warmup = asyncio.ensure_future(self._warm_analyze())
        max_bytes = settings.grpc.max_message_bytes
        server = grpc.aio.server(
            interceptors=[ObservabilityInterceptor()],
            options=[
                ("grpc.max_receive_message_length", max_bytes),
                ("grpc.max_send_message_length", max_bytes),
                # gRPC binds with SO_REUSEPORT by default: a second core on the same address
                # would start, share the port and answer from another database.
                ("grpc.so_reuseport", 0),
            ],
        )
        self._ingest = IngestServicer(
            self._writer, self._cpu, committed=self._analysis.offer, finding_ids=FindingIds(self._conn)
        )
        server.add_generic_rpc_handlers((self._ingest.handlers(),))
        analysis_service_pb2_grpc.add_AnalysisServiceServicer_to_server(
            AnalysisServicer(self._analyze_pool, settings.security_analysis.operating_point), server
        )
        query_service_pb2_grpc.add_QueryServiceServicer_to_server(
            QueryServicer(
                self._reader,
                codec,
                sql_reader=self._sql_reader,
                sql_max_rows=settings.sql.max_rows,
                sql_timeout_s=settings.sql.timeout_seconds,
                paging=PageSizes(settings.query.default_page_size, settings.query.max_page_size),
                max_message_bytes=settings.grpc.max_message_bytes,
            ),
            server,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        host, _ = parse_host_port(settings.grpc.listen_addr)
        try:
            port = server.add_insecure_port(settings.grpc.listen_addr)
        except RuntimeError as exc:
            raise StartupError(f"cannot listen on {settings.grpc.listen_addr}: {exc}") from exc
        await server.start()
        self._server = server
        metrics_addr = self._start_metrics()
        for name in ("", *SERVICE_NAMES):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        bound = BoundAddresses(grpc=_join(host, port), metrics=metrics_addr)
        _log.info(
            "core serving", grpc=bound.grpc, metrics=bound.metrics, database=settings.storage.database_path
        )
        return bound

    def _fatal(self, exc: BaseException) -> None:
        """From any thread: DuckDB gave up on the database."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the core has stopped
                loop.call_soon_threadsafe(self._database_failed, str(exc).splitlines()[0])

    def _database_failed(self, error: str) -> None:
        if self.database_failed.is_set() or self._stopped:
            return
        _log.error(
            "the database failed and cannot be used until it is opened again; stopping, to be "
            "restarted (nothing acknowledged is lost: the WAL is replayed at the next start)",
            error=error,
        )
        # NOT_SERVING at once, before the stop drains: load balancers and shims stop sending.
        self._not_serving = asyncio.ensure_future(self._health.enter_graceful_shutdown())
        self.database_failed.set()

    def _start_metrics(self) -> str | None:
        if not self.settings.metrics.enabled:
            return None
        host, port = parse_host_port(self.settings.metrics.listen_addr)
        try:
            server, _thread = start_http_server(port, addr=host)
        except OSError as exc:
            raise StartupError(f"cannot listen on {self.settings.metrics.listen_addr}: {exc}") from exc
        self._metrics_server = server
        return _join(host, server.server_port)

    @property
    def analyze_pids(self) -> list[int]:
        """The pids of the processes answering Analyze calls (none before the first call)."""
        return self._analyze_pool.pids

    async def _warm_analyze(self) -> None:
        try:
            await self._analyze_pool.start()
        except AnalyzeUnavailableError as exc:  # each Analyze call says so, and tries again
            _log.error("cannot start the Analyze processes", error=str(exc))

    async def stop(self) -> None:
        """Drain and close; returns as soon as everything is flushed. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        grace = self.settings.shutdown.timeout_seconds
        started = time.monotonic()
        await self._health.enter_graceful_shutdown()
        if self._ingest is not None:
            self._ingest.begin_shutdown()
        if self._server is not None:
            # Stops accepting at once; returns when in-flight RPCs are done or `grace` is up.
            await self._server.stop(grace)
        if self._analysis is not None:
            # After the server: no ingest adds spans any more. Quick: never waits for the analyzer.
            await self._analysis.stop()
        if self._writer is not None:
            # No RPC is left to add batches, so the queue is bounded: wait for every commit.
            # (Closing the connection under a writer still committing would fail and lose them.)
            await asyncio.to_thread(self._writer.close, None)
        for reader in (self._reader, self._sql_reader):
            if reader is not None:
                await asyncio.to_thread(reader.close)
        await asyncio.to_thread(self._cpu.shutdown, True)
        if self._analyze_warmup is not None:
            self._analyze_warmup.cancel()
        await self._analyze_pool.stop()
        if self._conn is not None:
            conn = self._conn
            with contextlib.suppress(duckdb.Error):
                await asyncio.to_thread(conn.execute, "CHECKPOINT")
            conn.close()
            self._conn = None
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        _log.info("core stopped", seconds=round(time.monotonic() - started, 3))


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _write_ready_file(path: str, bound: BoundAddresses) -> None:
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps({"grpc": bound.grpc, "metrics": bound.metrics, "pid": os.getpid()}))
    tmp.replace(target)  # atomic: a watcher never reads half a file


async def serve_core(settings: Settings, ready_file: str | None = None, *, background: bool = False) -> int:
    """Run the core until SIGTERM or SIGINT; returns the exit code. `background`: once serving,
    run on CPU nobody else wants, until asked to stop (llmtrace.cpu_priority)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    core = Core(settings)
    try:
        bound = await core.start()
    except StartupError as exc:
        _log.error("core cannot start", error=str(exc))
        await core.stop()
        return 1
    if ready_file:
        try:
            _write_ready_file(ready_file, bound)
        except OSError as exc:
            _log.error("cannot write the ready file", path=ready_file, error=str(exc))
            await core.stop()
            return 1
    if background:
        cpu_priority.to_background()
    stopping = asyncio.ensure_future(stop.wait())
    failing = asyncio.ensure_future(core.database_failed.wait())
    await asyncio.wait((stopping, failing), return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    failing.cancel()
    if background and not cpu_priority.to_foreground():
        _log.info("stopping at background CPU priority (leaving it needs CAP_SYS_NICE or RLIMIT_NICE 20)")
    _log.info("shutting down", grace_seconds=settings.shutdown.timeout_seconds)
    await core.stop()
    return 1 if core.database_failed.is_set() else 0


def run_core(settings: Settings, ready_file: str | None = None, *, background: bool = False) -> int:
    """Entry point of `llmtrace core` (and, until the shim exists, `llmtrace serve`)."""
    # Spans hold prompts: everything the core creates (database, WAL, ready file) is owner-only.
    os.umask(0o077)
    # The DuckDB writer thread releases the GIL for every statement and must win it back after;
    # with the default 5 ms switch interval it queues behind the ingest CPU thread each time.
    sys.setswitchinterval(0.0005)
    return asyncio.run(serve_core(settings, ready_file, background=background))
