"""Message content as JSON text, both ways.

Stored in the `request_messages`, `request_tools` and `response_choices` columns in a shape close
to the OpenTelemetry GenAI `gen_ai.input.messages` / `gen_ai.output.messages` JSON:
`{"role": "user", "parts": [{"type": "text", "content": "..."}]}`. Tool calls are parts of type
`tool_call`. Only non-empty keys are written, which keeps rows small.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from llmtrace.api.v1 import span_pb2

_PART_TYPE_NAMES = {
    span_pb2.CONTENT_PART_TYPE_UNSPECIFIED: "text",
    span_pb2.CONTENT_PART_TYPE_TEXT: "text",
    span_pb2.CONTENT_PART_TYPE_IMAGE: "image",
    span_pb2.CONTENT_PART_TYPE_AUDIO: "audio",
    span_pb2.CONTENT_PART_TYPE_FILE: "file",
    span_pb2.CONTENT_PART_TYPE_REFUSAL: "refusal",
    span_pb2.CONTENT_PART_TYPE_REASONING: "reasoning",
    span_pb2.CONTENT_PART_TYPE_OTHER: "other",
}
_PART_TYPES = {name: value for value, name in _PART_TYPE_NAMES.items() if value}
_TEXT_KINDS = frozenset({span_pb2.CONTENT_PART_TYPE_TEXT, span_pb2.CONTENT_PART_TYPE_UNSPECIFIED})


def dumps(value: Any) -> str:
    """Compact JSON text, non-ASCII kept as is (orjson: several times faster than json here)."""
    return orjson.dumps(value).decode()


def _message_dict(message: span_pb2.Message) -> dict[str, Any]:
    parts: list[dict[str, Any]] = []
    for part in message.parts:
        kind = part.type
        if kind in _TEXT_KINDS and not part.uri and not part.mime_type:
            parts.append({"type": "text", "content": part.text})
            continue
        entry: dict[str, Any] = {"type": _PART_TYPE_NAMES.get(kind, "other")}
        if part.text:
            entry["content"] = part.text
        if part.uri:
            entry["uri"] = part.uri
        if part.mime_type:
            entry["mime_type"] = part.mime_type
        parts.append(entry)
    for call in message.tool_calls:
        parts.append(
            {
                "type": "tool_call",
                "id": call.id,
                "name": call.name,
                "arguments": call.arguments,
                "call_type": call.type,
            }
        )
    out: dict[str, Any] = {"role": message.role, "parts": parts}
    if message.name:
        out["name"] = message.name
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    return out


def encode_messages(messages: Iterable[span_pb2.Message]) -> str:
    """JSON array of input messages."""
    return dumps([_message_dict(m) for m in messages])


def encode_choices(choices: Iterable[span_pb2.Choice]) -> str:
    """JSON array of output messages, one per choice, with index and finish reason."""
    out = []
    for choice in choices:
        entry = _message_dict(choice.message)
        entry["index"] = choice.index
        if choice.finish_reason:
            entry["finish_reason"] = choice.finish_reason
        out.append(entry)
    return dumps(out)


def encode_tools(tools: Iterable[span_pb2.ToolDefinition]) -> str:
    """JSON array of tool definitions (`parameters` kept as the JSON text it arrived as)."""
    return dumps(
        [
            {
                "type": t.type,
                "name": t.name,
                "description": t.description,
                "parameters": t.parameters_json,
            }
            for t in tools
        ]
    )


def _fill_message(target: span_pb2.Message, data: dict[str, Any]) -> None:
    target.role = str(data.get("role", ""))
    target.name = str(data.get("name", ""))
    target.tool_call_id = str(data.get("tool_call_id", ""))
    for part in data.get("parts", []):
        kind = part.get("type", "text")
        if kind == "tool_call":
            target.tool_calls.add(
                id=str(part.get("id", "")),
                type=str(part.get("call_type", "")),
                name=str(part.get("name", "")),
                arguments=str(part.get("arguments", "")),
            )
            continue
        target.parts.add(
            type=_PART_TYPES.get(kind, span_pb2.CONTENT_PART_TYPE_OTHER),
            text=str(part.get("content", "")),
            uri=str(part.get("uri", "")),
            mime_type=str(part.get("mime_type", "")),
        )


def decode_messages(text: str, target: Any) -> None:
    """Append the messages in JSON `text` to a repeated Message field."""
    for data in orjson.loads(text or "[]"):
        _fill_message(target.add(), data)


def decode_choices(text: str, target: Any) -> None:
    """Append the choices in JSON `text` to a repeated Choice field."""
    for data in orjson.loads(text or "[]"):
        choice = target.add(index=int(data.get("index", 0)), finish_reason=data.get("finish_reason", ""))
        _fill_message(choice.message, data)


def decode_tools(text: str, target: Any) -> None:
    """Append the tool definitions in JSON `text` to a repeated ToolDefinition field."""
    for data in orjson.loads(text or "[]"):
        target.add(
            type=str(data.get("type", "")),
            name=str(data.get("name", "")),
            description=str(data.get("description", "")),
            parameters_json=str(data.get("parameters", "")),
        )
