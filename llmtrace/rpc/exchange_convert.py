"""Wire messages (spans, Analyze requests) to the analyzer's `Exchange`, and findings back.

Transport, not domain logic: the security package never sees protobuf. Locations follow one
scheme wherever a finding comes from (the `Analyze` RPC or post-ingest analysis):

- `text` for the bare text of an `Analyze` request;
- `request.messages[i].content` for a message's text (`request.messages[i].content[j]`, `j` the
  part's index, when the message has several text parts);
- `request.messages[i].tool_calls[j].arguments` for tool calls replayed in the history;
- `response.choices[i]` for an answer's text (`response.choices[i].content[j]` likewise);
- `response.choices[i].tool_calls[j].arguments` for tool calls the model asked for.

Detectors may extend a location (the tool-call tier appends the argument's path).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Final

from llmtrace.api.v1 import finding_pb2, span_pb2
from llmtrace.security.exchange import Exchange, Side, Text, ToolCall
from llmtrace.security.findings import Finding, Severity

#: Request roles whose text is the operator's own instructions (kept as `system_prompts`).
SYSTEM_ROLES: Final = frozenset({"system", "developer"})


def _text_parts(message: span_pb2.Message) -> list[tuple[int, str]]:
    """(part index, text) of every part that carries text (images, audio and files do not)."""
    return [(j, part.text) for j, part in enumerate(message.parts) if part.text]


def _texts(base: str, message: span_pb2.Message, side: Side, role: str) -> Iterator[Text]:
    parts = _text_parts(message)
    if len(parts) == 1:
        yield Text(parts[0][1], f"{base}.content" if side == "request" else base, side, role)
        return
    for j, text in parts:
        yield Text(text, f"{base}.content[{j}]", side, role)


def _tool_calls(base: str, message: span_pb2.Message) -> Iterator[ToolCall]:
    for j, call in enumerate(message.tool_calls):
        if call.arguments:
            yield ToolCall(call.name, call.arguments, f"{base}.tool_calls[{j}].arguments")


def exchange_from_parts(
    *,
    text: str = "",
    request: span_pb2.LlmRequest | None = None,
    response: span_pb2.LlmResponse | None = None,
) -> Exchange:
    """The exchange of a bare text and/or a request and/or a response."""
    texts: list[Text] = []
    calls: list[ToolCall] = []
    system_prompts: list[str] = []
    if text:
        texts.append(Text(text, "text", "request", "user"))
    if request is not None:
        for i, message in enumerate(request.messages):
            base = f"request.messages[{i}]"
            role = message.role.strip().lower()
            found = list(_texts(base, message, "request", role))
            texts.extend(found)
            if role in SYSTEM_ROLES:
                system_prompts.extend(t.text for t in found)
            calls.extend(_tool_calls(base, message))
    if response is not None:
        for i, choice in enumerate(response.choices):
            base = f"response.choices[{i}]"
            role = choice.message.role.strip().lower() or "assistant"
            texts.extend(_texts(base, choice.message, "response", role))
            calls.extend(_tool_calls(base, choice.message))
    return Exchange(texts=tuple(texts), tool_calls=tuple(calls), system_prompts=tuple(system_prompts))


def exchange_from_span(span: span_pb2.Span) -> Exchange:
    """The exchange of a stored span: its request messages and its response choices."""
    return exchange_from_parts(request=span.request, response=span.response)


def content_chars(messages: Iterable[span_pb2.Message]) -> int:
    """Characters of analysable content (text parts and tool-call arguments) in `messages`."""
    return sum(
        sum(len(part.text) for part in message.parts)
        + sum(len(call.arguments) for call in message.tool_calls)
        for message in messages
    )


def content_items(messages: Iterable[span_pb2.Message]) -> int:
    """Content parts and tool calls in `messages`: each is analysed as a text of its own."""
    return sum(len(message.parts) + len(message.tool_calls) for message in messages)


#: The one mapping between domain severities and the wire enum (core and shim both use it).
SEVERITY_TO_PB: Final[dict[Severity, finding_pb2.Severity.ValueType]] = {
    Severity.INFO: finding_pb2.SEVERITY_INFO,
    Severity.LOW: finding_pb2.SEVERITY_LOW,
    Severity.MEDIUM: finding_pb2.SEVERITY_MEDIUM,
    Severity.HIGH: finding_pb2.SEVERITY_HIGH,
    Severity.CRITICAL: finding_pb2.SEVERITY_CRITICAL,
}
_SEVERITY_FROM_PB: Final = {wire: domain for domain, wire in SEVERITY_TO_PB.items()}


def finding_from_pb(finding: finding_pb2.Finding) -> Finding:
    """The domain form of a wire finding; an unset severity reads as info, confidence is clamped."""
    return Finding(
        type=finding.type,
        severity=_SEVERITY_FROM_PB.get(finding.severity, Severity.INFO),
        confidence=min(max(finding.confidence, 0.0), 1.0),
        detector=finding.detector,
        location=finding.location,
        excerpt=finding.excerpt,
        description=finding.description,
    )


def finding_to_pb(finding: Finding) -> finding_pb2.Finding:
    """The wire form of a domain finding (no id, span ids, tenant or time: not stored)."""
    return finding_pb2.Finding(
        type=finding.type,
        severity=SEVERITY_TO_PB[finding.severity],
        confidence=finding.confidence,
        detector=finding.detector,
        location=finding.location,
        description=finding.description,
        excerpt=finding.excerpt,
    )


def findings_to_pb(findings: Sequence[Finding]) -> list[finding_pb2.Finding]:
    """`finding_to_pb` over a sequence, order kept."""
    return [finding_to_pb(f) for f in findings]
