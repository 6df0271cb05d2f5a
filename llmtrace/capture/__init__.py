"""Capture: turning the bytes of one proxied exchange into a span.

`request_parse.parse_request` reads the request body, `response_parse.ResponseCapture` follows the
response as it streams by (JSON or SSE, possibly compressed), and `span.build_span` converts both,
with the proxy's own observations (`exchange.ExchangeMeta`), into the protobuf span shipped to the
core. Parsers produce the plain dataclasses of `model`; only `span` knows the protobuf types.
"""

from llmtrace.capture.model import ParsedRequest, ParsedResponse
from llmtrace.capture.request_parse import parse_request
from llmtrace.capture.response_parse import ResponseCapture
from llmtrace.capture.span import build_span

__all__ = ["ParsedRequest", "ParsedResponse", "ResponseCapture", "build_span", "parse_request"]
