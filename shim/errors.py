"""The shim's own error answers, shaped like OpenAI's so SDKs report them cleanly.

On proxied routes the shim answers by itself only when it cannot get an answer from upstream
(502, 504), when the request is refused before forwarding (400, 413; later 403 and 429), or
when Sanic's own limits cut in. Upstream errors are never rewritten.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import orjson
from sanic.response import HTTPResponse

from shim.responses import ShimResponse

_STATUS_TYPE: Final = {
    400: "invalid_request_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}


#: The codes of Sanic's own refusals, by status (`shim_error` for any other).
_SANIC_CODES: Final = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "request_too_large",
    417: "expectation_failed",
    503: "response_timeout",
}


def sanic_error_code(status: int) -> str:
    """The error code of a Sanic refusal with `status`, as the client and the span see it."""
    return _SANIC_CODES.get(status, "shim_error")


@dataclass(frozen=True, slots=True)
class ShimError(Exception):
    """An answer the shim gives itself: status, a stable code, and a message for humans."""

    status: int
    code: str
    message: str

    def response(self, headers: dict[str, str] | None = None) -> HTTPResponse:
        """The OpenAI-style JSON error response."""
        return error_response(self.status, self.code, self.message, headers)


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> HTTPResponse:
    """`{"error": {"message", "type", "param", "code"}}` with the given status."""
    body = orjson.dumps(
        {
            "error": {
                "message": message,
                "type": _STATUS_TYPE.get(
                    status, "server_error" if status >= 500 else "invalid_request_error"
                ),
                "param": None,
                "code": code,
            }
        }
    )
    return ShimResponse(body, status=status, headers=headers, content_type="application/json")
