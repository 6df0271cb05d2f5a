"""The single DuckDB writer: one thread, one connection, group commit of Arrow batches.

Ingest RPCs hand Arrow tables to `StoreWriter.write` and await the commit. The writer thread
takes every batch that is waiting, inserts them all in one transaction and then resolves each
caller's future, so under load many RPCs share one commit (and one WAL sync) while the event
loop never touches DuckDB.

Post-ack analysis results (`AnalysisWrite`: findings and score rows) go through the same queue
and thread, committed in a transaction of their own after the ingest batches of the same group.
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

from llmtrace.store.failure import OnFatal, is_fatal
from llmtrace.store.row_schema import FINDING_ROW_SCHEMA, SCORE_ROW_SCHEMA, SPAN_ROW_SCHEMA

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
# Analysis rows: ids are deterministic and a span has one score per source, so a span analysed
# twice (a replayed batch, a re-queue after restart) adds nothing. The same plain-INSERT-first
# rule applies: OR IGNORE costs five times as much here (10 ms for 64 score rows), which made
# analysis writes the core's largest CPU cost under proxy load.
_SCORE_INSERT = _insert_sql("span_scores", SCORE_ROW_SCHEMA.names, or_ignore=False)
_SCORE_UPSERT = _insert_sql("span_scores", SCORE_ROW_SCHEMA.names, or_ignore=True)


class WriterClosedError(RuntimeError):
    """The writer is shutting down and takes no more batches."""


@dataclass(frozen=True)
class WriteBatch:
    """Rows to commit together: spans and the findings that arrived with them."""

    spans: pa.Table
    findings: pa.Table | None = None


@dataclass(frozen=True)
class AnalysisWrite:
    """What post-ack analysis found: finding rows and one score row per analysed span."""

    scores: pa.Table
    findings: pa.Table | None = None


Inserted = list[bool] | None
"""Which spans of a `WriteBatch` the commit stored, by row; None: all of them. A span already
stored (a replay), or earlier in the same commit, is not stored again, nor are its findings."""


@dataclass
class _Pending:
    batch: WriteBatch | AnalysisWrite
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Inserted] = field(repr=False)


_STOP = object()


class StoreWriter:
    """Owns the only writing connection to the database."""

    def __init__(
        self, conn: duckdb.DuckDBPyConnection, *, max_group: int = 64, on_fatal: OnFatal | None = None
    ) -> None:
        self._conn = conn
        self._on_fatal = on_fatal
        self._max_group = max_group
        self._queue: queue.Queue[_Pending | object] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="duckdb-writer", daemon=True)
        self._closed = False
        # Held across "closed?" and the put, in `write` and `close`: a batch is never queued
        # behind the stop marker, where nothing would ever commit it or answer its future.
        self._closing = threading.Lock()

    def start(self) -> None:
        """Start the writer thread."""
        self._thread.start()

    async def write(self, batch: WriteBatch | AnalysisWrite) -> Inserted:
        """Commit `batch`; which of its spans were stored (`Inserted`; None for analysis rows).

        Spans already stored are skipped with their findings: ingest is idempotent, and a replay
        whose content differs adds nothing to the span stored first."""
        loop = asyncio.get_running_loop()
        pending = _Pending(batch, loop, loop.create_future())
        with self._closing:
            if self._closed:
                raise WriterClosedError("the store is shutting down")
            self._queue.put(pending)
        return await pending.future

    def close(self, timeout: float | None = None) -> None:
        """Commit everything already queued, then stop the thread."""
        with self._closing:
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
        ingest = [p for p in group if isinstance(p.batch, WriteBatch)]
        analysis = [p for p in group if isinstance(p.batch, AnalysisWrite)]
        if ingest:
            self._commit_ingest(ingest)
        if analysis:
            self._commit_analysis(analysis)

    def _commit_analysis(self, group: list[_Pending]) -> None:
        try:
            self._insert_analysis(group)
        except Exception as exc:
            self._report(exc)
            _log_failure("analysis write failed", exc)
            for pending in group:
                _resolve_error(pending, RuntimeError("analysis write failed"))
            return
        for pending in group:
            _resolve(pending)

    def _insert_analysis(self, group: list[_Pending]) -> None:
        batches = [p.batch for p in group if isinstance(p.batch, AnalysisWrite)]
        scores = pa.concat_tables([b.scores for b in batches])
        found = [b.findings for b in batches if b.findings is not None and b.findings.num_rows]
        findings = pa.concat_tables(found) if found else None
        tables = [("_analysis_scores", scores, _SCORE_INSERT, _SCORE_UPSERT)]
        if findings is not None:
            tables.append(("_analysis_findings", findings, _FINDING_INSERT, _FINDING_UPSERT))
        try:
            self._execute_inserts(tables, or_ignore=False)
        except duckdb.ConstraintException:  # a span analysed twice: keep what is stored
            self._execute_inserts(tables, or_ignore=True)

    def _commit_ingest(self, group: list[_Pending]) -> None:
        try:
            inserted = self._insert([p.batch for p in group if isinstance(p.batch, WriteBatch)])
        except Exception as exc:
            self._report(exc)
            if len(group) == 1:
                _log_failure("store write failed", exc)
                _resolve_error(group[0], RuntimeError("store write failed"))
                return
            for pending in group:
                self._commit_ingest([pending])
            return
        for pending, stored in zip(group, inserted, strict=True):
            _resolve(pending, stored)

    def _report(self, exc: Exception) -> None:
        if self._on_fatal is not None and is_fatal(exc):
            self._on_fatal(exc)

    def _insert(self, batches: list[WriteBatch]) -> list[Inserted]:
        spans = pa.concat_tables([b.spans for b in batches])  # zero-copy
        found = [b.findings for b in batches if b.findings is not None]
        findings = pa.concat_tables(found) if found else None
        try:
            self._insert_tables(spans, findings, or_ignore=False)
        except duckdb.ConstraintException:
            return self._insert_new(batches)
        return [None] * len(batches)

    def _insert_new(self, batches: list[WriteBatch]) -> list[Inserted]:
        """The group again, without the spans already stored or earlier in it, nor their findings
        (a differing replay would otherwise attach findings about text that was never stored)."""
        seen = self._stored_keys(pa.concat_tables([b.spans.select(_SPAN_KEY) for b in batches]))
        inserted: list[Inserted] = []
        spans: list[pa.Table] = []
        found: list[pa.Table] = []
        for batch in batches:
            keys = _keys(batch.spans)
            new = []
            for key in keys:
                new.append(key not in seen)
                seen.add(key)
            inserted.append(new)
            spans.append(batch.spans.filter(pa.array(new)))
            if batch.findings is not None and batch.findings.num_rows:
                kept = {key for key, is_new in zip(keys, new, strict=True) if is_new}
                found.append(batch.findings.filter(pa.array([k in kept for k in _keys(batch.findings)])))
        # OR IGNORE still: a client's finding id may repeat one stored in the meantime.
        self._insert_tables(
            pa.concat_tables(spans), pa.concat_tables(found) if found else None, or_ignore=True
        )
        return inserted

    def _stored_keys(self, keys: pa.Table) -> set[tuple[str, bytes, bytes]]:
        self._conn.register("_ingest_keys", keys)
        try:
            rows = self._conn.execute(
                "SELECT s.tenant, s.trace_id, s.span_id FROM span_rows s "
                "JOIN _ingest_keys k USING (tenant, trace_id, span_id)"
            ).fetchall()
        finally:
            self._conn.unregister("_ingest_keys")
        return {(tenant, bytes(trace), bytes(span)) for tenant, trace, span in rows}

    def _insert_tables(self, spans: pa.Table, findings: pa.Table | None, *, or_ignore: bool) -> None:
        tables = [("_ingest_spans", spans, _SPAN_INSERT, _SPAN_UPSERT)]
        if findings is not None and findings.num_rows:
            tables.append(("_ingest_findings", findings, _FINDING_INSERT, _FINDING_UPSERT))
        self._execute_inserts(tables, or_ignore=or_ignore)

    def _execute_inserts(self, tables: list[tuple[str, pa.Table, str, str]], *, or_ignore: bool) -> None:
        """Insert each (name, table, insert sql, upsert sql) in one transaction, as one script.

        One script per group: every execute() hands the GIL back and has to win it again from the
        ingest thread, so fewer calls mean shorter commits under load.
        """
        conn = self._conn
        script = ["BEGIN TRANSACTION"]
        for name, table, insert, upsert in tables:
            conn.register(name, table)
            script.append((upsert if or_ignore else insert).replace("{src}", name))
        script.append("COMMIT")
        # Tables are unregistered outside the transaction: doing so inside an aborted one fails
        # and would hide the constraint error that triggers the OR IGNORE retry.
        try:
            conn.execute(";\n".join(script))
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                conn.execute("ROLLBACK")
            raise
        finally:
            for name, *_ in tables:
                conn.unregister(name)


_SPAN_KEY = ["tenant", "trace_id", "span_id"]


def _log_failure(event: str, exc: Exception) -> None:
    # DuckDB's own errors (a full disk, a database it gave up on) say all there is in one line,
    # and repeat for every batch while they last: no traceback for them.
    if isinstance(exc, duckdb.Error):
        _log.error(event, error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    else:
        _log.exception(event)


def _keys(table: pa.Table) -> list[tuple[str, bytes, bytes]]:
    return list(zip(*(table.column(name).to_pylist() for name in _SPAN_KEY), strict=True))


def _resolve(pending: _Pending, inserted: Inserted = None) -> None:
    def set_result() -> None:
        if not pending.future.done():
            pending.future.set_result(inserted)

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
