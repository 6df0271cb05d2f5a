"""Who holds a finding id already: ingest refuses a client's finding whose id another span's
finding holds, since the store would ignore it as a duplicate (`llmtrace.rpc.ingest`)."""

from __future__ import annotations

from collections.abc import Sequence

import duckdb


def finding_owners(
    conn: duckdb.DuckDBPyConnection, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], tuple[bytes, bytes]]:
    """(tenant, id) -> (trace_id, span_id) of the stored findings among `keys`.

    A cursor of its own: called from ingest's CPU thread, beside the writer and the readers.
    """
    if not keys:
        return {}
    tenants = sorted({tenant for tenant, _ in keys})
    ids = sorted({finding_id for _, finding_id in keys})
    cursor = conn.cursor()
    try:
        rows = cursor.execute(
            "SELECT tenant, id, trace_id, span_id FROM finding_rows "
            "WHERE tenant IN (SELECT unnest($1::VARCHAR[])) AND id IN (SELECT unnest($2::VARCHAR[]))",
            [tenants, ids],
        ).fetchall()
    finally:
        cursor.close()
    wanted = set(keys)
    return {(t, i): (bytes(trace), bytes(span)) for t, i, trace, span in rows if (t, i) in wanted}
