"""Per-app and per-request state shared by the middleware and the route handlers."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tools.fake_upstream.behavior import Behavior
from tools.fake_upstream.config import FakeUpstreamConfig, RecordedRequest


@dataclass
class UpstreamState:
    """Everything one fake upstream app remembers."""

    config: FakeUpstreamConfig
    requests: list[RecordedRequest] = field(default_factory=list)
    counter: int = 0
    #: Request ids of the streams sent to their end (a stream the client cut is never listed).
    completed_streams: list[str] = field(default_factory=list)

    def record(self, request: RecordedRequest) -> None:
        """Remember a request, keeping at most `config.keep_requests` of the newest."""
        self.requests.append(request)
        keep = self.config.keep_requests
        if keep is not None and len(self.requests) > 2 * keep:  # trimmed in bulk: O(1) a request
            if keep <= 0:  # `[:-0]` would keep everything
                self.requests.clear()
                self.completed_streams.clear()
                return
            del self.requests[:-keep]
            del self.completed_streams[:-keep]

    def next_number(self) -> int:
        """A fresh request number, starting at 1."""
        self.counter += 1
        return self.counter


@dataclass(frozen=True)
class Exchange:
    """One request as the handlers see it: its parsed body, model and failure switches."""

    number: int
    request_id: str
    config: FakeUpstreamConfig
    body: dict[str, Any]
    model: str
    """The requested model with any `+switch` suffix removed."""
    behavior: Behavior

    @property
    def stream(self) -> bool:
        """Whether the client asked for a streamed answer."""
        return bool(self.body.get("stream"))


class BadRequestError(Exception):
    """A request the fake cannot answer: becomes a 400 error body."""


STATE = web.AppKey("fake_upstream_state", UpstreamState)
EXCHANGE = web.RequestKey("fake_upstream_exchange", Exchange)
REQUEST_ID = web.RequestKey("fake_upstream_request_id", str)

SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"


def drop_connection(request: web.Request) -> None:
    """Close the socket under a response mid-body, as a crashing upstream would."""
    if request.transport is not None:
        request.transport.close()


async def stream_events(
    request: web.Request, events: list[tuple[str | None, object]], *, done_marker: bool
) -> web.StreamResponse:
    """Send `events` as SSE (`event:` line when named), then `data: [DONE]` if `done_marker`.

    Honours the exchange's chunk delay and `cut:<n>` switch (n events, then the socket closes).
    """
    exchange = request[EXCHANGE]
    cut_after = exchange.behavior.cut_after
    response = web.StreamResponse(headers={"Content-Type": SSE_CONTENT_TYPE, "Cache-Control": "no-cache"})
    await response.prepare(request)
    for index, (event, payload) in enumerate(events):
        if cut_after is not None and index >= cut_after:
            break
        if index and exchange.config.chunk_delay_s > 0:
            await asyncio.sleep(exchange.config.chunk_delay_s)
        prefix = f"event: {event}\n" if event else ""
        await response.write(f"{prefix}data: {json.dumps(payload)}\n\n".encode())
    if cut_after is not None:
        drop_connection(request)
        return response
    if done_marker:
        await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    request.app[STATE].completed_streams.append(exchange.request_id)
    return response
