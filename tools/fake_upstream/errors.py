"""Error bodies in the shapes OpenAI and Anthropic use."""

from __future__ import annotations

from typing import Any

from aiohttp import web

# status -> (OpenAI error type, OpenAI error code, message)
_OPENAI_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Permission denied."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests."),
    500: ("server_error", "server_error", "The server had an error while processing your request."),
    502: ("server_error", "bad_gateway", "Bad gateway."),
    503: ("server_error", "service_unavailable", "The engine is currently overloaded."),
}

# status -> Anthropic error type
_ANTHROPIC_ERRORS: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}

RETRY_AFTER_S = "1"


def error_response(status: int, *, anthropic: bool = False, message: str | None = None) -> web.Response:
    """A JSON error response for `status`, with `retry-after` on 429."""
    default_type = "server_error" if status >= 500 else "invalid_request_error"
    error_type, code, default_message = _OPENAI_ERRORS.get(
        status, (default_type, None, f"Fake upstream error {status}.")
    )
    text = message or default_message
    body: dict[str, Any]
    if anthropic:
        kind = _ANTHROPIC_ERRORS.get(status, "api_error" if status >= 500 else "invalid_request_error")
        body = {"type": "error", "error": {"type": kind, "message": text}}
    else:
        body = {"error": {"message": text, "type": error_type, "param": None, "code": code}}
    headers = {"retry-after": RETRY_AFTER_S} if status == 429 else None
    return web.json_response(body, status=status, headers=headers)
