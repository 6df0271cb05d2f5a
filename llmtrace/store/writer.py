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


def _insert_sql(table: str, names: list[str], *, or_ignore: bool) -> str:
    cols = ", ".join(names)
    verb = "INSERT OR IGNORE" if or_ignore else "INSERT"
    return f"{verb} INTO {table} ({cols}) SELECT {cols} FROM {{src}}"


# Plain INSERT is about twice as fast as INSERT OR IGNORE in DuckDB, and duplicates are rare
# (a client retrying after an ambiguous failure), so groups are first written with plain INSERT;
# a primary-key violation rolls the group back and it is rewritten with OR IGNORE.
_SPAN_INSERT = _insert_sql("span_rows", SPAN_ROW_SCHEMA.names, or_ignore=False)
_SPAN_UPSERT = _insert_sql("span_rows", SPAN_ROW_SCHEMA.names, or_ignore=True)
_FINDING_INSERT = _insert_sql("finding_rows", FINDING_ROW_SCHEMA.names, or_ignore=False)
_FINDING_UPSERT = _insert_sql("finding_rows", FINDING_ROW_SCHEMA.names, or_ignore=True)


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
        try:
            return self._insert_group(group, or_ignore=False)
        except duckdb.ConstraintException:
            return self._insert_group(group, or_ignore=True)

    def _insert_group(self, group: list[_Pending], *, or_ignore: bool) -> list[int]:
        conn = self._conn
        span_sql = _SPAN_UPSERT if or_ignore else _SPAN_INSERT
        finding_sql = _FINDING_UPSERT if or_ignore else _FINDING_INSERT
        # Arrow tables are registered outside the transaction: unregistering inside an aborted
        # one fails and would hide the constraint error that triggers the OR IGNORE retry.
        names: list[str] = []
        statements: list[tuple[str, bool]] = []
        for pending in group:
            names.append(self._register(pending.batch.spans))
            statements.append((span_sql.replace("{src}", names[-1]), True))
            findings = pending.batch.findings
            if findings is not None and findings.num_rows:
                names.append(self._register(findings))
                statements.append((finding_sql.replace("{src}", names[-1]), False))
        counts: list[int] = []
        try:
            conn.execute("BEGIN TRANSACTION")
            try:
                for sql, is_spans in statements:
                    rows = conn.execute(sql).fetchall()
                    if is_spans:
                        counts.append(int(rows[0][0]) if rows else 0)
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(duckdb.Error):
                    conn.execute("ROLLBACK")
                raise
        finally:
            for name in names:
                conn.unregister(name)
        return counts

    def _register(self, table: pa.Table) -> str:
        self._seq += 1
        name = f"_ingest_{self._seq}"
        self._conn.register(name, table)
        return name


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
