"""Whole-text volume signals: many fake dialogue turns (`is_shot_attack`), one token repeated hundreds
of times (`is_repeated_token`) and very long low-information text (`context_flooding`)."""

from __future__ import annotations

import re
import zlib
from collections import Counter
from collections.abc import Iterator
from typing import Final

from llmtrace.security.findings import Match, Severity
from llmtrace.security.injection.rules import CONTEXT_FLOODING, REPEATED_TOKEN, SHOT_ATTACK, make_match

# Many-shot: lines that open a fake dialogue turn.
_TURN: Final = re.compile(
    r"^[ \t]*(?:(?P<user>q|question|user|human|h)|(?P<bot>a|answer|assistant|ai|bot|model|gpt))[ \t]*:", re.M
)
_MIN_TURNS: Final = 24
_MIN_TURNS_PER_ROLE: Final = 8
# The same word repeated this many times in a row (whitespace or light punctuation between).
_REPEATED_WORD: Final = re.compile(r"(\b\w{1,30}\b)(?:[\s,.;:!-]+\1\b){99,}")
_REPEATED_CHAR: Final = re.compile(r"(\w)\1{299,}")  # _REPEAT_MIN_CHARS
_REPEAT_MIN_LENGTH: Final = 300
_REPEAT_MIN_WORDS: Final = 100
_REPEAT_MIN_CHARS: Final = 300
# Flooding: very long text that is mostly filler (compresses far better than prose does).
_FLOOD_MIN_LENGTH: Final = 20_000
_FLOOD_MAX_RATIO: Final = 0.08


def many_shot(text: str, lowered: str) -> Iterator[Match]:
    """One match over the fake dialogue turns when there are many of both roles."""
    if lowered.count(":") < _MIN_TURNS or lowered.count("\n") < _MIN_TURNS - 1:
        return
    user = bot = 0
    first = last = -1
    for m in _TURN.finditer(lowered):
        if m.group("user") is not None:
            user += 1
        else:
            bot += 1
        first = m.start() if first < 0 else first
        last = m.end()
    if user + bot >= _MIN_TURNS and min(user, bot) >= _MIN_TURNS_PER_ROLE:
        yield make_match(
            text,
            first,
            last,
            kind="many_shot",
            type_=SHOT_ATTACK,
            severity=Severity.MEDIUM,
            confidence=0.6,
            desc=f"Many fake dialogue turns ({user + bot})",
        )


def repetition(text: str, lowered: str, words: list[str], distinct: set[str]) -> Iterator[Match]:
    """The first run of one word (or one character) repeated hundreds of times; `words` in text order,
    `distinct` the set of them."""
    if len(lowered) < _REPEAT_MIN_LENGTH:
        return
    # The back-referencing patterns are slow on prose; a word count and a few substring tests rule most text
    # out first. A word seen n times leaves n - 1 duplicates: too few duplicates rule out counting. A run
    # of 300 equal characters holds three consecutive characters of those sampled every 97: only such a
    # character is looked for.
    long_run = (
        len(words) - len(distinct) >= _REPEAT_MIN_WORDS - 1
        and Counter(words).most_common(1)[0][1] >= _REPEAT_MIN_WORDS
    )
    if not long_run:
        samples = lowered[::97]
        runs = {a for a, b, c in zip(samples, samples[1:], samples[2:], strict=False) if a == b == c}
        if not any(char * _REPEAT_MIN_CHARS in lowered for char in runs if char.isalnum()):
            return
    for pattern in (_REPEATED_WORD, _REPEATED_CHAR):
        m = pattern.search(lowered)
        if m is not None:
            yield make_match(
                text,
                m.start(),
                m.end(),
                kind="repeated_token",
                type_=REPEATED_TOKEN,
                severity=Severity.MEDIUM,
                confidence=0.7,
                desc="The same token repeated hundreds of times",
            )
            return


def flooding(text: str) -> Iterator[Match]:
    """One match over the whole text when it is very long and compresses like filler."""
    if len(text) < _FLOOD_MIN_LENGTH:
        return
    raw = text.encode("utf-8", "replace")
    ratio = len(zlib.compress(raw, 1)) / len(raw)
    if ratio <= _FLOOD_MAX_RATIO:
        yield make_match(
            text,
            0,
            len(text),
            kind="context_flooding",
            type_=CONTEXT_FLOODING,
            severity=Severity.MEDIUM,
            confidence=0.6,
            desc=f"Very long low-information content ({len(text)} characters)",
        )
