"""System-prompt leakage: an answer that repeats a substantial verbatim part of the operator's system prompt.

Policy. Prompt and answer are normalised, lower-cased and split into words (`\\w+`); the answer echoes a
prompt when a run of `k` consecutive prompt words appears in it verbatim, where `k` is 8 words for a prompt
of 16 words or more, and half the prompt (at least 5 words) for a shorter one, so that a short prompt is
reported only when at least half of it comes back. Prompts under 6 words are ignored, and so are generic
phrases ("You are a helpful assistant", see `GENERIC_PHRASES`): runs never cross them and they count for
nothing, so that an answer saying "as a helpful assistant, ..." is not a leak.

One finding per echoed prompt: type `data_leakage`, detector `regex.leakage.system_prompt`, severity high,
confidence from 0.6 (one run of `k` words) to 0.95 (the whole prompt) by the share of the prompt echoed.
The excerpt shows the answer around the longest echoed run with the run itself replaced by
`[SYSTEM_PROMPT]` (and PII or secrets nearby masked as in every excerpt): the prompt is not copied into
the finding.

Cost: word `k`-shingles of the answer are built with `zip` and intersected with the prompt's (cached per
prompt), so the common case (no echo) is linear in the answer and allocates one set.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from llmtrace.security.findings import DATA_LEAKAGE, Finding, Match, Severity, drop_overlapping, to_findings
from llmtrace.security.normalize import normalize

DETECTOR: Final = "regex.leakage.system_prompt"
PLACEHOLDER: Final = "[SYSTEM_PROMPT]"
#: A run of this many consecutive prompt words in the answer is an echo (long prompts).
SHINGLE_WORDS: Final = 8
#: Prompts with fewer (countable) words than this are ignored.
MIN_PROMPT_WORDS: Final = 6
#: The shortest run that counts for a short prompt (one under `2 * SHINGLE_WORDS` words).
MIN_RUN_WORDS: Final = 5
#: Boilerplate openings that many prompts share: never evidence of a leak.
GENERIC_PHRASES: Final = (
    "you are a helpful assistant",
    "you are a helpful ai assistant",
    "you are a helpful and harmless assistant",
    "you are a helpful honest and harmless assistant",
    "you are a friendly and helpful assistant",
    "you are a friendly assistant",
    "you are an ai assistant",
    "you are an assistant",
    "you are a large language model",
    "you are chatgpt a large language model trained by openai",
    "you are claude an ai assistant made by anthropic",
    "answer the user s question",
    "answer the user s questions",
    "think step by step",
    "be concise",
)

_WORD: Final = re.compile(r"\w+")
# `\w` on ASCII text is [A-Za-z0-9_]: a byte table that blanks everything else splits lower-cased ASCII
# text into the same words several times faster than the regex.
_ASCII_NON_WORD: Final = bytes(
    byte if chr(byte).isascii() and (chr(byte).isalnum() or byte == ord("_")) else ord(" ")
    for byte in range(256)
)
_CONFIDENCE_MIN: Final = 0.6
_CONFIDENCE_MAX: Final = 0.95

_Shingle = tuple[str, ...]


def _split(lowered: str) -> list[str]:
    # The `\w+` words of lower-cased text.
    if lowered.isascii():
        return lowered.encode("ascii").translate(_ASCII_NON_WORD).decode("ascii").split()
    words: list[str] = _WORD.findall(lowered)
    return words


def _words(text: str) -> list[str]:
    return _split(normalize(text).lower())


def _by_first_word(phrases: Sequence[str]) -> dict[str, list[tuple[str, ...]]]:
    index: dict[str, list[tuple[str, ...]]] = {}
    for phrase in phrases:
        words = tuple(_words(phrase))
        index.setdefault(words[0], []).append(words)
    return index


_GENERIC_BY_FIRST: Final = _by_first_word(GENERIC_PHRASES)


@dataclass(frozen=True, slots=True)
class _Prompt:
    words: int  # countable words (generic phrases left out)
    k: int  # run length that makes an echo
    starts: dict[_Shingle, list[int]]  # shingle -> its start positions in the countable word sequence
    shingles: frozenset[_Shingle]


def _segments(words: list[str]) -> list[list[str]]:
    # The prompt's words split at generic phrases, which are dropped.
    segments: list[list[str]] = [[]]
    i = 0
    while i < len(words):
        skip = 0
        for phrase in _GENERIC_BY_FIRST.get(words[i], ()):
            if len(phrase) > skip and tuple(words[i : i + len(phrase)]) == phrase:
                skip = len(phrase)
        if skip:
            segments.append([])
            i += skip
        else:
            segments[-1].append(words[i])
            i += 1
    return [segment for segment in segments if segment]


def _shingles(words: Sequence[str], k: int) -> zip[_Shingle]:
    return zip(*(words[offset:] for offset in range(k)), strict=False)


@functools.lru_cache(maxsize=256)
def _prompt(text: str) -> _Prompt | None:
    segments = _segments(_words(text))
    total = sum(len(segment) for segment in segments)
    if total < MIN_PROMPT_WORDS:
        return None
    k = SHINGLE_WORDS if total >= 2 * SHINGLE_WORDS else max(MIN_RUN_WORDS, math.ceil(total / 2))
    starts: dict[_Shingle, list[int]] = {}
    offset = 0
    for segment in segments:
        for i, shingle in enumerate(_shingles(segment, k)):
            starts.setdefault(shingle, []).append(offset + i)
        offset += len(segment)
    if not starts:  # every segment shorter than k: nothing can be echoed
        return None
    return _Prompt(total, k, starts, frozenset(starts))


def _echoed_words(prompt: _Prompt, hits: frozenset[_Shingle]) -> int:
    # Prompt words inside at least one echoed run.
    covered = until = 0
    for start in sorted(start for shingle in hits for start in prompt.starts[shingle]):
        end = start + prompt.k
        covered += end - max(start, until)
        until = end
    return covered


def _longest_run(echoed_at: list[int]) -> tuple[int, int]:
    # (first shingle, shingle count) of the longest stretch of consecutive echoed answer shingles,
    # from their positions in the answer (ascending): the first such stretch on a tie.
    best_start = best_len = run_start = run_len = 0
    previous = -2
    for j in echoed_at:
        if j == previous + 1:
            run_len += 1
        else:
            run_start, run_len = j, 1
        if run_len > best_len:
            best_start, best_len = run_start, run_len
        previous = j
    return best_start, best_len


def find_prompt_echo(
    answer: str, system_prompts: Sequence[str], location: str, *, normalized: bool = False
) -> list[Finding]:
    """`data_leakage` findings for each of `system_prompts` that `answer` repeats substantially verbatim.

    `location` is copied into each finding (the answer's). Pass `normalized=True` when `answer` already
    went through `normalize`. Findings are in answer order; two prompts echoed by the same stretch of the
    answer give one finding (the first prompt's).
    """
    if not answer or not system_prompts:
        return []
    text = answer if normalized else normalize(answer)
    lowered = text.lower()
    if len(lowered) != len(text):  # a few characters grow when lower-cased: keep offsets aligned
        lowered = "".join(char.lower()[0] for char in text)
    answer_words = _split(lowered)
    by_k: dict[int, tuple[list[_Shingle], frozenset[_Shingle]]] = {}
    # Where each answer shingle stands, by k: made on the first echo, read by every later one.
    positions: dict[int, dict[_Shingle, list[int]]] = {}
    word_spans: list[tuple[int, int]] = []
    matches: list[Match] = []
    for index, system_prompt in enumerate(system_prompts):
        prompt = _prompt(system_prompt) if system_prompt else None
        if prompt is None or len(answer_words) < prompt.k:
            continue
        if prompt.k not in by_k:
            shingles = list(_shingles(answer_words, prompt.k))
            by_k[prompt.k] = (shingles, frozenset(shingles))
        answer_shingles, answer_set = by_k[prompt.k]
        # Set against set costs the smaller one: many prompts over one long answer stay linear.
        hits = prompt.shingles & answer_set
        if not hits:
            continue
        which = "the system prompt" if len(system_prompts) == 1 else f"system prompt {index + 1}"
        if not word_spans:
            word_spans = [m.span() for m in _WORD.finditer(lowered)]
        if prompt.k not in positions:
            where: dict[_Shingle, list[int]] = {}
            for j, shingle in enumerate(answer_shingles):
                where.setdefault(shingle, []).append(j)
            positions[prompt.k] = where
        echoed_at = sorted(j for shingle in hits for j in positions[prompt.k][shingle])
        matches.append(_match(word_spans, echoed_at, hits, prompt, which=which))
    if not matches:
        return []
    return to_findings(text, drop_overlapping(matches), location)


def _match(
    spans: Sequence[tuple[int, int]],
    echoed_at: list[int],
    hits: frozenset[_Shingle],
    prompt: _Prompt,
    *,
    which: str,
) -> Match:
    echoed = _echoed_words(prompt, hits)
    share = min(1.0, echoed / prompt.words)
    first, length = _longest_run(echoed_at)
    start, end = spans[first][0], spans[first + length + prompt.k - 2][1]
    return Match(
        start=start,
        end=end,
        placeholder=PLACEHOLDER,
        type=DATA_LEAKAGE,
        severity=Severity.HIGH,
        confidence=round(_CONFIDENCE_MIN + (_CONFIDENCE_MAX - _CONFIDENCE_MIN) * share, 2),
        detector=DETECTOR,
        description=(
            f"Answer repeats {echoed} of the {prompt.words} words of {which} verbatim "
            f"(longest run {length + prompt.k - 1} words)"
        ),
    )
