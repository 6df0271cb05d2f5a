"""Read access: every query runs on its own cursor in a worker thread, off the event loop.

A query is interrupted when it runs past the reader's time limit or when the RPC that asked for
it is cancelled (client gone, deadline passed), so abandoned queries do not hold worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import duckdb

from llmtrace.store.failure import OnFatal, is_fatal

T = TypeVar("T")

Row = dict[str, Any]

#: Longest a List/Get/Stats query may run; they are designed to take milliseconds.
DEFAULT_TIMEOUT_S = 30.0


class ReadTimeoutError(RuntimeError):
    """A read query ran past the reader's time limit and was interrupted."""


class StoreReader:
    """Runs read queries on per-call cursors of the core's database connection."""

    def __init__(
        self,
        conn: duckdb.DuckDBPyConnection,
        *,
        threads: int = 4,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        on_fatal: OnFatal | None = None,
    ) -> None:
        self._conn = conn
        self._timeout_s = timeout_s
        self._on_fatal = on_fatal
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="duckdb-read")

    async def run(self, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """Call `fn` with a fresh cursor in a worker thread; the cursor is closed afterwards."""
        cursors: list[duckdb.DuckDBPyConnection] = []
        timed_out = threading.Event()

        def interrupt(cursor: duckdb.DuckDBPyConnection) -> None:
            timed_out.set()
            cursor.interrupt()

        def call() -> T:
            try:
                cursor = self._conn.cursor()
            except duckdb.Error as exc:
                self._report(exc)
                raise
            cursors.append(cursor)
            timer = threading.Timer(self._timeout_s, interrupt, (cursor,))
            timer.start()
            try:
                return fn(cursor)
            except duckdb.InterruptException as exc:
                if timed_out.is_set():
                    raise ReadTimeoutError(f"query exceeded {self._timeout_s:g} s") from exc
                raise
            except duckdb.Error as exc:
                self._report(exc)
                raise
            finally:
                timer.cancel()
                cursor.close()

        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, call)
        except asyncio.CancelledError:
            for cursor in cursors:
                with contextlib.suppress(duckdb.Error):
                    cursor.interrupt()
            raise

    def _report(self, exc: duckdb.Error) -> None:
        if self._on_fatal is not None and is_fatal(exc):
            self._on_fatal(exc)

    async def fetch(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        """Rows of `sql` as dicts keyed by column name."""

        def query(cursor: duckdb.DuckDBPyConnection) -> list[Row]:
            cursor.execute(sql, list(params))
            names = [d[0] for d in cursor.description or ()]
            return [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]

        return await self.run(query)

    async def fetch_bounded(
        self, sql: str, params: Sequence[object], max_bytes: int, chunk_rows: int = 16
    ) -> tuple[list[Row], bool]:
        """Rows of `sql`, read a few at a time until their text and bytes pass `max_bytes` (one
        row at least); and whether reading stopped there, before the result's end."""

        def query(cursor: duckdb.DuckDBPyConnection) -> tuple[list[Row], bool]:
            cursor.execute(sql, list(params))
            names = [d[0] for d in cursor.description or ()]
            rows: list[Row] = []
            size = 0
            while chunk := cursor.fetchmany(chunk_rows):
                for values in chunk:
                    if rows and size >= max_bytes:
                        return rows, True
                    rows.append(dict(zip(names, values, strict=True)))
                    size += sum(len(value) for value in values if isinstance(value, str | bytes))
            return rows, False

        return await self.run(query)

    def close(self) -> None:
        """Wait for running queries, then stop the worker threads."""
        self._pool.shutdown(wait=True, cancel_futures=True)
