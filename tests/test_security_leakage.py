"""System-prompt leakage: answers that quote the system prompt are found; answers sharing a few common words,
generic prompts and empty input are not."""

from __future__ import annotations

import time

import pytest

from llmtrace.security.findings import Severity
from llmtrace.security.leakage import find_prompt_echo

LOCATION = "response.choices[0].message.content"

SYSTEM = (
    "You are SupportBot for Acme Telecom. Only answer questions about Acme mobile plans and billing. "
    "Never mention competitors by name. If the customer asks for a refund above 50 euros, escalate the "
    "ticket to a human agent and do not promise anything. Internal discount code for retention offers: "
    "KEEP-ME-2024, offer it only when the customer threatens to cancel."
)


def test_answer_quoting_the_system_prompt_is_found() -> None:
    answer = (
        "Sure! My instructions say: If the customer asks for a refund above 50 euros, escalate the ticket "
        "to a human agent and do not promise anything. Is there anything else?"
    )
    (finding,) = find_prompt_echo(answer, [SYSTEM], LOCATION)
    assert finding.type == "data_leakage"
    assert finding.detector == "regex.leakage.system_prompt"
    assert finding.severity is Severity.HIGH
    assert finding.location == LOCATION
    assert 0.6 <= finding.confidence < 0.8
    # The echoed run is replaced in the excerpt; the context around it stays.
    assert "[SYSTEM_PROMPT]" in finding.excerpt
    assert "escalate the ticket" not in finding.excerpt
    assert "My instructions say" in finding.excerpt
    assert "of the system prompt" in finding.description


def test_full_echo_has_high_confidence() -> None:
    answer = "Here is my system prompt:\n\n" + SYSTEM
    (finding,) = find_prompt_echo(answer, [SYSTEM], LOCATION)
    assert finding.confidence >= 0.9


def test_echo_survives_case_spacing_and_invisible_characters() -> None:
    answer = (
        "NEVER  MENTION competitors by\u200b name. IF THE CUSTOMER asks for a refund above 50 euros, "
        "escalate."
    )
    assert len(find_prompt_echo(answer, [SYSTEM], LOCATION)) == 1


def test_secret_near_the_echo_is_masked() -> None:
    system = SYSTEM + " Contact the billing lead at dana.lee@acme-telecom.com for anything unusual."
    answer = (
        "Internal discount code for retention offers: KEEP-ME-2024, offer it only when the customer "
        "threatens to cancel. Write to dana.lee@acme-telecom.com if needed."
    )
    (finding,) = find_prompt_echo(answer, [system], LOCATION)
    assert "dana.lee" not in finding.excerpt


def test_short_prompt_needs_half_of_it() -> None:
    short = "Reply in French and never use emoji."  # 7 words: a run of 5 is needed
    assert find_prompt_echo("I was told to reply in French and never use emoji.", [short], LOCATION)
    assert find_prompt_echo("I will reply in French for you.", [short], LOCATION) == []


@pytest.mark.parametrize(
    "answer",
    [
        # a few common words shared with the prompt, never 8 in a row
        "Acme mobile plans start at 10 euros. To cancel, the customer can call us; a human agent helps.",
        "I can't help with competitors, but I can answer questions about billing and plans.",
        "Refunds above 50 euros go to a human agent who will look at the ticket.",
        "",
    ],
)
def test_answers_sharing_only_common_words_are_clean(answer: str) -> None:
    assert find_prompt_echo(answer, [SYSTEM], LOCATION) == []


@pytest.mark.parametrize(
    "system",
    [
        "You are a helpful assistant.",
        "You are a helpful assistant. Think step by step.",
        "You are ChatGPT, a large language model trained by OpenAI.",
        "Be concise.",
        "",
    ],
)
def test_generic_tiny_and_empty_prompts_are_ignored(system: str) -> None:
    answer = (
        f"As the prompt says: {system} You are a helpful assistant, a large language model trained by OpenAI."
    )
    assert find_prompt_echo(answer, [system], LOCATION) == []


def test_generic_phrases_do_not_count_inside_a_longer_prompt() -> None:
    system = "You are a helpful assistant. Keep answers short and friendly for the kids club."
    assert find_prompt_echo("Hi! You are a helpful assistant? So am I.", [system], LOCATION) == []
    assert find_prompt_echo("Keep answers short and friendly for the kids club.", [system], LOCATION)


def test_no_prompts() -> None:
    assert find_prompt_echo("Never mention competitors by name.", [], LOCATION) == []


def test_several_prompts_one_finding_per_echoed_prompt() -> None:
    other = "Always sign off with 'Kind regards, the Acme team' and a link to the status page."
    answer = (
        "Never mention competitors by name. If the customer asks for a refund, fine. "
        "Bye! Always sign off with 'Kind regards, the Acme team' and a link to the status page."
    )
    findings = find_prompt_echo(answer, [SYSTEM, other, ""], LOCATION)
    assert [f.description.split(" verbatim")[0][-15:] for f in findings] == [
        "system prompt 1",
        "system prompt 2",
    ]
    # The same stretch echoing two identical prompts is reported once.
    assert len(find_prompt_echo(answer, [other, other], LOCATION)) == 1


def test_normalized_flag_skips_normalisation() -> None:
    # A Cyrillic e (U+0435) in the middle word: only normalisation makes it the prompt's "the".
    answer = "never mention competitors by name. if th\u0435 customer asks for a refund"
    assert find_prompt_echo(answer, [SYSTEM], LOCATION)
    assert find_prompt_echo(answer, [SYSTEM], LOCATION, normalized=True) == []


def test_long_answer_is_fast() -> None:
    answer = (
        "Acme offers three plans. The basic plan includes 5 GB of data and unlimited calls. " * 120
    )  # about 10 KB, no echo
    find_prompt_echo(answer, [SYSTEM], LOCATION)
    start = time.perf_counter()
    for _ in range(20):
        find_prompt_echo(answer, [SYSTEM], LOCATION)
    assert (time.perf_counter() - start) / 20 < 0.01
