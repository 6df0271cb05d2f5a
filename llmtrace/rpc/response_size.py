"""Responses that a client can read: pages cut to a size, not only to a count.

gRPC clients refuse messages over their receive limit, 4 MiB unless raised, and the core
refuses to send any over `grpc.max_message_bytes`. A page of full spans (prompts and answers,
up to a mebibyte each) passes both long before `page_size` is reached: such a page used to fail
whole, with no token to get past it. Pages are cut where they would pass `PAGE_BYTES` instead,
and go on from there with their token.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.protobuf.message import Message

from llmtrace.rpc.errors import RpcError

#: Room in a response for what is not in its list: a page token, a trace's summary, SQL columns.
RESPONSE_HEADROOM = 64 * 1024
#: What a page holds at most: gRPC's default receive limit, less that room.
PAGE_BYTES = 4 * 1024 * 1024 - RESPONSE_HEADROOM


def fitting(items: Sequence[Message], max_bytes: int) -> int:
    """How many of `items`, from the first, fit in `max_bytes` as a repeated field."""
    total = 0
    for count, item in enumerate(items):
        size = item.ByteSize()
        total += size + 1 + _varint_bytes(size)  # field tag and length
        if total > max_bytes:
            return count
    return len(items)


def page_length(items: Sequence[Message], max_message_bytes: int, what: str) -> int:
    """How many of `items` go in one page: those within `PAGE_BYTES`, at least the first, which
    alone may take up to the core's `max_message_bytes` (its reader raises its receive limit)."""
    count = fitting(items, min(PAGE_BYTES, max_message_bytes))
    if count or not items:
        return count
    if fitting(items[:1], max_message_bytes - RESPONSE_HEADROOM):
        return 1
    raise too_large(what, items[0].ByteSize(), max_message_bytes)


def too_large(what: str, size: int, max_message_bytes: int) -> RpcError:
    """RESOURCE_EXHAUSTED for one item larger than any response may be."""
    return RpcError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"{what} is {size} bytes, more than a response may hold (grpc.max_message_bytes "
        f"{max_message_bytes}); read it with the basic view, or raise the limit",
        reason="RESPONSE_TOO_LARGE",
    )


def _varint_bytes(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)
