"""Builders of realistic spans for tests and benchmarks."""

from __future__ import annotations

import os
import time
from typing import Any

from llmtrace.api.v1 import finding_pb2, span_pb2


def make_span(
    *,
    tenant: str = "acme",
    model: str = "gpt-4o",
    prompt: str = "Hello there",
    start_ns: int | None = None,
    duration_ms: int = 120,
    **fields: Any,
) -> span_pb2.Span:
    """A complete chat span; keyword arguments override top-level Span fields."""
    start = time.time_ns() - 60 * 1_000_000_000 if start_ns is None else start_ns
    span = span_pb2.Span(
        trace_id=os.urandom(16),
        span_id=os.urandom(8),
        tenant=tenant,
        agent="support-bot",
        operation="chat",
        provider="openai",
        request_model=model,
        response_model=model + "-2024-08-06",
        name=f"chat {model}",
        server_address="api.openai.com",
    )
    span.start_time.FromNanoseconds(start)
    span.end_time.FromNanoseconds(start + duration_ms * 1_000_000)
    span.time_to_first_token.FromMilliseconds(min(40, duration_ms))
    span.status.code = span_pb2.STATUS_CODE_OK
    span.status.http_status_code = 200
    span.request.messages.add(role="system").parts.add(
        type=span_pb2.CONTENT_PART_TYPE_TEXT, text="You are a helpful assistant."
    )
    span.request.messages.add(role="user").parts.add(type=span_pb2.CONTENT_PART_TYPE_TEXT, text=prompt)
    span.request.parameters.temperature = 0.2
    span.request.parameters.max_tokens = 256
    span.request.parameters.stream = False
    choice = span.response.choices.add(index=0, finish_reason="stop")
    choice.message.role = "assistant"
    choice.message.parts.add(type=span_pb2.CONTENT_PART_TYPE_TEXT, text="Hi! How can I help?")
    span.response.id = "chatcmpl-" + os.urandom(6).hex()
    span.usage.input_tokens = 20 + len(prompt) // 4
    span.usage.output_tokens = 7
    span.cost.total_usd = 0.0001
    for key, value in fields.items():
        if isinstance(value, span_pb2.Span | finding_pb2.Finding):
            getattr(span, key).CopyFrom(value)
        else:
            setattr(span, key, value)
    return span


def make_finding(
    kind: str = "prompt_injection", severity: int = finding_pb2.SEVERITY_HIGH, confidence: float = 0.9
) -> finding_pb2.Finding:
    """A finding as a client would send it with a span."""
    return finding_pb2.Finding(
        type=kind,
        severity=severity,  # type: ignore[arg-type]
        confidence=confidence,
        detector="regex.injection",
        location="request.messages[1].content",
        description="instruction override",
        excerpt="ignore previous instructions",
    )
