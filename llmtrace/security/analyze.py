"""One entry point over the detector tiers: normalise once, run the tiers that apply, score.

The score follows ../shared/FINDINGS.md: the base score of the most severe finding (95, 80, 60,
30, 10 for critical to info), 0 without findings; a text is flagged at 50 or more.

Which tiers run depends on where the text sits (see `exchange.Text.untrusted`): untrusted request
text (user and tool messages) gets every tier; the operator's own system prompt, assistant turns
and answers get the leakage tiers (PII, secrets) only, since injection phrasing there is not an
attack on the model. Tool calls get the tool-call tier.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from llmtrace.config.schema import SecurityAnalysisSettings
from llmtrace.security.encodings import find_encoded
from llmtrace.security.exchange import Exchange, Side, Text
from llmtrace.security.findings import Finding, score
from llmtrace.security.injection import find_injection
from llmtrace.security.normalize import normalize
from llmtrace.security.pii import find_pii
from llmtrace.security.secrets import find_secrets
from llmtrace.security.tool_calls import find_tool_call_risks

FLAG_THRESHOLD: Final = 50
OPERATING_POINTS: Final = ("high_recall", "balanced", "high_precision")

Tier = Callable[..., list[Finding]]
#: The regex tiers: cheap enough for the shim's inline check (`enforcement.depth: fast`).
UNTRUSTED_TIERS: Final[Sequence[Tier]] = (find_injection, find_encoded, find_pii, find_secrets)
LEAKAGE_TIERS: Final[Sequence[Tier]] = (find_pii, find_secrets)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the tiers found, the 0-100 score, and whether that flags it."""

    findings: tuple[Finding, ...]
    score: int
    flagged: bool

    @classmethod
    def of(cls, findings: Sequence[Finding]) -> Verdict:
        """Score findings, most severe first."""
        ordered = tuple(sorted(findings, key=lambda f: (-f.severity.rank, -f.confidence)))
        total = score(ordered)
        return cls(ordered, total, total >= FLAG_THRESHOLD)


def regex_findings(item: Text) -> list[Finding]:
    """The regex tiers that apply to one text (normalised once)."""
    if not item.text:
        return []
    normalized = normalize(item.text)
    tiers = UNTRUSTED_TIERS if item.untrusted else LEAKAGE_TIERS
    return [finding for tier in tiers for finding in tier(normalized, item.location, normalized=True)]


def analyze_text(text: str, location: str, side: Side = "request") -> Verdict:
    """Run the regex tiers for `side` over `text`: untrusted user text for requests, answers else."""
    return Verdict.of(
        regex_findings(Text(text, location, side, "user" if side == "request" else "assistant"))
    )


def regex_verdict(exchange: Exchange) -> Verdict:
    """The regex and tool-call tiers only: microseconds, no model (the shim's `depth: fast`)."""
    return Verdict.of(_regex(exchange))


def _regex(exchange: Exchange) -> list[Finding]:
    findings = [finding for item in exchange.texts for finding in regex_findings(item)]
    for call in exchange.tool_calls:
        findings.extend(find_tool_call_risks(call.name, call.arguments, call.location))
    return findings


class Analyzer:
    """The whole stack for exchanges: regex tiers and tool-call tier now, the classifier fused in.

    `analyze_batch` is the unit of work: the classifier runs once over every untrusted text of the
    batch. Pure CPU, no I/O: callers run it off their event loop.
    """

    def __init__(self, operating_point: str = "balanced") -> None:
        if operating_point not in OPERATING_POINTS:
            raise ValueError(f"unknown operating point {operating_point!r}")
        self.operating_point = operating_point

    @classmethod
    def from_settings(cls, settings: SecurityAnalysisSettings) -> Analyzer:
        """The analyzer the core runs, as configured (`security_analysis.*`)."""
        return cls(operating_point=settings.operating_point)

    def analyze(self, exchange: Exchange, operating_point: str | None = None) -> Verdict:
        """Analyse one exchange."""
        return self.analyze_batch([exchange], operating_point)[0]

    def analyze_batch(
        self, exchanges: Sequence[Exchange], operating_point: str | None = None
    ) -> list[Verdict]:
        """Analyse exchanges together; one verdict per exchange, in order."""
        point = operating_point or self.operating_point
        if point not in OPERATING_POINTS:
            raise ValueError(f"unknown operating point {point!r}")
        return [Verdict.of(_regex(exchange)) for exchange in exchanges]
