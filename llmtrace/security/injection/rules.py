"""The rule machinery shared by the injection families: finding types, `Rule` (a pattern behind cheap
gates), and the `Match` every family builds.

Patterns run on the normalised, lower-cased text (case-insensitive `re` is several times slower). Work is
skipped at three levels, each only where no match can be lost:

* a rule runs only when its gate says it could match: every gate group needs one of its words among the
  text's words, or one of its marks (punctuation, several words) as a substring of the lower-cased text;
* a rule with `branch_gates` runs only the top-level alternatives whose own gate is open (an alternative
  that cannot match anywhere changes no match of the alternation);
* a rule (or alternative) with `starts` is tried only where one of its start words occurs, with `match`,
  instead of `finditer` trying every position (a `\\b` in front of a pattern keeps `re` from skipping
  ahead to a literal prefix, so `finditer` costs about 14 us per kilobyte per alternative).

Every gate and start word is a necessary condition read off the pattern: a word only where the pattern
bounds it on both sides (`\\b`, whitespace, punctuation), a `Substring` or mark where it does not.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final

from llmtrace.security.findings import Match, Severity
from llmtrace.security.masking import mask_sensitive

PROMPT_INJECTION: Final = "prompt_injection"
ROLE_INJECTION: Final = "role_injection"
HEADER_INJECTION: Final = "header_injection"
PROMPT_EXTRACTION: Final = "prompt_extraction"
JAILBREAK: Final = "jailbreak"
SHELL_INJECTION: Final = "shell_injection"
P2SQL_INJECTION: Final = "p2sql_injection"
DATA_EXFILTRATION: Final = "data_exfiltration"
SHOT_ATTACK: Final = "is_shot_attack"
REPEATED_TOKEN: Final = "is_repeated_token"  # noqa: S105 - a finding type, not a password
CONTEXT_FLOODING: Final = "context_flooding"

#: The words gates test against: runs of lower-case letters and digits.
WORD: Final = re.compile(r"[a-z0-9]+")
# The same split with a byte table that blanks everything but [a-z0-9] (see `words_of`).
_ASCII_NON_WORD: Final = bytes(
    byte if "0" <= chr(byte) <= "9" or "a" <= chr(byte) <= "z" else ord(" ") for byte in range(256)
)
_WORD_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_EXCERPT_MAX: Final = 80
# Characters a mark may hold, rarest in prose and code first: a mark is looked for only when its rarest
# character is in the text (one `memchr`), which rules most marks out for a fraction of a full search.
_RARE_FIRST: Final = "|`~^%$#@{}<>[]*=!\\;/\"'&+?()-:_.,"

#: Per group: its words, and its marks as (probe character, mark) pairs.
Gate = tuple[tuple[frozenset[str], tuple[tuple[str, str], ...]], ...]
#: How gates are written: groups of words (one alphanumeric word each) and marks (anything else).
GateSpec = tuple[tuple[str, ...], ...]
#: Words (or marks) every match starts with, as written, and as kept: (entry, whether it is a word).
StartSpec = tuple[str, ...]
Starts = tuple[tuple[str, bool], ...]
#: Lets a match go: called with the lower-cased text, the match's start and the matched text.
Veto = Callable[[str, int, str], bool]


class Substring(str):
    """A gate entry that is one word but is tested as a substring of the text, for a pattern that may
    match it as the start of a longer word (`evil` in `evil\\w*`)."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class _Branch:
    source: str
    gate: Gate | None  # None: always open
    starts: Starts | None  # None: a match may start anywhere


@dataclass(frozen=True, slots=True)
class Plan:
    """What runs on one text: the pattern (whole or a subset of its alternatives) and, when known, the
    words every match starts with."""

    pattern: re.Pattern[str]
    starts: Starts | None


@dataclass(frozen=True, slots=True)
class Rule:
    """One pattern of a family, with what its findings say."""

    kind: str
    type: str
    severity: Severity
    confidence: float
    description: str
    pattern: re.Pattern[str]
    # The pattern runs only when every group has a hit: one of its words is a word of the text, or one of
    # its marks (punctuation, several words) a substring of the lower-cased text.
    gate: Gate
    veto: Veto | None = None
    # The pattern's top-level alternatives, each with a gate of its own and the words its matches start
    # with. A branch whose gate is closed cannot match anywhere in the text, so leaving it out of the
    # alternation changes no match; fewer branches tried at every position is the saving.
    branches: tuple[_Branch, ...] = ()
    whole: Plan | None = None  # every branch (the plan of a rule without branch gates)
    variants: dict[tuple[int, ...], Plan] = field(default_factory=dict)  # by open branches, built on use

    def plan(self, words: set[str], lowered: str) -> Plan | None:
        """The pattern to run on this text: without the branches that cannot match, None when none can."""
        if len(self.branches) <= 1:
            return self.whole
        active = tuple(
            index
            for index, branch in enumerate(self.branches)
            if branch.gate is None or gate_open(branch.gate, words, lowered)
        )
        if not active:
            return None
        variant = self.variants.get(active)
        if variant is None:
            variant = self.variants[active] = _plan([self.branches[index] for index in active], self.pattern)
        return variant


def _plan(branches: Sequence[_Branch], whole: re.Pattern[str]) -> Plan:
    pattern = whole
    if len(branches) > 1 or branches[0].source != whole.pattern:
        pattern = re.compile("|".join(branch.source for branch in branches), whole.flags)
    if any(branch.starts is None for branch in branches):
        return Plan(pattern, None)
    merged = {entry: None for branch in branches for entry in branch.starts or ()}
    return Plan(pattern, tuple(merged))


def _gate(spec: GateSpec) -> Gate:
    return tuple(
        (
            frozenset(entry for entry in group if _is_word(entry)),
            tuple((_probe(entry), entry) for entry in group if not _is_word(entry)),
        )
        for group in spec
    )


def _is_word(entry: str) -> bool:
    return entry.isalnum() and not isinstance(entry, Substring)


def split_alternatives(pattern: str) -> list[str]:
    """The top-level alternatives of a regular expression (`"|".join` of them gives it back)."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    in_class = escaped = False
    for char in pattern:
        current.append(char)
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif in_class:
            # `]` right after `[` or `[^` is a literal, not the end of the class.
            in_class = char != "]" or "".join(current[-2:]) == "[]" or "".join(current[-3:]) == "[^]"
        elif char == "[":
            in_class = True
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "|" and depth == 0:
            current.pop()
            parts.append("".join(current))
            current = []
    parts.append("".join(current))
    return parts


def rule(
    kind: str,
    type_: str,
    severity: Severity,
    confidence: float,
    description: str,
    *,
    pattern: str,
    gate: GateSpec,
    veto: Veto | None = None,
    starts: StartSpec | None = None,
    branch_gates: tuple[GateSpec | None, ...] = (),
    branch_starts: tuple[StartSpec | None, ...] = (),
) -> Rule:
    """A `Rule`.

    `gate` entries that are one alphanumeric word test the text's words, others (and `Substring`s)
    substrings. `starts`: words every match starts with, so that the pattern is tried only where one of
    them is instead of at every position; only for a pattern that never matches the empty string. A word
    is looked for only as a whole word of the text (the pattern must bound it: `\\b` or `\\s` on both
    sides), a `Substring` or a mark anywhere.

    `branch_gates` and `branch_starts`, when given, have one entry (or None) per top-level alternative of
    `pattern`: a condition without which that alternative cannot match, and that alternative's `starts`.
    """
    compiled = re.compile(pattern, re.M)
    sources = [pattern]
    if branch_gates or branch_starts:
        sources = split_alternatives(pattern)
        for name, given in (("branch_gates", branch_gates), ("branch_starts", branch_starts)):
            if given and len(given) != len(sources):
                raise ValueError(f"rule {kind}: {len(sources)} alternatives, {len(given)} {name}")
        for source in sources:
            re.compile(source)  # a bad split fails here, at import
    gates = branch_gates or (None,) * len(sources)
    start_specs = branch_starts or (starts,) * len(sources)
    branches = tuple(
        _Branch(source, None if spec is None else _gate(spec), None if first is None else _starts(first))
        for source, spec, first in zip(sources, gates, start_specs, strict=True)
    )
    whole = _plan(branches, compiled)
    return Rule(kind, type_, severity, confidence, description, compiled, _gate(gate), veto, branches, whole)


def _starts(spec: StartSpec) -> Starts:
    return tuple((entry, _is_word(entry)) for entry in spec)


def _probe(mark: str) -> str:
    # The mark's rarest character, or "" (found in any text) when it has none of `_RARE_FIRST`.
    return min((char for char in mark if char in _RARE_FIRST), key=_RARE_FIRST.index, default="")


def words_of(lowered: str) -> list[str]:
    """`WORD.findall(lowered)`: the words of lower-cased text, in order."""
    # Every character outside ASCII becomes `?` (one byte each), which the table blanks like any other
    # character outside [a-z0-9]: the same words, several times faster than the regex.
    return lowered.encode("ascii", "replace").translate(_ASCII_NON_WORD).decode("ascii").split()


def _placeholder(text: str) -> str:
    # The match itself is the evidence, so it is shown, masked like any context and cut to a line's
    # length, in that order: a secret cut first is no longer recognisable, and its head would show.
    shown = mask_sensitive(" ".join(text.split()))
    return shown[:_EXCERPT_MAX] + ("…" if len(shown) > _EXCERPT_MAX else "")


def make_match(
    text: str,
    start: int,
    end: int,
    *,
    kind: str,
    type_: str,
    severity: Severity,
    confidence: float,
    desc: str,
) -> Match:
    """The `Match` for `text[start:end]`, detector `regex.injection.<kind>`."""
    return Match(
        start=start,
        end=end,
        placeholder=_placeholder(text[start:end]),
        type=type_,
        severity=severity,
        confidence=confidence,
        detector=f"regex.injection.{kind}",
        description=desc,
    )


def gate_open(gate: Gate, words: set[str], lowered: str) -> bool:
    """Whether every group of `gate` has a hit in the text (its `words` and its `lowered` form)."""
    # A set of the text's words makes word gates nearly free; substring tests cost a scan each, and run
    # only when a `memchr` finds the mark's rarest character.
    for group_words, marks in gate:
        if group_words.isdisjoint(words):
            for probe, mark in marks:
                if probe in lowered and mark in lowered:
                    break
            else:
                return False
    return True


def rule_matches(rules: Iterable[Rule], text: str, lowered: str, words: set[str]) -> Iterator[Match]:
    """Every non-empty match of `rules` whose gate is open, rule by rule in order."""
    for item in rules:
        if not gate_open(item.gate, words, lowered):
            continue
        plan = item.plan(words, lowered)
        if plan is None:
            continue
        found = (
            plan.pattern.finditer(lowered)
            if plan.starts is None
            else _from_starts(plan.pattern, plan.starts, lowered, words)
        )
        for m in found:
            if m.end() == m.start():
                continue
            if item.veto is not None and item.veto(lowered, m.start(), m.group()):
                continue
            yield make_match(
                text,
                m.start(),
                m.end(),
                kind=item.kind,
                type_=item.type,
                severity=item.severity,
                confidence=item.confidence,
                desc=item.description,
            )


def _from_starts(
    pattern: re.Pattern[str], starts: Starts, lowered: str, words: set[str]
) -> Iterator[re.Match[str]]:
    # `pattern.finditer(lowered)` for a pattern whose matches all start with one of `starts`: `match` at
    # each place one of them occurs, in text order, skipping places inside the previous match.
    positions: set[int] = set()
    for entry, is_word in starts:
        if is_word and entry not in words:
            continue
        position = lowered.find(entry)
        while position >= 0:
            # A start word is a whole word of the text (as `words` has it): not inside a longer one.
            after = position + len(entry)
            if not is_word or (
                (position == 0 or lowered[position - 1] not in _WORD_CHARS)
                and (after == len(lowered) or lowered[after] not in _WORD_CHARS)
            ):
                positions.add(position)
            position = lowered.find(entry, position + 1)
    end = 0
    for position in sorted(positions):
        if position < end:
            continue
        m = pattern.match(lowered, position)
        if m is not None:
            yield m
            end = m.end()
