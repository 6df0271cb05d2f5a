"""The single DuckDB writer: one thread, one connection, group commit of Arrow batches.

Ingest RPCs hand Arrow tables to `StoreWriter.write` and await the commit. The writer thread
takes every batch that is waiting, inserts them all in one transaction and then resolves each
caller's future, so under load many RPCs share one commit (and one WAL sync) while the event
loop never touches DuckDB.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa
import structlog

from llmtrace.store.row_schema import FINDING_ROW_SCHEMA, SPAN_ROW_SCHEMA

_log = structlog.get_logger(__name__)

_SPAN_INSERT = "INSERT OR IGNORE INTO span_rows ({cols}) SELECT {cols} FROM {src}".replace(
    "{cols}", ", ".join(SPAN_ROW_SCHEMA.names)
)
_FINDING_INSERT = "INSERT OR IGNORE INTO finding_rows ({cols}) SELECT {cols} FROM {src}".replace(
    "{cols}", ", ".join(FINDING_ROW_SCHEMA.names)
)


class WriterClosedError(RuntimeError):
    """The writer is shutting down and takes no more batches."""


@dataclass(frozen=True)
class WriteBatch:
    """Rows to commit together: spans and the findings that arrived with them."""

    spans: pa.Table
    findings: pa.Table | None = None


@dataclass
class _Pending:
    batch: WriteBatch
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[int] = field(repr=False)


_STOP = object()


class StoreWriter:
    """Owns the only writing connection to the database."""

    def __init__(self, conn: duckdb.DuckDBPyConnection, *, max_group: int = 64) -> None:
        self._conn = conn
        self._max_group = max_group
        self._queue: queue.Queue[_Pending | object] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="duckdb-writer", daemon=True)
        self._closed = False
        self._seq = 0

    def start(self) -> None:
        """Start the writer thread."""
        self._thread.start()

    async def write(self, batch: WriteBatch) -> int:
        """Commit `batch`; return how many of its spans were new (not already stored)."""
        if self._closed:
            raise WriterClosedError("the store is shutting down")
        loop = asyncio.get_running_loop()
        pending = _Pending(batch, loop, loop.create_future())
        self._queue.put(pending)
        return await pending.future

    def close(self, timeout: float | None = None) -> None:
        """Commit everything already queued, then stop the thread."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            group: list[_Pending] = [first]  # type: ignore[list-item]
            stop_after = False
            while len(group) < self._max_group:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop_after = True
                    break
                group.append(item)  # type: ignore[arg-type]
            self._commit_group(group)
            if stop_after:
                return

    def _commit_group(self, group: list[_Pending]) -> None:
        try:
            counts = self._insert(group)
        except Exception:
            if len(group) == 1:
                _log.exception("store write failed")
                _resolve_error(group[0], RuntimeError("store write failed"))
                return
            for pending in group:
                self._commit_group([pending])
            return
        for pending, count in zip(group, counts, strict=True):
            _resolve(pending, count)

    def _insert(self, group: list[_Pending]) -> list[int]:
        conn = self._conn
        counts: list[int] = []
        conn.execute("BEGIN TRANSACTION")
        try:
            for pending in group:
                counts.append(self._insert_one(pending.batch))
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                conn.execute("ROLLBACK")
            raise
        return counts

    def _insert_one(self, batch: WriteBatch) -> int:
        self._seq += 1
        name = f"_ingest_spans_{self._seq}"
        self._conn.register(name, batch.spans)
        try:
            row = self._conn.execute(_SPAN_INSERT.replace("{src}", name)).fetchone()
        finally:
            self._conn.unregister(name)
        if batch.findings is not None and batch.findings.num_rows:
            fname = f"_ingest_findings_{self._seq}"
            self._conn.register(fname, batch.findings)
            try:
                self._conn.execute(_FINDING_INSERT.replace("{src}", fname))
            finally:
                self._conn.unregister(fname)
        return int(row[0]) if row else 0


def _resolve(pending: _Pending, count: int) -> None:
    def set_result() -> None:
        if not pending.future.done():
            pending.future.set_result(count)

    _call_soon(pending, set_result)


def _resolve_error(pending: _Pending, exc: BaseException) -> None:
    def set_exception() -> None:
        if not pending.future.done():
            pending.future.set_exception(exc)

    _call_soon(pending, set_exception)


def _call_soon(pending: _Pending, fn: object) -> None:
    # The caller's loop may already be closed during shutdown; then nobody awaits the result.
    with contextlib.suppress(RuntimeError):
        pending.loop.call_soon_threadsafe(fn)  # type: ignore[arg-type]
