"""The inline check of a request before it is forwarded (`enforcement.mode: flag | block`).

`Guard.inspect` turns the request capture already parsed into the analyzer's `Exchange`, scans it
(`depth: fast`: the regex and tool-call tiers in this process; `depth: full`: the core's
`AnalysisService.Analyze` over the shipper's channel, plus the regex tiers here over a request
with more content than the core's 1 MiB limit, or over any request the core failed to check),
and asks the policy (`shim.enforcement`) what to do. An error in the check itself fails open.
Built only when the policy can act: in `log` mode the proxy holds no guard and does no work per
request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import grpc
import structlog

from llmtrace.api.v1 import analysis_service_pb2, analysis_service_pb2_grpc
from llmtrace.capture import ParsedRequest
from llmtrace.capture.exchange import ExchangeMeta
from llmtrace.capture.span import llm_request
from llmtrace.config.schema import Settings
from llmtrace.rpc.exchange_convert import finding_from_pb
from llmtrace.security.exchange import Exchange, Text, ToolCall
from llmtrace.security.findings import Finding, score
from shim import metrics
from shim.enforcement import BLOCK, FLAG, NO_ACTION, Decision, Policy

if TYPE_CHECKING:
    from llmtrace.security.tiers import Verdict

_log = structlog.get_logger("llmtrace.shim.enforcement")

DEPTH_FAST: Final = "fast"
DEPTH_FULL: Final = "full"
#: Text above this many characters is scanned in a thread. The regex tiers cost about 0.2 ms per KB
#: of prompt and the decoders about 0.15 ms per KB more (up to 0.7 ms per KB on PII-dense text;
#: tools/bench/security_tiers.py), so 16 KiB is already a few milliseconds of event loop. `re` holds
#: the interpreter lock, so the thread does not scan in parallel with the loop: it only lets the
#: loop interleave its other requests with the scan instead of stalling them all for its length.
_THREAD_CHARS: Final = 16 * 1024
#: A core that is down fails every call: its warning is logged at most this often per worker.
_FAILOPEN_LOG_INTERVAL_S: Final = 10.0
#: Request roles whose text is the operator's own instructions (as the core's exchange builder).
_SYSTEM_ROLES: Final = frozenset({"system", "developer"})


def security_exchange(request: ParsedRequest) -> tuple[Exchange, int]:
    """The analyzer's view of a parsed request, and its number of text characters.

    Built exactly as the core builds it from the span (`llmtrace.rpc.exchange_convert`), so that a
    finding made here and the same finding made by the core's post-ingest analysis share their
    (type, detector, location) and the core does not record it twice: every part that carries
    text is scanned on its own, located `request.messages[i].content` when it is the message's
    only text part, else `request.messages[i].content[j]` (`j` the part's index among all parts);
    the role is stripped and lower-cased (it decides the tiers that apply); tool calls with
    arguments are `request.messages[i].tool_calls[j].arguments`; the texts of system and
    developer messages are the operator's system prompts.
    """
    texts: list[Text] = []
    calls: list[ToolCall] = []
    system: list[str] = []
    chars = 0
    for i, message in enumerate(request.messages):
        base = f"request.messages[{i}]"
        role = message.role.strip().lower()
        parts = [(j, part.text) for j, part in enumerate(message.parts) if part.text]
        if len(parts) == 1:
            texts.append(Text(parts[0][1], f"{base}.content", "request", role))
        else:
            texts.extend(Text(text, f"{base}.content[{j}]", "request", role) for j, text in parts)
        for _, text in parts:
            chars += len(text)
            if role in _SYSTEM_ROLES:
                system.append(text)
        for j, call in enumerate(message.tool_calls):
            if call.arguments:
                chars += len(call.arguments)
                calls.append(ToolCall(call.name, call.arguments, f"{base}.tool_calls[{j}].arguments"))
    return Exchange(texts=tuple(texts), tool_calls=tuple(calls), system_prompts=tuple(system)), chars


@dataclass(frozen=True, slots=True)
class Inspection:
    """What the check of one request found and decided."""

    findings: tuple[Finding, ...] = ()
    score: int = 0
    decision: Decision = NO_ACTION
    #: Set when the check could not be made as configured: depth full and the core did not
    #: answer (the gRPC status name in lower case; the regex tiers here checked it instead), or
    #: an error in the check (`error`; forwarded unchecked).
    failed_open: str = ""
    #: Whether anything was scanned: False when the request had no text to read (a body capture
    #: could not parse, an empty request) or the check failed; `score` then means nothing.
    scanned: bool = False


def _key(finding: Finding) -> tuple[str, str, str]:
    return (finding.type, finding.detector, finding.location)


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
        # Loaded now at either depth, never on a request: depth `full` falls back to the regex
        # tiers when the core does not answer, and importing them then stalled the event loop for
        # about 70 ms, every client's requests with it, just when the core was in trouble. (A
        # worker with no guard, `log` mode, never loads them.)
        from llmtrace.security.tiers import regex_verdict  # noqa: PLC0415

        self._regex_verdict: Callable[[Exchange], Verdict] = regex_verdict

    @classmethod
    def from_settings(cls, settings: Settings, channel: grpc.aio.Channel | None) -> Guard | None:
        """The worker's guard, or None when the policy can never act (nothing is scanned)."""
        policy = Policy.from_settings(settings.enforcement)
        return cls(settings, channel) if policy.active else None

    async def inspect(self, request: ParsedRequest, meta: ExchangeMeta) -> Inspection:
        """Scan one request and decide; never raises for a scan that cannot be made (fails open)."""
        started = time.perf_counter()
        try:
            if self._analysis is not None:
                inspection = await self._full(request, meta)
            else:
                inspection = await self._fast(request)
        except Exception as exc:  # a closed channel (UsageError), a bug: never a 500 for the client
            self._fail_open("error", meta, type(exc).__name__, fallback=False)
            inspection = Inspection(failed_open="error")
        metrics.ENFORCEMENT_SCAN_DURATION.labels(self.depth).observe(time.perf_counter() - started)
        counter = {BLOCK: metrics.ENFORCEMENT_BLOCKED, FLAG: metrics.ENFORCEMENT_FLAGGED}.get(
            inspection.decision.action
        )
        if counter is not None:
            for category in inspection.decision.categories:
                counter.labels(category).inc()
        return inspection

    def _fail_open(self, reason: str, meta: ExchangeMeta, error: str = "", *, fallback: bool) -> None:
        metrics.ENFORCEMENT_FAILOPEN.labels(reason).inc()
        now = time.monotonic()
        if now - self._failopen_logged_at >= _FAILOPEN_LOG_INTERVAL_S:  # not once per request
            self._failopen_logged_at = now
            # The exception's type only: its message may quote the request's content.
            _log.warning(
                "inline check by the core failed, checking with the regex tiers here"
                if fallback
                else "inline check failed, forwarding unchecked",
                reason=reason,
                error=error or None,
                depth=self.depth,
                tenant=meta.tenant,
            )

    async def _scan(self, exchange: Exchange, chars: int) -> Verdict:
        regex_verdict = self._regex_verdict
        if chars > _THREAD_CHARS:
            return await asyncio.to_thread(regex_verdict, exchange)
        return regex_verdict(exchange)

    async def _fast(self, request: ParsedRequest) -> Inspection:
        exchange, chars = security_exchange(request)
        if not exchange.texts and not exchange.tool_calls:
            return Inspection()
        verdict = await self._scan(exchange, chars)
        return Inspection(verdict.findings, verdict.score, self.policy.decide(verdict.findings), scanned=True)

    async def _full(self, request: ParsedRequest, meta: ExchangeMeta) -> Inspection:
        assert self._analysis is not None
        if not request.messages:
            return Inspection()
        sent, cut = llm_request(meta, request)
        local: asyncio.Task[Verdict] | None = None
        if cut:
            # The core reads at most its own limit of content: the rest is scanned here, with the
            # regex tiers, while the core answers.
            exchange, chars = security_exchange(request)
            local = asyncio.create_task(self._scan(exchange, chars))
        try:
            reply = await self._analysis.Analyze(
                analysis_service_pb2.AnalyzeRequest(tenant=meta.tenant, request=sent), timeout=self.timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            reason = exc.code().name.lower()
            self._fail_open(reason, meta, fallback=True)
            # Never forwarded unchecked: how long the core takes is partly the client's choice
            # (padding a prompt past the deadline), so that would let any attack through. The
            # regex tiers check it here instead, as at depth `fast`.
            verdict = await (local if local is not None else self._scan(*security_exchange(request)))
            findings = verdict.findings
            return Inspection(
                findings, verdict.score, self.policy.decide(findings), failed_open=reason, scanned=True
            )
        except BaseException:
            if local is not None:
                local.cancel()
            raise
        findings = tuple(finding_from_pb(f) for f in reply.findings)
        total = max(reply.score, score(findings))
        if local is not None:
            verdict = await local
            seen = {_key(f) for f in findings}
            extra = tuple(f for f in verdict.findings if _key(f) not in seen)
            findings = tuple(sorted(findings + extra, key=lambda f: (-f.severity.rank, -f.confidence)))
            total = max(total, verdict.score)
        return Inspection(findings, total, self.policy.decide(findings), scanned=True)


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
