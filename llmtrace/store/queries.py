"""The read queries behind QueryService: spans, traces, findings and stats.

Rows come back as plain dicts keyed by column name; the RPC layer turns them into messages.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import duckdb

from llmtrace import limits
from llmtrace.query import compile_filter
from llmtrace.store.catalogs import (
    FINDING_FIELDS,
    SPAN_DURATION_MS_SQL,
    SPAN_FIELDS,
    SPAN_IS_ERROR_SQL,
    SPAN_SCORE_SQL,
    TRACE_FIELDS,
)
from llmtrace.store.listing import ListQuery
from llmtrace.store.reader import Row, StoreReader

#: Most spans GetTrace returns; one more is fetched to tell that there were more.
MAX_TRACE_SPANS = 10_000

# span_rows joined with the scores analysis wrote later; `{tenant}` is bound by the caller.
SPAN_RELATION = (
    "span_rows AS s LEFT JOIN (SELECT trace_id, span_id, max(score) AS score FROM span_scores "
    "WHERE tenant = {tenant} GROUP BY trace_id, span_id) AS sc "
    "ON sc.trace_id = s.trace_id AND sc.span_id = s.span_id"
)

_BASIC_COLUMNS = [
    "tenant",
    "trace_id",
    "span_id",
    "parent_span_id",
    "name",
    "agent",
    "operation",
    "provider",
    "request_model",
    "response_model",
    "start_time",
    "end_time",
    "ttft_us",
    "status_code",
    "http_status_code",
    "error_message",
    "error_type",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "reasoning_output_tokens",
    "usage_estimated",
    "cost_usd",
    "cost_input_usd",
    "cost_output_usd",
    "session_id",
    "client_address",
    "user_agent",
    "upstream_request_id",
    "server_address",
    "api_key_fingerprint",
    "temperature",
    "top_p",
    "max_tokens",
    "stream",
    "frequency_penalty",
    "presence_penalty",
    "seed",
    "choice_count",
    "output_type",
    "stop_sequences",
    "response_id",
    "finish_reasons",
    "attributes",
    "attributes_pb",
]
_CONTENT_COLUMNS = [
    "request_messages",
    "request_tools",
    "request_body",
    "request_truncated",
    "response_choices",
    "response_body",
    "response_truncated",
]

SPAN_BASIC_SELECT = ", ".join(f"s.{c}" for c in _BASIC_COLUMNS) + f", {SPAN_SCORE_SQL} AS score"
SPAN_FULL_SELECT = SPAN_BASIC_SELECT + ", " + ", ".join(f"s.{c}" for c in _CONTENT_COLUMNS)

FINDING_SELECT = (
    "f.id, f.tenant, f.trace_id, f.span_id, f.type, f.severity, f.confidence, f.detector, "
    "f.location, f.description, f.excerpt, f.metadata, f.create_time"
)


def span_list_query(full: bool, *, join_scores: bool = True) -> ListQuery:
    """ListSpans over the tenant's spans; without `join_scores`, `score` is the ingested one only."""
    columns = SPAN_FULL_SELECT if full else SPAN_BASIC_SELECT
    if not join_scores:
        columns = columns.replace(f"{SPAN_SCORE_SQL} AS score", "s.security_score AS score")
    return ListQuery(
        resource="spans",
        columns=columns,
        relation=SPAN_RELATION if join_scores else "span_rows AS s",
        tenant_column="s.tenant",
        catalog=SPAN_FIELDS,
        default_order="start_time desc",
        tiebreak=("trace_id", "span_id"),
    )


# Per-trace aggregate of the tenant's spans; `t` in TRACE_FIELDS.
TRACE_RELATION = (
    "(SELECT s.tenant, s.trace_id, min(s.start_time) AS start_time, max(s.end_time) AS end_time, "
    "count(*) AS span_count, count(*) FILTER (WHERE " + SPAN_IS_ERROR_SQL + ") AS error_count, "
    "sum(s.input_tokens) AS input_tokens, sum(s.output_tokens) AS output_tokens, "
    "sum(s.total_tokens) AS total_tokens, sum(s.cost_usd) AS cost_usd, "  # NULL: none priced
    "max(" + SPAN_SCORE_SQL + ") AS max_security_score, "
    "list_sort(list_distinct(list(s.request_model) FILTER (WHERE s.request_model <> ''))) AS models, "
    "list_sort(list_distinct(list(s.agent) FILTER (WHERE s.agent <> ''))) AS agents, "
    "max(s.session_id) AS session_id "
    "FROM " + SPAN_RELATION + " WHERE s.tenant = {tenant} GROUP BY s.tenant, s.trace_id) AS t"
)

TRACE_LIST = ListQuery(
    resource="traces",
    columns="t.*",
    relation=TRACE_RELATION,
    tenant_column="t.tenant",
    catalog=TRACE_FIELDS,
    default_order="start_time desc",
    tiebreak=("trace_id",),
)

FINDING_LIST = ListQuery(
    resource="findings",
    columns=FINDING_SELECT,
    relation="finding_rows AS f",
    tenant_column="f.tenant",
    catalog=FINDING_FIELDS,
    default_order="create_time desc",
    tiebreak=("id",),
)


async def get_spans(
    reader: StoreReader,
    tenant: str,
    *,
    span_id: bytes | None = None,
    trace_id: bytes | None = None,
    full: bool = True,
) -> list[Row]:
    """Rows of the spans matching the ids (a trace's spans oldest first)."""
    sql, params = _spans_sql(tenant, span_id=span_id, trace_id=trace_id, full=full)
    return await reader.fetch(sql, params)


async def get_trace_spans(
    reader: StoreReader, tenant: str, trace_id: bytes, *, full: bool, max_bytes: int
) -> tuple[list[Row], bool]:
    """A trace's span rows, oldest first, read only until their content passes `max_bytes` (a
    trace can hold thousands of large spans; one response carries a few megabytes); and whether
    reading stopped before the end."""
    sql, params = _spans_sql(tenant, span_id=None, trace_id=trace_id, full=full)
    return await reader.fetch_bounded(sql, params, max_bytes)


def _spans_sql(
    tenant: str, *, span_id: bytes | None, trace_id: bytes | None, full: bool
) -> tuple[str, list[object]]:
    where = ["s.tenant = ?"]
    params: list[object] = [tenant, tenant]
    if span_id is not None:
        where.append("s.span_id = ?")
        params.append(span_id)
    if trace_id is not None:
        where.append("s.trace_id = ?")
        params.append(trace_id)
    sql = (
        f"SELECT {SPAN_FULL_SELECT if full else SPAN_BASIC_SELECT} "
        f"FROM {SPAN_RELATION.replace('{tenant}', '?')} "
        f"WHERE {' AND '.join(where)} ORDER BY s.start_time, s.span_id LIMIT {MAX_TRACE_SPANS + 1}"
    )
    return sql, params


async def get_trace(reader: StoreReader, tenant: str, trace_id: bytes) -> Row | None:
    """The per-trace aggregate row of one trace, or None."""
    sql = f"SELECT t.* FROM {TRACE_RELATION.replace('{tenant}', '?')} WHERE t.trace_id = ?"
    rows = await reader.fetch(sql, [tenant, tenant, trace_id])
    return rows[0] if rows else None


async def findings_for(reader: StoreReader, tenant: str, keys: Sequence[tuple[bytes, bytes]]) -> list[Row]:
    """Findings of the spans named by (trace_id, span_id), in one query."""
    if not keys:
        return []
    marks = ", ".join("?" for _ in keys)
    sql = (
        f"SELECT {FINDING_SELECT} FROM finding_rows AS f WHERE f.tenant = ? "
        f"AND f.span_id IN ({marks}) ORDER BY f.create_time, f.id"
    )
    wanted = set(keys)
    rows = await reader.fetch(sql, [tenant, *(span_id for _, span_id in keys)])
    return [r for r in rows if (r["trace_id"], r["span_id"]) in wanted]


@dataclass(frozen=True)
class StatsQuery:
    """GetStats in plain terms."""

    tenant: str
    filter: str
    group_by: tuple[str, ...]  # of "model", "provider", "agent", "time"
    bucket_width_us: int
    start_time: datetime | None
    end_time: datetime | None


_GROUP_SQL = {
    "model": "s.request_model",
    "provider": "s.provider",
    "agent": "s.agent",
    "time": "time_bucket(to_microseconds(?), s.start_time)",
}

# Aggregates that add up across groups, and those that do not (distinct counts, percentiles).
_ADDITIVE = ("span_count", "error_count", "input_tokens", "output_tokens", "total_tokens", "cost_usd")
_ADDITIVE_AGGREGATES = (
    f"count(*) AS span_count, count(*) FILTER (WHERE {SPAN_IS_ERROR_SQL}) AS error_count, "
    "coalesce(sum(s.input_tokens), 0) AS input_tokens, coalesce(sum(s.output_tokens), 0) AS output_tokens, "
    "coalesce(sum(s.total_tokens), 0) AS total_tokens, coalesce(sum(s.cost_usd), 0.0) AS cost_usd"
)
_HOLISTIC_AGGREGATES = (
    "count(DISTINCT s.trace_id) AS trace_count, "
    f"quantile_cont({SPAN_DURATION_MS_SQL}, [0.5, 0.95, 0.99]) AS latency_ms, "
    "quantile_cont(s.ttft_us / 1000.0, 0.5) AS ttft_p50_ms"
)
_STATS_AGGREGATES = f"{_ADDITIVE_AGGREGATES}, {_HOLISTIC_AGGREGATES}"


def uses_security_score(*texts: str) -> bool:
    """Whether a filter or order needs analysed scores joined in before the LIMIT.

    The join stops DuckDB's cheap top-N and costs a hash join over every span, so it is left out
    unless the request names the field; otherwise scores are merged into the page afterwards.
    A false positive (the word inside a string literal) is only slower, never wrong.
    """
    return any("security_score" in text for text in texts)


async def analysed_scores(
    reader: StoreReader, tenant: str, keys: Sequence[tuple[bytes, bytes]]
) -> dict[tuple[bytes, bytes], int]:
    """Highest analysed score per (trace_id, span_id) among `keys`."""
    if not keys:
        return {}
    marks = ", ".join("?" for _ in keys)
    sql = (
        "SELECT trace_id, span_id, max(score) AS score FROM span_scores "
        f"WHERE tenant = ? AND span_id IN ({marks}) GROUP BY trace_id, span_id"
    )
    rows = await reader.fetch(sql, [tenant, *(span_id for _, span_id in keys)])
    wanted = set(keys)
    return {
        (r["trace_id"], r["span_id"]): int(r["score"])
        for r in rows
        if (r["trace_id"], r["span_id"]) in wanted
    }


#: Groups `stats` returns at most; it fetches one more, so that a caller can tell it cut them.
MAX_STATS_GROUPS: Final = limits.MAX_ITEMS


async def stats(reader: StoreReader, q: StatsQuery) -> list[Row]:
    """Aggregates: the first row is the overall total, then one row per group (ordered by keys),
    at most `MAX_STATS_GROUPS` + 1 of them (one-second buckets over a month would be millions).

    The total and the groups are two plain aggregations run side by side: DuckDB computes
    `count(DISTINCT ...)` under GROUPING SETS about twice as slowly as in two separate scans.
    Every dimension puts each span in exactly one group, so the total's additive aggregates are
    the sums over the groups and its own scan computes only distinct traces and percentiles;
    only when the groups were cut does a third scan sum them.
    """
    where = compile_filter(q.filter, SPAN_FIELDS)
    conds = ["s.tenant = ?", where.sql]
    params: list[object] = [q.tenant, *where.params]
    if q.start_time is not None:
        conds.append("s.start_time >= ?")
        params.append(q.start_time)
    if q.end_time is not None:
        conds.append("s.start_time < ?")
        params.append(q.end_time)
    relation = "span_rows AS s"
    if uses_security_score(q.filter):
        relation = SPAN_RELATION.replace("{tenant}", "?")
        params = [q.tenant, *params]
    condition = " AND ".join(conds)
    total_sql = f"SELECT {_STATS_AGGREGATES} FROM {relation} WHERE {condition}"
    if not q.group_by:
        return await reader.fetch(total_sql, params)
    keys = ", ".join(f"{_GROUP_SQL[g]} AS g_{g}" for g in q.group_by)
    key_params: list[object] = [q.bucket_width_us] if "time" in q.group_by else []
    names = ", ".join(f"g_{g}" for g in q.group_by)
    group_sql = (
        f"SELECT {keys}, {_STATS_AGGREGATES} FROM {relation} WHERE {condition} "
        f"GROUP BY {names} ORDER BY {names} LIMIT {MAX_STATS_GROUPS + 1}"
    )
    holistic_sql = f"SELECT {_HOLISTIC_AGGREGATES} FROM {relation} WHERE {condition}"
    holistic, groups = await asyncio.gather(
        reader.fetch(holistic_sql, params), reader.fetch(group_sql, [*key_params, *params])
    )
    total = dict(holistic[0])
    if len(groups) > MAX_STATS_GROUPS:
        additive_sql = f"SELECT {_ADDITIVE_AGGREGATES} FROM {relation} WHERE {condition}"
        additive = await reader.fetch(additive_sql, params)
        total.update(additive[0])
    else:
        for name in _ADDITIVE:
            total[name] = sum(group[name] for group in groups)
    return [total, *groups]


_REQUEUE_CHUNK_ROWS = 16
_UNANALYSED = (
    "SELECT s.tenant, s.trace_id, s.span_id FROM span_rows AS s "
    "WHERE s.ingest_time >= make_timestamptz(?::BIGINT) AND NOT EXISTS ("
    "SELECT 1 FROM span_scores AS sc WHERE sc.tenant = s.tenant AND sc.trace_id = s.trace_id "
    "AND sc.span_id = s.span_id AND sc.source = ?) "
    "ORDER BY s.ingest_time LIMIT ?"
)


async def unanalysed_spans(
    reader: StoreReader, *, since_us: int, source: str, limit: int, max_bytes: int
) -> tuple[list[Row], list[Row]]:
    """Spans ingested since `since_us` (oldest first, at most `limit`) without a `source` score,
    in the full select (ingested score only), and the (type, detector, location) of their findings.
    Rows are read a few at a time and no more once their content passes `max_bytes`: the spans
    that waited while the core was down may be many and large, and a restart that ran out of
    memory loading them would load them again at the next.
    """
    if limit <= 0:
        return [], []
    # Raw bodies are not analysed: left out, so a long re-queue does not hold them in memory.
    columns = (
        SPAN_FULL_SELECT.replace(f"{SPAN_SCORE_SQL} AS score", "s.security_score AS score")
        .replace("s.request_body", "'' AS request_body")
        .replace("s.response_body", "'' AS response_body")
    )

    def run(cursor: duckdb.DuckDBPyConnection) -> tuple[list[Row], list[Row]]:
        params = [since_us, source, limit]
        # No ORDER BY: sorting would make DuckDB hold every row before the first arrives.
        cursor.execute(
            f"WITH todo AS ({_UNANALYSED}) SELECT {columns} FROM span_rows AS s "
            "JOIN todo USING (tenant, trace_id, span_id)",
            params,
        )
        names = [d[0] for d in cursor.description or ()]
        spans: list[Row] = []
        size = 0
        while size < max_bytes and (chunk := cursor.fetchmany(_REQUEUE_CHUNK_ROWS)):
            for values in chunk:
                spans.append(dict(zip(names, values, strict=True)))
                size += sum(len(value) for value in values if isinstance(value, str | bytes))
                if size >= max_bytes:
                    break
        if not spans:
            return [], []
        cursor.execute(
            f"WITH todo AS ({_UNANALYSED}) SELECT f.tenant, f.trace_id, f.span_id, f.type, f.detector, "
            "f.location FROM finding_rows AS f JOIN todo USING (tenant, trace_id, span_id)",
            params,
        )
        names = [d[0] for d in cursor.description or ()]
        found = [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]
        return spans, found

    return await reader.run(run)
