"""Exchanges read by the core: the shim sends the bodies as they crossed it, the core reads them.

Reading the bodies (JSON, SSE, decompression) and building the span's content was most of what
the proxy did per request beyond proxying. At `capture.bodies: full` there is nothing to hide
from the core, so the shim sends a span of what it observed itself (`span.exchange_span`) with
the bodies attached (`RawExchange`), and the core fills in the rest with the same readers
(`read_raw_exchange`) before validating and storing the span. The stored span is the one the
shim would have built (tests/test_capture_raw.py compares them).
"""

from __future__ import annotations

from typing import Final

from llmtrace import limits
from llmtrace.api.v1 import span_pb2
from llmtrace.capture.content_filter import BODIES_FULL
from llmtrace.capture.request_parse import parse_request
from llmtrace.capture.response_parse import MAX_SKIMMED_BYTES, ResponseCapture
from llmtrace.capture.span import add_content

#: Largest body of either side the core reads (the capture limit's own ceiling): an exchange
#: with a larger one is read by the shim instead, which keeps only what fits.
MAX_RAW_BODY_BYTES: Final = limits.MAX_BODY_CHARS
#: Text fields `read_raw_exchange` fills; a span sent with a raw exchange leaves them empty (and
#: `request`, `response` and `usage` unset).
_FILLED_TEXT: Final = ("operation", "provider", "request_model", "response_model", "name")


def raw_exchange_problems(span: span_pb2.Span) -> list[tuple[str, str]]:
    """Why the span's raw exchange cannot be read, as (field, description) pairs; [] when it can."""
    raw = span.raw_exchange
    out: list[tuple[str, str]] = []
    for name in ("request_body", "response_body"):
        size = len(getattr(raw, name))
        if size > MAX_RAW_BODY_BYTES:
            out.append((f"raw_exchange.{name}", f"at most {MAX_RAW_BODY_BYTES} bytes, got {size}"))
    if not 0 <= raw.max_body_bytes <= limits.MAX_BODY_CHARS:
        out.append(("raw_exchange.max_body_bytes", f"must be 0..{limits.MAX_BODY_CHARS}"))
    if len(raw.path) > limits.MAX_TEXT_CHARS:
        out.append(("raw_exchange.path", f"at most {limits.MAX_TEXT_CHARS} characters"))
    filled = [name for name in _FILLED_TEXT if getattr(span, name)]
    messages = {"request": span.HasField("request"), "response": span.HasField("response")}
    messages["usage"] = span.HasField("usage")
    filled += [name for name, present in messages.items() if present]
    out += [(name, "must be empty when raw_exchange is set (the core fills it)") for name in filled]
    return out


class DecodeBudget:
    """Bytes that the compressed answers of one batch may decompress to, together.

    Each answer may decompress to MAX_SKIMMED_BYTES on its own; 1 MiB of gzip can hold that much,
    and reading it takes about a second and a half of CPU. A batch of such bombs held the core's
    single ingest thread for half a minute, stalling every tenant's ingest; with one budget per
    batch the answers past it are kept unread, marked truncated.
    """

    __slots__ = ("left",)

    def __init__(self, total: int) -> None:
        self.left = total


def read_raw_exchange(span: span_pb2.Span, budget: DecodeBudget | None = None) -> None:
    """Fill the span's content from its raw exchange, then drop the raw exchange.

    Call only when `raw_exchange_problems` found none. Never raises for what the bodies hold:
    the readers keep what they can read, as they do in the shim.
    """
    raw = span.raw_exchange
    max_body_bytes = raw.max_body_bytes or limits.MAX_BODY_CHARS  # 0: not set
    request = parse_request(
        raw.path, raw.request_body, raw.request_content_type, max_body_bytes=max_body_bytes
    )
    response = None
    if raw.has_response:
        capture = ResponseCapture(
            request,
            status=raw.response_status,
            content_type=raw.response_content_type,
            content_encoding=raw.response_content_encoding,
            max_body_bytes=max_body_bytes,
            method=raw.method,
            max_decoded_bytes=MAX_SKIMMED_BYTES if budget is None else budget.left,
        )
        capture.feed(raw.response_body)
        response = capture.finish()
        if budget is not None:
            budget.left = max(budget.left - capture.decoded_bytes, 0)
    add_content(
        span,
        request,
        response,
        bodies=BODIES_FULL,
        max_body_bytes=max_body_bytes,
        method=raw.method,
        path=raw.path,
        request_body_truncated=False,
    )
    span.ClearField("raw_exchange")
