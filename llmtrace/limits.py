"""Size limits on spans, shared by the core's validation and the shim's capture.

The shim truncates content to these limits before shipping (and marks the span truncated), so
a span the shim builds is never rejected by the core for its size. Documented in docs/limits.md.
"""

from __future__ import annotations

from typing import Final

TRACE_ID_BYTES: Final = 16
SPAN_ID_BYTES: Final = 8

#: Tenant and agent names: short identifiers, also used as Parquet partition values.
MAX_TENANT_CHARS: Final = 128


def tenant_problem(tenant: str) -> str | None:
    """Why `tenant` is not a valid tenant name, or None when it is.

    One rule for ingest, queries and the CLI: a query can never name a tenant ingest would
    refuse, and a NUL or quote-like oddity never reaches the SQL sandbox's tenant views.
    """
    if not tenant:
        return "is required"
    if len(tenant) > MAX_TENANT_CHARS:
        return f"must be at most {MAX_TENANT_CHARS} characters"
    if not tenant.isprintable() or tenant.strip() != tenant:
        return "must be printable, without leading or trailing spaces"
    return None


MAX_AGENT_CHARS: Final = 256
#: Model, provider, operation, span name and other short metadata strings.
MAX_NAME_CHARS: Final = 512
#: Error messages, user agents, and other free text that is not content.
MAX_TEXT_CHARS: Final = 8 * 1024
#: Request or response body, and the total of all message content on one side of a span.
MAX_BODY_CHARS: Final = 1024 * 1024
#: Messages, choices, tools, attributes and findings per span (each list counted on its own).
MAX_ITEMS: Final = 10_000
#: Stop sequences of a request (the shim keeps the first 64), each at most MAX_NAME_CHARS.
MAX_STOP_SEQUENCES: Final = 64
#: Entries of a finding's metadata; keys at most MAX_NAME_CHARS, values MAX_TEXT_CHARS.
MAX_FINDING_METADATA_ENTRIES: Final = 64
#: Token counts above this are treated as corrupt (no request uses a billion tokens).
MAX_TOKENS: Final = 1_000_000_000
#: Cost above this (USD per span) is treated as corrupt.
MAX_COST_USD: Final = 1_000_000.0
#: Spans per IngestSpans request.
MAX_SPANS_PER_BATCH: Final = 10_000
#: A span must not start before 2000-01-01 or end more than a day in the future.
MIN_START_UNIX_SECONDS: Final = 946_684_800
MAX_FUTURE_SECONDS: Final = 86_400
