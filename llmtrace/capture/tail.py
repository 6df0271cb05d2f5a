"""The last bytes of a body too long to parse whole, kept in bounded memory."""

from __future__ import annotations

from collections import deque


class Tail:
    """The last `size` bytes fed, held as the pieces they came in: adding a piece never copies
    the window (joining a growing window per piece would be quadratic)."""

    __slots__ = ("_kept", "_pieces", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._pieces: deque[bytes] = deque()
        self._kept = 0

    def add(self, piece: bytes) -> None:
        """Append `piece`, dropping the oldest pieces no longer needed for the last `size` bytes."""
        self._pieces.append(piece)
        self._kept += len(piece)
        while len(self._pieces) > 1 and self._kept - len(self._pieces[0]) >= self.size:
            self._kept -= len(self._pieces.popleft())

    def value(self) -> bytes:
        """The last `size` bytes (fewer when fewer were fed)."""
        return b"".join(self._pieces)[-self.size :]
