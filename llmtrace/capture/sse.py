"""Incremental Server-Sent Events parsing over raw bytes.

Lines are split on bytes, so a chunk may end anywhere (mid-line, mid-UTF-8 sequence, between `\r`
and `\n`); event data stays bytes, which `orjson` decodes directly. Memory is bounded: a line or
event longer than `max_event_bytes` is dropped (and `dropped` set) instead of buffered.
"""

from __future__ import annotations

_BOM = b"\xef\xbb\xbf"

SseEvent = tuple[bytes, bytes]
"""(event name, data): the name is empty when the event had no `event:` field."""


class SseParser:
    """Feeds on raw chunks and returns the events they complete."""

    __slots__ = (
        "_cr_pending",
        "_data",
        "_data_bytes",
        "_event",
        "_head",
        "_line",
        "_skip_line",
        "dropped",
        "limit",
    )

    def __init__(self, max_event_bytes: int) -> None:
        self.limit = max_event_bytes
        #: Some event or line was too long and was dropped.
        self.dropped = False
        self._line = bytearray()
        self._skip_line = False
        self._cr_pending = False
        self._event = b""
        self._data: list[bytes] = []
        self._data_bytes = 0
        # The stream's first bytes until they are known not to be a byte order mark (which the SSE
        # standard says to drop, and which would otherwise hide the first field's name).
        self._head: bytes | None = b""

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """The events completed by `chunk`, in order."""
        if self._head is not None:
            head = self._head + chunk
            if len(head) < len(_BOM) and _BOM.startswith(head):
                self._head = head
                return []
            self._head = None
            chunk = head.removeprefix(_BOM)
        if self._cr_pending or b"\r" in chunk:
            chunk = self._normalize(chunk)
        events: list[SseEvent] = []
        end = chunk.rfind(b"\n")
        if end < 0:
            self._keep(chunk)
            return events
        if self._line or self._skip_line:
            # The first line continues the partial one kept from the previous chunks.
            first_end = chunk.find(b"\n")
            self._keep(chunk[:first_end])
            if not self._skip_line:
                self._handle(bytes(self._line), events)
            self._line.clear()
            self._skip_line = False
            start = first_end + 1
        else:
            start = 0
        if start <= end:
            for line in chunk[start:end].split(b"\n"):
                self._handle(line, events)
        self._keep(chunk[end + 1 :])
        return events

    def close(self) -> list[SseEvent]:
        """Events left when the body ends; a last event without its blank line still counts."""
        events: list[SseEvent] = []
        if self._line and not self._skip_line:
            self._handle(bytes(self._line), events)
        self._line.clear()
        self._cr_pending = False
        self._handle(b"", events)
        return events

    def _normalize(self, chunk: bytes) -> bytes:
        # `\r\n` and a lone `\r` both end a line. A chunk ending in `\r` may be half of a `\r\n`:
        # hold that `\r` back until the next chunk says.
        if self._cr_pending:
            chunk = b"\r" + chunk
            self._cr_pending = False
        if chunk.endswith(b"\r"):
            chunk = chunk[:-1]
            self._cr_pending = True
            if not chunk:
                return chunk
        return chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")

    def _keep(self, piece: bytes) -> None:
        if not piece or self._skip_line:
            return
        if len(self._line) + len(piece) > self.limit:
            self._line.clear()
            self._skip_line = True
            self.dropped = True
            return
        self._line += piece

    def _handle(self, line: bytes, events: list[SseEvent]) -> None:
        if not line:
            if self._data:
                data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
                events.append((self._event, data))
            self._event = b""
            self._data = []
            self._data_bytes = 0
            return
        if line[0] == 0x3A:  # `:` starts a comment (keep-alives)
            return
        name, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data_bytes += len(value) + 1
            if self._data_bytes > self.limit:
                self.dropped = True
                return
            self._data.append(value)
        elif name == b"event":
            self._event = value
