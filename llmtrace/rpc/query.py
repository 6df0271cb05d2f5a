"""QueryService: List/Get over spans, traces and findings; stats; sandboxed SQL."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import decimal
import functools
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import duckdb
import grpc
from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.message import Message

from llmtrace import limits
from llmtrace.api.v1 import common_pb2, query_service_pb2, query_service_pb2_grpc
from llmtrace.query import PageTokenCodec, QueryError
from llmtrace.rpc.errors import RpcError, abort, invalid_argument, not_found
from llmtrace.rpc.response_size import PAGE_BYTES, RESPONSE_HEADROOM, fitting, page_length, too_large
from llmtrace.rpc.row_convert import (
    finding_from_row,
    python_to_any_value,
    span_from_row,
    stats_from_row,
    trace_from_row,
)
from llmtrace.store import queries
from llmtrace.store.listing import ListRequest, Page, list_page
from llmtrace.store.reader import ReadTimeoutError, Row, StoreReader
from llmtrace.store.sql_sandbox import RowEncoding, SqlRefused, SqlTimeout, execute_sandboxed

Context = grpc.aio.ServicerContext[object, object]
M = TypeVar("M", bound=Message)

_DIMENSIONS = {
    query_service_pb2.STATS_DIMENSION_MODEL: "model",
    query_service_pb2.STATS_DIMENSION_PROVIDER: "provider",
    query_service_pb2.STATS_DIMENSION_AGENT: "agent",
    query_service_pb2.STATS_DIMENSION_TIME: "time",
}
_DEFAULT_BUCKET_US = 3_600_000_000
# A century: wider buckets start before year 1 for spans near DuckDB's bucket origin (2000-01-03).
_MAX_BUCKET_US = 100 * 366 * 86_400 * 1_000_000


def _tenant(tenant: str) -> str:
    problem = limits.tenant_problem(tenant)
    if problem is not None:
        raise invalid_argument([("tenant", problem)])
    return tenant


def _id(value: bytes, field: str, size: int, *, required: bool = True) -> bytes | None:
    if not value and not required:
        return None
    if len(value) != size:
        raise invalid_argument([(field, f"must be {size} bytes")])
    return value


def _list_request(request: Any, paging: PageSizes) -> ListRequest:
    return ListRequest(
        tenant=_tenant(request.tenant),
        page_size=request.page_size,
        page_token=request.page_token,
        filter=request.filter,
        order_by=request.order_by,
        default_page_size=paging.default,
        max_page_size=paging.maximum,
    )


#: Largest page of ListSpans in the full view: a page's rows are sorted in full by DuckDB, and a
#: span may hold megabytes.
FULL_VIEW_MAX_PAGE_SIZE = 100


@dataclass(frozen=True)
class PageSizes:
    """`query.default_page_size` and `query.max_page_size`."""

    default: int = 50
    maximum: int = 1000


_INT64 = range(-(2**63), 2**63)


def sql_value(value: object) -> common_pb2.AnyValue:
    """A DuckDB result value as AnyValue (timestamps and dates as ISO 8601 text).

    Integers outside int64 (HUGEINT, UBIGINT) become decimal text rather than failing the RPC.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value not in _INT64:
        return common_pb2.AnyValue(string_value=str(value))
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return common_pb2.AnyValue(string_value=value.isoformat())
    if isinstance(value, dt.timedelta):
        return common_pb2.AnyValue(string_value=str(value))
    if isinstance(value, decimal.Decimal):
        return common_pb2.AnyValue(double_value=float(value))
    if isinstance(value, uuid.UUID):
        return common_pb2.AnyValue(string_value=str(value))
    if isinstance(value, bytes | bytearray | memoryview):
        return common_pb2.AnyValue(bytes_value=bytes(value))
    if isinstance(value, list | tuple):
        return common_pb2.AnyValue(array_value=common_pb2.ArrayValue(values=[sql_value(v) for v in value]))
    if isinstance(value, dict):
        return common_pb2.AnyValue(
            kvlist_value=common_pb2.KeyValueList(
                values=[common_pb2.KeyValue(key=str(k), value=sql_value(v)) for k, v in value.items()]
            )
        )
    return python_to_any_value(value)


_Method = Callable[[Any, Any, Context], Awaitable[Any]]


def _reports_errors(method: _Method) -> _Method:
    """Turn query and request errors into INVALID_ARGUMENT (or their own status) with details."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: Context) -> Any:
        try:
            return await method(self, request, context)
        except QueryError as exc:
            await abort(context, invalid_argument([(exc.field, exc.message)], reason="INVALID_QUERY"))
        except RpcError as exc:
            await abort(context, exc)
        except ReadTimeoutError as exc:
            await abort(
                context, RpcError(grpc.StatusCode.DEADLINE_EXCEEDED, str(exc), reason="QUERY_TIMEOUT")
            )

    return wrapper


class QueryServicer(query_service_pb2_grpc.QueryServiceServicer):
    """Answers queries for one tenant at a time."""

    def __init__(
        self,
        reader: StoreReader,
        codec: PageTokenCodec,
        *,
        sql_reader: StoreReader | None = None,
        sql_max_rows: int,
        sql_timeout_s: float,
        paging: PageSizes | None = None,
        max_message_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self._paging = paging or PageSizes()
        #: `grpc.max_message_bytes`: no response may be larger (`llmtrace.rpc.response_size`).
        self._max_message_bytes = max_message_bytes
        self._reader = reader
        self._sql_reader = sql_reader or reader
        self._codec = codec
        self._sql_max_rows = sql_max_rows
        self._sql_timeout_s = sql_timeout_s

    @_reports_errors
    async def ListTraces(  # noqa: N802 - gRPC method name
        self, request: query_service_pb2.ListTracesRequest, context: Context
    ) -> query_service_pb2.ListTracesResponse:
        """A page of trace summaries."""
        page = await list_page(
            self._reader, self._codec, queries.TRACE_LIST, _list_request(request, self._paging)
        )
        traces, page = self._fit([trace_from_row(r) for r in page.rows], page, "a trace summary")
        return query_service_pb2.ListTracesResponse(traces=traces, next_page_token=page.next_page_token)

    def _fit(self, items: list[M], page: Page, what: str) -> tuple[list[M], Page]:
        """The items of `page` that fit in one response, and the page cut to match."""
        count = page_length(items, self._max_message_bytes, what)
        return items[:count], page.cut(count)

    @_reports_errors
    async def GetTrace(  # noqa: N802 - gRPC method name
        self, request: query_service_pb2.GetTraceRequest, context: Context
    ) -> query_service_pb2.GetTraceResponse:
        """One trace with its spans, oldest first."""
        tenant = _tenant(request.tenant)
        _id(request.trace_id, "trace_id", limits.TRACE_ID_BYTES)  # validated; its bytes are used as sent
        summary = await queries.get_trace(self._reader, tenant, request.trace_id)
        if summary is None:
            raise not_found(f"trace {request.trace_id.hex()} not found")
        trace = trace_from_row(summary)
        full = request.view != query_service_pb2.SPAN_VIEW_BASIC
        rows, cut_short = await queries.get_trace_spans(
            self._reader, tenant, request.trace_id, full=full, max_bytes=2 * self._max_message_bytes
        )
        trace.spans_truncated = cut_short
        if len(rows) > queries.MAX_TRACE_SPANS:
            rows = rows[: queries.MAX_TRACE_SPANS]
            trace.spans_truncated = True
        spans = await self._spans(tenant, rows, with_findings=full)
        count = page_length(spans, self._max_message_bytes, "the trace's first span")
        trace.spans_truncated |= count < len(spans)
        trace.spans.extend(spans[:count])
        return query_service_pb2.GetTraceResponse(trace=trace)

    async def _merge_analysed_scores(self, tenant: str, rows: list[Row]) -> None:
        keys = [(r["trace_id"], r["span_id"]) for r in rows]
        scores = await queries.analysed_scores(self._reader, tenant, keys)
        for row in rows:
            analysed = scores.get((row["trace_id"], row["span_id"]))
            if analysed is not None:
                row["score"] = analysed if row["score"] is None else max(analysed, row["score"])

    async def _spans(self, tenant: str, rows: list[Row], *, with_findings: bool) -> list[Any]:
        found: list[Row] = []
        if with_findings:
            keys = [(r["trace_id"], r["span_id"]) for r in rows]
            found = await queries.findings_for(self._reader, tenant, keys)

        def convert() -> list[Any]:
            # Decoding content JSON of many spans is CPU work: done off the event loop.
            spans = [span_from_row(r) for r in rows]
            index = {(s.trace_id, s.span_id): s for s in spans}
            for row in found:
                index[(row["trace_id"], row["span_id"])].findings.append(finding_from_row(row))
            return spans

        return await asyncio.to_thread(convert)

    @_reports_errors
    async def ListSpans(  # noqa: N802 - gRPC method name
        self, request: query_service_pb2.ListSpansRequest, context: Context
    ) -> query_service_pb2.ListSpansResponse:
        """A page of spans (basic view unless asked for full)."""
        full = request.view == query_service_pb2.SPAN_VIEW_FULL
        req = _list_request(request, self._paging)
        if full:  # pages of whole spans are smaller, and read no further than a response holds
            req = dataclasses.replace(
                req,
                max_page_size=min(req.max_page_size, FULL_VIEW_MAX_PAGE_SIZE),
                default_page_size=min(req.default_page_size, FULL_VIEW_MAX_PAGE_SIZE),
            )
        join = queries.uses_security_score(req.filter, req.order_by)
        page = await list_page(
            self._reader,
            self._codec,
            queries.span_list_query(full, join_scores=join),
            req,
            max_bytes=2 * self._max_message_bytes if full else 0,
        )
        if not join:
            await self._merge_analysed_scores(req.tenant, page.rows)
        spans, page = self._fit(await self._spans(req.tenant, page.rows, with_findings=full), page, "a span")
        return query_service_pb2.ListSpansResponse(spans=spans, next_page_token=page.next_page_token)

    @_reports_errors
    async def GetSpan(  # noqa: N802 - gRPC method name
        self, request: query_service_pb2.GetSpanRequest, context: Context
    ) -> query_service_pb2.GetSpanResponse:
        """One span with content and findings."""
        tenant = _tenant(request.tenant)
        span_id = _id(request.span_id, "span_id", limits.SPAN_ID_BYTES)
        trace_id = _id(request.trace_id, "trace_id", limits.TRACE_ID_BYTES, required=False)
        rows = await queries.get_spans(self._reader, tenant, span_id=span_id, trace_id=trace_id)
        if not rows:
            raise not_found(f"span {request.span_id.hex()} not found")
        if len(rows) > 1:
            raise invalid_argument(
                [("trace_id", "span_id is in several traces; give trace_id too")], reason="AMBIGUOUS_SPAN"
            )
        spans = await self._spans(tenant, rows, with_findings=True)
        if not fitting(spans, self._max_message_bytes - RESPONSE_HEADROOM):
            raise too_large(f"span {request.span_id.hex()}", spans[0].ByteSize(), self._max_message_bytes)
        return query_service_pb2.GetSpanResponse(span=spans[0])

    @_reports_errors
    async def ListFindings(  # noqa: N802 - gRPC method name
        self, request: query_service_pb2.ListFindingsRequest, context: Context
    ) -> query_service_pb2.ListFindingsResponse:
        """A page of findings."""
        page = await list_page(
            self._reader, self._codec, queries.FINDING_LIST, _list_request(request, self._paging)
        )
        findings, page = self._fit([finding_from_row(r) for r in page.rows], page, "a finding")
        return query_service_pb2.ListFindingsResponse(findings=findings, next_page_token=page.next_page_token)

    @_reports_errors
    async def GetStats(  # noqa: N802 - gRPC method name
        self, request: query_service_pb2.GetStatsRequest, context: Context
    ) -> query_service_pb2.GetStatsResponse:
        """Overall and grouped aggregates."""
        q = _stats_query(request)
        rows = await queries.stats(self._reader, q)
        response = query_service_pb2.GetStatsResponse(total=stats_from_row(rows[0]))
        groups = rows[1 : queries.MAX_STATS_GROUPS + 1]
        response.truncated = len(rows) - 1 > len(groups)
        # Cut where the response would pass what a default client reads (long agent names make
        # a group of hundreds of bytes), as list pages are.
        room = min(PAGE_BYTES, self._max_message_bytes - RESPONSE_HEADROOM)
        size = 0
        for row in groups:
            group = query_service_pb2.StatsGroup(stats=stats_from_row(row))
            group.model = row.get("g_model") or ""
            group.provider = row.get("g_provider") or ""
            group.agent = row.get("g_agent") or ""
            if row.get("g_time") is not None:
                group.bucket_start.FromDatetime(row["g_time"])
            size += _repeated_field_bytes(group)
            if size > room:
                response.truncated = True
                break
            response.groups.append(group)
        return response

    @_reports_errors
    async def ExecuteSql(  # noqa: N802 - gRPC method name
        self, request: query_service_pb2.ExecuteSqlRequest, context: Context
    ) -> query_service_pb2.ExecuteSqlResponse:
        """One sandboxed read-only query."""
        tenant = _tenant(request.tenant)
        if request.max_rows < 0:
            raise invalid_argument([("max_rows", "must not be negative")])
        cap = min(request.max_rows or self._sql_max_rows, self._sql_max_rows)

        def sql_row(values: tuple[object, ...]) -> query_service_pb2.SqlRow:
            return query_service_pb2.SqlRow(values=[sql_value(v) for v in values])

        # Rows are encoded as they are fetched, inside the query's time limit, and stop (the
        # result truncated, as past max_rows) before the response would pass the message size.
        encoding = RowEncoding(
            encode=sql_row, size=_repeated_field_bytes, max_bytes=self._max_message_bytes - RESPONSE_HEADROOM
        )

        def run(cursor: duckdb.DuckDBPyConnection) -> query_service_pb2.ExecuteSqlResponse:
            result = execute_sandboxed(
                cursor,
                tenant=tenant,
                query=request.query,
                max_rows=cap,
                timeout_s=self._sql_timeout_s,
                encoding=encoding,
            )
            response = query_service_pb2.ExecuteSqlResponse(truncated=result.truncated)
            for column in result.columns:
                response.columns.add(name=column.name, type=column.type)
            response.rows.extend(result.rows)
            return response

        try:
            # All of it in the SQL reader's threads: neither encoding nor building the response
            # runs in an unbounded thread of its own.
            return await self._sql_reader.run(run)
        except SqlRefused as exc:
            code = (
                grpc.StatusCode.PERMISSION_DENIED
                if exc.reason == "denied"
                else grpc.StatusCode.INVALID_ARGUMENT
            )
            raise RpcError(
                code, exc.message, reason="SQL_REFUSED", violations=[("query", exc.message)]
            ) from exc
        except SqlTimeout as exc:
            raise RpcError(grpc.StatusCode.DEADLINE_EXCEEDED, str(exc), reason="SQL_TIMEOUT") from exc


def _repeated_field_bytes(row: Message) -> int:
    """What `row` adds to a response as an element of a repeated field (as `fitting` counts
    it): the row, its field tag and its length as a varint."""
    size = row.ByteSize()
    return size + 1 + max(1, (size.bit_length() + 6) // 7)


def _stats_query(request: query_service_pb2.GetStatsRequest) -> queries.StatsQuery:
    tenant = _tenant(request.tenant)
    group_by: list[str] = []
    for i, dim in enumerate(request.group_by):
        name = _DIMENSIONS.get(dim)
        if name is None:
            raise invalid_argument([(f"group_by[{i}]", "unknown dimension")])
        if name in group_by:
            raise invalid_argument([(f"group_by[{i}]", f"{name} is repeated")])
        group_by.append(name)
    width = _DEFAULT_BUCKET_US
    if request.HasField("bucket_width"):
        if not _valid_duration(request.bucket_width):
            raise invalid_argument(
                [("bucket_width", "nanos must be within +-999,999,999 and have the sign of seconds")]
            )
        width = request.bucket_width.ToMicroseconds()
        if width < 1_000_000:
            raise invalid_argument([("bucket_width", "must be at least 1 second")])
        if width > _MAX_BUCKET_US:
            raise invalid_argument([("bucket_width", "must be at most 100 years")])
    start = _datetime(request.start_time, "start_time") if request.HasField("start_time") else None
    end = _datetime(request.end_time, "end_time") if request.HasField("end_time") else None
    if start is not None and end is not None and end <= start:
        raise invalid_argument([("end_time", "must be after start_time")])
    return queries.StatsQuery(tenant, request.filter, tuple(group_by), width, start, end)


def _valid_duration(value: duration_pb2.Duration) -> bool:
    """Whether `value` is a Duration as protobuf defines one (nanos within a second, same sign)."""
    nanos, seconds = value.nanos, value.seconds
    return -1_000_000_000 < nanos < 1_000_000_000 and not (seconds > 0 > nanos or seconds < 0 < nanos)


def _datetime(value: timestamp_pb2.Timestamp, field: str) -> dt.datetime:
    try:
        return value.ToDatetime(dt.UTC)
    except (ValueError, OverflowError):
        raise invalid_argument([(field, "must be a valid timestamp (years 1 to 9999)")]) from None
