"""Reading a request body into a `ParsedRequest`: never raises, whatever the bytes."""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from llmtrace import limits
from llmtrace.capture import model
from llmtrace.capture.decode import Decoder
from llmtrace.capture.jsonvalues import JsonObject, as_str, loads
from llmtrace.capture.key_spelling import misspelt_key
from llmtrace.capture.request_anthropic import read_messages
from llmtrace.capture.request_openai import read_chat, read_completions, read_embeddings, read_responses
from llmtrace.capture.routes import route_of

_READERS: dict[str, Callable[[JsonObject, model.ParsedRequest], None]] = {
    model.API_CHAT_COMPLETIONS: read_chat,
    model.API_COMPLETIONS: read_completions,
    model.API_EMBEDDINGS: read_embeddings,
    model.API_RESPONSES: read_responses,
    model.API_MESSAGES: read_messages,
}

# Bodies of these types are binary (uploads, audio): their bytes are not kept as text.
_BINARY_TYPES = ("multipart/", "application/octet-stream", "audio/", "image/", "video/")
#: Most codings one request body is decoded through (`Content-Encoding: gzip, br` is two).
_MAX_CODINGS: Final = 4
#: Most gzip members one request body is read from: a client sends one (`Decoder`).
_MAX_MEMBERS: Final = 16
#: Compressed bytes handed to the decoder at a time: `zlib` copies what is left of its input at
#: the end of each gzip member, so a whole body at once would cost the square of its size.
_FEED_BYTES: Final = 64 * 1024


def parse_request(
    path: str, body: bytes, content_type: str, *, max_body_bytes: int, check_spelling: bool = False
) -> model.ParsedRequest:
    """What `body`, sent to `path`, asks for.

    Known routes are read field by field. A body that is not JSON, not an object, or sent to an
    unknown route is kept as text in `raw_body`, cut to `max_body_bytes` (and `truncated` set).
    Wrong types at any level lose only the values concerned. With `check_spelling`, a key that
    other readers take for one read here is noted (`misspelt_key`). Never raises.
    """
    found = route_of(path)
    request = model.ParsedRequest(api=found.api, operation=found.operation, provider=found.provider)
    if not body:
        return request
    reader = _READERS.get(found.api)
    if reader is None and found.api == model.API_MODELS:
        return request  # a GET: any body is meaningless
    data = loads(body) if reader is not None and _may_be_json(body, content_type) else None
    if data is None and content_type.lower().startswith(_BINARY_TYPES):
        request.raw_body = f"[{len(body)} bytes of {content_type[: limits.MAX_NAME_CHARS]}]"
        return request
    if reader is not None and isinstance(data, dict):
        try:
            reader(data, request)
            if check_spelling:
                request.misspelt_key = misspelt_key(data)
            return request
        except Exception:  # a reader bug must not break the proxy: keep the raw body instead
            request = model.ParsedRequest(api=found.api, operation=found.operation, provider=found.provider)
    request.raw_body, request.truncated = raw_text(body, max_body_bytes)
    return request


def request_codings(content_encoding: str) -> tuple[str, ...]:
    """The codings of a request body's `Content-Encoding`, in the order they were applied,
    lower-cased: () for a plain body (no header, or only `identity`)."""
    parts = (part.strip().lower() for part in content_encoding.split(","))
    return tuple(part for part in parts if part and part != "identity")


@dataclass(frozen=True, slots=True)
class DecodedBody:
    """A compressed request body, decoded for reading (what is forwarded stays compressed)."""

    data: bytes
    #: It decoded to more than the limit: `data` is its first `max_bytes`.
    cut: bool = False
    #: Its codings could not be undone (unknown, corrupt or incomplete, too many of them or too
    #: many gzip members): `data` is what came out before that.
    failed: bool = False


def decode_request_body(body: bytes, codings: tuple[str, ...], max_bytes: int) -> DecodedBody:
    """`body` with its codings (`request_codings`) undone, never more than `max_bytes` of it,
    a step of at most `decode.STEP_BYTES` at a time: a compression bomb costs about what reading
    `max_bytes` of plain body costs. Never raises."""
    if len(codings) > _MAX_CODINGS:
        return DecodedBody(b"", failed=True)
    data, cut = body, False
    for coding in reversed(codings):
        data, cut_here, complete = _undo(coding, data, max_bytes)
        cut = cut or cut_here
        # A coding under one that was cut sees only the start of its stream: not a failure.
        if not cut and not complete:
            return DecodedBody(data, failed=True)
    return DecodedBody(data, cut=cut)


def _undo(coding: str, data: bytes, max_bytes: int) -> tuple[bytes, bool, bool]:
    """One coding undone: at most `max_bytes` of it, whether it was cut there, whether whole."""
    decoder = Decoder(coding, max_members=_MAX_MEMBERS, strict=True)
    out = bytearray()
    for start in range(0, len(data), _FEED_BYTES):
        if decoder.failed:
            break
        for piece in decoder.decode(data[start : start + _FEED_BYTES]):
            out += piece
            if len(out) > max_bytes:  # the rest is never decoded
                del out[max_bytes:]
                return bytes(out), True, False
    return bytes(out), False, decoder.complete


def parse_decoded_request(
    path: str,
    body: bytes,
    content_type: str,
    codings: tuple[str, ...],
    decoded: DecodedBody,
    *,
    max_body_bytes: int,
    check_spelling: bool = False,
) -> model.ParsedRequest:
    """`parse_request` of what decoding the compressed `body` gave (`decode_request_body`). A body
    cut at the limit, or broken after some text, is read as far as it goes (marked `truncated`);
    one that gave nothing is recorded as a note of its size and encoding."""
    if decoded.failed and not decoded.data:
        request = parse_request(path, b"", content_type, max_body_bytes=max_body_bytes)
        encoding = "".join(c if " " <= c <= "~" else "?" for c in ", ".join(codings))
        request.raw_body = f"[{len(body)} bytes, Content-Encoding: {encoding[: limits.MAX_NAME_CHARS]}]"
        return request
    request = parse_request(
        path, decoded.data, content_type, max_body_bytes=max_body_bytes, check_spelling=check_spelling
    )
    if decoded.cut or decoded.failed:
        request.truncated = True
    return request


def requested_model(path: str, body: bytes, content_type: str) -> str:
    """`parse_request(...).model` without reading the rest of the body (the access log's model,
    when nothing else needed the request read): a tenth of the cost for a chat request."""
    if not body or _READERS.get(route_of(path).api) is None or not _may_be_json(body, content_type):
        return ""
    data = loads(body)
    return as_str(data.get("model")) if isinstance(data, dict) else ""


# Whitespace of any length, as a JSON reader skips it, maybe after a byte-order mark.
_OPENS_OBJECT: Final = re.compile(rb"(?:\xef\xbb\xbf)?[ \t\r\n]*\{")


def reads_json(path: str) -> bool:
    """Whether the request body of `path` is a JSON object the capture reads (a known API route)."""
    return _READERS.get(route_of(path).api) is not None


def _may_be_json(body: bytes, content_type: str) -> bool:
    """Whether to read `body` as JSON on a JSON route. A binary type (an upload) is read only
    when the body opens like a JSON object: an upstream that ignores the type would act on such
    a body, and inline enforcement must see what the upstream sees, not a byte count."""
    if not content_type.lower().startswith(_BINARY_TYPES):
        return True
    return _OPENS_OBJECT.match(body) is not None


def raw_text(body: bytes, max_body_bytes: int) -> tuple[str, bool]:
    """`body` as text cut to the capture limit, and whether it was cut.

    The cut is in bytes, which bounds the characters too (one character is at least one byte);
    invalid UTF-8 becomes U+FFFD so the text is always valid for protobuf. A cut through a
    character drops its first bytes rather than storing a U+FFFD that was never sent.
    """
    limit = max(0, min(max_body_bytes, limits.MAX_BODY_CHARS))
    if len(body) <= limit:
        return body.decode("utf-8", "replace"), False
    # Not final: an incomplete sequence at the very end is left unconsumed (the character the cut
    # went through), while invalid bytes anywhere before it still become U+FFFD.
    text, _ = codecs.utf_8_decode(body[:limit], "replace", False)
    return text, True
