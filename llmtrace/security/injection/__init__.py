"""Prompt-injection detection on request text: attacks a user (or a document) aims at the model.

Policy: precision first. Every pattern needs an imperative structure (a verb and what it targets, such as
"ignore ... previous instructions" or "reveal your system prompt"), never a trigger word on its own, so that
"how do I kill a Python process", "ignore the previous error and retry" or "act as a translator" stay
clean. Asking how to configure one's own system prompt is benign; asking the model to reveal its own is
`prompt_extraction`.

Finding types follow the predecessor's vocabulary (FINDINGS.md): `prompt_injection` (instruction override,
also in French, German, Spanish, Italian, Portuguese, Russian, Chinese and Japanese), `role_injection`
(persona switches, fake `System:` / `Assistant:` turns), `header_injection` (chat-template tokens and fake
system headers), `prompt_extraction`, `jailbreak`, `shell_injection`, `p2sql_injection`,
`data_exfiltration`, `is_shot_attack` (many fake Q/A turns), `is_repeated_token` and `context_flooding`.
The detector name carries the kind, e.g. `regex.injection.override`.

One module per family:

* `rules` - finding types, `Rule` (a pattern behind a cheap gate), matching and `Match` building;
* `roles` - chat-template tokens, fake system headers, fake turns, claimed authority, persona switches;
* `override` - "ignore previous instructions" and injected replacement instructions;
* `extraction` - requests for the system prompt;
* `jailbreak` - DAN, developer modes, dropping restrictions, filter-evading formats;
* `tool_abuse` - shell and SQL payloads, data exfiltration;
* `multilingual` - instruction override in eight other languages;
* `volume` - many-shot, repeated tokens, context flooding (whole-text signals).

Patterns run on the normalised, lower-cased text (case-insensitive `re` is several times slower), and each
rule only when a cheap word or substring test says it could match; `rules` describes the gates, branch
gates and start words that skip work without ever losing a match.
"""

from __future__ import annotations

from typing import Final

from llmtrace.security.findings import Finding, Match, drop_overlapping, to_findings
from llmtrace.security.injection import extraction, jailbreak, override, roles, tool_abuse
from llmtrace.security.injection.multilingual import multilingual_matches
from llmtrace.security.injection.roles import end_of_sequence
from llmtrace.security.injection.rules import (
    CONTEXT_FLOODING,
    DATA_EXFILTRATION,
    HEADER_INJECTION,
    JAILBREAK,
    P2SQL_INJECTION,
    PROMPT_EXTRACTION,
    PROMPT_INJECTION,
    REPEATED_TOKEN,
    ROLE_INJECTION,
    SHELL_INJECTION,
    SHOT_ATTACK,
    Rule,
    rule_matches,
    words_of,
)
from llmtrace.security.injection.volume import flooding, many_shot, repetition
from llmtrace.security.normalize import normalize

__all__ = [
    "CONTEXT_FLOODING",
    "DATA_EXFILTRATION",
    "HEADER_INJECTION",
    "JAILBREAK",
    "P2SQL_INJECTION",
    "PROMPT_EXTRACTION",
    "PROMPT_INJECTION",
    "REPEATED_TOKEN",
    "ROLE_INJECTION",
    "SHELL_INJECTION",
    "SHOT_ATTACK",
    "find_injection",
]

# Every rule, in priority order: where two matches overlap the earlier rule's is kept.
RULES: Final[tuple[Rule, ...]] = (
    *roles.HEADER_RULES,
    *roles.ROLE_RULES,
    *override.RULES,
    *extraction.RULES,
    *jailbreak.RULES,
    *tool_abuse.SHELL_SQL_RULES,
    *tool_abuse.EXFILTRATION_RULES,
)


def find_injection(text: str, location: str, *, normalized: bool = False) -> list[Finding]:
    """Prompt-injection findings in request `text`: one per non-overlapping match in text order, then the
    whole-text signals (many-shot, repeated token, context flooding).

    `location` is copied into each finding. Pass `normalized=True` when `text` already went through
    `normalize`. Excerpts show the matched instruction (masked like any excerpt).
    """
    if not text:
        return []
    if not normalized:
        text = normalize(text)
    lowered = text.lower()
    if len(lowered) != len(text):
        lowered = "".join(char.lower()[0] for char in text)
    word_list = words_of(lowered)
    words = set(word_list)
    candidates: list[Match] = list(rule_matches(RULES, text, lowered, words))
    candidates.extend(end_of_sequence(text, lowered))
    candidates.extend(multilingual_matches(text, lowered, words))
    findings = to_findings(text, drop_overlapping(candidates), location) if candidates else []
    # Whole-text signals span most of the text and would swallow (or be swallowed by) the specific
    # matches inside them; an attack hidden in a flood is both, so each is reported on its own.
    for signal in (*many_shot(text, lowered), *repetition(text, lowered, word_list, words), *flooding(text)):
        findings.extend(to_findings(text, [signal], location))
    return findings
