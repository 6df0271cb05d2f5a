"""Read access: every query runs on its own cursor in a worker thread, off the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import duckdb

T = TypeVar("T")

Row = dict[str, Any]


class StoreReader:
    """Runs read queries on per-call cursors of the core's database connection."""

    def __init__(self, conn: duckdb.DuckDBPyConnection, *, threads: int = 4) -> None:
        self._conn = conn
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="duckdb-read")

    async def run(self, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """Call `fn` with a fresh cursor in a worker thread; the cursor is closed afterwards."""

        def call() -> T:
            cursor = self._conn.cursor()
            try:
                return fn(cursor)
            finally:
                cursor.close()

        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    async def fetch(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        """Rows of `sql` as dicts keyed by column name."""

        def query(cursor: duckdb.DuckDBPyConnection) -> list[Row]:
            cursor.execute(sql, list(params))
            names = [d[0] for d in cursor.description or ()]
            return [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]

        return await self.run(query)

    def close(self) -> None:
        """Wait for running queries, then stop the worker threads."""
        self._pool.shutdown(wait=True, cancel_futures=True)
