"""Delivery of captured spans to the core: batched, acknowledged, spooled, never silently lost.

`submit` is synchronous and cheap (the proxy never waits on the core). A background task cuts
batches by count, bytes and age and sends each as one `IngestSpans` call; the core acknowledges a
batch only once it is committed. A batch that cannot be delivered (core down, slow, or shutting
down) goes to the on-disk spool, and once anything is spooled every later batch follows it there,
so replay keeps the order. A replay task drains the spool, oldest first, with backoff. Ingest is
idempotent on (tenant, trace_id, span_id), so a batch resent after an ambiguous failure is not
duplicated. Spans the core rejects as invalid go to the dead-letter file. Spans are dropped only
when the spool's disk budget is full, and every drop is counted and logged.

Spans travel as serialized bytes: a batch's wire form is the concatenation of its spans, each
framed as field 1 of `IngestSpansRequest`, so nothing is serialized twice and spool files are
ready-made requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Final

import grpc
import grpc.aio
import structlog
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmtrace.api.v1 import ingest_service_pb2, span_pb2
from llmtrace.capture.raw import raw_exchange_problems, read_raw_exchange
from llmtrace.config.schema import ShipperSettings
from shim import metrics
from shim.dead_letter import DeadLetter, DeadLetterFile
from shim.spool import Spool, SpoolEntry

_log = structlog.get_logger("llmtrace.shim.shipper")

_INGEST_METHOD: Final = "/llmtrace.api.v1.IngestService/IngestSpans"
#: Tag of `IngestSpansRequest.spans` (field 1, length-delimited).
_SPANS_TAG: Final = b"\x0a"
#: Codes after which the same batch can succeed later; anything else is a verdict on the batch.
_TRANSIENT: Final = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
    }
)
#: Codes that mean the core broke while handling the batch, rather than being away.
_CORE_FAILED: Final = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})
#: Replays of one spooled batch answered with one of those before it is dead-lettered.
MAX_CORE_FAILURES: Final = 5
#: How long a send may wait for the core's answer (at least; a longer flush interval raises it)
#: before a copy of its batch is spooled: what a SIGKILL can lose while the core is slow.
SLOW_SEND_S: Final = 1.0
#: How often a shipper with nothing spooled looks for batches dead workers left behind.
ADOPT_INTERVAL_S: Final = 5.0
_HEALTH_CACHE_SECONDS: Final = 1.0


@dataclass(slots=True)
class _Verdict:
    """Set by a send as soon as the core has given its verdict on the batch (stored, rejections
    to dead-letter): from then on a spooled copy of the batch is not needed, even if the send is
    cancelled before it has written those dead letters, which it is then left to finish."""

    reached: bool = False


_SendTask = asyncio.Task[grpc.StatusCode | None]


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def frame_span(span_bytes: bytes) -> bytes:
    """One serialized span framed as an `IngestSpansRequest.spans` element."""
    return _SPANS_TAG + _varint(len(span_bytes)) + span_bytes


def _read_for_disk(span: span_pb2.Span) -> bool:
    """Read a raw exchange (llmtrace.capture.raw) in place; True when the span changed.

    A dead letter rests on disk until someone repairs it: it holds what the core would store and
    no more (a raw request body can carry what the span never keeps: inline images, a data
    source's key in a field no reader looks at). The spool is not read: it is a transit buffer
    the core empties, and reading every batch there cost the proxy 15% of its throughput
    whenever the core fell behind.
    """
    if not span.HasField("raw_exchange") or raw_exchange_problems(span):
        return False
    try:
        read_raw_exchange(span)
    except Exception:  # a reader bug: the core refuses the span the same way, kept in dead letters
        _log.exception("cannot read a raw exchange for the spool")
        return False
    return True


def _dead_letter_bytes(span: span_pb2.Span) -> bytes:
    """One span's bytes for the dead-letter file, its raw exchange read."""
    if span.HasField("raw_exchange"):
        copy = span_pb2.Span()
        copy.CopyFrom(span)
        if _read_for_disk(copy):
            return copy.SerializeToString()
    return span.SerializeToString()


@dataclass(slots=True)
class _Batch:
    payload: bytes
    spans: int
    captured_at: list[float] = field(default_factory=list)


class Shipper:
    """Batches spans to the core's IngestSpans; spools what cannot be delivered."""

    def __init__(
        self,
        settings: ShipperSettings,
        core_addr: str,
        spool: Spool,
        dead_letters: DeadLetterFile,
        *,
        max_message_bytes: int,
    ) -> None:
        self._settings = settings
        self._slow_send_s = max(SLOW_SEND_S, settings.flush_interval_ms / 1000)
        self._core_addr = core_addr
        self._spool = spool
        spool.on_lost = _spooled_batch_lost
        self._dead_letters = dead_letters
        self._channel = grpc.aio.insecure_channel(
            core_addr,
            options=[
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.keepalive_time_ms", 30_000),
            ],
        )
        self._ingest: grpc.aio.UnaryUnaryMultiCallable[bytes, ingest_service_pb2.IngestSpansResponse] = (
            self._channel.unary_unary(
                _INGEST_METHOD,
                request_serializer=None,  # payloads are already wire-format IngestSpansRequest bytes
                response_deserializer=ingest_service_pb2.IngestSpansResponse.FromString,
            )
        )
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._queue: deque[tuple[bytes, float]] = deque()
        self._queue_bytes = 0
        self._wake = asyncio.Event()
        self._spooled = asyncio.Event()
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        self._core_ok: bool | None = None
        self._health_checked_at = 0.0
        self._health_ok = False
        self._spill_lock = asyncio.Lock()
        # The batch the batcher has taken off the queue and not yet delivered or spooled: a close
        # that cancels the batcher mid-send spools it, so it is not lost with the task.
        self._in_flight: _Batch | None = None
        # Sends still waiting for a slow core after their batch was copied to the spool.
        self._slow_sends: dict[_SendTask, _Verdict] = {}
        #: Slow sends whose copy the spool refused (full, or unwritable), with their batches: spooled
        #: again if the send fails (the spool may have room by then).
        self._uncopied: dict[_SendTask, _Batch] = {}
        #: Spool writes of such batches whose send failed (close waits for them).
        self._respooling: set[asyncio.Task[int | None]] = set()
        # The send of each such copy, by the copy's spool sequence number: replay waits for it
        # rather than send the batch a second time, and drops the copy once it got a verdict.
        self._originals: dict[int, tuple[_SendTask, _Verdict]] = {}
        # Failed replays of the spool's oldest batch with a code that says the core broke on it.
        self._head_failures: tuple[int, int] = (-1, 0)

    # -- the proxy's side -------------------------------------------------------------------

    def submit(self, span: span_pb2.Span) -> None:
        """Queue one span for delivery; never blocks and never raises for delivery problems."""
        framed = frame_span(span.SerializeToString())
        self._queue.append((framed, time.monotonic()))
        self._queue_bytes += len(framed)
        metrics.QUEUE_SPANS.inc()
        # Wake the batcher for the first span (it starts the flush timer) and for a full batch.
        if (
            len(self._queue) == 1
            or len(self._queue) >= self._settings.batch_max_spans
            or self._queue_bytes >= self._settings.batch_max_bytes
        ):
            self._wake.set()

    @property
    def channel(self) -> grpc.aio.Channel:
        """The channel to the core, shared with other RPCs of the worker (`Analyze`)."""
        return self._channel

    @property
    def queued_spans(self) -> int:
        """Spans waiting in memory."""
        return len(self._queue)

    @property
    def spool_bytes(self) -> int:
        """Bytes waiting in the on-disk spool."""
        return self._spool.bytes_used

    async def core_status(self) -> str:
        """`reachable` or `unreachable`, from a cached gRPC health check of the core."""
        now = time.monotonic()
        if now - self._health_checked_at > _HEALTH_CACHE_SECONDS:
            self._health_checked_at = now
            try:
                reply = await self._health.Check(health_pb2.HealthCheckRequest(service=""), timeout=0.5)
                self._health_ok = reply.status == health_pb2.HealthCheckResponse.SERVING
            except grpc.aio.AioRpcError:
                self._health_ok = False
        return "reachable" if self._health_ok else "unreachable"

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the batching and replay tasks (replaying spans spooled by earlier runs)."""
        metrics.SPOOL_BYTES.set(self._spool.bytes_used)
        if len(self._spool):
            _log.info("replaying spooled batches", batches=len(self._spool), bytes=self._spool.bytes_used)
            self._spooled.set()
        self._tasks = [
            asyncio.create_task(self._batch_loop(), name="shipper-batches"),
            asyncio.create_task(self._replay_loop(), name="shipper-replay"),
        ]

    async def close(self, grace: float) -> None:
        """Deliver or spool everything queued, then stop; spooled batches wait for the next run."""
        self._closing = True
        deadline = time.monotonic() + grace
        self._wake.set()
        batches, replay = self._tasks
        replay.cancel()
        # Woken too, since the loop also ends on `_closing`: a cancellation that lands as an
        # awaited result arrives can be swallowed, and close must not wait on an idle replay.
        self._spooled.set()
        done, _ = await asyncio.wait({batches}, timeout=grace)
        if not done:
            batches.cancel()
        for task in (replay, batches):
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:  # the loops catch their own errors; this is a last resort
                _log.exception("shipper task failed", task=task.get_name())
        # Sends still waiting for a slow core: their batches are in the spool already.
        # Those answered are only writing their dead letters: let them finish.
        # Those whose batch is only on the wire (the spool refused a copy) get what is left of
        # the grace before they are cancelled.
        only_copy = [send for send in self._uncopied if not send.done()]
        if only_copy:
            await asyncio.wait(only_copy, timeout=max(deadline - time.monotonic(), 0))
        for send, verdict in list(self._slow_sends.items()):
            if not verdict.reached:
                send.cancel()
        await asyncio.gather(*self._slow_sends, return_exceptions=True)
        await asyncio.sleep(0)  # done callbacks queue their batches' spool writes
        await asyncio.gather(*self._respooling, return_exceptions=True)
        await self._drop_answered_copies()
        # The batch a cancelled send was carrying, then whatever is still in memory, go to disk,
        # in that order.
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            await self._to_spool(in_flight)
        while self._queue:
            await self._to_spool(self._cut_batch())
        await self._channel.close()
        try:
            await asyncio.to_thread(self._spool.close)
        except OSError as exc:
            _log.error("cannot close the spool", error=str(exc))

    # -- batching -----------------------------------------------------------------------------

    def _cut_batch(self) -> _Batch:
        limit_spans = self._settings.batch_max_spans
        limit_bytes = self._settings.batch_max_bytes
        parts: list[bytes] = []
        captured: list[float] = []
        size = 0
        while self._queue and len(parts) < limit_spans:
            framed, at = self._queue[0]
            if parts and size + len(framed) > limit_bytes:
                break
            self._queue.popleft()
            parts.append(framed)
            captured.append(at)
            size += len(framed)
        self._queue_bytes -= size
        metrics.QUEUE_SPANS.dec(len(parts))
        return _Batch(b"".join(parts), len(parts), captured)

    async def _batch_loop(self) -> None:
        interval = self._settings.flush_interval_ms / 1000
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            oldest = self._queue[0][1]
            full = (
                len(self._queue) >= self._settings.batch_max_spans
                or self._queue_bytes >= self._settings.batch_max_bytes
            )
            wait = oldest + interval - time.monotonic()
            if not full and not self._closing and wait > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
                continue
            batch = self._in_flight = self._cut_batch()
            try:
                # Sends holding the only copy of their batch (the spool refused one) fill the
                # memory budget: this batch tries the spool first, and is dropped if refused too.
                if (
                    len(self._spool)
                    or (self._closing and self._core_ok is False)
                    or not self._room_uncopied(batch)
                ):
                    await self._spool_in_order(batch)
                else:
                    await self._deliver(batch)
                self._in_flight = None
                await self._spill_backlog()
            except asyncio.CancelledError:
                raise  # `close` spools the batch in flight
            except Exception:
                # Never let one batch end shipping: what is queued behind it must still move.
                _log.exception("shipping a batch failed; it goes to the spool", spans=batch.spans)
                if self._in_flight is not None:
                    batch, self._in_flight = self._in_flight, None
                    try:
                        await self._to_spool(batch)
                    except Exception:
                        metrics.SPANS_DROPPED.inc(batch.spans)
                        _log.exception("cannot spool the batch: spans dropped", spans=batch.spans)
                await asyncio.sleep(self._settings.retry_initial_ms / 1000)

    async def _deliver(self, batch: _Batch) -> None:
        """Send a batch; spool it if the send fails. A core slow to answer gets a copy of the
        batch spooled meanwhile, and the batches behind it follow it there, in order, so that a
        SIGKILL loses no more than what is in memory. The send goes on; replay waits for it and
        sends the copy only if it failed (a copy replayed after a restart is stored once all the
        same: ingest is idempotent)."""
        verdict = _Verdict()
        send = asyncio.ensure_future(self._send(batch.payload, batch.captured_at, verdict))
        try:
            done, _ = await asyncio.wait({send}, timeout=self._slow_send_s)
        except asyncio.CancelledError:
            if verdict.reached:
                # Stored already, only its dead letters left to write: close waits for that
                # instead of spooling the batch a second time.
                self._slow_sends[send] = verdict
                self._in_flight = None
            else:
                send.cancel()  # close spools the batch in flight
            raise
        if done:
            if send.result() is not None:
                await self._spool_write(batch, drop=True)
            return
        # From here close settles the send (cancels it unless it has its verdict) and its copy.
        self._slow_sends[send] = verdict
        seq = await self._spool_write(batch, drop=False)
        self._in_flight = None  # the send and its copy hold the batch now
        if seq is not None:
            self._originals[seq] = (send, verdict)
        else:
            _log.warning("the spool refused a copy of a slow batch", spans=batch.spans)
            self._uncopied[send] = batch
        send.add_done_callback(self._slow_send_done)  # runs soon even if the send is done already

    async def _spool_in_order(self, batch: _Batch) -> None:
        """Spool `batch` behind what is spooled already, so replay keeps the order. A spool that
        refuses it (full, or unwritable) while the core answers is no reason to lose it: it is
        sent directly instead, ahead of the spool."""
        core_answers = self._core_ok is True
        refused = await self._spool_write(batch, drop=not core_answers) is None
        if refused and core_answers and self._may_send_uncopied(batch):
            _log.warning("the spool refused a batch; sent to the core directly", spans=batch.spans)
            await self._deliver(batch)

    async def _spill_backlog(self) -> None:
        """Spool what the core is not keeping up with: spans over the memory budget
        (`queue_max_spans`, `queue_max_bytes`), and spans that have waited longer than a slow
        send may, which a SIGKILL would otherwise lose."""
        while self._queue:
            over = (
                len(self._queue) > self._settings.queue_max_spans
                or self._queue_bytes > self._settings.queue_max_bytes
            )
            stale = time.monotonic() - self._queue[0][1] > self._slow_send_s
            if not (over or stale):
                return
            batch = self._in_flight = self._cut_batch()
            if over:
                await self._spool_write(batch, drop=True)
            elif await self._spool_write(batch, drop=False) is None and self._may_send_uncopied(batch):
                # Spooled only to survive a SIGKILL: a spool without room for it is no reason to
                # lose spans a slow core would still take, so they are sent (ahead of the spool).
                _log.warning("the spool refused waiting spans; sent to the core", spans=batch.spans)
                await self._deliver(batch)
            self._in_flight = None

    def _uncopied_bytes(self) -> int:
        """What the sends that hold the only copy of their batch (no spooled copy) keep in memory."""
        return sum(len(sent.payload) for sent in self._uncopied.values())

    def _room_uncopied(self, batch: _Batch) -> bool:
        """Whether those sends leave room for `batch` within `queue_max_bytes`."""
        return self._uncopied_bytes() + len(batch.payload) <= self._settings.queue_max_bytes

    def _may_send_uncopied(self, batch: _Batch) -> bool:
        """Whether `batch`, refused by the spool, may go to the core with no copy on disk; if not,
        it is dropped here (counted and logged). Slow sends of such batches hold them in memory
        until the core answers: past `queue_max_bytes` of them, a core slower than the traffic
        with a full spool would grow the worker without bound (about 110 MB in a minute, measured)."""
        if self._room_uncopied(batch):
            return True
        self._in_flight = None
        metrics.SPANS_DROPPED.inc(batch.spans)
        _log.error(
            "spool full and the core slow: spans dropped",
            spans=batch.spans,
            spool_bytes=self._spool.bytes_used,
            unacknowledged_bytes=self._uncopied_bytes(),
        )
        return False

    async def _spool_write(self, batch: _Batch, *, drop: bool) -> int | None:
        """`_to_spool`, finished even when close cancels the batcher meanwhile: the batch ends up
        on disk or in `_in_flight` for close to spool, never both (it would be replayed twice)."""
        write = asyncio.ensure_future(self._to_spool(batch, drop=drop))
        self._in_flight = None
        try:
            stored = await asyncio.shield(write)
        except asyncio.CancelledError:
            if await write is None and not drop:
                self._in_flight = batch  # refused and not counted: close tries once more
            raise
        if stored is None and not drop:
            self._in_flight = batch
        return stored

    async def _drop_answered_copies(self) -> None:
        """At close: delete the spooled copies of slow sends that got their verdict meanwhile,
        so that the next run does not store or dead-letter those spans a second time."""
        answered = [seq for seq, (_, verdict) in self._originals.items() if verdict.reached]
        self._originals.clear()
        for seq in answered:
            try:
                await asyncio.to_thread(self._spool.discard, seq)
            except OSError as exc:
                # Replayed next run: stored once (ingest is idempotent), its rejections written twice.
                _log.warning("cannot delete a spooled copy", error=str(exc))
        metrics.SPOOL_BYTES.set(self._spool.bytes_used)

    def _slow_send_done(self, send: _SendTask) -> None:
        self._slow_sends.pop(send, None)
        uncopied = self._uncopied.pop(send, None)
        failed = send.cancelled() or send.exception() is not None or send.result() is not None
        if failed and uncopied is not None:
            # The spool may have room now: try again (a refusal is counted dropped there).
            _log.warning("a slow send failed; its batch goes to the spool", spans=uncopied.spans)
            respool = asyncio.ensure_future(self._to_spool(uncopied))
            self._respooling.add(respool)
            respool.add_done_callback(self._respooling.discard)
        elif not send.cancelled() and send.exception() is not None:
            _log.error("a slow send failed; its batch is in the spool", error=repr(send.exception()))

    async def _to_spool(self, batch: _Batch, *, drop: bool = True) -> int | None:
        """Append `batch` to the spool: its sequence number there, or None when refused (full,
        or unwritable). A refused batch is counted dropped and logged, unless `drop` is False:
        then the caller still holds it (a copy of a batch being sent, or one it can send)."""
        if not batch.spans:
            return None
        error: OSError | None = None
        async with self._spill_lock:
            try:
                stored = await asyncio.to_thread(self._spool.append, batch.payload)
            except OSError as exc:  # disk full, I/O error, the directory removed
                stored, error = None, exc
        if stored is not None:
            metrics.BATCHES.labels("spooled").inc()
            self._spooled.set()
        elif not drop:
            pass
        elif error is not None:
            metrics.SPANS_DROPPED.inc(batch.spans)
            _log.error("cannot write the spool: spans dropped", spans=batch.spans, error=str(error))
        else:
            metrics.SPANS_DROPPED.inc(batch.spans)
            _log.error(
                "spool full: spans dropped",
                spans=batch.spans,
                spool_bytes=self._spool.bytes_used,
                spool_max_bytes=self._settings.spool_max_bytes,
            )
        metrics.SPOOL_BYTES.set(self._spool.bytes_used)
        return stored

    # -- replay -------------------------------------------------------------------------------

    async def _replay_loop(self) -> None:
        delay = self._settings.retry_initial_ms / 1000
        while not self._closing:
            if not self._spooled.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._spooled.wait(), ADOPT_INTERVAL_S)
                if not self._spooled.is_set():
                    await self._adopt_orphans()
                    continue
            try:
                delivered = await self._replay_oldest()
            except asyncio.CancelledError:
                raise
            except Exception:  # a spool read failing must not end replay for good
                _log.exception("replaying the spool failed; retrying")
                delivered = False
            if delivered:
                delay = self._settings.retry_initial_ms / 1000
                continue
            # Full jitter keeps many shims from hammering a recovering core in step.
            await asyncio.sleep(random.uniform(0, delay))  # noqa: S311 - not cryptographic
            delay = min(delay * 2, self._settings.retry_max_ms / 1000)

    async def _adopt_orphans(self) -> None:
        """With nothing spooled, take over what dead workers left that no worker had room for."""
        try:
            async with self._spill_lock:
                adopted = await asyncio.to_thread(self._spool.adopt_orphans)
        except OSError as exc:
            _log.warning("cannot look for orphaned spools", error=str(exc))
            return
        if adopted:
            _log.info("replaying orphaned spooled batches", batches=adopted)
            metrics.SPOOL_BYTES.set(self._spool.bytes_used)
            self._spooled.set()

    async def _replay_oldest(self) -> bool:
        """Send the oldest spooled batch; True when the spool moved on (or is empty)."""
        async with self._spill_lock:
            entry = await asyncio.to_thread(self._spool.peek)
        if entry is None:
            self._spooled.clear()
            return True
        original = self._originals.get(entry.seq)
        if original is not None:
            # A copy of a batch whose send was slow: sending it again while the core still reads
            # the first would double the work of a core that is already behind.
            send, verdict = original
            await asyncio.wait({send})
            if verdict.reached:
                del self._originals[entry.seq]
                await self._remove_delivered(entry)
                return True
            del self._originals[entry.seq]
        failure = await self._send(entry.payload, None)
        if failure is not None:
            if failure not in _CORE_FAILED:
                self._head_failures = (-1, 0)  # "in a row": the core was away, not failing on it
                return False
            # The core failed on this batch itself (a bug answers INTERNAL): after a few tries it
            # goes to the dead-letter file rather than block everything spooled behind it.
            seq, failures = self._head_failures
            failures = failures + 1 if seq == entry.seq else 1
            self._head_failures = (entry.seq, failures)
            if failures < MAX_CORE_FAILURES:
                return False
            reason = f"the core failed on this batch {failures} times"
            await self._dead_letter_all(entry.payload, failure.name, reason)
        await self._remove_delivered(entry)
        return True

    async def _remove_delivered(self, entry: SpoolEntry) -> None:
        """Delete a delivered batch from the spool. One whose file cannot be deleted leaves the
        queue all the same (`Spool.remove`): the next run sends it again, stored once."""
        try:
            async with self._spill_lock:
                await asyncio.to_thread(self._spool.remove, entry)
        except OSError as exc:
            _log.error("cannot delete a delivered batch from the spool", error=str(exc))
        metrics.SPOOL_BYTES.set(self._spool.bytes_used)

    # -- one RPC ------------------------------------------------------------------------------

    async def _send(
        self, payload: bytes, captured_at: list[float] | None, verdict: _Verdict | None = None
    ) -> grpc.StatusCode | None:
        """None once the core has a verdict on every span (accepted or dead-lettered); else the
        code of the failure, after which the same batch can be sent again. `verdict` is set as
        soon as the core has answered, before any dead letter is written."""
        try:
            reply = await self._ingest(payload, timeout=self._settings.rpc_timeout_ms / 1000)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in _TRANSIENT:
                self._note_failure(exc)
                return exc.code()
            if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                halves = await asyncio.to_thread(_halves, payload)
                if halves is not None:
                    return await self._send_halves(halves, exc, verdict)
            # INVALID_ARGUMENT, or one span larger than a message may be: resending the same
            # bytes cannot succeed, so keep them for repair instead of retrying forever.
            if verdict is not None:
                verdict.reached = True
            await self._dead_letter_all(payload, exc.code().name, exc.details() or "")
            return None
        if verdict is not None:
            verdict.reached = True
        self._core_ok = True
        metrics.BATCHES.labels("sent").inc()
        metrics.SPANS_SHIPPED.inc(reply.accepted_spans)
        if captured_at:
            now = time.monotonic()
            for at in captured_at:
                metrics.SHIP_LATENCY.observe(now - at)
        if reply.partial_success.rejected_spans:
            await self._dead_letter_rejected(payload, reply.partial_success)
        return None

    async def _send_halves(
        self, halves: tuple[bytes, bytes], exc: grpc.aio.AioRpcError, verdict: _Verdict | None
    ) -> grpc.StatusCode | None:
        """A batch larger than a message may be (`grpc.max_message_bytes` here, or a core's
        smaller one) is sent in halves, down to single spans: its spans are valid, and were
        dead-lettered whole."""
        _log.warning("batch larger than a gRPC message: sent in halves", error=(exc.details() or "")[:200])
        for half in halves:
            failure = await self._send(half, None)
            if failure is not None:
                return failure  # the whole batch is sent again later; ingest is idempotent
        if verdict is not None:
            verdict.reached = True
        return None

    def _note_failure(self, exc: grpc.aio.AioRpcError) -> None:
        metrics.BATCHES.labels("failed").inc()
        if self._core_ok is not False:
            _log.warning("core unreachable; spooling spans", core=self._core_addr, code=exc.code().name)
        self._core_ok = False

    async def _dead_letter_rejected(
        self, payload: bytes, partial: ingest_service_pb2.IngestPartialSuccess
    ) -> None:
        # In a thread: reading raw exchanges for the file can take a second for a large batch.
        records = await asyncio.to_thread(_rejected_records, payload, partial)
        await self._write_dead_letters(records, partial.error_message)

    async def _dead_letter_all(self, payload: bytes, code: str, details: str) -> None:
        reason = f"{code}: {details}"
        records = await asyncio.to_thread(_all_records, payload, reason)
        if records is None:
            metrics.BATCHES_LOST.labels("undecodable").inc()
            _log.error("a batch the core refused cannot be decoded: dropped", reason=reason[:500])
            return
        await self._write_dead_letters(records, reason)

    async def _write_dead_letters(self, records: list[DeadLetter], reason: str) -> None:
        if not records:
            return
        metrics.BATCHES.labels("rejected").inc()
        log = _log.bind(spans=len(records), reason=reason[:500], path=str(self._dead_letters.path))
        try:
            await asyncio.to_thread(self._dead_letters.append, records)
        except OSError as exc:
            metrics.SPANS_DROPPED.inc(len(records))
            log.error("cannot write the dead-letter file: rejected spans dropped", error=str(exc))
            return
        metrics.SPANS_DEAD_LETTERED.inc(len(records))
        log.warning("core rejected spans; kept in the dead-letter file")


def _spooled_batch_lost(reason: str) -> None:
    metrics.BATCHES_LOST.labels(f"spool_{reason}").inc()


def _halves(payload: bytes) -> tuple[bytes, bytes] | None:
    """An IngestSpans request split in two, in order; None for a single span (or unreadable)."""
    try:
        spans = ingest_service_pb2.IngestSpansRequest.FromString(payload).spans
    except DecodeError:
        return None
    if len(spans) < 2:
        return None
    middle = len(spans) // 2
    return (
        ingest_service_pb2.IngestSpansRequest(spans=spans[:middle]).SerializeToString(),
        ingest_service_pb2.IngestSpansRequest(spans=spans[middle:]).SerializeToString(),
    )


def _rejected_records(payload: bytes, partial: ingest_service_pb2.IngestPartialSuccess) -> list[DeadLetter]:
    """Dead letters for the spans of `payload` the core rejected, one by one."""
    spans = ingest_service_pb2.IngestSpansRequest.FromString(payload).spans
    return [
        DeadLetter(
            tenant=spans[rejection.index].tenant,
            trace_id=spans[rejection.index].trace_id,
            span_id=spans[rejection.index].span_id,
            violations=[(v.field, v.description) for v in rejection.violations],
            span_bytes=_dead_letter_bytes(spans[rejection.index]),
        )
        for rejection in partial.rejections
        if 0 <= rejection.index < len(spans)
    ]


def _all_records(payload: bytes, reason: str) -> list[DeadLetter] | None:
    """Dead letters for every span of a batch refused as a whole; None when it cannot be read."""
    try:
        spans = ingest_service_pb2.IngestSpansRequest.FromString(payload).spans
    except Exception:
        return None
    return [
        DeadLetter(
            tenant=span.tenant,
            trace_id=span.trace_id,
            span_id=span.span_id,
            violations=[("", reason)],
            span_bytes=_dead_letter_bytes(span),
        )
        for span in spans
    ]
