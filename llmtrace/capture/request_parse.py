"""Reading a request body into a `ParsedRequest`: never raises, whatever the bytes."""

from __future__ import annotations

import codecs
from collections.abc import Callable

from llmtrace import limits
from llmtrace.capture import model
from llmtrace.capture.jsonvalues import JsonObject, as_str, loads
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


def parse_request(path: str, body: bytes, content_type: str, *, max_body_bytes: int) -> model.ParsedRequest:
    """What `body`, sent to `path`, asks for.

    Known routes are read field by field. A body that is not JSON, not an object, or sent to an
    unknown route is kept as text in `raw_body`, cut to `max_body_bytes` (and `truncated` set).
    Wrong types at any level lose only the values concerned. Never raises.
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
            return request
        except Exception:  # a reader bug must not break the proxy: keep the raw body instead
            request = model.ParsedRequest(api=found.api, operation=found.operation, provider=found.provider)
    request.raw_body, request.truncated = raw_text(body, max_body_bytes)
    return request


def requested_model(path: str, body: bytes, content_type: str) -> str:
    """`parse_request(...).model` without reading the rest of the body (the access log's model,
    when nothing else needed the request read): a tenth of the cost for a chat request."""
    if not body or _READERS.get(route_of(path).api) is None or not _may_be_json(body, content_type):
        return ""
    data = loads(body)
    return as_str(data.get("model")) if isinstance(data, dict) else ""


def _may_be_json(body: bytes, content_type: str) -> bool:
    """Whether to read `body` as JSON on a JSON route. A binary type (an upload) is read only
    when the body opens like a JSON object: an upstream that ignores the type would act on such
    a body, and inline enforcement must see what the upstream sees, not a byte count."""
    if not content_type.lower().startswith(_BINARY_TYPES):
        return True
    return body[:64].lstrip()[:1] == b"{"


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
