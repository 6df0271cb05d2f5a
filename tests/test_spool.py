"""The on-disk spool: order, budget, orphan adoption across process death, damage, permissions."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from shim.spool import Spool

REPO_ROOT = Path(__file__).resolve().parent.parent

# A shim worker stand-in: spools N batches, reports its directory, then waits to be killed.
WORKER_SCRIPT = """
import sys, time
from pathlib import Path
from shim.spool import Spool

spool = Spool.open(Path(sys.argv[1]), 1 << 20)
for i in range(int(sys.argv[2])):
    assert spool.append(f"{sys.argv[3]}-{i}".encode())
print("READY", spool.directory, flush=True)
time.sleep(120)
"""


class Worker:
    """A subprocess holding a live Spool with `count` batches named `<label>-<i>`."""

    def __init__(self, root: Path, count: int, label: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        self.process = subprocess.Popen(
            [sys.executable, "-c", WORKER_SCRIPT, str(root), str(count), label],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO_ROOT,
            env=env,
        )
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("READY "):
                self.directory = Path(line.removeprefix("READY ").strip())
                break
        else:
            raise AssertionError(f"worker exited early: {self.process.wait()}")

    def sigkill(self) -> None:
        self.process.kill()  # SIGKILL: no cleanup runs, the lock dies with the process
        self.process.wait(timeout=30)
        assert self.process.stdout is not None
        self.process.stdout.close()


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for worker in started:
        if worker.process.poll() is None:
            worker.sigkill()


def start_worker(workers: list[Worker], root: Path, count: int, label: str = "batch") -> Worker:
    worker = Worker(root, count, label)
    workers.append(worker)
    return worker


def drain(spool: Spool) -> list[bytes]:
    payloads: list[bytes] = []
    while (entry := spool.peek()) is not None:
        payloads.append(entry.payload)
        spool.remove(entry)
    return payloads


def worker_dirs(root: Path) -> list[Path]:
    return sorted(root.glob("worker-*"))


def test_order_is_kept_over_many_appends(tmp_path: Path) -> None:
    payloads = [f"batch-{i}".encode() * (i % 7 + 1) for i in range(300)]
    with Spool.open(tmp_path / "spool", 1 << 20) as spool:
        for payload in payloads:
            assert spool.append(payload)
        assert len(spool) == spool.count == 300
        assert spool.bytes_used == sum(map(len, payloads))
        assert drain(spool) == payloads
        assert len(spool) == 0
        assert spool.bytes_used == 0


def test_peek_leaves_the_entry_until_removed(tmp_path: Path) -> None:
    with Spool.open(tmp_path, 1000) as spool:
        assert spool.peek() is None
        spool.append(b"first")
        spool.append(b"second")
        first = spool.peek()
        assert first is not None
        assert first.payload == b"first"
        assert spool.peek() == first
        spool.remove(first)
        second = spool.peek()
        assert second is not None
        assert second.payload == b"second"
        with pytest.raises(ValueError, match="oldest"):
            spool.remove(first)


def test_order_is_kept_across_reopen(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    with Spool.open(root, 1 << 20) as spool:
        for i in range(10):
            spool.append(f"old-{i}".encode())
        entry = spool.peek()
        assert entry is not None
        spool.remove(entry)
    with Spool.open(root, 1 << 20) as spool:
        assert len(spool) == 9
        assert spool.bytes_used == sum(len(f"old-{i}") for i in range(1, 10))
        for i in range(3):
            spool.append(f"new-{i}".encode())
        expected = [f"old-{i}".encode() for i in range(1, 10)] + [f"new-{i}".encode() for i in range(3)]
        assert drain(spool) == expected
    # Closed empty: nothing left behind but the root.
    assert list(root.iterdir()) == []


def test_empty_payload_round_trips(tmp_path: Path) -> None:
    with Spool.open(tmp_path, 10) as spool:
        assert spool.append(b"")
        entry = spool.peek()
        assert entry is not None
        assert entry.payload == b""


def test_budget_refuses_without_writing(tmp_path: Path) -> None:
    with Spool.open(tmp_path, 10) as spool:
        assert spool.append(b"123456")
        files_before = sorted(spool.directory.iterdir())
        assert not spool.append(b"12345")
        assert sorted(spool.directory.iterdir()) == files_before
        assert spool.bytes_used == 6
        assert spool.append(b"1234")  # exactly full is allowed
        assert spool.bytes_used == 10
        assert not spool.append(b"x")
        entry = spool.peek()
        assert entry is not None
        spool.remove(entry)
        assert spool.bytes_used == 4
        assert spool.append(b"123456")
        assert drain(spool) == [b"1234", b"123456"]


def test_budget_counts_adopted_batches(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    with Spool.open(root, 100) as spool:
        spool.append(b"a" * 8)
    with Spool.open(root, 10) as spool:
        assert spool.bytes_used == 8
        assert not spool.append(b"abc")
        assert spool.append(b"ab")


def test_orphans_are_shared_out_by_budget_not_piled_on_the_first_worker(tmp_path: Path) -> None:
    # After a restart the first worker to open took every orphan: four times its budget, so it
    # dropped all of its own new spans until it had replayed them, while the others held none.
    root = tmp_path / "spool"
    stopped = [Spool.open(root, 10_000) for _ in range(4)]  # four workers, stopped with full spools
    for label, old in zip("abcd", stopped, strict=True):
        while old.append(label.encode() * 1000) is not None:
            pass
    for old in stopped:
        old.close()
    restarted = [Spool.open(root, 10_000) for _ in range(3)]
    try:
        assert [spool.bytes_used for spool in restarted] == [10_000, 10_000, 10_000]
        assert restarted[0].append(b"new") is None  # full of its share
        first = restarted[0]
        assert drain(first)[0] == b"a" * 1000  # the oldest orphan went first
        assert first.adopt_orphans() == 10  # once it has room, it takes what is left
        assert drain(first) == [b"d" * 1000] * 10
    finally:
        for spool in restarted:
            spool.close()


def test_closed_spool_refuses_use(tmp_path: Path) -> None:
    spool = Spool.open(tmp_path, 10)
    spool.close()
    spool.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        spool.append(b"x")


def test_sigkilled_worker_batches_are_replayed_in_order(tmp_path: Path, workers: list[Worker]) -> None:
    root = tmp_path / "spool"
    worker = start_worker(workers, root, 25)
    worker.sigkill()
    assert worker.directory.exists()
    with Spool.open(root, 1 << 20) as spool:
        assert not worker.directory.exists()
        assert len(spool) == 25
        assert drain(spool) == [f"batch-{i}".encode() for i in range(25)]


def test_older_orphans_replay_first(tmp_path: Path, workers: list[Worker]) -> None:
    root = tmp_path / "spool"
    first = start_worker(workers, root, 3, "first")
    second = start_worker(workers, root, 3, "second")
    second.sigkill()
    first.sigkill()
    with Spool.open(root, 1 << 20) as spool:
        spool.append(b"mine")
        expected = [f"first-{i}".encode() for i in range(3)] + [f"second-{i}".encode() for i in range(3)]
        assert drain(spool) == [*expected, b"mine"]


def test_live_worker_directory_is_not_adopted(tmp_path: Path, workers: list[Worker]) -> None:
    root = tmp_path / "spool"
    worker = start_worker(workers, root, 5)
    with Spool.open(root, 1 << 20) as spool:
        assert len(spool) == 0
        assert spool.adopt_orphans() == 0
        assert len(list(worker.directory.glob("*.batch"))) == 5
        worker.sigkill()
        # Once its owner is gone, the directory is fair game.
        assert spool.adopt_orphans() == 5
        assert drain(spool) == [f"batch-{i}".encode() for i in range(5)]


def test_live_spool_in_same_process_is_not_adopted(tmp_path: Path) -> None:
    with Spool.open(tmp_path, 100) as first:
        first.append(b"one")
        with Spool.open(tmp_path, 100) as second:
            assert len(second) == 0
            assert len(first) == 1
            assert first.directory.exists()


def test_concurrent_opens_adopt_each_orphan_once(tmp_path: Path, workers: list[Worker]) -> None:
    root = tmp_path / "spool"
    for label in ("a", "b", "c", "d"):
        start_worker(workers, root, 10, label).sigkill()
    barrier = threading.Barrier(6)
    spools: list[Spool] = []
    guard = threading.Lock()

    def open_one() -> None:
        barrier.wait()
        spool = Spool.open(root, 1 << 20)
        with guard:
            spools.append(spool)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        drained = [drain(spool) for spool in spools]
    finally:
        for spool in spools:
            spool.close()
    replayed = [payload for payloads in drained for payload in payloads]
    expected = sorted(f"{label}-{i}".encode() for label in "abcd" for i in range(10))
    assert sorted(replayed) == expected  # each batch exactly once
    # Each orphan goes whole to one spool, in order.
    for payloads in drained:
        for label in "abcd":
            mine = [p for p in payloads if p.startswith(label.encode())]
            assert mine in ([], [f"{label}-{i}".encode() for i in range(10)])
    assert worker_dirs(root) == []


def test_partial_and_corrupt_files_are_skipped(tmp_path: Path, workers: list[Worker]) -> None:
    root = tmp_path / "spool"
    worker = start_worker(workers, root, 6)
    worker.sigkill()
    batches = sorted(worker.directory.glob("*.batch"))
    # A write cut short by the kill, as the spool leaves it: a temp file never renamed into place.
    (worker.directory / "00000000000000000007.tmp").write_bytes(b"LTS1\x00\x00")
    # Damage of the kinds the header catches: truncation, a flipped byte, garbage, an empty file.
    batches[1].write_bytes(batches[1].read_bytes()[:-2])
    damaged = bytearray(batches[2].read_bytes())
    damaged[-1] ^= 0xFF
    batches[2].write_bytes(bytes(damaged))
    batches[3].write_bytes(b"not a spool file at all")
    batches[4].write_bytes(b"")

    with Spool.open(root, 1 << 20) as spool:
        assert len(spool) == 6
        assert drain(spool) == [b"batch-0", b"batch-5"]
        assert spool.bytes_used == 0
        assert list(spool.directory.glob("*.tmp")) == []
    assert len(list((root / "corrupt").glob("*.corrupt"))) == 4


def test_own_temp_file_is_cleaned_by_the_adopter(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    spool = Spool.open(root, 100)
    spool.append(b"kept")
    (spool.directory / "00000000000000000002.tmp").write_bytes(b"half")
    spool.close()
    with Spool.open(root, 100) as adopter:
        assert drain(adopter) == [b"kept"]
    assert list(root.rglob("*.tmp")) == []


@pytest.fixture(params=[0o022, 0o277], ids=["umask022", "umask277"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    mask: int = request.param
    previous = os.umask(mask)
    yield mask
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_and_directories_are_owner_only(tmp_path: Path, umask: int) -> None:
    root = tmp_path / "a" / "spool"
    with Spool.open(root, 100) as spool:
        spool.append(b"ok")
        spool.append(b"bad")
        batch = sorted(spool.directory.glob("*.batch"))[-1]
        batch.write_bytes(b"garbage")
        assert mode(root) == 0o700
        assert mode(spool.directory) == 0o700
        assert mode(spool.directory / "lock") == 0o600
        for path in spool.directory.glob("*.batch"):
            assert mode(path) == 0o600
        assert drain(spool) == [b"ok"]
        assert mode(root / "corrupt") == 0o700
