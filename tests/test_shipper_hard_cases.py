"""The shipper when the core is slow but answering, the spool misbehaves, or close cuts in."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
from prometheus_client import REGISTRY

from llmtrace.api.v1 import ingest_service_pb2
from shim.shipper import MAX_CORE_FAILURES, SLOW_SEND_S, frame_span
from shim.spool import Spool
from tests.factories import make_span
from tests.test_shipper import (
    _free_addr,
    _sample,
    _settings,
    _shipper,
    _spooled_spans,
    _StandInCore,
    _until,
)


class _ScriptedCore(_StandInCore):
    """Answers IngestSpans after `delay_s`, first failing with each code of `failures` in turn,
    then accepting everything; records the span ids it was sent and those it acknowledged."""

    def __init__(self, delay_s: float = 0.0, failures: list[grpc.StatusCode] | None = None) -> None:
        super().__init__()
        self.delay_s = delay_s
        self.failures = list(failures or [])
        self.received: list[bytes] = []
        self.acknowledged: list[bytes] = []

    async def _ingest(self, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        ids = [span.span_id for span in ingest_service_pb2.IngestSpansRequest.FromString(request).spans]
        self.received += ids
        await asyncio.sleep(self.delay_s)
        if self.failures:
            await context.abort(self.failures.pop(0), "scripted failure")
        self.acknowledged += ids
        return ingest_service_pb2.IngestSpansResponse(accepted_spans=len(ids)).SerializeToString()


def _spooled_batches() -> float:
    return REGISTRY.get_sample_value("llmtrace_shim_batches_total", {"outcome": "spooled"}) or 0.0


def _on_disk(spool_dir: Path) -> set[bytes]:
    """Span ids in every complete batch file under `spool_dir`, read as a SIGKILL would leave them."""
    ids: set[bytes] = set()
    for path in spool_dir.rglob("*.batch"):
        payload = path.read_bytes()[12:]  # the header: magic, length, crc32
        ids |= {s.span_id for s in ingest_service_pb2.IngestSpansRequest.FromString(payload).spans}
    return ids


def _fill_the_disk(spool: Spool) -> None:
    """From now on every write to `spool` fails as on a full disk."""

    def failing_append(payload: bytes) -> int | None:
        raise OSError(28, "No space left on device")

    spool.append = failing_append  # type: ignore[method-assign]


async def test_spans_a_slow_core_keeps_waiting_reach_the_disk_within_about_a_second(tmp_path: Path) -> None:
    # The core answers every call, each under the slow-send limit, but takes in fewer spans than
    # arrive: what waits in memory must still be on disk soon (a SIGKILL loses only memory).
    settings = _settings(tmp_path, batch_max_spans=2, rpc_timeout_ms=60_000)
    async with _ScriptedCore(delay_s=0.6 * SLOW_SEND_S) as core:
        shipper = _shipper(settings, core.addr)
        await shipper.start()
        submitted: list[tuple[float, bytes]] = []
        started = time.monotonic()
        while time.monotonic() - started < 4 * SLOW_SEND_S:
            span = make_span(tenant="acme")
            shipper.submit(span)
            submitted.append((time.monotonic(), span.span_id))
            await asyncio.sleep(0.01)
        # What a SIGKILL now would leave: the spool's files and what the core acknowledged.
        now = time.monotonic()
        safe = await asyncio.to_thread(_on_disk, Path(settings.spool_dir)) | set(core.acknowledged)
        old = [span_id for at, span_id in submitted if now - at > 2.5 * SLOW_SEND_S]
        assert old and set(old) <= safe
        await shipper.close(5)


async def test_a_queue_over_its_byte_budget_goes_to_the_spool(tmp_path: Path) -> None:
    settings = _settings(tmp_path, batch_max_spans=1, queue_max_bytes=1, rpc_timeout_ms=60_000)
    spooled = _spooled_batches()
    async with _ScriptedCore(delay_s=0.2) as core:
        shipper = _shipper(settings, core.addr)
        await shipper.start()
        spans = [make_span(tenant="acme") for _ in range(4)]
        for span in spans:
            shipper.submit(span)
        # The first span goes to the core; once it answers, the rest is over the budget and is
        # spooled at once, long before any of it has waited a second.
        await _until(lambda: _spooled_batches() > spooled, 0.6)
        await _until(lambda: len(core.acknowledged) == len(spans))
        await shipper.close(5)
    assert sorted(core.acknowledged) == sorted(s.span_id for s in spans)


@pytest.fixture
def undeletable_batches(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Spool batch files cannot be deleted (a disk gone read-only); yields the refused paths."""
    refused: list[str] = []
    unlink = Path.unlink

    def failing_unlink(self: Path, missing_ok: bool = False) -> None:
        if self.suffix == ".batch":
            refused.append(str(self))
            raise OSError(30, "Read-only file system", str(self))
        unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", failing_unlink)
    yield refused


async def test_a_delivered_batch_that_cannot_be_deleted_is_not_sent_again_and_again(
    tmp_path: Path, undeletable_batches: list[str]
) -> None:
    settings = _settings(tmp_path)
    dropped = _sample("llmtrace_shim_spans_dropped_total")
    async with _ScriptedCore(failures=[grpc.StatusCode.UNAVAILABLE]) as core:
        shipper = _shipper(settings, core.addr)
        await shipper.start()
        first = make_span(tenant="acme")
        shipper.submit(first)  # refused once: spooled, then replayed
        await _until(lambda: core.acknowledged == [first.span_id])
        await _until(lambda: undeletable_batches)
        later = [make_span(tenant="acme") for _ in range(5)]
        for span in later:
            shipper.submit(span)
            await asyncio.sleep(0.03)
        await _until(lambda: len(core.acknowledged) == 6)
        await asyncio.sleep(0.3)  # time for any resend to show
        await shipper.close(5)
    assert core.acknowledged == [first.span_id] + [s.span_id for s in later]
    assert _sample("llmtrace_shim_spans_dropped_total") == dropped


async def test_a_spool_that_refuses_a_batch_while_the_core_answers_does_not_drop_it(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path)
    dropped = _sample("llmtrace_shim_spans_dropped_total")
    async with _ScriptedCore() as core:
        spool = Spool.open(Path(settings.spool_dir), settings.spool_max_bytes)
        shipper = _shipper(settings, core.addr, spool)
        await shipper.start()
        first = make_span(tenant="acme")
        shipper.submit(first)
        await _until(lambda: core.acknowledged == [first.span_id])
        # A batch waits in the spool (replay has not been told of it), and the disk then fails:
        # the next batch would follow it there, and cannot.
        waiting = make_span(tenant="acme")
        spool.append(ingest_service_pb2.IngestSpansRequest(spans=[waiting]).SerializeToString())

        _fill_the_disk(spool)
        later = make_span(tenant="acme")
        shipper.submit(later)
        await _until(lambda: later.span_id in core.acknowledged)
        await shipper.close(5)
    assert _sample("llmtrace_shim_spans_dropped_total") == dropped


async def test_spool_directory_deleted_at_run_time_is_made_again(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    dropped = _sample("llmtrace_shim_spans_dropped_total")
    shipper = _shipper(settings, _free_addr())  # no core: every batch goes to the spool
    await shipper.start()
    root = tmp_path / "spool"
    for path in sorted(root.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    root.rmdir()
    spans = [make_span(tenant="acme") for _ in range(2)]
    for span in spans:
        shipper.submit(span)
        await asyncio.sleep(0.1)
    await _until(lambda: shipper.spool_bytes > 0 and len(list(root.rglob("*.batch"))) == 2)
    (worker,) = [p for p in root.iterdir() if p.name.startswith("worker-")]
    assert (worker / "lock").exists()  # a later run can tell it from a live worker's, and adopt it
    assert worker.stat().st_mode & 0o777 == 0o700
    await asyncio.wait_for(shipper.close(1), 10)
    assert _sample("llmtrace_shim_spans_dropped_total") == dropped
    assert sorted(_spooled_spans(settings)) == sorted(s.span_id for s in spans)


async def test_a_spool_that_cannot_be_written_drops_and_counts_but_shipping_goes_on(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path)
    before = _sample("llmtrace_shim_spans_dropped_total")
    spool = Spool.open(Path(settings.spool_dir), settings.spool_max_bytes)
    shipper = _shipper(settings, _free_addr(), spool)  # no core: every batch goes to the spool
    await shipper.start()
    # The spool's directory is replaced by a file: no write can succeed, whoever runs it.
    for path in spool.directory.iterdir():
        path.unlink()
    spool.directory.rmdir()
    spool.directory.write_text("")
    for _ in range(2):
        shipper.submit(make_span(tenant="acme"))
        await asyncio.sleep(0.1)  # two flushes: the batcher survives the first failure
    await _until(lambda: _sample("llmtrace_shim_spans_dropped_total") >= before + 2)
    await asyncio.wait_for(shipper.close(1), 10)


async def test_failures_of_the_core_count_in_a_row_only(tmp_path: Path) -> None:
    # An outage where the core, coming and going, fails on the batch now and then is not the
    # core failing on this batch five times in a row: the batch is not dead-lettered.
    flaky = [grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE] * (MAX_CORE_FAILURES + 1)
    settings = _settings(tmp_path, retry_max_ms=20)
    async with _ScriptedCore(failures=flaky) as core:
        shipper = _shipper(settings, core.addr)
        await shipper.start()
        span = make_span(tenant="acme")
        shipper.submit(span)
        await _until(lambda: core.acknowledged == [span.span_id])
        await shipper.close(5)
    assert not await asyncio.to_thread(Path(settings.dead_letter_path).exists)


async def test_close_while_a_batch_is_being_spooled_spools_it_once(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    spool = Spool.open(Path(settings.spool_dir), settings.spool_max_bytes)
    append, writing = spool.append, asyncio.Event()
    loop = asyncio.get_running_loop()

    def slow_append(payload: bytes) -> int | None:
        loop.call_soon_threadsafe(writing.set)
        time.sleep(0.5)  # a slow disk: close's grace runs out meanwhile
        return append(payload)

    spool.append = slow_append  # type: ignore[method-assign]
    shipper = _shipper(settings, _free_addr(), spool)  # no core: the batch goes to the spool
    await shipper.start()
    spans = [make_span(tenant="acme") for _ in range(3)]
    for span in spans:
        shipper.submit(span)
    await _until(writing.is_set)
    await asyncio.wait_for(shipper.close(0.05), 10)
    assert _spooled_spans(settings) == [s.span_id for s in spans]


async def test_spans_that_waited_too_long_and_find_the_spool_full_are_sent_not_dropped(
    tmp_path: Path,
) -> None:
    # A slow core keeps spans waiting past the slow-send limit, and the spool has no room for
    # them: the spool was only their insurance against a SIGKILL, the core still takes them.
    settings = _settings(tmp_path, batch_max_spans=5, rpc_timeout_ms=60_000)
    dropped = _sample("llmtrace_shim_spans_dropped_total")
    async with _ScriptedCore(delay_s=1.3 * SLOW_SEND_S) as core:
        spool = Spool.open(Path(settings.spool_dir), settings.spool_max_bytes)

        _fill_the_disk(spool)
        shipper = _shipper(settings, core.addr, spool)
        await shipper.start()
        spans = [make_span(tenant="acme") for _ in range(20)]
        for span in spans:
            shipper.submit(span)
        await _until(lambda: len(core.acknowledged) == len(spans), 20)
        await shipper.close(5)
    assert sorted(core.acknowledged) == sorted(s.span_id for s in spans)
    assert _sample("llmtrace_shim_spans_dropped_total") == dropped


class _PerTenantCore(_StandInCore):
    """Answers each batch after its tenant's delay. Tenant "b"'s first call fails with
    UNAVAILABLE after `b_fails_after_s`, or, when that is None, never ends."""

    def __init__(self, delays: dict[str, float], b_fails_after_s: float | None) -> None:
        super().__init__()
        self.delays = delays
        self.b_fails_after_s = b_fails_after_s
        self.b_calls = 0
        self.acknowledged: list[bytes] = []

    async def _ingest(self, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        spans = ingest_service_pb2.IngestSpansRequest.FromString(request).spans
        tenants = {span.tenant for span in spans}
        if "b" in tenants:
            self.b_calls += 1
            if self.b_calls == 1 and self.b_fails_after_s is None:
                await asyncio.Event().wait()
            if self.b_calls == 1 and self.b_fails_after_s is not None:
                await asyncio.sleep(self.b_fails_after_s)
                await context.abort(grpc.StatusCode.UNAVAILABLE, "core restarting")
        await asyncio.sleep(max(self.delays.get(tenant, 0.0) for tenant in tenants))
        self.acknowledged += [span.span_id for span in spans]
        return ingest_service_pb2.IngestSpansResponse(accepted_spans=len(spans)).SerializeToString()


@pytest.mark.parametrize("outcome", ["fails", "is_cut_by_close"])
async def test_a_slow_send_the_spool_had_no_room_to_copy_is_spooled_when_it_ends_badly(
    tmp_path: Path, outcome: str
) -> None:
    # The spool has room for one batch. A's send is slow: its copy fills the spool. B then goes
    # straight to the core (the spool refuses it, the core answers), is slow too, and its copy is
    # refused: the RPC holds B's only copy. A is answered and the spool is empty again, and then
    # B's send fails, or close cuts it. B must end up in the spool, or at the core, not dropped.
    a, b, warm = (make_span(tenant=tenant) for tenant in ("a", "b", "w"))
    room = len(frame_span(b.SerializeToString()))
    settings = _settings(tmp_path, rpc_timeout_ms=60_000, spool_max_bytes=room + 10)
    dropped = _sample("llmtrace_shim_spans_dropped_total")
    async with _PerTenantCore(
        {"a": 3 * SLOW_SEND_S}, 4 * SLOW_SEND_S if outcome == "fails" else None
    ) as core:
        shipper = _shipper(settings, core.addr)
        await shipper.start()
        shipper.submit(warm)  # the core answers: a batch the spool refuses is sent, not dropped
        await _until(lambda: warm.span_id in core.acknowledged)
        shipper.submit(a)
        await _until(lambda: shipper.spool_bytes > 0, 3 * SLOW_SEND_S)
        shipper.submit(b)
        await _until(lambda: a.span_id in core.acknowledged and shipper.spool_bytes == 0, 10 * SLOW_SEND_S)
        assert core.b_calls == 1  # B's first send is still waiting
        if outcome == "fails":
            await _until(lambda: b.span_id in core.acknowledged, 10 * SLOW_SEND_S)  # replayed
            await shipper.close(5)
            left: list[bytes] = []
        else:
            await shipper.close(5)
            left = _spooled_spans(settings)
    assert b.span_id in core.acknowledged or b.span_id in left
    assert _sample("llmtrace_shim_spans_dropped_total") == dropped


async def test_sends_without_a_spooled_copy_hold_at_most_queue_max_bytes(tmp_path: Path) -> None:
    # The spool is full and the core takes far longer than the traffic allows: each batch the
    # spool refuses goes to the core with its only copy in the send. Those sends hold their spans
    # in memory until the core answers; the worker grew by about 110 MB a minute under such a load.
    # Past `queue_max_bytes` of them, spans are dropped (counted), as a full spool means.
    span_bytes = len(frame_span(make_span(tenant="acme").SerializeToString()))
    budget = 4 * span_bytes
    settings = _settings(tmp_path, batch_max_spans=2, queue_max_bytes=budget, rpc_timeout_ms=60_000)
    dropped = _sample("llmtrace_shim_spans_dropped_total")
    async with _ScriptedCore() as core:
        spool = Spool.open(Path(settings.spool_dir), settings.spool_max_bytes)
        _fill_the_disk(spool)
        shipper = _shipper(settings, core.addr, spool)
        await shipper.start()
        warm = make_span(tenant="acme")
        shipper.submit(warm)  # the core answers: a batch the spool refuses is sent, not dropped
        await _until(lambda: warm.span_id in core.acknowledged)
        core.delay_s = 60.0
        started = time.monotonic()
        while time.monotonic() - started < 5 * SLOW_SEND_S:
            shipper.submit(make_span(tenant="acme"))
            await asyncio.sleep(0.02)
        await _until(lambda: _sample("llmtrace_shim_spans_dropped_total") > dropped, 5)
        waiting = len(core.received) - len(core.acknowledged)
        # One send may still be inside its first second (not yet counted as held): a batch more.
        assert waiting * span_bytes <= budget + 2 * span_bytes
        await shipper.close(0.1)
