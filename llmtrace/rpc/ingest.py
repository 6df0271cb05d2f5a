"""IngestService: validate, convert to Arrow, commit, then acknowledge.

Committed spans are then offered to post-ack analysis (`committed` callback): it only queues
them, so the acknowledgement never waits for analysis.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Executor, Future
from typing import Any, Final

import grpc
import structlog
from google.protobuf.message import DecodeError

from llmtrace import limits
from llmtrace.api.v1 import common_pb2, ingest_service_pb2, ingest_service_pb2_grpc, span_pb2
from llmtrace.capture.raw import DecodeBudget, raw_exchange_problems, read_raw_exchange
from llmtrace.capture.response_parse import MAX_SKIMMED_BYTES
from llmtrace.ingest.arrow_rows import build_write_batch
from llmtrace.ingest.validation import validate_span
from llmtrace.rpc import metrics
from llmtrace.rpc.errors import RpcError, abort, invalid_argument
from llmtrace.store.finding_ids import FindingIdReadError, FindingIds
from llmtrace.store.writer import Inserted, StoreWriter, WriteBatch, WriterClosedError

_log = structlog.get_logger(__name__)
SERVICE_NAME = ingest_service_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name

Context = grpc.aio.ServicerContext[object, object]

# Rejection details are bounded: one span of 10,000 bad findings gave 30,000 violations, and a
# 361 KB request a 5.5 MB response, past a default client's 4 MiB receive limit. That client saw
# an error for a batch whose valid spans were committed, and sent it again forever (60 such
# spans: a 111 MB response the core failed to send). Documented in docs/limits.md.
#: Violations listed per rejected span; one more entry counts the rest.
MAX_VIOLATIONS_PER_SPAN: Final = 10
#: Bytes of rejection details (echoed ids and violations) per response, far below 4 MiB: past
#: them, a rejected span's entry holds only its index, a few bytes for each of at most
#: `limits.MAX_SPANS_PER_BATCH` spans. One span's details may go past the budget (by at most
#: MAX_VIOLATIONS_PER_SPAN + 1 short violations).
MAX_REJECTION_DETAIL_BYTES: Final = 1024 * 1024
#: Bytes the compressed raw answers of one request may decompress to, together: one answer's
#: own limit, so a request of gzip bombs costs about what one does (a second or two of CPU).
MAX_DECODED_PER_REQUEST: Final = MAX_SKIMMED_BYTES
#: A malformed id is echoed cut to this many bytes: it may be megabytes long.
MAX_ECHOED_ID_BYTES: Final = 32


class _Prepared:
    """A request's spans split into rows to write and per-span rejections."""

    __slots__ = ("accepted", "batch", "claimed", "rejections", "spans")

    def __init__(
        self,
        batch: WriteBatch | None,
        spans: list[span_pb2.Span],
        rejections: list[ingest_service_pb2.RejectedSpan],
        repeats: int = 0,
    ) -> None:
        self.batch = batch
        #: The spans to write, one per row of `batch`, in order.
        self.spans = spans
        #: Repeats of a span earlier in the request are accepted, as replays are, and not written.
        self.accepted = len(spans) + repeats
        self.rejections = rejections
        #: Finding ids this request claimed (`FindingIds`), given up once its write is over.
        self.claimed: list[tuple[str, str]] = []


def _prepare(
    spans: Sequence[span_pb2.Span], *, for_analysis: bool = False, finding_ids: FindingIds | None = None
) -> _Prepared:
    keys = [(span.tenant, f.id) for span in spans for f in span.findings if f.id]
    if not keys or finding_ids is None:  # the shim never names finding ids: no lookup, no lock
        return _prepare_spans(spans, {}, for_analysis=for_analysis)
    try:
        with finding_ids.checking(keys) as check:
            prepared = _prepare_spans(spans, check.owners, for_analysis=for_analysis)
    except FindingIdReadError as exc:
        _log.warning("cannot check finding ids; the batch is refused for now", error=str(exc))
        raise RpcError(
            grpc.StatusCode.UNAVAILABLE, "storage read failed; retry", reason="STORE_READ_FAILED"
        ) from exc
    prepared.claimed = check.claimed
    return prepared


def _prepare_spans(
    spans: Sequence[span_pb2.Span],
    owners: dict[tuple[str, str], tuple[bytes, bytes]],
    *,
    for_analysis: bool,
) -> _Prepared:
    now = time.time()
    valid: list[span_pb2.Span] = []
    keys: set[tuple[str, bytes, bytes]] = set()
    rejections: list[ingest_service_pb2.RejectedSpan] = []
    detail_left = MAX_REJECTION_DETAIL_BYTES
    # One decompression budget for the whole request (llmtrace.capture.raw.DecodeBudget).
    budget = DecodeBudget(MAX_DECODED_PER_REQUEST)
    for index, span in enumerate(spans):
        violations = _read_raw(span, budget) if span.HasField("raw_exchange") else []
        violations = violations or validate_span(span, now) or _finding_id_conflicts(span, owners)
        if not violations:
            key = (span.tenant, span.trace_id, span.span_id)
            if key not in keys:  # the first copy of a span wins, as it does across requests
                keys.add(key)
                valid.append(span)
            continue
        rejection = ingest_service_pb2.RejectedSpan(index=index)
        # Every rejected span keeps its entry (a sender dead-letters by `index`); its ids and
        # violations only while the response's detail budget lasts (see MAX_REJECTION_DETAIL_BYTES).
        if detail_left > 0:
            rejection.trace_id = span.trace_id[:MAX_ECHOED_ID_BYTES]
            rejection.span_id = span.span_id[:MAX_ECHOED_ID_BYTES]
            rejection.violations.extend(_listed(index, violations))
            detail_left -= rejection.ByteSize()
        rejections.append(rejection)
    batch = build_write_batch(valid, int(now * 1_000_000)) if valid else None
    repeats = len(spans) - len(rejections) - len(valid)
    if for_analysis:
        valid = [_analysis_copy(span) for span in valid]
    return _Prepared(batch, valid, rejections, repeats)


def _listed(index: int, violations: list[tuple[str, str]]) -> list[common_pb2.FieldViolation]:
    """The violations of the span at `index` as sent back: the first MAX_VIOLATIONS_PER_SPAN,
    then one entry counting the rest."""
    listed = [
        common_pb2.FieldViolation(field=f"spans[{index}].{field}", description=desc)
        for field, desc in violations[:MAX_VIOLATIONS_PER_SPAN]
    ]
    if len(violations) > MAX_VIOLATIONS_PER_SPAN:
        more = len(violations) - MAX_VIOLATIONS_PER_SPAN
        listed.append(
            common_pb2.FieldViolation(
                field=f"spans[{index}]", description=f"... and {more} more problem(s), not listed"
            )
        )
    return listed


def _finding_id_conflicts(
    span: span_pb2.Span, owners: dict[tuple[str, str], tuple[bytes, bytes]]
) -> list[tuple[str, str]]:
    """Violations for finding ids that another finding holds (ids are unique within a tenant);
    else claims the span's ids. Stored, such a finding would be ignored as a duplicate and lost."""
    named = [(i, f.id) for i, f in enumerate(span.findings) if f.id]
    if not named:
        return []
    here = (span.trace_id, span.span_id)
    violations: list[tuple[str, str]] = []
    seen: set[str] = set()
    for index, finding_id in named:
        owner = owners.get((span.tenant, finding_id))
        if finding_id in seen:
            violations.append((f"findings[{index}].id", "repeats the id of another finding of this span"))
        elif owner is not None and owner != here:
            violations.append(
                (
                    f"findings[{index}].id",
                    f"is already the id of a finding of span {owner[1].hex()} in trace {owner[0].hex()}; "
                    "finding ids are unique within a tenant (leave it empty to have one assigned)",
                )
            )
        seen.add(finding_id)
    if not violations:
        for _, finding_id in named:
            owners[(span.tenant, finding_id)] = here
    return violations


def _analysis_copy(span: span_pb2.Span) -> span_pb2.Span:
    """The span as the analysis queue keeps it: without the raw bodies the analyzer never reads,
    in a message of its own. A span parsed from a request lives in that request's memory (upb
    arenas), and clearing a field frees nothing: a queued span kept its whole batch alive, raw
    exchanges included (868 MiB for 8,000 queued spans of 40 KB; 377 MiB as copies)."""
    span.request.ClearField("body")  # before the copy, so that the copy never holds them
    span.response.ClearField("body")
    own = span_pb2.Span()
    own.CopyFrom(span)
    return own


def _read_raw(span: span_pb2.Span, budget: DecodeBudget) -> list[tuple[str, str]]:
    """Fill a span sent with its raw exchange (the shim's) from the bodies; its problems if any."""
    problems = raw_exchange_problems(span)
    if problems:
        return problems
    try:
        read_raw_exchange(span, budget)
    except Exception:  # a reader bug: the sender keeps the span (dead letter), the log says why
        _log.exception("cannot read a raw exchange", tenant=span.tenant)
        return [("raw_exchange", "cannot be read (see the core's log)")]
    return []


def _parse_and_prepare(
    data: bytes, for_analysis: bool = False, finding_ids: FindingIds | None = None
) -> _Prepared:
    try:
        spans = ingest_service_pb2.IngestSpansRequest.FromString(data).spans
    except DecodeError as exc:
        raise invalid_argument(
            [("", f"not an IngestSpansRequest: {exc}")], reason="MALFORMED_REQUEST"
        ) from exc
    _check_batch_size(len(spans))
    return _prepare(spans, for_analysis=for_analysis, finding_ids=finding_ids)


def _check_batch_size(count: int) -> None:
    if count > limits.MAX_SPANS_PER_BATCH:
        raise invalid_argument(
            [("spans", f"at most {limits.MAX_SPANS_PER_BATCH} spans per request, got {count}")],
            reason="BATCH_TOO_LARGE",
        )


def _partial_success(
    rejections: list[ingest_service_pb2.RejectedSpan],
) -> ingest_service_pb2.IngestPartialSuccess | None:
    if not rejections:
        return None
    first = rejections[0].violations[0]  # the first rejection always fits the detail budget
    more = f" (and {len(rejections) - 1} more spans)" if len(rejections) > 1 else ""
    listed = sum(1 for rejection in rejections if rejection.violations)
    if listed < len(rejections):
        more += f"; details are listed for the first {listed} only"
    return ingest_service_pb2.IngestPartialSuccess(
        rejected_spans=len(rejections),
        error_message=f"{len(rejections)} span(s) rejected: {first.field}: {first.description}{more}",
        rejections=rejections,
    )


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Retrieve the outcome of a task no one awaits any more, so that it is not logged."""
    if not task.cancelled():
        task.exception()


class IngestServicer(ingest_service_pb2_grpc.IngestServiceServicer):
    """Stores spans; acknowledges only what is committed."""

    def __init__(
        self,
        writer: StoreWriter,
        cpu_executor: Executor,
        committed: Callable[[Sequence[span_pb2.Span]], object] | None = None,
        finding_ids: FindingIds | None = None,
    ) -> None:
        self._writer = writer
        self._cpu = cpu_executor
        self._committed = committed
        self._finding_ids = finding_ids
        #: Set when the core begins to stop (`begin_shutdown`).
        self._closing = asyncio.Event()

    def begin_shutdown(self) -> None:
        """End every StreamSpans stream at its next wait for a message: an SDK's stream stays open
        between batches, and would hold the core's stop for its whole grace period."""
        self._closing.set()

    async def _ingest(self, spans: Sequence[span_pb2.Span]) -> _Prepared:
        _check_batch_size(len(spans))
        # Validation and Arrow conversion are CPU work: keep them off the event loop.
        return await self._commit(
            await self._prepared(
                functools.partial(
                    _prepare, spans, for_analysis=self._committed is not None, finding_ids=self._finding_ids
                )
            )
        )

    async def _prepared(self, prepare: Callable[[], _Prepared]) -> _Prepared:
        """`prepare()` run in the CPU thread. A request cancelled meanwhile (its client gone or
        past its deadline) is never written: the finding ids it claimed are given up once the
        preparation ends, or no other span could take them until the core restarts."""
        job = self._cpu.submit(prepare)
        try:
            return await asyncio.wrap_future(job)
        except asyncio.CancelledError:
            job.add_done_callback(self._release_unwritten)
            raise

    def _release_unwritten(self, job: Future[_Prepared]) -> None:
        if self._finding_ids is not None and not job.cancelled() and job.exception() is None:
            self._finding_ids.release(job.result().claimed)

    async def _commit(self, prepared: _Prepared) -> _Prepared:
        if prepared.batch is not None:
            # Shielded: the write goes on if the request is cancelled, and the ids it claimed stay
            # claimed until the write is over; given up earlier, another span could take an id
            # that the store is about to hold, and its finding would be dropped as a duplicate.
            write = asyncio.ensure_future(self._writer.write(prepared.batch))
            write.add_done_callback(functools.partial(self._write_over, prepared.claimed))
            try:
                inserted = await asyncio.shield(write)
            except WriterClosedError as exc:
                raise RpcError(grpc.StatusCode.UNAVAILABLE, str(exc), reason="SHUTTING_DOWN") from exc
            except RuntimeError as exc:
                raise RpcError(
                    grpc.StatusCode.UNAVAILABLE, "storage write failed; retry", reason="STORE_WRITE_FAILED"
                ) from exc
            if inserted is not None:  # some were stored before: analysed then, not again
                prepared.spans = [span for span, new in zip(prepared.spans, inserted, strict=True) if new]
        metrics.SPANS_ACCEPTED.inc(prepared.accepted)
        metrics.SPANS_REJECTED.inc(len(prepared.rejections))
        if self._committed is not None and prepared.spans:
            try:
                self._committed(prepared.spans)  # queues only; never fails the committed batch
            except Exception:
                _log.exception("committed spans not queued for analysis")
        return prepared

    def _write_over(self, claimed: list[tuple[str, str]], write: asyncio.Future[Inserted]) -> None:
        if not write.cancelled():
            write.exception()  # seen here when no request is left to raise it in
        if claimed and self._finding_ids is not None:
            self._finding_ids.release(claimed)

    async def IngestSpans(  # noqa: N802 - gRPC method name
        self, request: ingest_service_pb2.IngestSpansRequest, context: Context
    ) -> ingest_service_pb2.IngestSpansResponse:
        """Store a batch; reject invalid spans individually."""
        try:
            prepared = await self._ingest(request.spans)
        except RpcError as err:
            await abort(context, err)
        return ingest_service_pb2.IngestSpansResponse(
            accepted_spans=prepared.accepted, partial_success=_partial_success(prepared.rejections)
        )

    async def ingest_spans_bytes(
        self, data: bytes, context: Context
    ) -> ingest_service_pb2.IngestSpansResponse:
        """IngestSpans as registered (`handlers`): the request arrives undecoded.

        Decoding a large batch (megabytes of prompts) takes tens of milliseconds; done by gRPC
        it would run on the event loop, so it runs in the CPU thread with validation instead.
        """
        try:
            prepared = await self._commit(
                await self._prepared(
                    functools.partial(
                        _parse_and_prepare, data, self._committed is not None, self._finding_ids
                    )
                )
            )
        except RpcError as err:
            await abort(context, err)
        return ingest_service_pb2.IngestSpansResponse(
            accepted_spans=prepared.accepted, partial_success=_partial_success(prepared.rejections)
        )

    async def _next_request(
        self, requests: AsyncIterator[ingest_service_pb2.StreamSpansRequest], context: Context
    ) -> ingest_service_pb2.StreamSpansRequest | None:
        """The stream's next message; None at its end. While the core stops, a stream waiting for
        one ends UNAVAILABLE: everything it sent is acknowledged or never read, and the client
        sends what was not acknowledged again, to a core that is up."""
        if not self._closing.is_set():
            arrived = asyncio.ensure_future(anext(requests))
            closing = asyncio.ensure_future(self._closing.wait())
            try:
                await asyncio.wait((arrived, closing), return_when=asyncio.FIRST_COMPLETED)
            finally:
                # Also when the handler is cancelled in the wait (its client cancelled or went
                # away): else each ended stream left a `closing` task until the core stopped,
                # and an `arrived` task whose StopAsyncIteration was logged as never retrieved.
                # That task may be done already (the stream's end arrives with the cancellation),
                # so its outcome is retrieved whether or not it is cancelled here.
                closing.cancel()
                arrived.cancel()
                arrived.add_done_callback(_retrieve)
            if arrived.done() and not arrived.cancelled():
                try:
                    return arrived.result()
                except StopAsyncIteration:
                    return None
        message = "the core is shutting down; send what was not acknowledged again"
        await abort(context, RpcError(grpc.StatusCode.UNAVAILABLE, message, reason="SHUTTING_DOWN"))
        return None  # not reached: abort raises

    def handlers(self) -> grpc.GenericRpcHandler:
        """The IngestService method handlers, IngestSpans taking raw bytes (see above)."""
        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "IngestSpans": grpc.unary_unary_rpc_method_handler(
                    self.ingest_spans_bytes,
                    request_deserializer=None,
                    response_serializer=ingest_service_pb2.IngestSpansResponse.SerializeToString,
                ),
                "StreamSpans": grpc.stream_stream_rpc_method_handler(
                    self.StreamSpans,
                    request_deserializer=ingest_service_pb2.StreamSpansRequest.FromString,
                    response_serializer=ingest_service_pb2.StreamSpansResponse.SerializeToString,
                ),
            },
        )

    async def StreamSpans(  # noqa: N802 - gRPC method name
        self,
        request_iterator: AsyncIterator[ingest_service_pb2.StreamSpansRequest],
        context: Context,
    ) -> AsyncIterator[ingest_service_pb2.StreamSpansResponse]:
        """Acknowledge each request message, in order, once its spans are committed."""
        requests = aiter(request_iterator)
        while True:
            request = await self._next_request(requests, context)
            if request is None:
                return
            try:
                prepared = await self._ingest(request.spans)
            except RpcError as err:
                await abort(context, err)
            yield ingest_service_pb2.StreamSpansResponse(
                sequence=request.sequence,
                accepted_spans=prepared.accepted,
                partial_success=_partial_success(prepared.rejections),
            )
