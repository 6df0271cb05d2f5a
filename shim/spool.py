"""An on-disk spool of span batches waiting for the core, shared safely by several shim workers.

Layout under `root`::

    root/worker-<start ns>-<pid>-<hex>/lock            flocked for the life of the owning Spool
    root/worker-<start ns>-<pid>-<hex>/<seq>.batch     one complete batch (header + payload)
    root/worker-<start ns>-<pid>-<hex>/<seq>.tmp       a batch being written; never replayed
    root/corrupt/<worker dir>-<seq>.corrupt            batches that failed their checksum

Each Spool owns one worker directory; the flock on its `lock` file is what tells other workers the
directory is alive. A directory whose lock can be taken belongs to a dead shim (SIGKILL, crash, or a
clean close that left batches behind): the next Spool to open adopts its batches, oldest directory
first, and removes it. Batches are written to a temp name and renamed into place, so a process killed
mid-write leaves only a `.tmp` file, which is deleted. No fsync: the promise covers process death, not
power loss. Quarantined (corrupt) files are kept for inspection and do not count against `max_bytes`.

The spool is synchronous file I/O meant to run in a worker thread; a lock makes each method atomic.
Open one Spool per process *after* forking: a forked child shares the parent's lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import shutil
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import structlog

__all__ = ["Spool", "SpoolEntry"]

_log = structlog.get_logger("llmtrace.shim.spool")

# magic, payload length, crc32 of the payload: lets peek() detect truncated or damaged files.
_HEADER = struct.Struct(">4sII")
_MAGIC = b"LTS1"
_MAX_PAYLOAD = 0xFFFFFFFF

_WORKER_PREFIX = "worker-"
# A dead directory is renamed under this prefix before deletion; anything left there is junk.
_REMOVING_PREFIX = ".removing-"
_LOCK_NAME = "lock"
# The lock file is created and flocked under this name, then renamed to `lock`, so a scanner never
# finds a `lock` that is not yet held. (A worker killed in that instant leaves an empty directory.)
_PENDING_LOCK_NAME = "lock.pending"
_BATCH_SUFFIX = ".batch"
_TMP_SUFFIX = ".tmp"
_CORRUPT_DIR = "corrupt"
_DIR_MODE = 0o700
_FILE_MODE = 0o600


@dataclass(frozen=True, slots=True)
class SpoolEntry:
    """One spooled batch, as returned by `Spool.peek`; pass it back to `Spool.remove` once delivered."""

    seq: int
    payload: bytes


@dataclass(slots=True)
class _Queued:
    seq: int
    size: int  # payload bytes charged against max_bytes


class Spool:
    """A FIFO of opaque batches in files under one worker directory, with a disk budget.

    Use `Spool.open`; close it (or use it as a context manager) to release the directory's lock.
    """

    def __init__(self, root: Path, max_bytes: int, directory: Path, lock_fd: int) -> None:
        """Wrap an already created and locked worker directory; use `Spool.open` instead."""
        self.root = root
        self.max_bytes = max_bytes
        self.directory = directory
        self._lock_fd: int | None = lock_fd
        self._mutex = threading.Lock()
        self._queue: deque[_Queued] = deque()
        self._bytes_used = 0
        self._next_seq = 1
        #: Called with "corrupt" or "missing" for each spooled batch that cannot be replayed (the
        #: shipper counts them: a loss is never silent).
        self.on_lost: Callable[[str], None] | None = None

    @classmethod
    def open(cls, root: Path, max_bytes: int) -> Spool:
        """Create (and lock) this process's directory under `root`, then adopt any orphaned batches."""
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        _make_dir(root, parents=True)
        _clean_leftovers(root)
        # The start time leads the name so that sorting the names sorts the orphans oldest first.
        directory = root / f"{_WORKER_PREFIX}{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}"
        _make_dir(directory)
        lock_fd = _create_lock(directory)
        spool = cls(root, max_bytes, directory, lock_fd)
        try:
            spool.adopt_orphans()
        except BaseException:
            spool.close()
            raise
        return spool

    def __enter__(self) -> Spool:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __len__(self) -> int:
        with self._mutex:
            return len(self._queue)

    @property
    def count(self) -> int:
        """Number of batches waiting (own and adopted)."""
        return len(self)

    @property
    def bytes_used(self) -> int:
        """Payload bytes waiting (own and adopted); what `max_bytes` limits."""
        with self._mutex:
            return self._bytes_used

    def adopt_orphans(self) -> int:
        """Take over the batches of every dead worker directory under `root`; return how many.

        `open` calls this; a long-lived caller may call it again to pick up workers that died since.
        Orphans are taken oldest first, so their batches replay before newer ones, whole, and only
        while this spool is within its budget (an empty spool takes one however large).
        """
        with self._mutex:
            self._check_open()
            adopted = 0
            for candidate in sorted(self.root.glob(f"{_WORKER_PREFIX}*")):
                if self._queue and self._bytes_used >= self.max_bytes:
                    # Full: the rest is left to workers with room (the shipper looks again while
                    # its spool is empty), not piled on one that would then drop its own spans.
                    break
                if candidate != self.directory and candidate.is_dir():
                    adopted += self._adopt(candidate)
            return adopted

    def append(self, payload: bytes) -> int | None:
        """Spool one batch after the others: its sequence number (from 1), or None (nothing
        written) if it would exceed `max_bytes`."""
        if len(payload) > _MAX_PAYLOAD:
            raise ValueError("payload too large for the spool format")
        with self._mutex:
            self._check_open()
            if self._bytes_used + len(payload) > self.max_bytes:
                return None
            seq = self._next_seq
            tmp = self.directory / f"{seq:020d}{_TMP_SUFFIX}"
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
            try:
                fd = os.open(tmp, flags, _FILE_MODE)
            except FileNotFoundError:
                self._recreate_directory()
                fd = os.open(tmp, flags, _FILE_MODE)
            try:
                with os.fdopen(fd, "wb") as out:
                    os.fchmod(out.fileno(), _FILE_MODE)  # the umask may have narrowed or widened it
                    out.write(_HEADER.pack(_MAGIC, len(payload), zlib.crc32(payload)))
                    out.write(payload)
                tmp.replace(self._batch_path(seq))
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            self._next_seq += 1
            self._queue.append(_Queued(seq, len(payload)))
            self._bytes_used += len(payload)
            return seq

    def peek(self) -> SpoolEntry | None:
        """The oldest batch, left in place; None when empty. Corrupt batches are quarantined and skipped."""
        with self._mutex:
            self._check_open()
            while self._queue:
                head = self._queue[0]
                path = self._batch_path(head.seq)
                try:
                    data = path.read_bytes()
                except FileNotFoundError:
                    # Someone deleted it behind our back: nothing to replay.
                    _log.warning("spool_batch_missing", path=str(path))
                    self._drop_head()
                    self._lost("missing")
                    continue
                payload = _decode(data)
                if payload is not None:
                    return SpoolEntry(head.seq, payload)
                quarantine = self._quarantine(path)
                _log.error("spool_batch_corrupt", path=str(path), moved_to=str(quarantine), size=len(data))
                self._drop_head()
                self._lost("corrupt")
            return None

    def remove(self, entry: SpoolEntry) -> None:
        """Delete a delivered batch; `entry` must be the one `peek` returned (the oldest).

        A file that cannot be deleted (a read-only disk) still leaves the queue, and the error is
        raised for the caller to log: the batch was delivered, and keeping it at the head would
        have it sent again and again, with everything behind it waiting. A later run adopts the
        file and sends it once more (ingest is idempotent).
        """
        with self._mutex:
            self._check_open()
            if not self._queue or self._queue[0].seq != entry.seq:
                raise ValueError("only the oldest spooled batch (from peek) can be removed")
            try:
                self._batch_path(entry.seq).unlink(missing_ok=True)
            finally:
                self._drop_head()

    def discard(self, seq: int) -> None:
        """Delete the batch `seq` wherever it is in the queue (a copy no longer needed); a batch
        already gone is ignored."""
        with self._mutex:
            self._check_open()
            for index, queued in enumerate(self._queue):
                if queued.seq == seq:
                    self._batch_path(seq).unlink(missing_ok=True)
                    del self._queue[index]
                    self._bytes_used -= queued.size
                    return

    def close(self) -> None:
        """Release the directory's lock. Waiting batches stay on disk for the next Spool to adopt."""
        with self._mutex:
            if self._lock_fd is None:
                return
            try:
                if not self._queue:
                    # Nothing to hand over: remove the directory while still holding its lock.
                    _remove_dir(self.root, self.directory)
            finally:
                os.close(self._lock_fd)
                self._lock_fd = None

    def _recreate_directory(self) -> None:
        """Make our directory again after someone deleted it (what it held is counted lost when
        replay misses it), with a fresh lock: new batches can be spooled, and a later run adopts
        them should this process die."""
        _log.warning("spool_directory_recreated", directory=str(self.directory))
        _make_dir(self.directory, parents=True)
        lock_fd = _create_lock(self.directory)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
        self._lock_fd = lock_fd

    def _check_open(self) -> None:
        if self._lock_fd is None:
            raise RuntimeError("spool is closed")

    def _batch_path(self, seq: int) -> Path:
        return self.directory / f"{seq:020d}{_BATCH_SUFFIX}"

    def _lost(self, reason: str) -> None:
        if self.on_lost is not None:
            self.on_lost(reason)

    def _drop_head(self) -> None:
        self._bytes_used -= self._queue.popleft().size

    def _quarantine(self, path: Path) -> Path:
        corrupt_dir = self.root / _CORRUPT_DIR
        _make_dir(corrupt_dir)
        target = corrupt_dir / f"{self.directory.name}-{path.stem}.corrupt"
        with contextlib.suppress(FileNotFoundError):
            path.replace(target)
        return target

    def _adopt(self, orphan: Path) -> int:
        """Move a dead directory's batches into ours (renumbered, order kept) and delete it."""
        lock_path = orphan / _LOCK_NAME
        fd = _try_lock_existing(lock_path)
        if fd is None:
            return 0
        try:
            batches: list[Path] = []
            for path in orphan.iterdir():
                if path.suffix == _BATCH_SUFFIX and path.stem.isdigit():
                    batches.append(path)
                elif path.suffix == _TMP_SUFFIX:
                    # Its writer died mid-write; the batch was never acknowledged as spooled.
                    path.unlink(missing_ok=True)
            batches.sort(key=lambda p: int(p.stem))
            for path in batches:
                size = max(path.stat().st_size - _HEADER.size, 0)
                seq = self._next_seq
                path.replace(self._batch_path(seq))
                self._next_seq += 1
                self._queue.append(_Queued(seq, size))
                self._bytes_used += size
            _log.info("spool_orphan_adopted", orphan=str(orphan), batches=len(batches))
            _remove_dir(self.root, orphan)
            return len(batches)
        finally:
            os.close(fd)


def _decode(data: bytes) -> bytes | None:
    """The payload of a batch file, or None when the file is truncated or damaged."""
    if len(data) < _HEADER.size:
        return None
    magic, length, crc = _HEADER.unpack_from(data)
    payload = data[_HEADER.size :]
    if magic != _MAGIC or length != len(payload) or crc != zlib.crc32(payload):
        return None
    return payload


def _make_dir(path: Path, *, parents: bool = False) -> None:
    """Create an owner-only directory (and, with `parents`, missing parents); existing ones are kept."""
    # Not Path.mkdir(parents=True): it creates parents with umask-filtered default permissions.
    missing = [path]
    if parents:
        while not missing[-1].parent.exists():
            missing.append(missing[-1].parent)
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=_DIR_MODE)
        except FileExistsError:
            continue
        directory.chmod(_DIR_MODE)  # mkdir's mode is filtered by the umask


def _create_lock(directory: Path) -> int:
    """Create `directory/lock` already flocked; return its descriptor."""
    pending = directory / _PENDING_LOCK_NAME
    fd = os.open(pending, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
    try:
        os.fchmod(fd, _FILE_MODE)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        pending.replace(directory / _LOCK_NAME)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _try_lock_existing(lock_path: Path) -> int | None:
    """Lock a dead directory's lock file; None if it is alive, gone, or being removed by someone else."""
    try:
        # Never O_CREAT: a directory without its lock is not ours to claim.
        fd = os.open(lock_path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # Between our open and our flock another worker may have adopted and renamed the directory
        # away; then the path no longer leads to the file we locked.
        if lock_path.stat().st_ino != os.fstat(fd).st_ino:
            os.close(fd)
            return None
    except OSError as exc:
        os.close(fd)
        if isinstance(exc, BlockingIOError) or exc.errno in (errno.EAGAIN, errno.ENOENT):
            return None
        raise
    return fd


def _remove_dir(root: Path, directory: Path) -> None:
    """Delete a worker directory whose lock we hold: rename it out of sight first, then delete it."""
    doomed = root / f"{_REMOVING_PREFIX}{secrets.token_hex(8)}"
    directory.rename(doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def _clean_leftovers(root: Path) -> None:
    """Delete directories left by a process killed while removing a dead worker directory."""
    for path in root.glob(f"{_REMOVING_PREFIX}*"):
        shutil.rmtree(path, ignore_errors=True)
