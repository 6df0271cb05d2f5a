"""Configuration of the fake upstream and the record it keeps of each request."""

from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass(frozen=True)
class FakeUpstreamConfig:
    """Knobs for a fake upstream; the defaults suit fast, deterministic tests."""

    chunk_delay_s: float = 0.0
    """Pause between streamed chunks (SSE events), in seconds."""
    require_auth: bool = True
    """Answer 401 on /v1 routes that arrive without credentials."""
    embedding_dimensions: int = 8
    """Length of every embedding vector (a request's `dimensions` overrides it)."""
    model_suffix: str = "-2024-08-06"
    """Appended to the requested model name, as OpenAI reports a dated snapshot."""
    models: tuple[str, ...] = ("gpt-4o", "gpt-4o-mini", "text-embedding-3-small")
    """Ids listed by GET /v1/models."""
    keep_requests: int | None = None
    """Recorded requests (and completed streams) kept, newest last; None keeps all (tests read
    them). A standalone upstream under load keeps a bounded number: a few hundred thousand
    recorded requests made its garbage collector's pauses the tail of every latency it served."""


@dataclass(frozen=True)
class RecordedRequest:
    """One request exactly as it reached the fake upstream."""

    method: str
    path: str
    query_string: str
    headers: dict[str, str]
    """Header names lower-cased; repeated headers joined with ", "."""
    body: bytes
    request_id: str
    """The `x-request-id` the fake upstream answered with."""
    received_at: float = field(compare=False)
    """`time.monotonic()` when the request arrived."""

    def json(self) -> object:
        """The body decoded as JSON."""
        return json.loads(self.body)
