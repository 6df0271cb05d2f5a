"""Deterministic answers: what the fake model says and how many tokens it counts."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import struct
from typing import Any

WEATHER_TOOL = "get_weather"
WEATHER_ARGUMENTS = {"location": "Paris", "unit": "celsius"}
"""Arguments of the tool call made to any question about the weather."""

_WEATHER = re.compile(r"\bweather\b", re.IGNORECASE)
_PIECES = re.compile(r"\S+\s*|\s+")


def content_text(content: object) -> str:
    """Text of a message `content`: a string or a list of text parts (OpenAI or Anthropic)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") in ("text", "input_text", "output_text")
        ]
        return "".join(texts)
    return ""


def last_user_text(messages: object) -> str:
    """Text of the last `role: user` message (or of a bare string input)."""
    if isinstance(messages, str):
        return messages
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role", "user") == "user":
            return content_text(message.get("content"))
    return ""


def echo(text: str) -> str:
    """The answer to `text`."""
    return f"Echo: {text}"


def wants_weather_tool(body: dict[str, Any], user_text: str) -> bool:
    """Whether to answer with a `get_weather` tool call rather than text."""
    return bool(body.get("tools")) and _WEATHER.search(user_text) is not None


def weather_arguments() -> str:
    """The JSON arguments of the weather tool call."""
    return json.dumps(WEATHER_ARGUMENTS)


def split_pieces(text: str) -> list[str]:
    """`text` cut into word-sized pieces that join back to it (at least one piece)."""
    return _PIECES.findall(text) or [text]


def split_fixed(text: str, size: int) -> list[str]:
    """`text` cut into pieces of `size` characters."""
    return [text[i : i + size] for i in range(0, len(text), size)] or [text]


def count_tokens(text: str) -> int:
    """A stand-in tokenizer: one token per word-sized piece."""
    return len(_PIECES.findall(text))


def count_prompt_tokens(messages: object) -> int:
    """Prompt tokens of a message list (or string): words plus 3 per message, as chat formats add."""
    if isinstance(messages, str):
        return count_tokens(messages)
    if not isinstance(messages, list):
        return 0
    total = 0
    for message in messages:
        if isinstance(message, dict):
            total += 3 + count_tokens(content_text(message.get("content")))
    return total


def embedding(text: str, dimensions: int) -> list[float]:
    """A unit-length vector derived from a hash of `text`."""
    values: list[float] = []
    counter = 0
    while len(values) < dimensions:
        digest = hashlib.sha256(f"{counter}:{text}".encode()).digest()
        values.extend((byte - 127.5) / 127.5 for byte in digest)
        counter += 1
    vector = values[:dimensions]
    norm = sum(v * v for v in vector) ** 0.5 or 1.0
    return [v / norm for v in vector]


def embedding_base64(vector: list[float]) -> str:
    """`vector` as OpenAI's `encoding_format: base64` sends it: little-endian float32."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
