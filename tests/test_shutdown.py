"""The core as a process: graceful shutdown, the database lock, migrations and file permissions.

Every test runs `llmtrace core` (or `migrate`) as a subprocess, the way an operator would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import grpc
import pytest
import yaml

import llmtrace.cli.main as cli
from llmtrace.api.v1 import ingest_service_pb2, ingest_service_pb2_grpc
from tests.factories import make_span

SOURCE_ROOT = Path(cli.__file__).resolve().parents[2]
CLI = (sys.executable, "-m", "llmtrace.cli.main")
READY_TIMEOUT_S = 60.0
SHUTDOWN_TIMEOUT_S = 10.0  # shutdown.timeout_seconds of the cores started here


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMTRACE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SOURCE_ROOT), os.environ.get("PYTHONPATH")]))
    return env


def write_config(directory: Path, database: Path, **storage: object) -> Path:
    config = {
        "grpc": {"listen_addr": "127.0.0.1:0"},
        "metrics": {"listen_addr": "127.0.0.1:0"},
        "storage": {"database_path": str(database), **storage},
        "shutdown": {"timeout_seconds": SHUTDOWN_TIMEOUT_S},
    }
    path = directory / f"config-{len(list(directory.glob('config-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass
class CoreProcess:
    """A `llmtrace core` subprocess, its ready file and its log."""

    process: subprocess.Popen[bytes]
    ready_file: Path
    log_file: Path

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def wait_ready(self) -> dict[str, object]:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self.ready_file.exists():
            code = self.process.poll()
            assert code is None, f"core exited with {code} before ready:\n{self.log()}"
            assert time.monotonic() < deadline, f"core not ready after {READY_TIMEOUT_S} s:\n{self.log()}"
            time.sleep(0.02)
        ready: dict[str, object] = json.loads(self.ready_file.read_text())
        assert ready["pid"] == self.process.pid
        return ready

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 30.0) -> tuple[int, float]:
        """Send `sig`; return the exit code and the seconds it took to exit."""
        started = time.monotonic()
        self.process.send_signal(sig)
        code = self.process.wait(timeout=timeout)
        return code, time.monotonic() - started


class Launcher:
    """Starts cores for one test; any still running at the end is killed."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[CoreProcess] = []

    def launch(self, config: Path, *, umask: int = -1, command: str = "core") -> CoreProcess:
        n = len(self.started)
        ready, log = self.directory / f"ready-{n}.json", self.directory / f"core-{n}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [*CLI, command, "--config", str(config), "--ready-file", str(ready)],
                cwd=self.directory,
                env=_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                umask=umask,
            )
        core = CoreProcess(process, ready, log)
        self.started.append(core)
        return core

    def kill_all(self) -> None:
        for core in self.started:
            if core.process.poll() is None:
                core.process.kill()
                core.process.wait(timeout=30)


@pytest.fixture
def cores(tmp_path: Path) -> Iterator[Launcher]:
    launcher = Launcher(tmp_path)
    try:
        yield launcher
    finally:
        launcher.kill_all()


def llmtrace(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def stored_ids(database: Path) -> set[tuple[bytes, bytes]]:
    conn = duckdb.connect(str(database), read_only=True)
    try:
        rows = conn.execute("SELECT trace_id, span_id FROM span_rows").fetchall()
    finally:
        conn.close()
    return {(bytes(t), bytes(s)) for t, s in rows}


# --- graceful shutdown --------------------------------------------------------------------------------


async def test_sigterm_during_ingest_loses_no_acknowledged_span(tmp_path: Path, cores: Launcher) -> None:
    database = tmp_path / "llmtrace.duckdb"
    core = cores.launch(write_config(tmp_path, database))
    ready = await asyncio.to_thread(core.wait_ready)
    acknowledged: set[tuple[bytes, bytes]] = set()
    batches_ok = 0
    endings: list[str] = []
    stopping = asyncio.Event()

    async def client(channel: grpc.aio.Channel) -> None:
        nonlocal batches_ok
        stub = ingest_service_pb2_grpc.IngestServiceStub(channel)
        while True:
            spans = [make_span(prompt=f"prompt {i}") for i in range(200)]
            try:
                response = await stub.IngestSpans(
                    ingest_service_pb2.IngestSpansRequest(spans=spans), timeout=30
                )
            except grpc.aio.AioRpcError as exc:
                # Refused or cut off by the shutdown: not acknowledged, so nothing is promised.
                assert stopping.is_set(), f"ingest failed before SIGTERM: {exc}"
                endings.append(exc.code().name)
                return
            assert response.accepted_spans == len(spans), response
            assert not response.HasField("partial_success"), response
            acknowledged.update((s.trace_id, s.span_id) for s in spans)
            batches_ok += 1

    channels = [grpc.aio.insecure_channel(str(ready["grpc"])) for _ in range(6)]
    try:
        clients = [asyncio.create_task(client(channel)) for channel in channels]
        await asyncio.sleep(1.0)
        assert batches_ok > 0, core.log()
        before_signal = batches_ok
        stopping.set()
        started = time.monotonic()
        core.process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(core.process.wait, SHUTDOWN_TIMEOUT_S + 20)
        elapsed = time.monotonic() - started
        await asyncio.wait_for(asyncio.gather(*clients), timeout=30)
    finally:
        for channel in channels:
            await channel.close()

    assert code == 0, core.log()
    assert elapsed < SHUTDOWN_TIMEOUT_S, f"shutdown took {elapsed:.1f} s"
    assert len(endings) == len(channels)  # every client was eventually turned away
    assert before_signal >= 2
    stored = stored_ids(database)
    missing = acknowledged - stored
    assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged spans lost"
    assert len(acknowledged) >= 400


@pytest.mark.parametrize("command", ["core", "serve"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_idle_core_stops_promptly(tmp_path: Path, cores: Launcher, sig: signal.Signals, command: str) -> None:
    database = tmp_path / "llmtrace.duckdb"
    core = cores.launch(write_config(tmp_path, database), command=command)
    core.wait_ready()
    code, seconds = core.stop(sig)
    assert code == 0, core.log()
    # Well under the grace period (what a stop that waits it out would take), with room for a
    # loaded machine: the process exit alone can take a second or two there.
    assert seconds < SHUTDOWN_TIMEOUT_S / 2, (
        f"idle shutdown took {seconds:.2f} s (grace is {SHUTDOWN_TIMEOUT_S} s)"
    )
    assert "core stopped" in core.log()
    assert "Traceback" not in core.log()
    # Checkpointed and closed: no write-ahead log left, and the file opens without recovery.
    assert not database.with_name(database.name + ".wal").exists()
    assert stored_ids(database) == set()


# --- the database lock ----------------------------------------------------------------------------------


def test_second_core_on_the_same_file_fails_with_locked(tmp_path: Path, cores: Launcher) -> None:
    database = tmp_path / "llmtrace.duckdb"
    first = cores.launch(write_config(tmp_path, database))
    first.wait_ready()
    second = cores.launch(write_config(tmp_path, database))
    code = second.process.wait(timeout=60)
    assert code == 1, second.log()
    assert "locked" in second.log()
    assert "Traceback" not in second.log()
    assert not second.ready_file.exists()
    # The first one is unaffected and still stops cleanly.
    assert first.process.poll() is None
    assert first.stop()[0] == 0, first.log()


# --- migrations ----------------------------------------------------------------------------------------


def _empty_duckdb_file(path: Path) -> Path:
    duckdb.connect(str(path)).close()  # a valid DuckDB database with no tables
    return path


def _schema_versions(database: Path) -> list[int]:
    conn = duckdb.connect(str(database), read_only=True)
    try:
        return [
            int(v) for (v,) in conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
        ]
    finally:
        conn.close()


@pytest.mark.parametrize("kind", ["new", "empty"])
def test_migrate_applies_version_1_once(tmp_path: Path, kind: str) -> None:
    database = tmp_path / "llmtrace.duckdb"
    if kind == "empty":
        _empty_duckdb_file(database)
    config = write_config(tmp_path, database)
    first = llmtrace("migrate", "--config", str(config), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout == f"{database}: applied migrations 1\n"
    assert _schema_versions(database) == [1]
    again = llmtrace("migrate", "--config", str(config), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"{database}: already up to date\n"
    assert _schema_versions(database) == [1]


def test_core_without_auto_migrate_refuses_an_empty_database(tmp_path: Path, cores: Launcher) -> None:
    database = _empty_duckdb_file(tmp_path / "llmtrace.duckdb")
    config = write_config(tmp_path, database, auto_migrate=False)
    core = cores.launch(config)
    code = core.process.wait(timeout=60)
    assert code == 1, core.log()
    assert "llmtrace migrate" in core.log()
    assert "Traceback" not in core.log()
    assert not core.ready_file.exists()
    assert _schema_versions_or_none(database) is None  # nothing was applied behind the flag's back

    assert llmtrace("migrate", "--config", str(config), cwd=tmp_path).returncode == 0
    migrated = cores.launch(config)
    migrated.wait_ready()
    assert migrated.stop()[0] == 0, migrated.log()


def test_core_without_auto_migrate_says_to_upgrade_for_a_newer_schema(
    tmp_path: Path, cores: Launcher
) -> None:
    # It said "run `llmtrace migrate`", which then failed: a newer build had migrated the file.
    database = tmp_path / "llmtrace.duckdb"
    config = write_config(tmp_path, database, auto_migrate=False)
    assert llmtrace("migrate", "--config", str(config), cwd=tmp_path).returncode == 0
    conn = duckdb.connect(str(database))
    conn.execute("INSERT INTO schema_version (version, name) VALUES (999, 'from the future')")
    conn.close()
    core = cores.launch(config)
    assert core.process.wait(timeout=60) == 1, core.log()
    assert "upgrade llmtrace" in core.log()
    assert "run `llmtrace migrate`" not in core.log()


def test_a_bad_file_under_a_path_that_says_lock_is_not_called_locked(tmp_path: Path) -> None:
    # Any open error whose message held "lock" (here, from the path) was reported as a lock.
    database = tmp_path / "blocks" / "llmtrace.duckdb"
    database.parent.mkdir()
    database.write_bytes(os.urandom(8192))
    result = llmtrace("migrate", "--config", str(write_config(tmp_path, database)), cwd=tmp_path)
    assert result.returncode == 1
    assert "locked" not in result.stderr
    assert str(database) in result.stderr


def test_a_database_path_under_home_is_expanded(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    config = write_config(tmp_path, Path("~/traces/llmtrace.duckdb"))
    result = subprocess.run(
        [*CLI, "migrate", "--config", str(config)],
        cwd=tmp_path,
        env={**_env(), "HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (home / "traces" / "llmtrace.duckdb").is_file()
    assert not (tmp_path / "~").exists()


def _schema_versions_or_none(database: Path) -> list[int] | None:
    with contextlib.suppress(duckdb.CatalogException):
        return _schema_versions(database)
    return None


# --- permissions ---------------------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_database_files_are_owner_only(tmp_path: Path, cores: Launcher) -> None:
    database = tmp_path / "llmtrace.duckdb"
    # Even under a permissive umask the core creates owner-only files: spans hold prompts.
    core = cores.launch(write_config(tmp_path, database), umask=0)
    ready = await asyncio.to_thread(core.wait_ready)
    async with grpc.aio.insecure_channel(str(ready["grpc"])) as channel:
        stub = ingest_service_pb2_grpc.IngestServiceStub(channel)
        response = await stub.IngestSpans(ingest_service_pb2.IngestSpansRequest(spans=[make_span()]))
        assert response.accepted_spans == 1
    wal = database.with_name(database.name + ".wal")
    assert _mode(database) == 0o600
    if wal.exists():
        assert _mode(wal) == 0o600
    assert _mode(core.ready_file) == 0o600
    assert core.stop()[0] == 0, core.log()
    assert _mode(database) == 0o600


def test_migrate_creates_an_owner_only_file(tmp_path: Path) -> None:
    database = tmp_path / "llmtrace.duckdb"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "llmtrace.cli.main",
            "migrate",
            "--config",
            str(write_config(tmp_path, database)),
        ],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        umask=0,
    )
    assert result.returncode == 0, result.stderr
    assert _mode(database) == 0o600
