"""Canonical gRPC errors with google.rpc details: the one place status codes are built.

Client mistakes are INVALID_ARGUMENT with a `BadRequest` listing every field violation, plus an
`ErrorInfo` whose `reason` is a stable machine-readable code; nothing a client sends should end
as UNKNOWN or INTERNAL.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "llmtrace.dev"

# A status travels in trailing metadata: the message percent-encoded in grpc-message (3 bytes
# for each byte beyond ASCII), and all of it again, base64, in grpc-status-details-bin. A client
# refuses metadata past 8 KB (at random up to 16 KB), so a message quoting a client's
# 5,000-character filter would arrive as RESOURCE_EXHAUSTED instead of the error. Text is cut to
# these UTF-8 sizes: at most about 6.5 KB of metadata in all.
MAX_MESSAGE_BYTES = 1000
MAX_VIOLATION_BYTES = 700
MAX_VIOLATIONS_BYTES = 1500


def _cut(text: str, max_bytes: int) -> str:
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= max_bytes:
        return text
    return data[: max_bytes - 3].decode("utf-8", "ignore") + "…"


def _bounded(violations: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The violations that fit the budget, each cut; the rest counted in a last one."""
    kept: list[tuple[str, str]] = []
    used = 0
    for index, (raw_field, raw_description) in enumerate(violations):
        field = _cut(raw_field, MAX_VIOLATION_BYTES // 4)
        description = _cut(raw_description, MAX_VIOLATION_BYTES)
        size = len(field.encode("utf-8", "surrogatepass")) + len(description.encode("utf-8", "surrogatepass"))
        if kept and used + size > MAX_VIOLATIONS_BYTES:
            kept.append(("", f"and {len(violations) - index} more violation(s)"))
            break
        kept.append((field, description))
        used += size
    return kept


class RpcError(Exception):
    """A failure to report to the client as a canonical status with details."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str,
        violations: Sequence[tuple[str, str]] = (),
        metadata: dict[str, str] | None = None,
    ) -> None:
        message = _cut(message, MAX_MESSAGE_BYTES)
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.violations = _bounded(violations)
        self.metadata = {k: _cut(v, MAX_VIOLATION_BYTES // 4) for k, v in (metadata or {}).items()}

    def to_status(self) -> grpc.Status:
        """The grpc.Status carrying a google.rpc.Status with ErrorInfo and BadRequest details."""
        details: list[any_pb2.Any] = []
        info = any_pb2.Any()
        info.Pack(
            error_details_pb2.ErrorInfo(reason=self.reason, domain=ERROR_DOMAIN, metadata=self.metadata)
        )
        details.append(info)
        if self.violations:
            bad = any_pb2.Any()
            bad.Pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                        for f, d in self.violations
                    ]
                )
            )
            details.append(bad)
        code_value = self.code.value[0]
        status: grpc.Status = rpc_status.to_status(
            status_pb2.Status(code=code_value, message=self.message, details=details)
        )
        return status


def invalid_argument(
    violations: Sequence[tuple[str, str]], message: str | None = None, *, reason: str = "INVALID_ARGUMENT"
) -> RpcError:
    """INVALID_ARGUMENT naming every bad field."""
    if message is None:
        message = "; ".join(f"{field}: {desc}" for field, desc in violations)
    return RpcError(grpc.StatusCode.INVALID_ARGUMENT, message, reason=reason, violations=violations)


def not_found(message: str, *, reason: str = "NOT_FOUND") -> RpcError:
    """NOT_FOUND for a named resource the tenant does not have."""
    return RpcError(grpc.StatusCode.NOT_FOUND, message, reason=reason)


async def abort(context: grpc.aio.ServicerContext[object, object], error: RpcError) -> NoReturn:
    """End the RPC with `error`'s status and details, keeping trailing metadata already set."""
    status = error.to_status()
    # abort_with_status would replace the trailing metadata set so far (the interceptor's
    # x-request-id); send both.
    earlier = tuple(context.trailing_metadata() or ())
    await context.abort(status.code, status.details, (*earlier, *status.trailing_metadata))
    raise AssertionError("abort returned")  # pragma: no cover
