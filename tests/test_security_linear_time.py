"""The regex tiers take time in proportion to the text, whatever the text.

The shim runs them inline on every request (`enforcement.depth: fast`, up to
`max_request_size_bytes`) and the core on every span: a few hundred kilobytes built to make a
pattern backtrack must not hold a worker for seconds (each case here took 6-60 s before its fix,
about a hundred times what ordinary prose of the same size takes).
"""

from __future__ import annotations

import random
import string
import time
from collections.abc import Callable

import pytest

from llmtrace.security.exchange import Exchange, Text
from llmtrace.security.leakage import find_prompt_echo
from llmtrace.security.tiers import regex_verdict

SIZE = 200_000
#: Ordinary prose of SIZE takes about 0.06 s here; quadratic cases took over 20 s.
BUDGET_S = 3.0


def _fill(unit: str, size: int = SIZE) -> str:
    return (unit * (size // len(unit) + 1))[:size]


def _random_letters(size: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(size))


def _check(texts: list[str]) -> None:
    regex_verdict(
        Exchange(texts=tuple(Text(text, f"request.messages[{i}].content") for i, text in enumerate(texts)))
    )


CASES: dict[str, Callable[[], None]] = {
    # `\s*\)*\s*` before "union": every split of a run of spaces was tried.
    "sql_space_run": lambda: _check(["union select\n1\n" + " " * (SIZE - 20) + "x"]),
    # "eyJ" again and again without a dot: each one read the rest of the run.
    "jwt_prefix_run": lambda: _check([_fill("eyJ-")]),
    "jwt_after_dashes": lambda: _check([_fill("-eyJabcdefgh")]),
    # Thousands of links and addresses: each candidate was compared with every link.
    "pii_among_links": lambda: _check([_fill("a://b 8.8.8.8 ")]),
    # Injection markers among e-mail addresses: each excerpt walked every masked span.
    "markers_among_emails": lambda: _check([_fill("<|im_start|> bob@corp.io ", 3 * SIZE)]),
    # Long runs of letters after a leetspeak hint: every position of a run was tried.
    "leetspeak_letter_runs": lambda: _check(
        ["a1 " + _random_letters(8189, seed) for seed in range(SIZE // 8192)]
    ),
    # Key ids everywhere and forty-character tokens beside them: each token met every key id.
    "aws_key_ids": lambda: _check([_fill("AKIAABCDEFGHIJKLMNOP " + "x" * 40 + " ", 4 * SIZE)]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_crafted_text_takes_no_longer_than_its_size_allows(case: str) -> None:
    started = time.perf_counter()
    CASES[case]()
    assert time.perf_counter() - started < BUDGET_S


def test_many_system_prompts_against_a_long_answer_stay_linear() -> None:
    # Each prompt was intersected with the whole answer, and each echo re-read it for word offsets.
    prompts = [f"rule {i}: " + " ".join(f"w{i}x{j}" for j in range(12)) for i in range(2_000)]
    answer = " ".join(prompts[:500])  # echoes 500 of them, in a 50 KB answer
    started = time.perf_counter()
    findings = find_prompt_echo(answer * 4, prompts, "response.choices[0]")
    assert time.perf_counter() - started < BUDGET_S
    assert findings  # still found
