"""Running the fake upstream on a free local port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web

from tools.fake_upstream.app import create_app
from tools.fake_upstream.config import FakeUpstreamConfig, RecordedRequest
from tools.fake_upstream.exchange import STATE


@dataclass(frozen=True)
class FakeUpstream:
    """A running fake upstream: where to reach it and what it has received."""

    base_url: str
    """`http://127.0.0.1:PORT`, without the `/v1` prefix."""
    requests: list[RecordedRequest]
    """Every request received so far, oldest first (live: grows as requests arrive)."""
    config: FakeUpstreamConfig
    completed_streams: list[str] = field(default_factory=list)
    """Request ids of the streamed answers sent to their end, in order (live). A stream whose
    client went away before its end is missing here."""

    @property
    def last_request(self) -> RecordedRequest:
        """The most recent request; fails when none arrived."""
        if not self.requests:
            raise LookupError("the fake upstream has received no request")
        return self.requests[-1]


@asynccontextmanager
async def run_fake_upstream(
    config: FakeUpstreamConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[FakeUpstream]:
    """Serve a fake upstream on `host:port` (a free port by default) for the block's duration."""
    app = create_app(config)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        state = app[STATE]
        yield FakeUpstream(
            base_url=f"http://{bound_host}:{bound_port}",
            requests=state.requests,
            config=state.config,
            completed_streams=state.completed_streams,
        )
    finally:
        await runner.cleanup()
