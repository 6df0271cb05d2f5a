"""One entry point over the detector tiers: normalise once, run the tiers for a side, score.

The score follows ../shared/FINDINGS.md: the base score of the most severe finding (95, 80, 60,
30, 10 for critical to info), 0 without findings; a text is flagged at 50 or more. Requests run
every tier; responses run the leakage tiers (PII, secrets), since injection phrasing in an answer
is not an attack on this model. The classifier and fusion with operating points come later and
plug in here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from llmtrace.security.encodings import find_encoded
from llmtrace.security.findings import Finding, score
from llmtrace.security.injection import find_injection
from llmtrace.security.normalize import normalize
from llmtrace.security.pii import find_pii
from llmtrace.security.secrets import find_secrets

FLAG_THRESHOLD: Final = 50

Tier = Callable[..., list[Finding]]
_TIERS: Final[dict[str, Sequence[Tier]]] = {
    "request": (find_injection, find_encoded, find_pii, find_secrets),
    "response": (find_pii, find_secrets),
}


@dataclass(frozen=True, slots=True)
class TextAnalysis:
    """What the tiers found in one text, its 0-100 score, and whether that flags it."""

    findings: tuple[Finding, ...]
    score: int
    flagged: bool


def analyze_text(text: str, location: str, side: Literal["request", "response"] = "request") -> TextAnalysis:
    """Run the tiers for `side` over `text` (normalised once) and score the result."""
    if not text:
        return TextAnalysis((), 0, False)
    normalized = normalize(text)
    findings = tuple(
        finding for tier in _TIERS[side] for finding in tier(normalized, location, normalized=True)
    )
    total = score(findings)
    return TextAnalysis(findings, total, total >= FLAG_THRESHOLD)
