"""Content parts and tool calls in the shapes OpenAI and Anthropic use, read into `model` types."""

from __future__ import annotations

from typing import Any

from llmtrace.capture import model
from llmtrace.capture.jsonvalues import as_dict, as_list, as_str, first_given, to_json_text

# Part types that carry text, by their name in any of the three APIs.
_TEXT_TYPES = frozenset({"text", "input_text", "output_text", "summary_text"})

#: Anthropic content blocks that call a tool with an `input` object: the client's own tools, the
#: server tools (web search, web fetch, code execution) and the MCP connector's tools.
ANTHROPIC_TOOL_CALLS = frozenset({"tool_use", "server_tool_use", "mcp_tool_use"})


def is_anthropic_tool_result(kind: object) -> bool:
    """Whether an Anthropic content block holds what a tool returned: the client's `tool_result`
    and the server and MCP tools' results (`web_fetch_tool_result`, `mcp_tool_result`, ...), whose
    text came from outside the conversation (a fetched page, a search, an MCP server)."""
    return isinstance(kind, str) and kind.endswith("tool_result")


def image_part(url: str, mime: str = "") -> model.Part:
    """An image part; inline `data:` URIs are not stored (span.proto), only their MIME type."""
    if url.startswith("data:"):
        return model.Part(model.PART_IMAGE, mime=mime or url[5:].partition(";")[0].partition(",")[0])
    return model.Part(model.PART_IMAGE, uri=url, mime=mime)


def text_parts(content: object) -> list[model.Part]:
    """Parts of a `content` value: a plain string is one text part; arrays hold typed parts."""
    if isinstance(content, str):
        return [model.Part(model.PART_TEXT, text=content)]
    return [part for item in as_list(content) if (part := content_part(item)) is not None]


def content_part(item: object) -> model.Part | None:
    """One part of an OpenAI (chat or Responses) or Anthropic content array; None when not a part."""
    if isinstance(item, str):
        return model.Part(model.PART_TEXT, text=item)
    part = as_dict(item)
    if not part:
        return None
    kind = as_str(part.get("type"))
    if kind in _TEXT_TYPES:
        return model.Part(model.PART_TEXT, text=as_str(part.get("text")))
    if kind == "refusal":
        return model.Part(model.PART_REFUSAL, text=as_str(part.get("refusal")) or as_str(part.get("text")))
    if kind in ("thinking", "reasoning"):
        return model.Part(model.PART_REASONING, text=as_str(part.get("thinking")) or as_str(part.get("text")))
    if kind == "image_url":  # chat completions: {"image_url": {"url": ...}} or a bare string
        url = part.get("image_url")
        return image_part(url if isinstance(url, str) else as_str(as_dict(url).get("url")))
    if kind == "input_image":  # Responses API
        return image_part(as_str(part.get("image_url")) or as_str(part.get("file_id")))
    if kind in ("image", "document"):  # Anthropic: a `source` of base64, url or file
        found = _anthropic_source(kind, as_dict(part.get("source")))
        # A document's title and context are given to the model with it: they are read too.
        told = [text for key in ("title", "context") if (text := as_str(part.get(key)))]
        if told:
            found.text = "\n".join([*told, found.text] if found.text else told)
        return found
    if kind == "input_audio":
        audio = as_dict(part.get("input_audio")) or part
        audio_format = as_str(audio.get("format"))
        return model.Part(model.PART_AUDIO, mime=f"audio/{audio_format}" if audio_format else "")
    if kind in ("file", "input_file"):
        file = as_dict(part.get("file")) or part
        uri = as_str(file.get("file_id")) or as_str(file.get("file_url")) or as_str(file.get("filename"))
        return model.Part(model.PART_FILE, uri=uri)
    # A type not modelled (a search result, a shell call's output, ...): the text inside it, which
    # the model reads, is kept and checked like any other.
    return model.Part(model.PART_OTHER, mime=kind, text=nested_text(part))


#: The fields of an unmodelled part whose strings a model reads (never `data`: base64 payloads);
#: `stdout` and `stderr` are a Responses `shell_call_output`'s.
_TEXT_FIELDS = ("title", "text", "content", "output", "stdout", "stderr")
_NESTING_MAX = 16


def nested_text(value: object, depth: int = 0) -> str:
    """The strings under the text-bearing fields of `value` (parts nest in parts), one per line."""
    if isinstance(value, str):
        return value
    if depth >= _NESTING_MAX:
        return ""
    if isinstance(value, list):
        return "\n".join(text for item in value if (text := nested_text(item, depth + 1)))
    if not isinstance(value, dict):
        return ""
    texts = [text for key in _TEXT_FIELDS if key in value and (text := nested_text(value[key], depth + 1))]
    # A document nested in a block (a page Anthropic's web fetch returned): a plain-text source's
    # `data` is its text, and a content source's blocks hold it; other sources are base64.
    source = value.get("source")
    if isinstance(source, dict) and source.get("type") in ("text", "content"):
        text = as_str(source.get("data")) if source.get("type") == "text" else ""
        text = text or nested_text(source.get("content"), depth + 1)
        if text:
            texts.append(text)
    return "\n".join(texts)


def _anthropic_source(kind: str, source: dict[str, Any]) -> model.Part:
    part_type = model.PART_IMAGE if kind == "image" else model.PART_FILE
    uri = as_str(source.get("url")) or as_str(source.get("file_id"))
    mime = as_str(source.get("media_type"))
    if source.get("type") == "text":  # a plain-text document: its text is content
        return model.Part(model.PART_TEXT, text=as_str(source.get("data")))
    if source.get("type") == "content":  # a document of content blocks
        return model.Part(model.PART_TEXT, text=nested_text(source.get("content")))
    return model.Part(part_type, uri=uri, mime=mime)


def openai_tool_calls(value: object) -> list[model.ToolCall]:
    """Tool calls of a chat completions assistant message (`tool_calls` array)."""
    calls: list[model.ToolCall] = []
    for item in as_list(value):
        call = as_dict(item)
        if not call:
            continue
        function = as_dict(call.get("function")) or as_dict(call.get("custom"))
        calls.append(
            model.ToolCall(
                id=as_str(call.get("id")),
                type=as_str(call.get("type")) or "function",
                name=as_str(function.get("name")),
                arguments=to_json_text(first_given(function, "arguments", "input")),
            )
        )
    return calls


def legacy_function_call(value: object) -> list[model.ToolCall]:
    """The legacy `function_call` object as a one-element tool call list (empty when absent)."""
    call = as_dict(value)
    if not call:
        return []
    return [model.ToolCall(name=as_str(call.get("name")), arguments=to_json_text(call.get("arguments")))]
