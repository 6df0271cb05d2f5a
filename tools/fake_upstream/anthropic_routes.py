"""Anthropic Messages API route."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tools.fake_upstream import answers
from tools.fake_upstream.exchange import EXCHANGE, BadRequestError, stream_events


async def messages(request: web.Request) -> web.StreamResponse:
    """POST /v1/messages: echo the last user message as one text block."""
    exchange = request[EXCHANGE]
    body = exchange.body
    history = body.get("messages")
    if not isinstance(history, list):
        raise BadRequestError("messages: field required")
    text = answers.echo(answers.last_user_text(history))
    input_tokens = answers.count_prompt_tokens(history)
    output_tokens = answers.count_tokens(text)
    message: dict[str, Any] = {
        "id": f"msg_fake{exchange.number:010d}",
        "type": "message",
        "role": "assistant",
        "model": exchange.model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }
    if not exchange.stream:
        return web.json_response(message)

    start = {
        **message,
        "content": [],
        "stop_reason": None,
        "usage": {**message["usage"], "output_tokens": 1},
    }
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": start},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    ]
    events += [
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}
        for piece in answers.split_pieces(text)
    ]
    events += [
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": output_tokens},
        },
        {"type": "message_stop"},
    ]
    return await stream_events(request, [(e["type"], e) for e in events], done_marker=False)
