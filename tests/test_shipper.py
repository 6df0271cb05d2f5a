"""The shipper against a real core: dead letters, spooling while the core is away, replay, drops."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import socket
import threading
import time
from pathlib import Path
from typing import Self

import grpc
import grpc.aio
import pytest
from prometheus_client import REGISTRY

from llmtrace.api.v1 import ingest_service_pb2, span_pb2
from llmtrace.config.schema import ShipperSettings
from shim.dead_letter import DeadLetter, DeadLetterFile
from shim.shipper import MAX_CORE_FAILURES, SLOW_SEND_S, Shipper
from shim.spool import Spool, SpoolEntry
from tests.conftest import core_settings, running_core, wait_for_spans
from tests.factories import make_span
from tests.test_capture_raw import raw_span


def _free_addr() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def _settings(tmp_path: Path, **changes: object) -> ShipperSettings:
    base = ShipperSettings(
        spool_dir=str(tmp_path / "spool"),
        dead_letter_path=str(tmp_path / "dead.jsonl"),
        flush_interval_ms=20,
        retry_initial_ms=20,
        retry_max_ms=200,
        rpc_timeout_ms=1000,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def _shipper(settings: ShipperSettings, core_addr: str, spool: Spool | None = None) -> Shipper:
    if spool is None:  # not `or`: an empty spool is falsy
        spool = Spool.open(Path(settings.spool_dir), settings.spool_max_bytes)
    return Shipper(
        settings,
        core_addr,
        spool,
        DeadLetterFile(Path(settings.dead_letter_path)),
        max_message_bytes=64 << 20,
    )


def _sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def _until(condition: object, wait_s: float = 10.0) -> None:
    assert callable(condition)
    for _ in range(int(wait_s / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


async def test_rejected_spans_go_to_the_dead_letter_file(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    before = _sample("llmtrace_shim_spans_dead_lettered_total")
    async with running_core(core_settings(tmp_path / "db.duckdb")) as core:
        shipper = _shipper(settings, core.bound.grpc)
        await shipper.start()
        good = make_span(tenant="acme")
        bad = make_span(tenant="acme")
        bad.trace_id = b"\x01\x02\x03"  # not 16 bytes: the core rejects it
        shipper.submit(good)
        shipper.submit(bad)
        spans = await wait_for_spans(core, "acme", 1)
        await shipper.close(5)
    assert [s.span_id for s in spans] == [good.span_id]
    (line,) = await asyncio.to_thread(lambda: Path(settings.dead_letter_path).read_text().splitlines())
    record = json.loads(line)
    assert record["span_id"] == bad.span_id.hex() and record["tenant"] == "acme"
    assert record["violations"][0]["field"] == "spans[1].trace_id"
    assert _sample("llmtrace_shim_spans_dead_lettered_total") == before + 1


async def test_a_batch_larger_than_the_cores_messages_is_sent_in_halves(tmp_path: Path) -> None:
    # The core answered RESOURCE_EXHAUSTED (its grpc.max_message_bytes is smaller than the batch)
    # and all 60 valid spans went to the dead-letter file.
    settings = _settings(tmp_path)
    dead_before = _sample("llmtrace_shim_spans_dead_lettered_total")
    small = core_settings(tmp_path / "db.duckdb")
    small = dataclasses.replace(small, grpc=dataclasses.replace(small.grpc, max_message_bytes=1 << 20))
    spans = [make_span(tenant="acme", prompt=f"{i} " + "words " * 5000) for i in range(60)]
    huge = make_span(tenant="acme", prompt="x" * (1 << 20))  # alone larger than a message
    async with running_core(small) as core:
        shipper = _shipper(settings, core.bound.grpc)
        await shipper.start()
        for span in [*spans, huge]:
            shipper.submit(span)
        stored = await wait_for_spans(core, "acme", len(spans))
        dead = Path(settings.dead_letter_path)
        await _until(dead.exists)
        # Counted once the file is written, which may be after it appears (a loaded CI machine).
        await _until(lambda: _sample("llmtrace_shim_spans_dead_lettered_total") == dead_before + 1)
        await shipper.close(5)
    assert sorted(s.span_id for s in stored) == sorted(s.span_id for s in spans)
    lines = await asyncio.to_thread(lambda: dead.read_text().splitlines())
    assert [json.loads(line)["span_id"] for line in lines] == [huge.span_id.hex()]
    assert _sample("llmtrace_shim_spans_dead_lettered_total") == dead_before + 1


async def test_a_corrupt_spooled_batch_is_counted_lost_and_the_rest_delivered(tmp_path: Path) -> None:
    # It was quarantined and logged, but no metric counted it: a loss nobody alerts on.
    settings = _settings(tmp_path)
    lost = REGISTRY.get_sample_value("llmtrace_shim_batches_lost_total", {"reason": "spool_corrupt"}) or 0.0
    shipper = _shipper(settings, _free_addr())  # no core: every batch goes to the spool
    await shipper.start()
    batches = [[make_span(tenant="acme") for _ in range(2)] for _ in range(3)]
    for number, batch in enumerate(batches, 1):
        for span in batch:
            shipper.submit(span)
        await _until(lambda number=number: _spool_files(settings) == number)
    await shipper.close(1)
    await asyncio.to_thread(_zero_out_batch, settings, 1)
    async with running_core(core_settings(tmp_path / "db.duckdb")) as core:
        shipper = _shipper(settings, core.bound.grpc)  # adopts the spool left behind
        await shipper.start()
        stored = await wait_for_spans(core, "acme", 4)
        await shipper.close(5)
    assert sorted(s.span_id for s in stored) == sorted(s.span_id for s in batches[0] + batches[2])
    after = REGISTRY.get_sample_value("llmtrace_shim_batches_lost_total", {"reason": "spool_corrupt"})
    assert after == lost + 1


async def test_an_idle_shipper_takes_over_a_spool_no_worker_had_room_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Orphans were adopted only when a worker started: those left over (every worker full at
    # the time) waited for the next restart.
    monkeypatch.setattr("shim.shipper.ADOPT_INTERVAL_S", 0.1, raising=False)
    settings = _settings(tmp_path)
    async with running_core(core_settings(tmp_path / "db.duckdb")) as core:
        shipper = _shipper(settings, core.bound.grpc)
        await shipper.start()
        left = [make_span(tenant="acme") for _ in range(3)]
        dead = await asyncio.to_thread(Spool.open, Path(settings.spool_dir), settings.spool_max_bytes)
        await asyncio.to_thread(
            dead.append, ingest_service_pb2.IngestSpansRequest(spans=left).SerializeToString()
        )
        await asyncio.to_thread(dead.close)  # its worker is gone: an orphan
        stored = await wait_for_spans(core, "acme", 3)
        await shipper.close(5)
    assert sorted(s.span_id for s in stored) == sorted(s.span_id for s in left)


async def test_spans_wait_in_the_spool_until_the_core_comes_back(tmp_path: Path) -> None:
    addr = _free_addr()
    settings = _settings(tmp_path)
    shipper = _shipper(settings, addr)
    await shipper.start()
    spans = [make_span(tenant="acme") for _ in range(30)]
    for span in spans[:10]:
        shipper.submit(span)
    await _until(lambda: shipper.spool_bytes > 0)
    for span in spans[10:]:
        shipper.submit(span)  # behind the spooled ones
    settings_core = dataclasses.replace(
        core_settings(tmp_path / "db.duckdb"),
        grpc=dataclasses.replace(core_settings(tmp_path).grpc, listen_addr=addr),
    )
    async with running_core(settings_core) as core:
        stored = await wait_for_spans(core, "acme", 30)
        await _until(lambda: shipper.spool_bytes == 0)
        await shipper.close(5)
    assert {s.span_id for s in stored} == {s.span_id for s in spans}


async def test_spool_survives_a_restart_and_is_replayed(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    first = _shipper(settings, _free_addr())
    await first.start()
    spans = [make_span(tenant="acme") for _ in range(5)]
    for span in spans:
        first.submit(span)
    await first.close(2)  # nothing answers: everything is spooled on disk
    assert list((tmp_path / "spool").rglob("*.batch"))
    async with running_core(core_settings(tmp_path / "db.duckdb")) as core:
        second = _shipper(settings, core.bound.grpc)
        await second.start()
        stored = await wait_for_spans(core, "acme", 5)
        await second.close(5)
    assert {s.span_id for s in stored} == {s.span_id for s in spans}
    assert not list((tmp_path / "spool").rglob("*.batch"))


async def test_full_spool_drops_and_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = _settings(tmp_path, spool_max_bytes=1)
    before = _sample("llmtrace_shim_spans_dropped_total")
    shipper = _shipper(settings, _free_addr())
    await shipper.start()
    for _ in range(3):
        shipper.submit(make_span(tenant="acme"))
    await _until(lambda: _sample("llmtrace_shim_spans_dropped_total") >= before + 3)
    await shipper.close(1)
    captured = capsys.readouterr()
    assert "spool full: spans dropped" in captured.out + captured.err


class _StandInCore:
    """A gRPC server on port 0 answering IngestSpans with `_ingest` (raw bytes in and out)."""

    def __init__(self) -> None:
        self.server = grpc.aio.server()
        self.addr = ""

    async def _ingest(self, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        handler = grpc.method_handlers_generic_handler(
            "llmtrace.api.v1.IngestService",
            {"IngestSpans": grpc.unary_unary_rpc_method_handler(self._ingest)},
        )
        self.server.add_generic_rpc_handlers((handler,))
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        self.addr = f"127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.server.stop(0)


class _FakeCore(_StandInCore):
    """A core that is broken: IngestSpans hangs (`code` None) or fails with `code`."""

    def __init__(self, code: grpc.StatusCode | None) -> None:
        super().__init__()
        self.code = code
        self.calls = 0

    async def _ingest(self, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        self.calls += 1
        if self.code is None:
            await asyncio.Event().wait()  # never answers
        await context.abort(self.code or grpc.StatusCode.UNKNOWN, "the core broke on this batch")
        return b""


def _spooled_spans(settings: ShipperSettings) -> list[bytes]:
    """Span ids of every batch left in the spool directory, oldest first."""
    spool = Spool.open(Path(settings.spool_dir), settings.spool_max_bytes)
    ids: list[bytes] = []
    try:
        while (entry := spool.peek()) is not None:
            ids += [s.span_id for s in ingest_service_pb2.IngestSpansRequest.FromString(entry.payload).spans]
            spool.remove(entry)
    finally:
        spool.close()
    return ids


async def test_close_spools_the_batch_a_hung_core_holds(tmp_path: Path) -> None:
    settings = _settings(tmp_path, rpc_timeout_ms=30_000)
    async with _FakeCore(None) as core:
        shipper = _shipper(settings, core.addr)
        await shipper.start()
        spans = [make_span(tenant="acme") for _ in range(5)]
        for span in spans:
            shipper.submit(span)
        await _until(lambda: core.calls == 1)  # the batch is on the wire, unanswered
        await asyncio.wait_for(shipper.close(0.2), 10)
    assert _spooled_spans(settings) == [s.span_id for s in spans]


async def test_a_batch_the_core_keeps_failing_on_is_dead_lettered(tmp_path: Path) -> None:
    settings = _settings(tmp_path, retry_max_ms=20)
    async with _FakeCore(grpc.StatusCode.INTERNAL) as core:
        shipper = _shipper(settings, core.addr)
        await shipper.start()
        span = make_span(tenant="acme")
        shipper.submit(span)
        dead = Path(settings.dead_letter_path)
        await _until(lambda: dead.exists() and dead.stat().st_size > 0)
        # One direct send, then MAX_CORE_FAILURES replays of the spooled batch.
        assert core.calls == 1 + MAX_CORE_FAILURES
        await shipper.close(1)
    (line,) = (await asyncio.to_thread(dead.read_text)).splitlines()
    record = json.loads(line)
    assert record["span_id"] == span.span_id.hex()
    assert "INTERNAL" in record["violations"][0]["description"]
    assert _spooled_spans(settings) == []


async def test_an_unwritable_dead_letter_file_drops_and_counts_but_shipping_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    settings = _settings(tmp_path, dead_letter_path=str(blocker / "dead.jsonl"))
    before = _sample("llmtrace_shim_spans_dropped_total")
    async with running_core(core_settings(tmp_path / "db.duckdb")) as core:
        shipper = _shipper(settings, core.bound.grpc)
        await shipper.start()
        bad = make_span(tenant="acme")
        bad.trace_id = b"\x01\x02\x03"  # rejected by the core; its dead letter cannot be written
        shipper.submit(bad)
        await _until(lambda: _sample("llmtrace_shim_spans_dropped_total") >= before + 1)
        good = make_span(tenant="acme")
        shipper.submit(good)
        spans = await wait_for_spans(core, "acme", 1)
        await shipper.close(5)
    assert [s.span_id for s in spans] == [good.span_id]
    captured = capsys.readouterr()
    assert "cannot write the dead-letter file" in captured.out + captured.err


async def test_a_slow_core_gets_the_batch_copied_to_the_spool_while_it_answers(tmp_path: Path) -> None:
    # What a SIGKILL would leave: while the core sits on a batch, the batch and the ones after it
    # are on disk already, in order, not only in memory.
    settings = _settings(tmp_path, rpc_timeout_ms=60_000)
    async with _FakeCore(None) as core:
        shipper = _shipper(settings, core.addr)
        await shipper.start()
        first = [make_span(tenant="acme") for _ in range(5)]
        for span in first:
            shipper.submit(span)
        await _until(lambda: shipper.spool_bytes > 0, wait_s=SLOW_SEND_S + 10)
        second = [make_span(tenant="acme") for _ in range(5)]
        for span in second:
            shipper.submit(span)
        await _until(lambda: shipper.queued_spans == 0 and _spool_files(settings) == 2)
        await asyncio.wait_for(shipper.close(0.2), 10)
    assert _spooled_spans(settings) == [s.span_id for s in first + second]


class _SlowCore(_StandInCore):
    """A core that answers each IngestSpans after `delay_s`, accepting all spans but, in the
    first request, those whose index is in `reject`; it records every span id it receives."""

    def __init__(self, delay_s: float, reject: frozenset[int] = frozenset()) -> None:
        super().__init__()
        self.delay_s = delay_s
        self.reject = reject
        self.received: list[bytes] = []

    async def _ingest(self, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        spans = ingest_service_pb2.IngestSpansRequest.FromString(request).spans
        reject = self.reject if not self.received else frozenset()
        self.received += [span.span_id for span in spans]
        await asyncio.sleep(self.delay_s)
        reply = ingest_service_pb2.IngestSpansResponse(accepted_spans=len(spans) - len(reject))
        for index in sorted(reject):
            rejected = reply.partial_success.rejections.add(index=index, span_id=spans[index].span_id)
            rejected.violations.add(field="trace_id", description="made up for the test")
        reply.partial_success.rejected_spans = len(reject)
        return reply.SerializeToString()


async def test_a_slow_batch_without_room_for_its_copy_is_not_counted_dropped_when_delivered(
    tmp_path: Path,
) -> None:
    # The refused copy counted the batch as dropped (and logged it) although its send went on
    # and delivered it: drop alerts fired when nothing was lost.
    settings = _settings(tmp_path, rpc_timeout_ms=60_000, spool_max_bytes=1)
    dropped_before = _sample("llmtrace_shim_spans_dropped_total")
    async with _SlowCore(delay_s=SLOW_SEND_S + 0.5) as core:
        shipper = _shipper(settings, core.addr)
        await shipper.start()
        spans = [make_span(tenant="acme") for _ in range(3)]
        for span in spans:
            shipper.submit(span)
        await _until(lambda: len(core.received) == 3, wait_s=SLOW_SEND_S + 10)
        await asyncio.sleep(SLOW_SEND_S + 1)  # the answer arrives
        await shipper.close(5)
    assert _sample("llmtrace_shim_spans_dropped_total") == dropped_before


async def test_a_slow_core_is_not_sent_the_copy_of_a_batch_it_answers(tmp_path: Path) -> None:
    # The copy spooled while the core is slow is for a SIGKILL; replaying it as well would
    # double the work of a core that is already behind.
    settings = _settings(tmp_path, rpc_timeout_ms=60_000)
    async with _SlowCore(delay_s=SLOW_SEND_S + 0.5, reject=frozenset({0})) as core:
        shipper = _shipper(settings, core.addr)
        await shipper.start()
        spans = [make_span(tenant="acme") for _ in range(3)]
        for span in spans:
            shipper.submit(span)
        await _until(lambda: shipper.spool_bytes > 0, wait_s=SLOW_SEND_S + 10)  # the copy
        later = make_span(tenant="acme")
        shipper.submit(later)  # behind the copy, in the spool
        await _until(lambda: shipper.spool_bytes == 0, wait_s=3 * SLOW_SEND_S + 10)
        await shipper.close(5)
    assert core.received == [s.span_id for s in spans] + [later.span_id]
    assert await _dead_lettered(settings) == [spans[0].span_id.hex()]


async def test_close_deletes_the_copy_of_a_batch_the_slow_core_answered(tmp_path: Path) -> None:
    settings = _settings(tmp_path, rpc_timeout_ms=60_000)
    async with _SlowCore(delay_s=SLOW_SEND_S + 0.3, reject=frozenset({1})) as core:
        shipper = _shipper(settings, core.addr)
        await shipper.start()
        spans = [make_span(tenant="acme") for _ in range(2)]
        for span in spans:
            shipper.submit(span)
        await _until(lambda: shipper.spool_bytes > 0, wait_s=SLOW_SEND_S + 10)
        # Replay is waiting on the send; close once the core has answered it.
        await asyncio.sleep(0.6)
        await asyncio.wait_for(shipper.close(1), 10)
    assert core.received == [s.span_id for s in spans]
    assert _spooled_spans(settings) == []  # the next run has nothing to store or dead-letter again
    assert await _dead_lettered(settings) == [spans[1].span_id.hex()]


async def test_close_lets_an_answered_slow_send_finish_its_dead_letters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Cancelled mid-write, the send would count as unanswered: its copy kept, the next run would
    # dead-letter the same span again.
    writing = threading.Event()
    append = DeadLetterFile.append

    def slow_append(self: DeadLetterFile, records: list[DeadLetter]) -> None:
        writing.set()
        time.sleep(0.5)  # reading a large batch's raw exchanges, a slow disk
        append(self, records)

    monkeypatch.setattr(DeadLetterFile, "append", slow_append)
    settings = _settings(tmp_path, rpc_timeout_ms=60_000)
    async with _SlowCore(delay_s=SLOW_SEND_S + 0.3, reject=frozenset({0})) as core:
        shipper = _shipper(settings, core.addr)
        await shipper.start()
        spans = [make_span(tenant="acme") for _ in range(2)]
        for span in spans:
            shipper.submit(span)
        await _until(writing.is_set, wait_s=SLOW_SEND_S + 10)
        await asyncio.wait_for(shipper.close(1), 10)
    assert _spooled_spans(settings) == []
    assert await _dead_lettered(settings) == [spans[0].span_id.hex()]


async def test_a_copy_whose_removal_fails_is_not_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(tmp_path, rpc_timeout_ms=60_000)
    async with _SlowCore(delay_s=SLOW_SEND_S + 0.3, reject=frozenset({0})) as core:
        spool = Spool.open(Path(settings.spool_dir), settings.spool_max_bytes)
        remove, failures = spool.remove, [OSError(5, "Input/output error")]

        def flaky_remove(entry: SpoolEntry) -> None:
            if failures:  # the file cannot be deleted this once (an I/O error)
                error = failures.pop()

                def failing_unlink(self: Path, missing_ok: bool = False) -> None:
                    raise error

                with monkeypatch.context() as patch:
                    patch.setattr(Path, "unlink", failing_unlink)
                    remove(entry)  # raises; the batch leaves the queue all the same
            else:
                remove(entry)

        spool.remove = flaky_remove  # type: ignore[method-assign]
        shipper = _shipper(settings, core.addr, spool)
        await shipper.start()
        spans = [make_span(tenant="acme") for _ in range(2)]
        for span in spans:
            shipper.submit(span)
        await _until(lambda: shipper.spool_bytes > 0, wait_s=SLOW_SEND_S + 10)
        await _until(lambda: shipper.spool_bytes == 0, wait_s=SLOW_SEND_S + 10)
        await shipper.close(2)
    assert not failures  # the removal did fail once
    assert core.received == [s.span_id for s in spans]  # the copy was never sent
    assert await _dead_lettered(settings) == [spans[0].span_id.hex()]


async def _dead_lettered(settings: ShipperSettings) -> list[str]:
    """Span ids (hex) in the dead-letter file, in order."""
    text = await asyncio.to_thread(Path(settings.dead_letter_path).read_text)
    return [json.loads(line)["span_id"] for line in text.splitlines()]


def _zero_out_batch(settings: ShipperSettings, index: int) -> None:
    """Overwrite the spooled batch at `index` (oldest first) with zeros, keeping its size."""
    path = sorted(Path(settings.spool_dir).rglob("*.batch"))[index]
    path.write_bytes(b"\x00" * len(path.read_bytes()))


def _spool_files(settings: ShipperSettings) -> int:
    return len(list(Path(settings.spool_dir).rglob("*.batch")))


#: A request field no reader keeps: a credential that must not reach the disk.
_DATA_SOURCE_KEY = "search-key-0123456789abcdef"
_BODY_WITH_A_KEY = json.dumps(
    {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "What is in my index?"}],
        "data_sources": [
            {"type": "azure_search", "parameters": {"authentication": {"key": _DATA_SOURCE_KEY}}}
        ],
    }
).encode()


async def test_raw_exchanges_are_read_before_they_rest_in_the_dead_letter_file(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    async with running_core(core_settings(tmp_path / "db.duckdb")) as core:
        shipper = _shipper(settings, core.bound.grpc)
        await shipper.start()
        span = raw_span("/v1/chat/completions", _BODY_WITH_A_KEY, None)
        span.trace_id = b"\x01"  # not 16 bytes: the core rejects it
        shipper.submit(span)
        await _until(lambda: Path(settings.dead_letter_path).exists())
        await shipper.close(5)
    text = await asyncio.to_thread(Path(settings.dead_letter_path).read_text)
    record = json.loads(text)
    stored = span_pb2.Span.FromString(base64.b64decode(record["span"]))
    assert not stored.HasField("raw_exchange") and stored.request_model == "gpt-4o"
    assert _DATA_SOURCE_KEY.encode() not in base64.b64decode(record["span"])
