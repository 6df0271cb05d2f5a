"""The aiohttp application: routes plus the middleware that records requests and injects failures."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from tools.fake_upstream import anthropic_routes, openai_routes
from tools.fake_upstream.behavior import BEHAVIOR_HEADER, BehaviorError, parse_header, split_model
from tools.fake_upstream.config import FakeUpstreamConfig, RecordedRequest
from tools.fake_upstream.errors import error_response
from tools.fake_upstream.exchange import (
    EXCHANGE,
    REQUEST_ID,
    STATE,
    BadRequestError,
    Exchange,
    UpstreamState,
    drop_connection,
)

ANTHROPIC_PATH = "/v1/messages"


def _headers(request: web.Request) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


def _has_credentials(request: web.Request) -> bool:
    authorization = request.headers.get("Authorization", "")
    if authorization.startswith("Bearer ") and authorization[len("Bearer ") :].strip():
        return True
    # Anthropic clients authenticate with x-api-key instead.
    return request.path == ANTHROPIC_PATH and bool(request.headers.get("x-api-key"))


def _parse_body(raw: bytes) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise BadRequestError(f"body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequestError("body must be a JSON object")
    return body


def _compress(response: web.Response) -> None:
    body = response.body
    if isinstance(body, bytes):
        response.body = gzip.compress(body)
        response.headers["Content-Encoding"] = "gzip"


async def _send_truncated(request: web.Request, response: web.Response, limit: int) -> web.StreamResponse:
    """Announce the whole body's length, send `limit` bytes of it, then drop the connection."""
    body = response.body if isinstance(response.body, bytes) else b""
    truncated = web.StreamResponse(status=response.status, headers=response.headers)
    truncated.content_length = len(body)
    await truncated.prepare(request)
    await truncated.write(body[:limit])
    drop_connection(request)
    return truncated


@web.middleware
async def fake_upstream_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Record the request, check auth, apply `X-Fake-Behavior` switches, then run the route."""
    state = request.app[STATE]
    number = state.next_number()
    request_id = f"req_{number:06d}"
    request[REQUEST_ID] = request_id
    raw = await request.read()
    state.record(
        RecordedRequest(
            method=request.method,
            path=request.path,
            query_string=request.query_string,
            headers=_headers(request),
            body=raw,
            request_id=request_id,
            received_at=time.monotonic(),
        )
    )
    anthropic = request.path == ANTHROPIC_PATH
    try:
        body = _parse_body(raw)
        model_field = body.get("model", "")
        model, model_behavior = split_model(model_field if isinstance(model_field, str) else "")
        behavior = parse_header(request.headers.get(BEHAVIOR_HEADER)).merged(model_behavior)
    except (BadRequestError, BehaviorError) as exc:
        return error_response(400, anthropic=anthropic, message=str(exc))

    if state.config.require_auth and request.path.startswith("/v1/") and not _has_credentials(request):
        return error_response(401, anthropic=anthropic)
    if behavior.delay_s > 0:
        await asyncio.sleep(behavior.delay_s)
    if behavior.status is not None:
        return error_response(behavior.status, anthropic=anthropic)

    request[EXCHANGE] = Exchange(
        number=number,
        request_id=request_id,
        config=state.config,
        body=body,
        model=model,
        behavior=behavior,
    )
    try:
        response = await handler(request)
    except BadRequestError as exc:
        return error_response(400, anthropic=anthropic, message=str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, anthropic=anthropic, message=exc.reason)

    if isinstance(response, web.Response) and not response.prepared:
        if behavior.gzip:
            _compress(response)
        if behavior.cut_after is not None:
            return await _send_truncated(request, response, behavior.cut_after)
    return response


async def _add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    request_id = request.get(REQUEST_ID)
    if request_id is not None:
        response.headers["x-request-id"] = request_id


def create_app(config: FakeUpstreamConfig | None = None) -> web.Application:
    """A fresh fake upstream application; its state lives in the app, not in globals."""
    app = web.Application(middlewares=[fake_upstream_middleware])
    app[STATE] = UpstreamState(config=config or FakeUpstreamConfig())
    app.on_response_prepare.append(_add_request_id)
    app.router.add_post("/v1/chat/completions", openai_routes.chat_completions)
    app.router.add_post("/v1/completions", openai_routes.completions)
    app.router.add_post("/v1/embeddings", openai_routes.embeddings)
    app.router.add_get("/v1/models", openai_routes.models)
    app.router.add_post("/v1/responses", openai_routes.responses)
    app.router.add_post(ANTHROPIC_PATH, anthropic_routes.messages)
    return app
