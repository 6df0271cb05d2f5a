"""Anthropic request bodies: `POST /v1/messages`."""

from __future__ import annotations

from llmtrace.capture import model
from llmtrace.capture.jsonvalues import (
    JsonObject,
    as_bool,
    as_dict,
    as_float,
    as_int,
    as_list,
    as_str,
    to_json_text,
)
from llmtrace.capture.parts import ANTHROPIC_TOOL_CALLS, content_part, is_anthropic_tool_result, text_parts


def read_messages(body: JsonObject, request: model.ParsedRequest) -> None:
    """Fill `request` from a Messages API body.

    `tool_result` blocks (sent inside user messages) become `tool` messages of their own, before
    the rest of their user message, so that every span has the same shape whatever the provider.
    A server or MCP tool's result replayed in an assistant turn (`web_fetch_tool_result`, ...)
    becomes a `tool` message too, after the part of the turn that called it.
    """
    request.model = as_str(body.get("model"))
    params = request.parameters
    stream = as_bool(body.get("stream"))
    request.stream = bool(stream)
    params.stream = bool(stream)  # the APIs default to not streaming
    params.max_tokens = as_int(body.get("max_tokens"))
    params.temperature = as_float(body.get("temperature"))
    params.top_p = as_float(body.get("top_p"))
    params.stop = [s for s in as_list(body.get("stop_sequences")) if isinstance(s, str)]
    system = body.get("system")
    if isinstance(system, str | list) and system:
        request.messages.append(model.Message("system", text_parts(system)))
    for item in as_list(body.get("messages")):
        raw = as_dict(item)
        if raw:
            request.messages.extend(_messages(as_str(raw.get("role")), raw.get("content")))
    for item in as_list(body.get("tools")):
        tool = as_dict(item)
        if tool:
            request.tools.append(
                model.ToolDefinition(
                    # Client tools have no type; server tools (web_search_...) name theirs.
                    type=as_str(tool.get("type")) or "function",
                    name=as_str(tool.get("name")),
                    description=as_str(tool.get("description")),
                    parameters_json=to_json_text(tool.get("input_schema")),
                )
            )


def _messages(role: str, content: object) -> list[model.Message]:
    if isinstance(content, str):
        return [model.Message(role, [model.Part(model.PART_TEXT, text=content)])]
    out: list[model.Message] = []
    message = model.Message(role)
    for item in as_list(content):
        block = as_dict(item)
        kind = block.get("type")
        if kind in ANTHROPIC_TOOL_CALLS:  # server and MCP tool calls are replayed in history too
            arguments = to_json_text(block.get("input"))
            call = model.ToolCall(as_str(block.get("id")), "function", as_str(block.get("name")), arguments)
            message.tool_calls.append(call)
        elif kind == "tool_result":
            result = block.get("content")
            parts = text_parts(result) if isinstance(result, str | list) else []
            out.append(model.Message("tool", parts, tool_call_id=as_str(block.get("tool_use_id"))))
        elif is_anthropic_tool_result(kind):
            # A server or MCP tool's result replayed in the assistant turn: text from outside the
            # conversation (a fetched page), checked as tool output, not as the model's own words.
            # In the turn's order: the call and what came before it, then the result.
            if message.parts or message.tool_calls:
                out.append(message)
                message = model.Message(role)
            part = content_part(item)
            parts = [part] if part is not None else []
            out.append(model.Message("tool", parts, tool_call_id=as_str(block.get("tool_use_id"))))
        else:
            part = content_part(item)
            if part is not None:
                message.parts.append(part)
    if message.parts or message.tool_calls or not out:
        out.append(message)
    return out
