"""Fields spelt so that another JSON reader takes them for ones the capture reads.

Go's `encoding/json` (Ollama's OpenAI-compatible API, other Go upstreams) matches object keys to
its fields without regard to case, Unicode folding included, and the last match wins:
`{"messages": [...], "Messages": [...]}` is the second list to it, and `"me\u017f\u017fages"` (long s)
is `messages`. The capture, like Python and JavaScript upstreams, reads exact keys only. So a
request the inline check reads one way may reach a Go upstream meaning another; where a finding
could block, such a request is refused instead (`misspelt_key`).
"""

from __future__ import annotations

from typing import Final

#: The keys the request readers take text, roles, tool calls or part types from.
_READ_KEYS: Final = frozenset(
    {
        "action",
        "arguments",
        "command",
        "commands",
        "content",
        "context",
        "function",
        "function_call",
        "input",
        "instructions",
        "messages",
        "output",
        "prompt",
        "refusal",
        "role",
        "source",
        "stderr",
        "stdout",
        "suffix",
        "summary",
        "system",
        "text",
        "thinking",
        "title",
        "tool_calls",
        "type",
        "variables",
    }
)
_FOLDED: Final = frozenset(key.casefold() for key in _READ_KEYS)
#: Values that are objects of the caller's own design (JSON schemas, tool arguments, metadata):
#: their keys mean nothing to the readers and are never judged.
_OPAQUE: Final = frozenset(
    {
        "chat_template_kwargs",
        "format",
        "functions",
        "input_schema",
        "json_schema",
        "metadata",
        "parameters",
        "response_format",
        "schema",
        "tool_choice",
        "tools",
    }
)
#: Content blocks whose `input` is a tool's arguments as an object (Anthropic).
_TOOL_INPUT_BLOCKS: Final = frozenset({"tool_use", "server_tool_use", "mcp_tool_use"})
_DEPTH_MAX: Final = 32


def misspelt_key(body: object) -> str:
    """The first key of `body` (a decoded request) that is not a key the readers read but folds
    to one ("Messages", "CONTENT", a long s for an s); "" when there is none."""
    return _walk(body, 0)


def _walk(value: object, depth: int) -> str:
    if depth > _DEPTH_MAX:
        return ""
    if isinstance(value, list):
        for item in value:
            if isinstance(item, dict | list) and (found := _walk(item, depth + 1)):
                return found
        return ""
    if not isinstance(value, dict):
        return ""
    for key in value:
        if key not in _READ_KEYS and key.casefold() in _FOLDED:
            return str(key)
    kind = value.get("type")
    tool_input = isinstance(kind, str) and kind in _TOOL_INPUT_BLOCKS
    for key, item in value.items():
        if key in _OPAQUE or (tool_input and key == "input"):
            continue
        if isinstance(item, dict | list) and (found := _walk(item, depth + 1)):
            return found
    return ""
