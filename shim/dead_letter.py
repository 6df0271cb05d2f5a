"""A JSON-lines file of spans the core rejected, kept so they can be repaired and sent again.

One line per span::

    {"time": "2025-01-02T03:04:05.678Z", "tenant": "acme", "trace_id": "<hex>", "span_id": "<hex>",
     "violations": [{"field": "...", "description": "..."}], "span": "<base64 of the serialized Span>"}
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson

__all__ = ["DeadLetter", "DeadLetterFile"]

_DIR_MODE = 0o700
_FILE_MODE = 0o600


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One rejected span: who sent it, why the core refused it, and its serialized bytes."""

    tenant: str
    trace_id: bytes
    span_id: bytes
    violations: list[tuple[str, str]]  # (field, description)
    span_bytes: bytes


class DeadLetterFile:
    """Appends `DeadLetter` records to `path`; safe across threads and across worker processes."""

    def __init__(self, path: Path) -> None:
        """Remember `path`; the file (and its directory) is created on the first append."""
        self.path = path
        self._mutex = threading.Lock()
        self._count = 0

    @property
    def count(self) -> int:
        """Records written by this object (this process)."""
        with self._mutex:
            return self._count

    def append(self, records: Sequence[DeadLetter]) -> None:
        """Write one JSON line per record, all in a single append."""
        if not records:
            return
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        data = b"".join(_encode(record, now) for record in records)
        with self._mutex:
            _make_dirs(self.path.parent)
            # O_APPEND makes each write land at the end even when several workers share the file.
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, _FILE_MODE)
            try:
                # Whole lines or nothing: a write cut short (disk full) would leave a fragment
                # that the next record is glued to. The flock keeps other workers' appends out
                # while a failed one is cut back.
                fcntl.flock(fd, fcntl.LOCK_EX)
                if os.fstat(fd).st_mode & 0o777 != _FILE_MODE:
                    os.fchmod(fd, _FILE_MODE)  # the umask may have changed the creation mode
                start = os.fstat(fd).st_size
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, start)
                    raise
            finally:
                os.close(fd)  # releases the flock
            self._count += len(records)


def _encode(record: DeadLetter, now: str) -> bytes:
    line = {
        "time": now,
        "tenant": record.tenant,
        "trace_id": record.trace_id.hex(),
        "span_id": record.span_id.hex(),
        "violations": [{"field": name, "description": text} for name, text in record.violations],
        "span": base64.b64encode(record.span_bytes).decode("ascii"),
    }
    return orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE)


def _make_dirs(directory: Path) -> None:
    """Create `directory` and any missing parents owner-only; existing ones are left as they are."""
    missing: list[Path] = []
    current = directory
    while not current.exists():
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=_DIR_MODE)
        except FileExistsError:
            continue
        path.chmod(_DIR_MODE)  # mkdir's mode is filtered by the umask
