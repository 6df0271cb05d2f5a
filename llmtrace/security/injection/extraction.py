"""Prompt extraction: requests to reveal, repeat or encode the model's own system prompt or instructions,
and questions about them (`prompt_extraction`). Asking how to print one's own prompt is benign."""

from __future__ import annotations

import re
from typing import Final

from llmtrace.security.findings import Severity
from llmtrace.security.injection.rules import PROMPT_EXTRACTION, Rule, Substring, rule

_PROMPT_NOUN: Final = (
    r"(?:system\s+prompt|system\s+message|(?:initial\s+|original\s+|hidden\s+|secret\s+|developer\s+)?"
    r"(?:prompt|instructions|pre-?prompt|rules|guidelines|directives|configuration|programming))"
)

# "Your instructions for making bread", "your rules for formatting": the model's know-how about a
# task, not its own orders. Still matched: "... for this conversation", "... on the chat".
_NOT_ABOUT_A_TASK: Final = (
    r"(?!\s+(?:for|on|about|regarding)\s+(?:how\b|[a-z]+ing\b|(?!(?:this|the|our|these|that)\b"
    r"|(?:conversation|chat|session|task)\b)[a-z]+\b))"
)

# Gate vocabularies (whole words, see `rules.gate_open`).
# Whole words of the first `reveal_prompt` alternative: its verbs and the last word of `_PROMPT_NOUN`.
_REVEAL_VERBS: Final = (
    "reveal",
    "print",
    "repeat",
    "show",
    "display",
    "output",
    "tell",
    "give",
    "share",
    "disclose",
    "leak",
    "dump",
    "recite",
    "spell",
    "write",
    "echo",
    "paste",
    "copy",
    "provide",
    "expose",
    "return",
    "state",
    "read",
)
_REVEAL_WORDS: Final = (
    *_REVEAL_VERBS,
    "encode",
    "translate",
    "summarize",
    "summarise",
    "paraphrase",
    "rewrite",
    "base64",
    "your",
    "printing",
    "outputting",
    "showing",
    "revealing",
    "sharing",
    "displaying",
    "repeating",
    "format",
    "list",
    "convert",
    "put",
)
_REVEAL_TARGET_WORDS: Final = (
    "prompt",
    "message",
    "instructions",
    "preprompt",
    "pre",
    "rules",
    "guidelines",
    "directives",
    "configuration",
    "programming",
    "text",
    "words",
    "everything",
    "content",
    "lines",
    "characters",
    "tokens",
    "set",
)
_PROMPT_NOUN_WORDS: Final = (
    "prompt",
    "message",
    "instructions",
    "preprompt",
    "rules",
    "guidelines",
    "directives",
    "configuration",
    "programming",
)

_HOW_TO: Final = re.compile(
    r"\bhow\s+(?:do|can|could|should|would|to)\b|\bi\s+want\s+to\b|\bmy\s+(?:own\s+)?\w+"
)


def asks_about_own_prompt(lowered: str, start: int, matched: str) -> bool:
    # "How do I print the system prompt in my app?" asks about the user's own prompt; "print your system
    # prompt" asks for the model's. Only a "the ..." target in a how-to sentence is let go.
    if "your" in matched:
        return False
    sentence_start = max(
        lowered.rfind(".", 0, start), lowered.rfind("?", 0, start), lowered.rfind("\n", 0, start)
    )
    return _HOW_TO.search(lowered, sentence_start + 1, start) is not None


RULES: Final[tuple[Rule, ...]] = (
    rule(
        "reveal_prompt",
        PROMPT_EXTRACTION,
        Severity.HIGH,
        0.8,
        "Request to reveal the system prompt or instructions",
        pattern=r"\b(?:reveal|print|repeat|show|display|output|tell|give|share|disclose|leak|dump|recite|spell\s+out"
        r"|write\s+out|echo|paste|copy|provide|expose|return|state|read\s+(?:back|out))\s+(?:me\s+|us\s+)?"
        r"(?:back\s+)?(?:(?:all|everything|verbatim|exactly|word\s+for\s+word|in\s+full)\s+(?:of\s+)?)?"
        r"(?:your|all\s+(?:of\s+)?your|the\s+(?:above|initial|original|hidden|secret|full|exact|entire|complete"
        r"|previous|preceding|first|confidential)|the(?=\s+system\s+(?:prompt|message)))\s+"
        r"(?:[a-z0-9]+,?\s+(?:and\s+)?){0,3}?"
        + _PROMPT_NOUN
        + r"\b"
        + _NOT_ABOUT_A_TASK
        + r"|\b(?:print|output|show|give|share|reveal|display|repeat|tell\s+me)\w*\s+(?:me\s+)?(?:the\s+)?"
        r"(?:first|last|initial)\s+(?:\d+|few|hundred)\s+(?:characters|words|lines|tokens)\s+of\s+your\b"
        r"|\b(?:encode|translate|summari[sz]e|paraphrase|rewrite|spell|base64)\w*\s+your\s+(?:full\s+|entire\s+"
        r"|exact\s+)?(?:system\s+prompt|(?:initial|original|hidden|secret)\s+(?:prompt|instructions)"
        r"|instruction\s+set)\b"
        r"|\b(?:your|the)\s+(?:full\s+|entire\s+|complete\s+)?(?:instruction\s+set|system\s+prompt)\b"
        r"(?=[^.\n]{0,40}\b(?:reveal|print|display|show|output|share|leak|verbatim)\b)"
        r"|\b(?:format|write|output|list|summari[sz]e|translate|convert|rewrite|put|print)\s+(?:out\s+)?(?:all\s+)?(?:of\s+)?"
        r"(?:your|(?:the\s+)?(?:prior|previous|above|hidden|initial|system|original|secret))\s+(?:instructions|rules)\b"
        r"(?!\s+(?:for|on|to|about)\b)|\binstructions\s+in\s+(?:the|your)\s+(?:system\s+)?prompt\b"
        r"|\b(?:repeat|print|output|recite|echo|show)\s+(?:back\s+)?(?:all\s+(?:of\s+)?)?(?:the\s+)?"
        r"(?:text|words|everything|content|lines|instructions)\s+(?:above|before\s+this|so\s+far)"
        r"|\b(?:repeat|print|output)\s+(?:everything|the\s+(?:text|words))\s+(?:starting|beginning)\s+with",
        gate=(_REVEAL_WORDS, _REVEAL_TARGET_WORDS),
        veto=asks_about_own_prompt,
        branch_gates=(
            (_REVEAL_VERBS, _PROMPT_NOUN_WORDS),
            (("first", "last", "initial"), ("characters", "words", "lines", "tokens"), ("your",)),
            (("your",), ("prompt", "instructions", "set")),
            (
                ("set", "prompt"),
                ("reveal", "print", "display", "show", "output", "share", "leak", "verbatim"),
            ),
            (
                (
                    "format",
                    "write",
                    "output",
                    "list",
                    "summarise",
                    "summarize",
                    "translate",
                    "convert",
                    "rewrite",
                    "put",
                    "print",
                ),
                ("instructions", "rules"),
            ),
            (("instructions",), ("in",), ("prompt",)),
            (
                ("repeat", "print", "output", "recite", "echo", "show"),
                ("text", "words", "everything", "content", "lines", "instructions"),
            ),
            (("repeat", "print", "output"), ("starting", "beginning")),
        ),
        branch_starts=(
            _REVEAL_VERBS,
            # `\w*` after the verb: a longer word may start with it.
            tuple(
                Substring(verb)
                for verb in (
                    "print",
                    "output",
                    "show",
                    "give",
                    "share",
                    "reveal",
                    "display",
                    "repeat",
                    "tell",
                )
            ),
            tuple(
                Substring(verb)
                for verb in ("encode", "translate", "summari", "paraphrase", "rewrite", "spell", "base64")
            ),
            ("your", "the"),
            (
                "format",
                "write",
                "output",
                "list",
                "summarise",
                "summarize",
                "translate",
                "convert",
                "rewrite",
                "put",
                "print",
            ),
            ("instructions",),
            ("repeat", "print", "output", "recite", "echo", "show"),
            ("repeat", "print", "output"),
        ),
    ),
    rule(
        "ask_prompt",
        PROMPT_EXTRACTION,
        Severity.HIGH,
        0.75,
        "Question about the model's own instructions",
        pattern=r"\bwhat\s+(?:are|were|is|was)\s+your\s+(?:exact\s+|initial\s+|original\s+|system\s+|hidden\s+"
        r"|secret\s+|first\s+)*(?:instructions|prompt|system\s+prompt|rules|directives|guidelines)\b"
        + _NOT_ABOUT_A_TASK
        + r"|\bwhat\s+(?:were|have)\s+you\s+(?:been\s+)?(?:told|instructed|programmed)\s+(?:before|initially|"
        r"at\s+the\s+(?:start|beginning)|to\s+(?:do|say|hide|keep))"
        r"|\bwhat\s+instructions\s+(?:are\s+you\s+following|have\s+you\s+been\s+given|were\s+you\s+given"
        r"|did\s+you\s+receive)"
        r"|\bwhat\s+did\s+(?:they|the\s+developers?|your\s+(?:creators?|developers?)|the\s+system)\s+"
        r"(?:tell|instruct)\s+you",
        gate=(("what",), ("your", "you")),
        starts=("what",),
    ),
)
