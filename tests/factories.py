"""Builders of realistic spans for tests and benchmarks."""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from llmtrace.api.v1 import (
    common_pb2,
    finding_pb2,
    ingest_service_pb2,
    span_pb2,
)

if TYPE_CHECKING:
    from llmtrace.api.v1.ingest_service_pb2_grpc import IngestServiceAsyncStub


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


# --- Helpers for the RPC test suites -------------------------------------------------------------

#: A fixed, realistic instant (2023-11-14T22:13:20Z) so tests do not depend on the clock.
BASE_NS = 1_700_000_000 * 1_000_000_000
MS = 1_000_000


def make_complete_span(*, tenant: str = "acme", start_ns: int = BASE_NS, **fields: Any) -> span_pb2.Span:
    """A span with every field of the contract set, content of every kind included."""
    span = make_span(tenant=tenant, model="gpt-4o", prompt="What is the weather in Paris?", start_ns=start_ns)
    span.parent_span_id = os.urandom(8)
    span.session_id = "session-42"
    span.client_address = "10.1.2.3"
    span.user_agent = "openai-python/1.51.0"
    span.upstream_request_id = "req_abc123"
    span.api_key_fingerprint = "fp:9f86d081"
    span.time_to_first_token.FromMilliseconds(35)
    span.status.CopyFrom(
        span_pb2.SpanStatus(
            code=span_pb2.STATUS_CODE_ERROR,
            http_status_code=502,
            error_message="upstream closed the stream",
            error_type="upstream_unreachable",
        )
    )
    req = span.request
    del req.messages[:]
    system = req.messages.add(role="system", name="rules")
    system.parts.add(type=span_pb2.CONTENT_PART_TYPE_TEXT, text="Answer briefly.")
    user = req.messages.add(role="user", name="alice")
    user.parts.add(type=span_pb2.CONTENT_PART_TYPE_TEXT, text="What is the weather in Paris?")
    user.parts.add(
        type=span_pb2.CONTENT_PART_TYPE_IMAGE, uri="https://example.com/sky.png", mime_type="image/png"
    )
    user.parts.add(
        type=span_pb2.CONTENT_PART_TYPE_AUDIO, uri="https://example.com/q.wav", mime_type="audio/wav"
    )
    user.parts.add(type=span_pb2.CONTENT_PART_TYPE_FILE, uri="file-123", mime_type="application/pdf")
    user.parts.add(type=span_pb2.CONTENT_PART_TYPE_OTHER, text="{}", mime_type="input_custom")
    assistant = req.messages.add(role="assistant")
    assistant.parts.add(type=span_pb2.CONTENT_PART_TYPE_REASONING, text="Need the weather tool.")
    assistant.tool_calls.add(id="call_1", type="function", name="get_weather", arguments='{"city":"Paris"}')
    assistant.tool_calls.add(id="call_2", type="function", name="get_time", arguments='{"tz":"CET"}')
    tool = req.messages.add(role="tool", tool_call_id="call_1")
    tool.parts.add(type=span_pb2.CONTENT_PART_TYPE_TEXT, text='{"temp_c":18}')
    req.tools.add(
        type="function",
        name="get_weather",
        description="Current weather for a city",
        parameters_json='{"type":"object","properties":{"city":{"type":"string"}}}',
    )
    req.tools.add(type="function", name="get_time", description="", parameters_json="{}")
    params = req.parameters
    params.temperature = 0.7
    params.top_p = 0.9
    params.max_tokens = 512
    params.stream = True
    params.stop_sequences.extend(["\n\n", "END"])
    params.frequency_penalty = 0.5
    params.presence_penalty = -0.25
    params.seed = 1234
    params.choice_count = 2
    params.output_type = "json"
    req.body = '{"model":"gpt-4o","messages":[]}'
    req.truncated = True
    resp = span.response
    del resp.choices[:]
    first = resp.choices.add(index=0, finish_reason="tool_calls")
    first.message.role = "assistant"
    first.message.parts.add(type=span_pb2.CONTENT_PART_TYPE_TEXT, text="Let me check.")
    first.message.tool_calls.add(
        id="call_3", type="function", name="get_weather", arguments='{"city":"Lyon"}'
    )
    second = resp.choices.add(index=1, finish_reason="stop")
    second.message.role = "assistant"
    second.message.parts.add(type=span_pb2.CONTENT_PART_TYPE_REFUSAL, text="I cannot help with that.")
    resp.body = '{"id":"chatcmpl-1"}'
    resp.truncated = True
    span.usage.CopyFrom(
        span_pb2.Usage(
            input_tokens=1200,
            output_tokens=345,
            total_tokens=0,
            cache_read_input_tokens=1000,
            cache_creation_input_tokens=150,
            reasoning_output_tokens=64,
            estimated=True,
        )
    )
    span.cost.CopyFrom(span_pb2.Cost(total_usd=0.0123, input_usd=0.0073, output_usd=0.005))
    span.security_score = 20
    nested = common_pb2.AnyValue(
        array_value=common_pb2.ArrayValue(
            values=[
                common_pb2.AnyValue(int_value=1),
                common_pb2.AnyValue(
                    array_value=common_pb2.ArrayValue(values=[common_pb2.AnyValue(string_value="x")])
                ),
                common_pb2.AnyValue(
                    kvlist_value=common_pb2.KeyValueList(
                        values=[common_pb2.KeyValue(key="deep", value=common_pb2.AnyValue(bool_value=False))]
                    )
                ),
            ]
        )
    )
    kvlist = common_pb2.AnyValue(
        kvlist_value=common_pb2.KeyValueList(
            values=[
                common_pb2.KeyValue(key="ratio", value=common_pb2.AnyValue(double_value=0.25)),
                common_pb2.KeyValue(key="raw", value=common_pb2.AnyValue(bytes_value=b"\x00\xff")),
                common_pb2.KeyValue(
                    key="list", value=common_pb2.AnyValue(array_value=common_pb2.ArrayValue())
                ),
            ]
        )
    )
    for key, value in (
        ("str", common_pb2.AnyValue(string_value="héllo ✓")),
        ("bool", common_pb2.AnyValue(bool_value=True)),
        ("int", common_pb2.AnyValue(int_value=-(2**62))),
        ("double", common_pb2.AnyValue(double_value=3.5)),
        ("bytes", common_pb2.AnyValue(bytes_value=b"\x01\x02\xfe")),
        ("array", nested),
        ("kvlist", kvlist),
        ("null", common_pb2.AnyValue()),
    ):
        span.attributes.add(key=key, value=value)
    stated = make_finding("secret_leakage", finding_pb2.SEVERITY_MEDIUM, 0.75)
    stated.id = "client-finding-1"
    stated.trace_id = span.trace_id
    stated.span_id = span.span_id
    stated.metadata["rule"] = "aws-key"
    stated.create_time.FromSeconds(BASE_NS // 1_000_000_000 + 5)
    span.findings.append(stated)
    span.findings.append(make_finding("prompt_injection", finding_pb2.SEVERITY_HIGH, 0.9))
    for key, value in fields.items():
        setattr(span, key, value)
    return span


@dataclass(frozen=True)
class RpcFailure:
    """A failed RPC's canonical code and its google.rpc details."""

    code: grpc.StatusCode
    message: str
    reason: str
    domain: str
    violations: list[tuple[str, str]]
    request_id: str | None

    @property
    def fields(self) -> list[str]:
        """The field paths of the BadRequest violations, in order."""
        return [field for field, _ in self.violations]


def rpc_failure(err: grpc.aio.AioRpcError) -> RpcFailure:
    """Parse `err`'s google.rpc.Status details (ErrorInfo and BadRequest)."""
    reason = domain = ""
    violations: list[tuple[str, str]] = []
    status = rpc_status.from_call(err)  # raises if the details disagree with the call's status
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, domain = str(info.reason), str(info.domain)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.extend((str(v.field), str(v.description)) for v in bad.field_violations)
    request_id = None
    for key, value in err.trailing_metadata() or ():
        if key == "x-request-id":
            request_id = str(value)
    return RpcFailure(err.code(), err.details() or "", reason, domain, violations, request_id)


async def expect_failure(call: Awaitable[object]) -> RpcFailure:
    """Await an RPC that must fail; return its parsed status."""
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return rpc_failure(err)
    raise AssertionError("the RPC succeeded but was expected to fail")


async def ingest_all(
    stub: IngestServiceAsyncStub, spans: Sequence[span_pb2.Span], batch_size: int = 500
) -> None:
    """Ingest `spans` in batches, asserting that every span is accepted."""
    for i in range(0, len(spans), batch_size):
        batch = spans[i : i + batch_size]
        response = await stub.IngestSpans(ingest_service_pb2.IngestSpansRequest(spans=batch))
        assert not response.HasField("partial_success"), response.partial_success
        assert response.accepted_spans == len(batch)
