"""A fake OpenAI/Anthropic-compatible upstream for testing the proxy end to end.

Deterministic answers (`Echo: <last user message>`), SSE streaming, tool calls, and failure
switches chosen per request by the `X-Fake-Behavior` header or a `+switch` model suffix.
"""

from __future__ import annotations

from tools.fake_upstream.app import create_app
from tools.fake_upstream.behavior import BEHAVIOR_HEADER
from tools.fake_upstream.config import FakeUpstreamConfig, RecordedRequest
from tools.fake_upstream.server import FakeUpstream, run_fake_upstream

__all__ = [
    "BEHAVIOR_HEADER",
    "FakeUpstream",
    "FakeUpstreamConfig",
    "RecordedRequest",
    "create_app",
    "run_fake_upstream",
]
