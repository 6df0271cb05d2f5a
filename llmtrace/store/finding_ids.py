"""Who holds a finding id: ingest refuses a client's finding whose id another span's finding
holds, since the store would ignore it as a duplicate (`llmtrace.rpc.ingest`)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import duckdb

Key = tuple[str, str]
"""(tenant, finding id)"""
Owner = tuple[bytes, bytes]
"""(trace_id, span_id) of the span whose finding holds the id"""


class FindingIdReadError(RuntimeError):
    """The store could not be read to check finding ids (retryable: nothing was decided)."""


@dataclass(slots=True)
class IdCheck:
    """One request's check: who holds its ids, then which ones it claimed."""

    owners: dict[Key, Owner]
    claimed: list[Key] = field(default_factory=list)


class FindingIds:
    """Stored finding ids, and those that requests in flight have accepted but not committed.

    A request that names finding ids checks and claims them under one lock (`checking`), and
    gives its claims up once its write is over (`release`): two requests sent together cannot
    both take a new id, which the store would then keep for one of them only.
    """

    def __init__(self, conn: duckdb.DuckDBPyConnection) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self._claimed: dict[Key, Owner] = {}

    @contextmanager
    def checking(self, keys: Sequence[Key]) -> Iterator[IdCheck]:
        """The owners of `keys`, stored or claimed (`IdCheck.owners`); while inside, the caller
        adds the ids its request accepts, which are claimed when the block ends
        (`IdCheck.claimed`, to `release` later). Raises FindingIdReadError."""
        with self._lock:
            owners = {**self._stored(keys), **{k: self._claimed[k] for k in keys if k in self._claimed}}
            before = dict(owners)
            check = IdCheck(owners)
            yield check
            check.claimed = [k for k, o in owners.items() if before.get(k) != o]
            self._claimed.update((k, owners[k]) for k in check.claimed)

    def release(self, keys: Sequence[Key]) -> None:
        """Give up the claims of a request whose write is over (committed: the store has them)."""
        with self._lock:
            for key in keys:
                self._claimed.pop(key, None)

    def _stored(self, keys: Sequence[Key]) -> dict[Key, Owner]:
        # A cursor of its own: called from ingest's CPU thread, beside the writer and the readers.
        tenants = sorted({tenant for tenant, _ in keys})
        ids = sorted({finding_id for _, finding_id in keys})
        try:
            cursor = self._conn.cursor()
            try:
                rows = cursor.execute(
                    "SELECT tenant, id, trace_id, span_id FROM finding_rows "
                    "WHERE tenant IN (SELECT unnest($1::VARCHAR[])) AND id IN (SELECT unnest($2::VARCHAR[]))",
                    [tenants, ids],
                ).fetchall()
            finally:
                cursor.close()
        except duckdb.Error as exc:
            raise FindingIdReadError(f"cannot read finding ids: {exc}") from exc
        wanted = set(keys)
        return {(t, i): (bytes(trace), bytes(span)) for t, i, trace, span in rows if (t, i) in wanted}
