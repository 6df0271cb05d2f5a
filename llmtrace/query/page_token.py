"""Opaque, HMAC-signed page tokens bound to the request that produced them.

Layout before URL-safe base64 (no padding)::

    version (1 byte) | request digest (16) | JSON array of sort-key values | HMAC-SHA256 (first 16)

The HMAC covers everything before it, so clients can neither forge nor edit a token; the request
digest (SHA-256 of the query fingerprint) lets a valid token used with a different tenant, filter
or order_by be reported as such rather than as garbage. The secret must be the same on every
replica and across restarts, or outstanding tokens stop decoding.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
from collections.abc import Sequence

from llmtrace.query.errors import QueryError

_VERSION = 1
_DIGEST_BYTES = 16
_MAC_BYTES = 16
_MIN_SECRET_BYTES = 16
_MAX_TOKEN_CHARS = 8192
_MALFORMED = "page token is malformed"
_MISMATCH = "page token does not match this request's tenant, filter or order_by"


def query_fingerprint(resource: str, tenant: str, filter: str, order_by: str) -> str:
    """SHA-256 hex of the request fields a page token is only valid with (page_size may change)."""
    canonical = json.dumps([resource, tenant, filter, order_by], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class PageTokenCodec:
    """Encodes and verifies page tokens with one server-side secret."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < _MIN_SECRET_BYTES:
            raise ValueError(f"page token secret must be at least {_MIN_SECRET_BYTES} bytes")
        self._secret = bytes(secret)

    def encode(self, fingerprint: str, values: Sequence[object]) -> str:
        """A token carrying ``values`` (JSON scalars: str, int, bool, finite float, None)."""
        for value in values:
            if not _is_scalar(value):
                raise TypeError(f"page token values must be JSON scalars, got {type(value).__name__}")
        payload = json.dumps(list(values), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        body = bytes([_VERSION]) + _digest(fingerprint) + payload.encode()
        raw = body + self._mac(body)
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    def decode(self, token: str, fingerprint: str) -> list[object]:
        """The values in ``token``; ``QueryError(field="page_token")`` if it is not one of ours,
        was altered or truncated, or was issued for a different request."""
        raw = self._verified(token)
        if not hmac.compare_digest(raw[1 : 1 + _DIGEST_BYTES], _digest(fingerprint)):
            raise QueryError("page_token", _MISMATCH)
        try:
            values = json.loads(raw[1 + _DIGEST_BYTES : -_MAC_BYTES].decode(), parse_constant=_reject)
        except ValueError:
            raise QueryError("page_token", _MALFORMED) from None
        if not isinstance(values, list) or not all(_is_scalar(v) for v in values):
            raise QueryError("page_token", _MALFORMED)
        return values

    def _verified(self, token: str) -> bytes:
        if len(token) > _MAX_TOKEN_CHARS or not token.isascii():
            raise QueryError("page_token", _MALFORMED)
        try:
            # validate=True: the lenient decoder would silently skip characters outside the alphabet.
            raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            raise QueryError("page_token", _MALFORMED) from None
        # The last character's unused bits are ignored by the decoder; insist on our exact spelling.
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != token:
            raise QueryError("page_token", _MALFORMED)
        if len(raw) < 1 + _DIGEST_BYTES + _MAC_BYTES or raw[0] != _VERSION:
            raise QueryError("page_token", _MALFORMED)
        body, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        if not hmac.compare_digest(mac, self._mac(body)):
            raise QueryError("page_token", _MALFORMED)
        return raw

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._secret, body, hashlib.sha256).digest()[:_MAC_BYTES]


def _digest(fingerprint: str) -> bytes:
    return hashlib.sha256(fingerprint.encode()).digest()[:_DIGEST_BYTES]


def _is_scalar(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, str | int | bool)


def _reject(constant: str) -> object:
    # json.loads accepts NaN/Infinity by default; our encoder never writes them.
    raise ValueError(constant)
