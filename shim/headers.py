"""Which headers cross the proxy, which are read by it, and which are kept in a span.

Forwarding is verbatim except for hop-by-hop headers (RFC 9110 §7.6.1), `Host` (the upstream's
own is set by the client library) and every `X-LLMTrace-*` header, which is ours and must never
reach a provider. Storage is an allow-list: credentials and cookies never reach the core.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Final

from multidict import CIMultiDict
from sanic.compat import Header

from llmtrace.credential_params import mask_credential_params

#: Connection-scoped headers; never forwarded in either direction.
HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
#: Recomputed by the client library from the bytes actually sent.
_RECOMPUTED: Final = frozenset({"host", "content-length"})
#: Answered by the shim itself: it holds the whole body before forwarding, so a forwarded
#: `Expect: 100-continue` would only make the client library wait for a `100 Continue` that an
#: upstream may never send (RFC 9110 §10.1.1 lets it answer at once), with the body unsent.
_ANSWERED_HERE: Final = frozenset({"expect"})
_NEVER_FORWARDED: Final = HOP_BY_HOP | _RECOMPUTED | _ANSWERED_HERE
OUR_PREFIX: Final = "x-llmtrace-"

#: Headers worth keeping in a span: they explain the call and carry no secret.
_STORED_REQUEST: Final = frozenset(
    {
        "content-type",
        "content-length",
        "accept",
        "content-encoding",
        "openai-organization",
        "openai-project",
        "openai-beta",
        "anthropic-version",
        "anthropic-beta",
        "x-request-id",
        "idempotency-key",
    }
)
_STORED_REQUEST_PREFIXES: Final = ("x-stainless-",)
_STORED_RESPONSE: Final = frozenset(
    {
        "content-type",
        "content-length",
        "content-encoding",
        "x-request-id",
        "request-id",
        "openai-processing-ms",
        "openai-version",
        "openai-model",
        "openai-organization",
        "retry-after",
    }
)
_STORED_RESPONSE_PREFIXES: Final = ("x-ratelimit-", "anthropic-ratelimit-")

#: Headers that carry a provider credential (fingerprinted, never stored).
_KEY_HEADERS: Final = ("authorization", "api-key", "x-api-key")
MASK: Final = "***"


#: A header name is a token (RFC 9110 §5.1, §5.6.2).
_TOKEN: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
#: Control characters a header value must not hold (HTAB is allowed; RFC 9110 §5.5).
_VALUE_CONTROL: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
#: Bytes that are not UTF-8 reach us as lone surrogates (Sanic decodes with surrogateescape);
#: aiohttp cannot write them back as they came (its encoder drops them, or fails).
_NOT_UTF8: Final = re.compile("[\ud800-\udfff]")


class HeaderError(ValueError):
    """A request header that must not be forwarded: the client gets a 400."""


def forwardable(headers: Iterable[tuple[str, str]]) -> CIMultiDict[str]:
    """The request headers to send upstream, repeated headers and their order kept.

    Raises `HeaderError` for a name that is not a token (`Transfer-Encoding : chunked`, which
    RFC 9112 §5.1 says to refuse: sent on over a pooled upstream connection that other tenants
    share, a lenient upstream could read it as framing) or a value with control characters or
    bytes that are not UTF-8.
    """
    pairs = list(headers)
    listed = _connection_listed(pairs)
    dropped = _NEVER_FORWARDED | listed if listed else _NEVER_FORWARDED
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in pairs:
        if _TOKEN.fullmatch(name) is None:
            raise HeaderError(f"invalid request header name {name[:64]!r}")
        # isprintable() is the cheap common case; it is False for HTAB and for text that is
        # fine too (e.g. U+00A0), which the exact check then lets through.
        if not value.isprintable():
            if _VALUE_CONTROL.search(value) is not None:
                raise HeaderError(f"the request header {name!r} holds a control character")
            if _NOT_UTF8.search(value) is not None:
                raise HeaderError(
                    f"the request header {name!r} holds bytes that are not UTF-8, "
                    "which the proxy cannot forward as they came"
                )
        lower = name.lower()
        if lower in dropped or lower.startswith(OUR_PREFIX):
            continue
        out.add(name, value)
    return out


def returnable(headers: Iterable[tuple[str, str]]) -> Header:
    """The upstream response headers to send to the client (framing is the server's job).

    `X-LLMTrace-*` headers are the shim's to send: an upstream's (`X-LLMTrace-Flagged`, a findings
    list of its own making) would read to the client as the proxy's verdict.
    """
    pairs = list(headers)
    dropped = HOP_BY_HOP | _connection_listed(pairs)
    out = Header()
    for name, value in pairs:
        lower = name.lower()
        if lower not in dropped and not lower.startswith(OUR_PREFIX):
            out.add(name, value)
    return out


def _connection_listed(pairs: list[tuple[str, str]]) -> frozenset[str]:
    # `Connection: close, x-foo` makes x-foo hop-by-hop too (RFC 9110 §7.6.1).
    listed = {
        token.strip().lower()
        for name, value in pairs
        if name.lower() == "connection"
        for token in value.split(",")
    }
    return frozenset(listed - {""})


def header_text(value: str) -> str:
    """A header value as valid text: bytes that are not UTF-8, which Sanic keeps as lone
    surrogates, become U+FFFD (a span with a lone surrogate cannot be serialized)."""
    if value.isascii():
        return value
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def stored_request_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Allow-listed request headers for the span, lower-case names."""
    return _stored(headers, _STORED_REQUEST, _STORED_REQUEST_PREFIXES)


def stored_response_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Allow-listed response headers for the span, lower-case names."""
    return _stored(headers, _STORED_RESPONSE, _STORED_RESPONSE_PREFIXES)


def _stored(
    headers: Iterable[tuple[str, str]], names: frozenset[str], prefixes: tuple[str, ...]
) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in headers:
        lower = name.lower()
        if lower in names or lower.startswith(prefixes):
            out[lower] = header_text(value[:512])
    return out


def key_fingerprint(headers: Iterable[tuple[str, str]]) -> str:
    """A short non-reversible fingerprint of the provider key, to group calls by key.

    Keys are long random strings, so 64 bits of a salted SHA-256 identify one without
    revealing it; the salt keeps the value from matching other tools' key hashes.
    """
    for name, value in headers:
        if name.lower() in _KEY_HEADERS:
            token = value.strip()
            if token.lower().startswith("bearer "):
                token = token[7:].strip()
            if token:
                # Bytes that are not UTF-8 arrive as lone surrogates: hash them as they came.
                raw = token.encode("utf-8", "surrogateescape")
                return hashlib.sha256(b"llmtrace-key-fingerprint:" + raw).hexdigest()[:16]
    return ""


def masked_query(query: str) -> str:
    """The query string with credential-looking parameter values replaced by `***`."""
    if not query:
        return ""
    return mask_credential_params(query, MASK)
