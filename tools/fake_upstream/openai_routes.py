"""OpenAI-compatible routes: chat completions, legacy completions, embeddings, models, responses."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from tools.fake_upstream import answers
from tools.fake_upstream.exchange import EXCHANGE, BadRequestError, Exchange, stream_events

FINGERPRINT = "fp_fake_upstream"


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


def _chat_usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """POST /v1/chat/completions: echo the last user message, or call `get_weather`."""
    exchange = request[EXCHANGE]
    body = exchange.body
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise BadRequestError("'messages' must be a list")
    user_text = answers.last_user_text(messages)
    model = exchange.model + exchange.config.model_suffix
    completion_id = f"chatcmpl-fake{exchange.number:010d}"
    created = int(time.time())
    prompt_tokens = answers.count_prompt_tokens(messages)

    tool_call = answers.wants_weather_tool(body, user_text)
    call_id = f"call_fake{exchange.number:010d}"
    arguments = answers.weather_arguments()
    text = answers.echo(user_text)
    finish_reason = "tool_calls" if tool_call else "stop"
    usage = _chat_usage(prompt_tokens, answers.count_tokens(arguments if tool_call else text))

    if not exchange.stream:
        message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
        if tool_call:
            message["content"] = None
            message["tool_calls"] = [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": answers.WEATHER_TOOL, "arguments": arguments},
                }
            ]
        return web.json_response(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
                ],
                "usage": usage,
                "service_tier": "default",
                "system_fingerprint": FINGERPRINT,
            }
        )

    include_usage = _include_usage(body)

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": FINGERPRINT,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if include_usage:
            payload["usage"] = None
        return payload

    chunks: list[dict[str, Any]]
    if tool_call:
        first_call = {
            "index": 0,
            "id": call_id,
            "type": "function",
            "function": {"name": answers.WEATHER_TOOL, "arguments": ""},
        }
        chunks = [chunk({"role": "assistant", "content": None, "tool_calls": [first_call]})]
        chunks += [
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
            for piece in answers.split_fixed(arguments, 8)
        ]
    else:
        chunks = [chunk({"role": "assistant", "content": "", "refusal": None})]
        chunks += [chunk({"content": piece}) for piece in answers.split_pieces(text)]
    chunks.append(chunk({}, finish_reason))
    if include_usage:
        usage_chunk = chunk({})
        usage_chunk["choices"] = []
        usage_chunk["usage"] = usage
        chunks.append(usage_chunk)
    return await stream_events(request, [(None, c) for c in chunks], done_marker=True)


async def completions(request: web.Request) -> web.StreamResponse:
    """POST /v1/completions (legacy): echo the prompt."""
    exchange = request[EXCHANGE]
    body = exchange.body
    prompt = body.get("prompt", "")
    if isinstance(prompt, list):
        prompt = next((p for p in prompt if isinstance(p, str)), "")
    if not isinstance(prompt, str):
        raise BadRequestError("'prompt' must be a string or a list of strings")
    text = answers.echo(prompt)
    model = exchange.model + exchange.config.model_suffix
    completion_id = f"cmpl-fake{exchange.number:010d}"
    created = int(time.time())
    prompt_tokens = answers.count_tokens(prompt)
    completion_tokens = answers.count_tokens(text)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }

    def payload(choices: list[dict[str, Any]], usage_value: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "id": completion_id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "system_fingerprint": FINGERPRINT,
            "choices": choices,
            "usage": usage_value,
        }

    def choice(piece: str, finish: str | None) -> dict[str, Any]:
        return {"text": piece, "index": 0, "logprobs": None, "finish_reason": finish}

    if not exchange.stream:
        return web.json_response(payload([choice(text, "stop")], usage))
    chunks = [payload([choice(piece, None)], None) for piece in answers.split_pieces(text)]
    chunks.append(payload([choice("", "stop")], None))
    if _include_usage(body):
        chunks.append(payload([], usage))
    return await stream_events(request, [(None, c) for c in chunks], done_marker=True)


async def embeddings(request: web.Request) -> web.Response:
    """POST /v1/embeddings: one hash-derived unit vector per input."""
    exchange = request[EXCHANGE]
    body = exchange.body
    raw = body.get("input")
    if isinstance(raw, str) or (isinstance(raw, list) and raw and isinstance(raw[0], int)):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise BadRequestError("'input' must be a non-empty string or list")
    inputs = [item if isinstance(item, str) else str(item) for item in raw]
    dimensions = body.get("dimensions") or exchange.config.embedding_dimensions
    if not isinstance(dimensions, int) or dimensions <= 0:
        raise BadRequestError("'dimensions' must be a positive integer")
    as_base64 = body.get("encoding_format") == "base64"
    data: list[dict[str, Any]] = []
    for index, text in enumerate(inputs):
        vector = answers.embedding(text, dimensions)
        encoded: object = answers.embedding_base64(vector) if as_base64 else vector
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    tokens = sum(answers.count_tokens(text) for text in inputs)
    return web.json_response(
        {
            "object": "list",
            "data": data,
            "model": exchange.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


async def models(request: web.Request) -> web.Response:
    """GET /v1/models: the configured model ids."""
    exchange = request[EXCHANGE]
    data = [
        {"id": model, "object": "model", "created": 1715367049, "owned_by": "system"}
        for model in exchange.config.models
    ]
    return web.json_response({"object": "list", "data": data})


def _response_object(
    exchange: Exchange, created: int, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None
) -> dict[str, Any]:
    return {
        "id": f"resp_fake{exchange.number:010d}",
        "object": "response",
        "created_at": created,
        "status": status,
        "error": None,
        "incomplete_details": None,
        "instructions": exchange.body.get("instructions"),
        "metadata": {},
        "model": exchange.model + exchange.config.model_suffix,
        "output": output,
        "parallel_tool_calls": True,
        "temperature": 1.0,
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "text": {"format": {"type": "text"}},
        "usage": usage,
    }


async def responses(request: web.Request) -> web.StreamResponse:
    """POST /v1/responses: echo the last user input as one output_text message."""
    exchange = request[EXCHANGE]
    body = exchange.body
    user_input = body.get("input")
    text = answers.echo(answers.last_user_text(user_input))
    input_tokens = answers.count_prompt_tokens(user_input)
    output_tokens = answers.count_tokens(text)
    usage = {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }
    created = int(time.time())
    item_id = f"msg_fake{exchange.number:010d}"
    part = {"type": "output_text", "text": text, "annotations": []}
    item = {"id": item_id, "type": "message", "status": "completed", "role": "assistant", "content": [part]}
    final = _response_object(exchange, created, "completed", [item], usage)
    if not exchange.stream:
        return web.json_response(final)

    in_progress = _response_object(exchange, created, "in_progress", [], None)
    where = {"item_id": item_id, "output_index": 0, "content_index": 0}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": in_progress},
        {"type": "response.in_progress", "response": in_progress},
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": {**item, "status": "in_progress", "content": []},
        },
        {"type": "response.content_part.added", **where, "part": {**part, "text": ""}},
    ]
    events += [
        {"type": "response.output_text.delta", **where, "delta": piece}
        for piece in answers.split_pieces(text)
    ]
    events += [
        {"type": "response.output_text.done", **where, "text": text},
        {"type": "response.content_part.done", **where, "part": part},
        {"type": "response.output_item.done", "output_index": 0, "item": item},
        {"type": "response.completed", "response": final},
    ]
    for sequence_number, event in enumerate(events):
        event["sequence_number"] = sequence_number
    return await stream_events(request, [(e["type"], e) for e in events], done_marker=False)
