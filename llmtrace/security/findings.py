"""The domain form of a security finding, and the span score derived from findings.

Plain dataclasses, no protobuf: `Finding` maps field for field onto `llmtrace.api.v1.Finding`
(`type`, `severity`, `confidence`, `detector`, `location`, `description`, `excerpt`); the id, span ids,
tenant and timestamps are the core's business. `Severity` names and base scores follow the predecessor's
vocabulary (see FINDINGS.md): critical 95, high 80, medium 60, low 30, info 10.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from llmtrace.security.masking import mask_sensitive


class Severity(enum.Enum):
    """How serious a finding is; `base_score` is what a span scores when this is its worst finding."""

    INFO = "info"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def base_score(self) -> int:
        """The span score this severity stands for (95/80/60/30/10)."""
        return _BASE_SCORES[self]

    @property
    def rank(self) -> int:
        """1 (info) to 5 (critical): the number of the matching `SEVERITY_*` proto enum value."""
        return _RANKS[self]


_BASE_SCORES: Final = {
    Severity.INFO: 10,
    Severity.LOW: 30,
    Severity.MEDIUM: 60,
    Severity.HIGH: 80,
    Severity.CRITICAL: 95,
}
_RANKS: Final = {severity: rank for rank, severity in enumerate(Severity, start=1)}

# Finding types from the predecessor's vocabulary that these detectors emit.
PII_DETECTED: Final = "pii_detected"
SECRET_LEAKAGE: Final = "secret_leakage"  # noqa: S105 - a finding type, not a password
DATA_LEAKAGE: Final = "data_leakage"


@dataclass(frozen=True, slots=True)
class Finding:
    """One observation about a piece of text.

    `excerpt` is a short window around the match in which the match itself and any other PII or
    secret are replaced by typed placeholders such as `[EMAIL]`: it never holds the raw value.
    `detector` names the detector and the subtype, e.g. `regex.pii.credit_card`.
    """

    type: str
    severity: Severity
    confidence: float
    detector: str
    location: str
    excerpt: str
    description: str = ""


def score(findings: Iterable[Finding]) -> int:
    """The base score of the most severe finding, 0 when there is none."""
    return max((finding.severity.base_score for finding in findings), default=0)


@dataclass(frozen=True, slots=True)
class Match:
    """A detector's hit before it becomes a `Finding`: where it is and what replaces it in excerpts."""

    start: int
    end: int
    placeholder: str
    type: str
    severity: Severity
    confidence: float
    detector: str
    description: str


_CONTEXT: Final = 32


def _mask_gap(text: str) -> str:
    # Context around a match may hold further secrets the detector did not report (another detector's
    # kind): the masking pass catches those.
    return mask_sensitive(text) if text.strip() else text


def build_excerpt(text: str, match: Match, matches: Sequence[Match]) -> str:
    """A one-line window around `match` with every match in it, and anything masking knows, masked.

    `matches` must be sorted by start and must not overlap (as `drop_overlapping` leaves them). The window
    is widened to whole whitespace-separated words, so that a secret is never cut in half at its edge (a
    half secret would escape both the detectors and the masking pass).
    """
    return _excerpt(text, match, matches, [m.start for m in matches])


def _excerpt(text: str, match: Match, matches: Sequence[Match], starts: Sequence[int]) -> str:
    start = max(0, match.start - _CONTEXT)
    end = min(len(text), match.end + _CONTEXT)
    if start > 0:
        start = max(text.rfind(" ", 0, start), text.rfind("\n", 0, start)) + 1
    if end < len(text):
        cuts = [i for i in (text.find(" ", end), text.find("\n", end)) if i >= 0]
        end = min(cuts) if cuts else len(text)
    # Only the matches near the window matter; bisect keeps many findings from costing n squared.
    first = max(0, bisect.bisect_right(starts, start) - 1)
    last = bisect.bisect_left(starts, end)
    nearby = matches[first:last]
    # A match with spaces in it (a phone number, a key block) may straddle an edge: take it whole.
    for other in nearby:
        if other.start < start < other.end:
            start = other.start
        if other.start < end < other.end:
            end = other.end
    parts: list[str] = []
    position = start
    for other in nearby:
        if other.end <= start or other.start >= end or other.start < position:
            continue
        parts.append(_mask_gap(text[position : other.start]))
        parts.append(other.placeholder)
        position = other.end
    parts.append(_mask_gap(text[position:end]))
    excerpt = " ".join("".join(parts).split())
    return ("…" if start > 0 else "") + excerpt + ("…" if end < len(text) else "")


def to_findings(text: str, matches: Sequence[Match], location: str) -> list[Finding]:
    """`Finding`s for non-overlapping `matches` in text order, each with its masked excerpt."""
    ordered = sorted(matches, key=lambda m: m.start)
    starts = [m.start for m in ordered]
    return [
        Finding(
            type=m.type,
            severity=m.severity,
            confidence=m.confidence,
            detector=m.detector,
            location=location,
            excerpt=_excerpt(text, m, ordered, starts),
            description=m.description,
        )
        for m in ordered
    ]


def drop_overlapping(matches: Iterable[Match]) -> list[Match]:
    """Keep the first of overlapping matches (callers list the more specific detectors first)."""
    kept: list[Match] = []  # sorted by start; no two overlap, so also sorted by end
    starts: list[int] = []
    for candidate in matches:
        index = bisect.bisect_right(starts, candidate.start)
        if index > 0 and kept[index - 1].end > candidate.start:
            continue
        if index < len(kept) and kept[index].start < candidate.end:
            continue
        kept.insert(index, candidate)
        starts.insert(index, candidate.start)
    return kept
