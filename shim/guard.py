"""The inline check of a request before it is forwarded (`enforcement.mode: flag | block`).

`Guard.inspect` turns the request capture already parsed into the analyzer's `Exchange`, scans it
(`depth: fast`: the regex and tool-call tiers in this process; `depth: full`: the core's
`AnalysisService.Analyze` over the shipper's channel, failing open), and asks the policy
(`shim.enforcement`) what to do. Built only when the policy can act: in `log` mode the proxy
holds no guard and does no work per request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import grpc
import structlog

from llmtrace.api.v1 import analysis_service_pb2, analysis_service_pb2_grpc, finding_pb2
from llmtrace.config.schema import Settings
from llmtrace.security.exchange import Exchange, Text, ToolCall
from llmtrace.security.findings import Finding, Severity, score
from shim import metrics
from shim.capture import ParsedRequest, model
from shim.capture.exchange import ExchangeMeta
from shim.capture.span import llm_request
from shim.enforcement import BLOCK, FLAG, NO_ACTION, Decision, Policy

if TYPE_CHECKING:
    from llmtrace.security.tiers import Verdict

_log = structlog.get_logger("llmtrace.shim.enforcement")

DEPTH_FAST: Final = "fast"
DEPTH_FULL: Final = "full"
#: Text above this many characters is scanned in a thread, so one huge prompt cannot stall the
#: worker's event loop for every other request (the regex tiers run at tens of µs per KB).
_THREAD_CHARS: Final = 256 * 1024
#: A core that is down fails every call: its warning is logged at most this often per worker.
_FAILOPEN_LOG_INTERVAL_S: Final = 10.0
_TEXT_PARTS: Final = frozenset({model.PART_TEXT, model.PART_REFUSAL})
_SYSTEM_ROLES: Final = frozenset({"system", "developer"})
_SEVERITY_OF_ENUM: Final = {
    finding_pb2.SEVERITY_INFO: Severity.INFO,
    finding_pb2.SEVERITY_LOW: Severity.LOW,
    finding_pb2.SEVERITY_MEDIUM: Severity.MEDIUM,
    finding_pb2.SEVERITY_HIGH: Severity.HIGH,
    finding_pb2.SEVERITY_CRITICAL: Severity.CRITICAL,
}


def security_exchange(request: ParsedRequest) -> tuple[Exchange, int]:
    """The analyzer's view of a parsed request, and its number of text characters.

    One text per message (its text parts joined), located `request.messages[i].content` and
    carrying the message's role (which decides the tiers that apply); tool calls replayed in the
    history as `request.messages[i].tool_calls[j].arguments`; system and developer messages as the
    operator's system prompts.
    """
    texts: list[Text] = []
    calls: list[ToolCall] = []
    system: list[str] = []
    chars = 0
    for i, message in enumerate(request.messages):
        pieces = [part.text for part in message.parts if part.type in _TEXT_PARTS and part.text]
        role = message.role.lower()
        if pieces:
            text = "\n".join(pieces)
            chars += len(text)
            texts.append(Text(text, f"request.messages[{i}].content", "request", role))
            if role in _SYSTEM_ROLES:
                system.append(text)
        for j, call in enumerate(message.tool_calls):
            chars += len(call.arguments)
            calls.append(
                ToolCall(call.name, call.arguments, f"request.messages[{i}].tool_calls[{j}].arguments")
            )
    return Exchange(texts=tuple(texts), tool_calls=tuple(calls), system_prompts=tuple(system)), chars


@dataclass(frozen=True, slots=True)
class Inspection:
    """What the check of one request found and decided."""

    findings: tuple[Finding, ...] = ()
    score: int = 0
    decision: Decision = NO_ACTION
    #: Set when the check could not be made (depth full: the core did not answer in time): the
    #: request is forwarded unchecked. The gRPC status name in lower case.
    failed_open: str = ""


class Guard:
    """The inline check of one worker."""

    __slots__ = ("_analysis", "_failopen_logged_at", "_regex_verdict", "depth", "policy", "timeout_s")

    def __init__(self, settings: Settings, channel: grpc.aio.Channel | None) -> None:
        enforcement = settings.enforcement
        self.policy = Policy.from_settings(enforcement)
        self.depth = enforcement.depth
        self.timeout_s = enforcement.full_timeout_ms / 1000
        self._analysis = (
            analysis_service_pb2_grpc.AnalysisServiceStub(channel)
            if self.depth == DEPTH_FULL and channel is not None
            else None
        )
        self._failopen_logged_at = -_FAILOPEN_LOG_INTERVAL_S
        self._regex_verdict: Callable[[Exchange], Verdict] | None = None
        if self._analysis is None:
            # Imported only when a worker scans inline: `log` mode never loads the analysis stack.
            from llmtrace.security.tiers import regex_verdict  # noqa: PLC0415

            self._regex_verdict = regex_verdict

    @classmethod
    def from_settings(cls, settings: Settings, channel: grpc.aio.Channel | None) -> Guard | None:
        """The worker's guard, or None when the policy can never act (nothing is scanned)."""
        policy = Policy.from_settings(settings.enforcement)
        return cls(settings, channel) if policy.active else None

    async def inspect(self, request: ParsedRequest, meta: ExchangeMeta) -> Inspection:
        """Scan one request and decide; never raises for a scan that cannot be made."""
        started = time.perf_counter()
        if self._analysis is not None:
            inspection = await self._full(request, meta)
        else:
            inspection = await self._fast(request)
        metrics.ENFORCEMENT_SCAN_DURATION.labels(self.depth).observe(time.perf_counter() - started)
        counter = {BLOCK: metrics.ENFORCEMENT_BLOCKED, FLAG: metrics.ENFORCEMENT_FLAGGED}.get(
            inspection.decision.action
        )
        if counter is not None:
            for category in inspection.decision.categories:
                counter.labels(category).inc()
        return inspection

    async def _fast(self, request: ParsedRequest) -> Inspection:
        regex_verdict = self._regex_verdict
        assert regex_verdict is not None
        exchange, chars = security_exchange(request)
        if not exchange.texts and not exchange.tool_calls:
            return Inspection()
        if chars > _THREAD_CHARS:
            verdict = await asyncio.to_thread(regex_verdict, exchange)
        else:
            verdict = regex_verdict(exchange)
        return Inspection(verdict.findings, verdict.score, self.policy.decide(verdict.findings))

    async def _full(self, request: ParsedRequest, meta: ExchangeMeta) -> Inspection:
        assert self._analysis is not None
        if not request.messages:
            return Inspection()
        call = analysis_service_pb2.AnalyzeRequest(tenant=meta.tenant, request=llm_request(meta, request))
        try:
            reply = await self._analysis.Analyze(call, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            reason = exc.code().name.lower()
            metrics.ENFORCEMENT_FAILOPEN.labels(reason).inc()
            now = time.monotonic()
            if now - self._failopen_logged_at >= _FAILOPEN_LOG_INTERVAL_S:  # not once per request
                self._failopen_logged_at = now
                _log.warning("Analyze failed, forwarding unchecked", reason=reason, tenant=meta.tenant)
            return Inspection(failed_open=reason)
        findings = tuple(_from_proto(f) for f in reply.findings)
        return Inspection(findings, max(reply.score, score(findings)), self.policy.decide(findings))


def _from_proto(finding: finding_pb2.Finding) -> Finding:
    return Finding(
        type=finding.type,
        severity=_SEVERITY_OF_ENUM.get(finding.severity, Severity.INFO),
        confidence=min(max(finding.confidence, 0.0), 1.0),
        detector=finding.detector,
        location=finding.location,
        excerpt=finding.excerpt,
        description=finding.description,
    )


def block_message(decision: Decision) -> str:
    """The 403 message: which finding types, where, never the matched text."""
    details = ", ".join(
        f"{finding.type} ({finding.severity.value}, {finding.confidence:.2f}) in {finding.location}"
        for finding in decision.acted_on[:5]
    )
    more = len(decision.acted_on) - 5
    if more > 0:
        details += f" and {more} more"
    return f"request blocked by LLMTrace security policy: {', '.join(decision.types())} detected ({details})"
