"""Type-checked reads of decoded JSON: every getter returns a safe default for a wrong type.

Capture parses bodies written by arbitrary clients and upstreams; a wrong type anywhere must
lose that one value, never raise.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_SURROGATE = re.compile("[\ud800-\udfff]")

JsonObject = dict[str, Any]


def as_dict(value: object) -> JsonObject:
    """`value` when it is a JSON object, else an empty dict."""
    return value if isinstance(value, dict) else {}


def as_list(value: object) -> list[Any]:
    """`value` when it is a JSON array, else an empty list."""
    return value if isinstance(value, list) else []


def as_str(value: object) -> str:
    """`value` when it is a string, else an empty string."""
    return value if isinstance(value, str) else ""


def as_int(value: object) -> int | None:
    """`value` as an int64 when it is an integral number (not a bool), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            return None
        value = int(value)
    if isinstance(value, int) and _INT64_MIN <= value <= _INT64_MAX:
        return value
    return None


def first_given(obj: dict[str, Any], *keys: str) -> object:
    """The value of the first of `keys` that `obj` holds other than null (None when none does):
    a server that writes every field sends `"max_completion_tokens": null` beside `max_tokens`."""
    for key in keys:
        value = obj.get(key)
        if value is not None:
            return value
    return None


def as_count(value: object) -> int:
    """`value` as a non-negative count (token counts), 0 when absent or invalid."""
    number = as_int(value)
    return number if number is not None and number > 0 else 0


def as_float(value: object) -> float | None:
    """`value` as a finite float when it is a number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def as_bool(value: object) -> bool | None:
    """`value` when it is a boolean, else None."""
    return value if isinstance(value, bool) else None


def to_json_text(value: object) -> str:
    """`value` as compact JSON text (strings stay as they are: tool arguments often are JSON text)."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    try:
        return orjson.dumps(value).decode()
    except (TypeError, orjson.JSONEncodeError):
        pass
    # orjson writes at most 254 levels of nesting (it reads 1024) and no integer past 64 bits
    # (which the standard library's reader, `loads`' fallback, gives): the standard library's
    # writer, compact as orjson's, keeps such values rather than losing the whole text (lone
    # surrogates, which orjson refuses too, made valid for protobuf).
    try:
        return _clean(json.dumps(value, ensure_ascii=False, separators=(",", ":")))
    except (TypeError, ValueError, RecursionError):
        return ""


def loads(data: bytes | str) -> object | None:
    """Decoded JSON, or None when `data` is not valid JSON (None is also what `null` decodes to).

    orjson refuses some JSON other parsers (and so the upstream) accept: escaped lone surrogates
    (`"\\ud800"`), numbers that overflow a double, bytes that are not UTF-8. A body the fast
    parser refuses is read again by the standard library's, with U+FFFD for bytes that are not
    UTF-8 and for lone surrogates in its strings: a client must not slip a request past the inline
    check with one odd escape or byte, and the texts must stay encodable (protobuf, UTF-8).
    """
    try:
        value: object = orjson.loads(data)
        return value
    except orjson.JSONDecodeError:
        pass
    if isinstance(data, bytes):
        # Read as Python's json reads bytes (what many upstreams run): a byte-order mark, UTF-16
        # or UTF-32 told by its zero bytes. Bytes that are not valid in it (a stray byte in one
        # delta) are read with U+FFFD in their place, rather than losing the whole value.
        data = data.decode(json.detect_encoding(data), "replace")
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
        return None
    return _without_surrogates(value)


def _clean(text: str) -> str:
    return _SURROGATE.sub("\ufffd", text) if _SURROGATE.search(text) else text


def _without_surrogates(value: object) -> object:
    """`value` with lone surrogates in every string (keys too) replaced by U+FFFD, in place where
    possible; iterative, so depth is never a problem."""
    if isinstance(value, str):
        return _clean(value)
    stack: list[object] = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            items = list(node.items())
            node.clear()
            for key, item in items:
                node[_clean(key)] = _clean(item) if isinstance(item, str) else item
                if isinstance(item, dict | list):
                    stack.append(item)
        elif isinstance(node, list):
            for i, item in enumerate(node):
                if isinstance(item, str):
                    node[i] = _clean(item)
                elif isinstance(item, dict | list):
                    stack.append(item)
    return value
