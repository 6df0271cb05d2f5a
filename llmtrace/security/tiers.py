"""The regex tiers and the verdict they make: no model, no numpy, cheap to import.

This is what the shim runs inline (`enforcement.depth: fast`), so it must not pull in the
classifier's dependencies; `analyze.Analyzer` adds the classifier on top in the core.

The score follows ../shared/FINDINGS.md: the base score of the most severe finding (95, 80, 60,
30, 10 for critical to info), 0 without findings; a text is flagged at 50 or more. Which tiers run
depends on where the text sits (`exchange.Text.untrusted`): untrusted request text (user and tool
messages) gets every tier; the operator's own system prompt, assistant turns and answers get the
leakage tiers (PII, secrets) only, since injection phrasing there is not an attack on the model.
Tool calls get the tool-call tier; answers are also checked for echoes of the system prompt.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from llmtrace.security.encodings import find_encoded
from llmtrace.security.exchange import Exchange, Side, Text
from llmtrace.security.findings import DATA_LEAKAGE, PII_DETECTED, SECRET_LEAKAGE, Finding, Severity, score
from llmtrace.security.injection import find_injection
from llmtrace.security.leakage import find_prompt_echo
from llmtrace.security.normalize import normalize, unescape_json
from llmtrace.security.pii import find_pii
from llmtrace.security.secrets import find_secrets
from llmtrace.security.tool_calls import (
    DANGEROUS_COMMAND,
    SENSITIVE_FILE_ACCESS,
    SUSPICIOUS_URL,
    find_tool_call_risks,
)

FLAG_THRESHOLD: Final = 50
#: Finding types that are not about an attack on the model's instructions.
_NOT_INJECTION: Final = frozenset(
    {PII_DETECTED, SECRET_LEAKAGE, DATA_LEAKAGE, DANGEROUS_COMMAND, SENSITIVE_FILE_ACCESS, SUSPICIOUS_URL}
)


def is_injection_finding(finding: Finding) -> bool:
    """An injection-family finding (injection, jailbreak, extraction, encoding...) of medium or more."""
    return finding.type not in _NOT_INJECTION and finding.severity.rank >= Severity.MEDIUM.rank


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
    return Verdict.of(regex_exchange_findings(exchange))


def regex_exchange_findings(exchange: Exchange) -> list[Finding]:
    """Every regex-tier finding of an exchange: its texts, tool calls and system-prompt echoes."""
    findings = [finding for item in exchange.texts for finding in regex_findings(item)]
    for call in exchange.tool_calls:
        findings.extend(find_tool_call_risks(call.name, call.arguments, call.location))
        # Arguments carry data out as well as commands: a key or a card number sent to a tool.
        # Read with their JSON escapes undone: `gh\u0070_...` is the token the tool receives.
        arguments = unescape_json(call.arguments)
        findings.extend(regex_findings(Text(arguments, call.location, "response", "assistant")))
    if exchange.system_prompts:
        for item in exchange.texts:
            if item.side == "response" and item.text:
                findings.extend(find_prompt_echo(item.text, exchange.system_prompts, item.location))
    return findings
