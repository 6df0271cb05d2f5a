"""Responses without the empty `alt-svc` header Sanic's HTTP/1 writer adds to every answer.

Sanic's writer sets `alt-svc` to "" on every response; its touch-up removes that line only for
servers it started itself, not for ours (`shim.server`). An empty `Alt-Svc` is invalid (RFC 7838),
so every response the shim sends leaves it out: its own answers (`ShimResponse`) and the
upstream's relayed ones (`shim.proxy`), which keep the upstream's own `Alt-Svc`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from sanic.compat import Header
from sanic.response import HTTPResponse

_sanitize = HTTPResponse._sanitize_header_value


def header_lines(headers: Header, alt_svc: Iterable[str] = ()) -> Iterator[tuple[bytes, bytes]]:
    """`headers` encoded as Sanic's writer sends them, without its `alt-svc` and with `alt_svc`
    (the upstream's values, if any) in its place."""
    pairs = [(name, value) for name, value in headers.items() if name.lower() != "alt-svc"]
    pairs += [("alt-svc", value) for value in alt_svc]
    return (
        (_sanitize(name).encode("ascii"), _sanitize(f"{value}").encode(errors="surrogateescape"))
        for name, value in pairs
    )


class ShimResponse(HTTPResponse):
    """An answer the shim makes itself (`/health`, `/metrics`, its errors), with no `alt-svc`."""

    __slots__ = ()

    @property
    def processed_headers(self) -> Iterator[tuple[bytes, bytes]]:
        if self.status >= 200 and self.status not in (204, 304):  # Sanic's has_message_body
            self.headers.setdefault("content-type", self.content_type)
        return header_lines(self.headers)
