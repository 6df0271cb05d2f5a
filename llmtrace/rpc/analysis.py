"""AnalysisService: the core's whole security stack on demand; nothing is stored."""

from __future__ import annotations

from typing import Final, Protocol

import grpc

from llmtrace import limits
from llmtrace.analyze_pool import AnalyzeUnavailableError
from llmtrace.api.v1 import analysis_service_pb2, analysis_service_pb2_grpc
from llmtrace.rpc.errors import RpcError, abort, invalid_argument
from llmtrace.rpc.exchange_convert import content_chars, content_items

Context = grpc.aio.ServicerContext[object, object]

_POINT_NAMES: Final = {
    analysis_service_pb2.OPERATING_POINT_HIGH_RECALL: "high_recall",
    analysis_service_pb2.OPERATING_POINT_BALANCED: "balanced",
    analysis_service_pb2.OPERATING_POINT_HIGH_PRECISION: "high_precision",
}
_POINT_VALUES: Final = {name: value for value, name in _POINT_NAMES.items()}


#: Each part and tool call is judged on its own (about a quarter of a millisecond each): without
#: a bound, one call of a million one-character parts held an Analyze process for minutes.
_TOO_MANY_ITEMS: Final = f"at most {limits.MAX_ITEMS} content parts and tool calls in all"


def _check(request: analysis_service_pb2.AnalyzeRequest) -> list[tuple[str, str]]:
    """Field violations of an Analyze request (empty when it is valid)."""
    out: list[tuple[str, str]] = []
    problem = limits.tenant_problem(request.tenant)
    if problem is not None:
        out.append(("tenant", problem))
    has_request, has_response = request.HasField("request"), request.HasField("response")
    if not request.text and not has_request and not has_response:
        out.append(("text", "one of text, request and response is required"))
    if len(request.text) > limits.MAX_BODY_CHARS:
        out.append(("text", f"at most {limits.MAX_BODY_CHARS} characters"))
    if has_request:
        messages = request.request.messages
        if len(messages) > limits.MAX_ITEMS:
            out.append(("request.messages", f"at most {limits.MAX_ITEMS} messages"))
        elif content_items(messages) > limits.MAX_ITEMS:
            out.append(("request.messages", _TOO_MANY_ITEMS))
        elif content_chars(messages) > limits.MAX_BODY_CHARS:
            out.append(("request.messages", f"content exceeds {limits.MAX_BODY_CHARS} characters"))
    if has_response:
        choices = request.response.choices
        if len(choices) > limits.MAX_ITEMS:
            out.append(("response.choices", f"at most {limits.MAX_ITEMS} choices"))
        elif content_items(c.message for c in choices) > limits.MAX_ITEMS:
            out.append(("response.choices", _TOO_MANY_ITEMS))
        elif content_chars(c.message for c in choices) > limits.MAX_BODY_CHARS:
            out.append(("response.choices", f"content exceeds {limits.MAX_BODY_CHARS} characters"))
    if request.operating_point and request.operating_point not in _POINT_NAMES:
        out.append(("operating_point", f"unknown operating point {int(request.operating_point)}"))
    return out


#: Analyze calls admitted at once (running or waiting for one of the analyzing processes).
MAX_PENDING: Final = 64


class Analyzing(Protocol):
    """Where the analysis runs (`llmtrace.analyze_pool.AnalyzePool`: processes of its own)."""

    async def analyze(self, request: bytes, operating_point: str) -> bytes:
        """A serialised `AnalyzeRequest` in, the serialised `AnalyzeResponse` out; raises
        `AnalyzeUnavailableError` when nothing can answer."""
        ...


class AnalysisServicer(analysis_service_pb2_grpc.AnalysisServiceServicer):
    """Answers `Analyze` at the configured operating point, off the core's interpreter."""

    def __init__(self, analyzing: Analyzing, operating_point: str, max_pending: int = MAX_PENDING) -> None:
        self._analyzing = analyzing
        self._operating_point = operating_point
        self._max_pending = max_pending
        self._pending = 0

    async def Analyze(  # noqa: N802 - gRPC method name
        self, request: analysis_service_pb2.AnalyzeRequest, context: Context
    ) -> analysis_service_pb2.AnalyzeResponse:
        """Findings (most severe first), score and flag of a text or an exchange."""
        violations = _check(request)
        if violations:
            await abort(context, invalid_argument(violations))
        point = _POINT_NAMES.get(request.operating_point, self._operating_point)
        if self._pending >= self._max_pending:
            # Callers (the shim at depth `full`) fall back to their own regex tiers on a quick
            # refusal; a queue that grows without bound would only turn overload into timeouts
            # and memory.
            message = f"{self._pending} Analyze calls are already waiting; retry later"
            await abort(
                context, RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, message, reason="ANALYSIS_BUSY")
            )
        self._pending += 1
        try:
            answer = await self._analyzing.analyze(request.SerializeToString(), point)
        except AnalyzeUnavailableError as exc:
            # The shim at depth `full` falls back to its own regex tiers on this.
            error = RpcError(grpc.StatusCode.UNAVAILABLE, str(exc), reason="ANALYSIS_UNAVAILABLE")
            await abort(context, error)
        finally:
            self._pending -= 1
        response = analysis_service_pb2.AnalyzeResponse.FromString(answer)
        response.operating_point = _POINT_VALUES[point]
        return response
