"""OpenAI request bodies: chat completions, legacy completions, embeddings and the Responses API.

Each reader fills a `ParsedRequest` from a decoded JSON object; wrong types lose the value only.
"""

from __future__ import annotations

from typing import Any

from llmtrace.capture import model
from llmtrace.capture.jsonvalues import (
    JsonObject,
    as_bool,
    as_dict,
    as_float,
    as_int,
    as_list,
    as_str,
    first_given,
    to_json_text,
)
from llmtrace.capture.parts import content_part, legacy_function_call, openai_tool_calls, text_parts


def read_chat(body: JsonObject, request: model.ParsedRequest) -> None:
    """`POST /v1/chat/completions`."""
    _common(body, request)
    params = request.parameters
    params.max_tokens = as_int(first_given(body, "max_completion_tokens", "max_tokens"))
    params.output_type = _output_type(as_dict(body.get("response_format")).get("type"))
    for item in as_list(body.get("messages")):
        raw = as_dict(item)
        if not raw:
            continue
        message = model.Message(
            role=as_str(raw.get("role")),
            parts=text_parts(raw.get("content")),
            name=as_str(raw.get("name")),
            tool_call_id=as_str(raw.get("tool_call_id")),
            tool_calls=(
                openai_tool_calls(raw.get("tool_calls")) or legacy_function_call(raw.get("function_call"))
            ),
        )
        refusal = raw.get("refusal")
        if isinstance(refusal, str) and refusal:
            message.parts.append(model.Part(model.PART_REFUSAL, text=refusal))
        request.messages.append(message)
    for item in as_list(body.get("tools")):
        tool = as_dict(item)
        if tool:
            spec = as_dict(tool.get("function")) or as_dict(tool.get("custom"))
            request.tools.append(_tool(as_str(tool.get("type")) or "function", spec))
    for item in as_list(body.get("functions")):  # the legacy form of `tools`
        spec = as_dict(item)
        if spec:
            request.tools.append(_tool("function", spec))


def read_completions(body: JsonObject, request: model.ParsedRequest) -> None:
    """`POST /v1/completions` (legacy): each prompt string becomes a user message."""
    _common(body, request)
    request.parameters.max_tokens = as_int(body.get("max_tokens"))
    texts, token_ids = _texts_and_token_ids(body.get("prompt"))
    suffix = body.get("suffix")  # the text after the insertion point: the model reads it too
    if isinstance(suffix, str) and suffix:
        texts.append(suffix)
    request.messages.extend(model.Message("user", [model.Part(model.PART_TEXT, text=t)]) for t in texts)
    request.token_id_count = token_ids


def read_embeddings(body: JsonObject, request: model.ParsedRequest) -> None:
    """`POST /v1/embeddings`: one user message whose parts are the input strings, in order.

    Inputs given as token ids are counted (`token_id_count`), never stored.
    """
    request.model = as_str(body.get("model"))
    texts, token_ids = _texts_and_token_ids(body.get("input"))
    if texts:
        request.messages.append(model.Message("user", [model.Part(model.PART_TEXT, text=t) for t in texts]))
    request.token_id_count = token_ids


def read_responses(body: JsonObject, request: model.ParsedRequest) -> None:
    """`POST /v1/responses`: `instructions` become a system message, then the input items."""
    _common(body, request)
    params = request.parameters
    params.max_tokens = as_int(body.get("max_output_tokens"))
    params.output_type = _output_type(as_dict(as_dict(body.get("text")).get("format")).get("type"))
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        request.messages.append(model.Message("system", [model.Part(model.PART_TEXT, text=instructions)]))
    # A stored prompt's variables are put into it: the model reads them as it reads the input.
    variables = [content_part(v) for v in as_dict(as_dict(body.get("prompt")).get("variables")).values()]
    if any(variables):
        request.messages.append(model.Message("user", [part for part in variables if part is not None]))
    items = body.get("input")
    if isinstance(items, str):
        request.messages.append(model.Message("user", [model.Part(model.PART_TEXT, text=items)]))
    for item in as_list(items):
        message = response_item(item)
        if message is None:
            continue
        if as_dict(item).get("type") == "mcp_call" and any(part.text for part in message.parts):
            # What the MCP server returned is tool output the model reads next (an inbox, a page):
            # checked as a tool message, as a `function_call_output` is, not as the model's words.
            request.messages.append(model.Message("assistant", tool_calls=message.tool_calls))
            call_id = message.tool_calls[0].id if message.tool_calls else ""
            request.messages.append(model.Message("tool", message.parts, tool_call_id=call_id))
        else:
            request.messages.append(message)
    for entry in as_list(body.get("tools")):
        tool = as_dict(entry)
        if tool:
            kind = as_str(tool.get("type")) or "function"
            # Built-in tools (web_search, file_search, ...) have no name: their type names them.
            spec = tool if tool.get("name") else {**tool, "name": kind}
            request.tools.append(_tool(kind, spec))


def response_item(value: object) -> model.Message | None:
    """One Responses API item (input or output) as a message; None when it is not an item."""
    item = as_dict(value)
    if not item:
        return None
    kind = as_str(item.get("type")) or "message"
    if kind == "message":
        return model.Message(as_str(item.get("role")) or "user", text_parts(item.get("content")))
    if kind in ("function_call", "custom_tool_call"):
        arguments = to_json_text(first_given(item, "arguments", "input"))
        call = model.ToolCall(as_str(item.get("call_id")), "function", as_str(item.get("name")), arguments)
        return model.Message("assistant", tool_calls=[call])
    if kind in _SHELL_CALLS:  # a replayed shell command: checked like a function's arguments
        action = to_json_text(item.get("action"))
        call = model.ToolCall(as_str(item.get("call_id")), kind, _SHELL_CALLS[kind], action)
        return model.Message("assistant", tool_calls=[call])
    if kind == "mcp_call":  # the call, and the output the model was given (read as a part)
        arguments = to_json_text(item.get("arguments"))
        call = model.ToolCall(as_str(item.get("id")), kind, as_str(item.get("name")), arguments)
        output = content_part(item)
        return model.Message("assistant", [output] if output else [], tool_calls=[call])
    if kind in ("function_call_output", "custom_tool_call_output"):
        output = item.get("output")
        parts = text_parts(output) if isinstance(output, str | list) else []
        return model.Message("tool", parts, tool_call_id=as_str(item.get("call_id")))
    if kind == "reasoning":
        # The summary as one part (lines joined), then the reasoning itself where the model gives
        # it (`reasoning_text` content: open-weight models), a part each, as the stream reader
        # (`stream_responses`) makes them.
        summary = [as_str(as_dict(s).get("text")) for s in as_list(item.get("summary"))]
        parts = [model.Part(model.PART_REASONING, text="\n".join(summary))]
        content = [as_str(as_dict(c).get("text")) for c in as_list(item.get("content"))]
        if content and not summary:
            parts = []
        parts += [model.Part(model.PART_REASONING, text=text) for text in content]
        return model.Message("assistant", parts)
    part = content_part(item)  # a bare part, or an item type we do not model (web search call, ...)
    return model.Message(as_str(item.get("role")) or "user", [part] if part else [])


#: Responses items that run a shell command, and the tool name their calls are recorded under.
_SHELL_CALLS = {"local_shell_call": "local_shell", "shell_call": "shell"}


def _common(body: JsonObject, request: model.ParsedRequest) -> None:
    request.model = as_str(body.get("model"))
    params = request.parameters
    stream = as_bool(body.get("stream"))
    request.stream = bool(stream)
    params.stream = bool(stream)  # the APIs default to not streaming
    request.include_usage = as_bool(as_dict(body.get("stream_options")).get("include_usage")) is True
    params.temperature = as_float(body.get("temperature"))
    params.top_p = as_float(body.get("top_p"))
    params.frequency_penalty = as_float(body.get("frequency_penalty"))
    params.presence_penalty = as_float(body.get("presence_penalty"))
    params.seed = as_int(body.get("seed"))
    params.choice_count = as_int(body.get("n"))
    stop = body.get("stop")
    params.stop = [stop] if isinstance(stop, str) else [s for s in as_list(stop) if isinstance(s, str)]


def _tool(kind: str, spec: dict[str, Any]) -> model.ToolDefinition:
    schema = first_given(spec, "parameters", "format")
    return model.ToolDefinition(
        type=kind,
        name=as_str(spec.get("name")),
        description=as_str(spec.get("description")),
        parameters_json=to_json_text(schema),
    )


def _output_type(kind: object) -> str:
    if kind in ("json_object", "json_schema"):
        return "json"
    return kind if isinstance(kind, str) else ""


def _texts_and_token_ids(value: object) -> tuple[list[str], int]:
    """Strings of a prompt or input (string, list of strings) and the count of token ids in it."""
    if isinstance(value, str):
        return [value], 0
    texts: list[str] = []
    token_ids = 0
    for item in as_list(value):
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, int):
            token_ids += 1  # one flat array of token ids
        elif isinstance(item, list):
            token_ids += len(item)  # a batch of token id arrays
    return texts, token_ids
