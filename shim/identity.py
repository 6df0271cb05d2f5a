"""Who a proxied call belongs to and where it sits in a trace, from the request headers.

Tenant and agent come from `X-LLMTrace-Tenant` / `X-LLMTrace-Agent` (the predecessor's
`-Tenant-ID` / `-Agent-ID` are accepted too); no tenant means `default`. Trace placement follows
W3C Trace Context: a valid `traceparent` makes our span a child in the caller's trace, and the
forwarded `traceparent` names our span as the parent, as a participating intermediary does.
Without one, `X-LLMTrace-Session` maps a session to one stable trace id, so its calls group.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from llmtrace.limits import MAX_AGENT_CHARS, tenant_problem

DEFAULT_TENANT: Final = "default"
# Lower-case hex only (W3C Trace Context's HEXDIGLC); fields after the flags only in a version
# after 00, whose header may grow (version 00 has exactly four).
_TRACEPARENT: Final = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-[^\s]*)?")
_ZERO_TRACE: Final = "0" * 32
_ZERO_SPAN: Final = "0" * 16
_MAX_SESSION_CHARS: Final = 256


# Ids must be unique, not secret: the process-seeded PRNG (seeded from os.urandom at start-up)
# avoids a getrandom() system call per id on the hot path.
_random_bytes = random.randbytes


class IdentityError(ValueError):
    """A header we read holds a value we cannot use; the message names the header."""


@dataclass(frozen=True, slots=True)
class CallIdentity:
    """Tenant, agent and trace placement of one call."""

    tenant: str
    agent: str
    session_id: str
    trace_id: bytes
    span_id: bytes
    parent_span_id: bytes
    #: trace-flags of the incoming traceparent, kept when forwarding.
    trace_flags: str

    def traceparent(self) -> str:
        """The `traceparent` to send upstream: same trace, our span as the parent."""
        return f"00-{self.trace_id.hex()}-{self.span_id.hex()}-{self.trace_flags}"


def _first(headers: Mapping[str, str], *names: str) -> str:
    for name in names:
        value = headers.get(name)
        if value:
            return value.strip()
    return ""


def resolve_identity(headers: Mapping[str, str]) -> CallIdentity:
    """Read tenant, agent, session and trace context; raises IdentityError on unusable values.

    `headers` must be case-insensitive (Sanic's and aiohttp's are).
    """
    tenant = _first(headers, "x-llmtrace-tenant", "x-llmtrace-tenant-id") or DEFAULT_TENANT
    problem = tenant_problem(tenant)
    if problem:
        raise IdentityError(f"X-LLMTrace-Tenant {problem}")
    agent = _first(headers, "x-llmtrace-agent", "x-llmtrace-agent-id")
    if len(agent) > MAX_AGENT_CHARS or not agent.isprintable():
        raise IdentityError(f"X-LLMTrace-Agent must be printable and at most {MAX_AGENT_CHARS} characters")
    session = _first(headers, "x-llmtrace-session", "x-llmtrace-session-id")
    if len(session) > _MAX_SESSION_CHARS or not session.isprintable():
        raise IdentityError(
            f"X-LLMTrace-Session must be printable and at most {_MAX_SESSION_CHARS} characters"
        )
    span_id = _random_bytes(8)
    parent = _parse_traceparent(headers.get("traceparent", ""))
    if parent is not None:
        trace_hex, parent_hex, flags = parent
        return CallIdentity(
            tenant, agent, session, bytes.fromhex(trace_hex), span_id, bytes.fromhex(parent_hex), flags
        )
    # Stable per (tenant, session): every call of the session lands in one trace.
    if session:
        return CallIdentity(tenant, agent, session, _session_trace_id(tenant, session), span_id, b"", "01")
    return CallIdentity(tenant, agent, session, _random_bytes(16), span_id, b"", "01")


def fallback_identity(headers: Mapping[str, str]) -> CallIdentity:
    """The identity to record a request under when `resolve_identity` refused its headers: its
    tenant if that header alone is usable, else `default`; no agent, session or trace context."""
    tenant = _first(headers, "x-llmtrace-tenant", "x-llmtrace-tenant-id")
    if not tenant or tenant_problem(tenant):
        tenant = DEFAULT_TENANT
    return CallIdentity(tenant, "", "", _random_bytes(16), _random_bytes(8), b"", "01")


def _session_trace_id(tenant: str, session: str) -> bytes:
    return hashlib.sha256(f"{tenant}\x00{session}".encode()).digest()[:16]


def _parse_traceparent(value: str) -> tuple[str, str, str] | None:
    # Invalid traceparents are ignored, as W3C Trace Context requires (start a new trace).
    match = _TRACEPARENT.fullmatch(value.strip(" \t"))
    if match is None:
        return None
    version, trace_hex, parent_hex, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or trace_hex == _ZERO_TRACE or parent_hex == _ZERO_SPAN:
        return None
    return trace_hex, parent_hex, flags
