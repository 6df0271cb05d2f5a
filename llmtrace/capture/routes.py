"""Which API a request path belongs to, whatever prefix the upstream URL adds in front."""

from __future__ import annotations

import posixpath
from typing import NamedTuple
from urllib.parse import unquote

from llmtrace.capture import model


class Route(NamedTuple):
    """The wire format, GenAI operation and provider of a path."""

    api: str
    operation: str
    provider: str


# Checked in order: `/chat/completions` must win over `/completions`. Anthropic's path is matched
# with its `/v1` because OpenAI's Assistants API also has paths ending in `/messages`.
_SUFFIXES: tuple[tuple[str, Route], ...] = (
    ("/chat/completions", Route(model.API_CHAT_COMPLETIONS, model.OP_CHAT, model.PROVIDER_OPENAI)),
    ("/completions", Route(model.API_COMPLETIONS, model.OP_TEXT_COMPLETION, model.PROVIDER_OPENAI)),
    ("/embeddings", Route(model.API_EMBEDDINGS, model.OP_EMBEDDINGS, model.PROVIDER_OPENAI)),
    ("/responses", Route(model.API_RESPONSES, model.OP_CHAT, model.PROVIDER_OPENAI)),
    ("/models", Route(model.API_MODELS, model.OP_LIST_MODELS, model.PROVIDER_OPENAI)),
    ("/v1/messages", Route(model.API_MESSAGES, model.OP_CHAT, model.PROVIDER_ANTHROPIC)),
)


def route_of(path: str) -> Route:
    """The route of `path` (query string and trailing slash ignored).

    The path is read as upstreams route it: percent-decoded, with `.` and `..` segments resolved
    (Starlette, Go's and aiohttp's routers all take `/v1/chat/completion%73` for
    `/v1/chat/completions`), so that no spelling of a route passes its checks unread. It is
    forwarded as it came.

    Unknown paths get an empty api and operation; their provider is `anthropic` when the path
    says so (e.g. `/v1/messages/count_tokens`), else `openai`, the format most upstreams speak.
    """
    clean = path.partition("?")[0]
    if "%" in clean or "/." in clean or "//" in clean:  # rare: most paths are read as they are
        clean = posixpath.normpath(unquote(clean))
    clean = clean.rstrip("/")
    for suffix, found in _SUFFIXES:
        if clean.endswith(suffix):
            return found
    lowered = clean.lower()
    anthropic = "anthropic" in lowered or "/v1/messages/" in lowered
    provider = model.PROVIDER_ANTHROPIC if anthropic else model.PROVIDER_OPENAI
    return Route(model.API_UNKNOWN, "", provider)
