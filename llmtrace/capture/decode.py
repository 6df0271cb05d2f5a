"""Incremental decompression of a response body, for parsing only (the client gets the raw bytes)."""

from __future__ import annotations

import importlib
import zlib
from collections.abc import Iterator
from typing import Any, Final

#: Most decompressed bytes one step yields: a compression bomb never expands all at once.
STEP_BYTES = 256 * 1024
#: Input kept to retry a `deflate` body as raw deflate, when zlib refuses it before any output.
_RETRY_BYTES = 64 * 1024
_GZIP_MAGIC = b"\x1f\x8b"


def _load_brotli() -> Any:
    try:
        return importlib.import_module("brotli")
    except ImportError:
        return None


_BROTLI: Any = _load_brotli()


#: Content codings `Decoder` reads.
READABLE_CODINGS: Final = frozenset(
    {"gzip", "x-gzip", "deflate", "identity"} | ({"br"} if _BROTLI else set())
)


def readable_accept_encoding(value: str) -> str:
    """An `Accept-Encoding` value narrowed to the codings `Decoder` reads (`zstd` and `*` left
    out): "" when none is left, which asks for the answer as it is (identity)."""
    kept = [
        item.strip()
        for item in value.split(",")
        if item.partition(";")[0].strip().lower() in READABLE_CODINGS
    ]
    return ", ".join(kept)


class Decoder:
    """Decodes one `content-encoding` chunk by chunk; `failed` once the bytes cannot be decoded.

    Supports identity, gzip, deflate (zlib-wrapped or raw, as servers send both) and br when the
    `brotli` module is installed. Any other encoding sets `failed` at once. `max_members` bounds
    the gzip members of one body (past it, `failed`): each costs Python work however small it is,
    so a body of a million empty members would take seconds to read. `strict` (request bodies,
    which the inline check must read as the upstream will): bytes after the end of a stream are
    another gzip member, or zero padding between members (as Python's `gzip` skips it), or the
    decoding `failed`; a response's trailing bytes are ignored, as clients ignore them.
    """

    __slots__ = (
        "_after_end",
        "_brotli",
        "_fed",
        "_max_members",
        "_members",
        "_started",
        "_strict",
        "_zlib",
        "encoding",
        "failed",
    )

    def __init__(
        self, content_encoding: str, *, max_members: int | None = None, strict: bool = False
    ) -> None:
        self.encoding = content_encoding.strip().lower()
        self.failed = False
        self._strict = strict
        self._max_members = max_members
        self._members = 1
        self._started = False
        # Input fed before any output, so that raw deflate can be retried from the first byte
        # (None once output came, or past `_RETRY_BYTES`).
        self._fed: bytearray | None = bytearray()
        self._after_end = b""  # a first byte of what may be the next gzip member
        self._zlib: Any = None
        self._brotli: Any = None
        if self.encoding in ("", "identity"):
            self.encoding = ""
        elif self.encoding in ("gzip", "x-gzip", "deflate"):
            # 32 + 15: zlib detects a gzip or zlib header itself.
            self._zlib = zlib.decompressobj(32 + zlib.MAX_WBITS)
        elif self.encoding == "br" and _BROTLI is not None:
            self._brotli = _BROTLI.Decompressor()
        else:
            self.failed = True

    @property
    def complete(self) -> bool:
        """Whether the bytes fed so far hold the whole of a stream (always, for identity)."""
        if self.failed:
            return False
        if self._zlib is not None:
            return bool(self._zlib.eof) and not (self._strict and self._after_end)
        if self._brotli is not None:
            return bool(self._brotli.is_finished())
        return True

    def decode(self, chunk: bytes) -> Iterator[bytes]:
        """The decoded bytes of `chunk`, in pieces of at most about `STEP_BYTES`."""
        if self.failed:
            return
        if not self.encoding:
            yield chunk
        elif self._zlib is not None:
            yield from self._inflate(chunk)
        else:
            yield from self._unbrotli(chunk)

    def _inflate(self, chunk: bytes) -> Iterator[bytes]:
        if self._fed is not None:
            self._fed += chunk
            if len(self._fed) > _RETRY_BYTES:
                self._fed = None
        data = chunk
        while data:
            if self._zlib.eof:
                data, self._after_end = self._after_end + data, b""
                if self._strict:
                    data = data.lstrip(b"\0")  # padding between members
                    if not data:
                        return
                if len(data) < len(_GZIP_MAGIC) and _GZIP_MAGIC.startswith(data):
                    self._after_end = data
                    return
                if data[:2] != _GZIP_MAGIC:
                    # Bytes after the end of the stream: ignored, as clients do; in a request, the
                    # upstream may read them (or fail), so the body cannot be judged whole.
                    self.failed = self._strict
                    return
                self._members += 1
                if self._max_members is not None and self._members > self._max_members:
                    self.failed = True
                    return
                self._zlib = zlib.decompressobj(32 + zlib.MAX_WBITS)  # the next gzip member
            try:
                out: bytes = self._zlib.decompress(data, STEP_BYTES)
            except zlib.error:
                if self.encoding == "deflate" and not self._started and self._fed is not None:
                    # Some servers send raw deflate under `deflate`: start again, as such.
                    self._started = True
                    self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
                    data, self._fed = bytes(self._fed), None
                    continue
                self.failed = True
                return
            if out:
                self._started = True
                self._fed = None
                yield out
            data = self._zlib.unconsumed_tail or (self._zlib.unused_data if self._zlib.eof else b"")

    def _unbrotli(self, chunk: bytes) -> Iterator[bytes]:
        try:
            out: bytes = self._brotli.process(chunk, output_buffer_limit=STEP_BYTES)
            # Output beyond the limit stays buffered in the decompressor: drain it before the next chunk.
            while out:
                yield out
                if self._brotli.is_finished():
                    return
                out = self._brotli.process(b"", output_buffer_limit=STEP_BYTES)
        except Exception:  # brotli.error is not importable without the module: catch what it raises
            self.failed = True
