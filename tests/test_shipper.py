"""The shipper against a real core: dead letters, spooling while the core is away, replay, drops."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from llmtrace.config.schema import ShipperSettings
from shim.dead_letter import DeadLetterFile
from shim.shipper import Shipper
from shim.spool import Spool
from tests.conftest import core_settings, running_core, wait_for_spans
from tests.factories import make_span


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


def _shipper(settings: ShipperSettings, core_addr: str) -> Shipper:
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
