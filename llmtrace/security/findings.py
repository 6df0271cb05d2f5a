"""The domain form of a security finding, and the span score derived from findings.

Plain dataclasses, no protobuf: `Finding` maps field for field onto `llmtrace.api.v1.Finding`
(`type`, `severity`, `confidence`, `detector`, `location`, `description`, `excerpt`); the id, span ids,
tenant and timestamps are the core's business. `Severity` names and base scores follow the predecessor's
vocabulary (see FINDINGS.md): critical 95, high 80, medium 60, low 30, info 10.
"""

from __future__ import annotations

import bisect
import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from llmtrace.security.masking import sensitive_spans


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
#: How far an excerpt's edge may move outwards to reach whitespace; past it the edge moves inwards
#: instead, so text without spaces cannot make an excerpt the whole text.
_WIDEN: Final = 24
#: Longest excerpt kept (characters), whatever the window held.
MAX_EXCERPT_CHARS: Final = 240
_TYPED_PLACEHOLDER: Final = re.compile(r"\[[A-Z_]+\]")
#: Evidence re-masked against the whole text is cut no shorter than this.
_EVIDENCE_MIN: Final = 60
#: Findings kept per text and detector call: the most severe first. A text made of thousands of
#: matches (a flood of chat-template tokens, a dump of emails) must not make thousands of findings.
MAX_FINDINGS_PER_TEXT: Final = 50

#: Something an excerpt replaces: a detector's match or anything masking knows.
_Maskable = tuple[int, int, str]


def _maskables(text: str, matches: Sequence[Match]) -> list[_Maskable]:
    """The detector's matches and the masking spans, sorted by start and disjoint: a masking
    span that overlaps a match keeps its parts outside the match (an address that a match ends
    inside is not shown past the match in clear).

    Masking spans are found on the whole text, not on the window, so that a secret or a
    spaced-out number straddling the window's edge is known, and kept out whole.
    """
    own = [(m.start, m.end, m.placeholder) for m in matches]
    spans = sensitive_spans(text)
    if not spans:
        return own
    ends = [end for _, end, _ in spans]  # spans are sorted and disjoint: so are their ends
    own = sorted(_masked_evidence(text, item, spans, ends) for item in own)
    starts = [m[0] for m in own]
    merged = list(own)
    pending = list(spans)
    while pending:
        start, end, placeholder = pending.pop()
        index = bisect.bisect_right(starts, start)
        if index > 0 and own[index - 1][1] > start:  # begins inside a match: mask what follows it
            # (with nothing shown when the match's evidence already ends with the placeholder)
            shown = "" if own[index - 1][2].endswith(placeholder) else placeholder
            pending.append((own[index - 1][1], end, shown))
            continue
        if index < len(own) and own[index][0] < end:  # runs into a match: mask what precedes it,
            merged.append((start, own[index][0], placeholder))  # and what follows it
            pending.append((own[index][1], end, placeholder))
            continue
        if end > start:
            merged.append((start, end, placeholder))
    merged.sort()
    return merged


def _masked_evidence(
    text: str, item: _Maskable, spans: Sequence[_Maskable], ends: Sequence[int]
) -> _Maskable:
    """A match shown as evidence (not a typed placeholder such as `[EMAIL]`), masked with the
    spans found on the whole text: a secret recognised only with context from outside the match
    (an AWS secret key far from the word "aws"), or straddling the match's edge, is not shown."""
    start, end, placeholder = item
    if _TYPED_PLACEHOLDER.fullmatch(placeholder):
        return item
    inside: list[_Maskable] = []
    index = bisect.bisect_right(ends, start)  # the first span ending after `start`
    while index < len(spans) and spans[index][0] < end:
        s, e, p = spans[index]
        inside.append((max(s, start), min(e, end), p))
        index += 1
    if not inside:
        return item
    parts: list[str] = []
    position = start
    for s, e, p in inside:
        parts += [text[position:s], p]
        position = e
    parts.append(text[position:end])
    shown = " ".join("".join(parts).split())
    cut = max(len(placeholder.rstrip("…")), _EVIDENCE_MIN)
    return start, end, shown[:cut] + ("…" if len(shown) > cut else "")


def _left_edge(text: str, start: int, limit: int) -> int:
    """Where a window wanting to start at `start` starts: after whitespace, at most `_WIDEN` further
    out; failing that the first whitespace inwards (up to `limit`); failing that `limit`."""
    if start <= 0:
        return 0
    outward = max(text.rfind(" ", start - _WIDEN, start), text.rfind("\n", start - _WIDEN, start))
    if outward >= 0:
        return outward + 1
    inward = [i for i in (text.find(" ", start, limit), text.find("\n", start, limit)) if i >= 0]
    return min(inward) + 1 if inward else limit


def _right_edge(text: str, end: int, limit: int) -> int:
    if end >= len(text):
        return len(text)
    outward = [i for i in (text.find(" ", end, end + _WIDEN), text.find("\n", end, end + _WIDEN)) if i >= 0]
    if outward:
        return min(outward)
    inward = max(text.rfind(" ", limit, end), text.rfind("\n", limit, end))
    return inward if inward >= 0 else limit


def _excerpt(text: str, match: Match, maskables: Sequence[_Maskable], starts: Sequence[int]) -> str:
    start = _left_edge(text, max(0, match.start - _CONTEXT), match.start)
    end = _right_edge(text, min(len(text), match.end + _CONTEXT), match.end)
    # Only what is near the window matters; bisect keeps many findings from costing n squared.
    first = max(0, bisect.bisect_right(starts, start) - 1)
    last = bisect.bisect_left(starts, end)
    nearby = maskables[first:last]
    # Anything masked that straddles an edge is taken whole (it becomes a placeholder).
    for other_start, other_end, _ in nearby:
        if other_start < start < other_end:
            start = other_start
        if other_start < end < other_end:
            end = other_end
    parts: list[str] = []
    position = start
    for other_start, other_end, placeholder in nearby:
        if other_end <= start or other_start >= end or other_start < position:
            continue
        parts.append(text[position:other_start])
        parts.append(placeholder)
        position = other_end
    parts.append(text[position:end])
    excerpt = " ".join("".join(parts).split())
    cut_short = end < len(text)
    if len(excerpt) > MAX_EXCERPT_CHARS:
        # Cut at a space, so that a placeholder is never cut in half.
        cut = excerpt.rfind(" ", 0, MAX_EXCERPT_CHARS)
        excerpt, cut_short = excerpt[: cut if cut > 0 else MAX_EXCERPT_CHARS], True
    return ("…" if start > 0 else "") + excerpt + ("…" if cut_short else "")


def to_findings(text: str, matches: Sequence[Match], location: str) -> list[Finding]:
    """`Finding`s for non-overlapping `matches` in text order, each with its masked excerpt.

    At most `MAX_FINDINGS_PER_TEXT`, the most severe (then the earliest) kept.
    """
    ordered = sorted(matches, key=lambda m: m.start)
    kept = ordered
    if len(ordered) > MAX_FINDINGS_PER_TEXT:
        chosen = sorted(ordered, key=lambda m: (-m.severity.rank, m.start))[:MAX_FINDINGS_PER_TEXT]
        kept = sorted(chosen, key=lambda m: m.start)
    maskables = _maskables(text, ordered)
    starts = [m[0] for m in maskables]
    return [
        Finding(
            type=m.type,
            severity=m.severity,
            confidence=m.confidence,
            detector=m.detector,
            location=location,
            excerpt=_excerpt(text, m, maskables, starts),
            description=m.description,
        )
        for m in kept
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
