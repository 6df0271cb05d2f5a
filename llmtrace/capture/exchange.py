"""What the proxy itself observed about one exchange, apart from the bodies.

The proxy fills an `ExchangeMeta` while it forwards; `llmtrace.capture.span.build_span` turns it,
with the parsed request and response, into the span shipped to the core.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import islice
from typing import Final

from llmtrace.security.findings import Finding

#: Findings the shim keeps per exchange (inline check and streaming checks together); the rest
#: are dropped (the core's own analysis of the span still finds them). Well under the span's
#: `limits.MAX_ITEMS`, and bounds the memory one streamed answer full of card numbers can take.
MAX_FINDINGS: Final = 1000


@dataclass(slots=True)
class ExchangeMeta:
    """Identity, timing and outcome of one proxied exchange (no bodies, no secrets)."""

    trace_id: bytes
    span_id: bytes
    parent_span_id: bytes
    tenant: str
    agent: str
    session_id: str
    method: str
    #: Request path without the query string, e.g. `/v1/chat/completions`.
    path: str
    #: Query string with `key=`-style values masked; empty when there is none.
    query: str
    client_address: str
    user_agent: str
    #: Host (and port when not the default) of the upstream, `server.address`.
    server_address: str
    #: Short non-reversible fingerprint of the provider key; empty without one.
    api_key_fingerprint: str
    #: Allow-listed request and response headers, lower-case names (never credentials or cookies).
    request_headers: dict[str, str] = field(default_factory=dict)
    response_headers: dict[str, str] = field(default_factory=dict)
    start_unix_nano: int = 0
    end_unix_nano: int = 0
    #: Nanoseconds from request receipt to the first response body byte; None when none came.
    ttft_nano: int | None = None
    #: HTTP status the client received (0 when the client went away before any).
    http_status: int = 0
    upstream_request_id: str = ""
    #: Our own failure, when the shim answered instead of the upstream or the exchange broke:
    #: `error_type` is a short code (`upstream_unreachable`, `upstream_timeout`,
    #: `request_too_large`, `client_disconnected`, `upstream_stream_cut`, `request_blocked`,
    #: `stream_stopped`), `error_message` says more.
    error_type: str = ""
    error_message: str = ""
    #: The request body exceeded what capture keeps (the full body was still forwarded).
    request_body_truncated: bool = False
    #: Findings the shim made itself (inline enforcement, streaming checks), for `Span.findings`;
    #: None (no allocation per request) while there are none.
    findings: list[Finding] | None = None
    #: 0-100 score of `findings` when the shim checked the exchange; None when it did not.
    security_score: int | None = None
    #: Extra `llmtrace.*` span attributes (enforcement decision, boundary defence, ...).
    attributes: dict[str, str | int] | None = None

    def add_findings(self, findings: Iterable[Finding]) -> None:
        """Append findings made in the shim, up to `MAX_FINDINGS` in all."""
        if self.findings is None:
            self.findings = []
        room = MAX_FINDINGS - len(self.findings)
        if room > 0:
            self.findings.extend(islice(findings, room))

    def set_attribute(self, key: str, value: str | int) -> None:
        """Set one extra span attribute."""
        if self.attributes is None:
            self.attributes = {}
        self.attributes[key] = value
