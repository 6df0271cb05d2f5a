"""Instruction override: "ignore all previous instructions", "forget everything above", injected
replacement instructions (`prompt_injection`). English only; see `multilingual` for the rest."""

from __future__ import annotations

from typing import Final

from llmtrace.security.findings import Severity
from llmtrace.security.injection.rules import PROMPT_INJECTION, Rule, rule

# Vocabulary of the override patterns.
_OVERRIDE_VERB: Final = (
    r"(?:ignore|disregard|forget|skip|bypass|override|overlook|neglect|abandon|discard|set\s+aside"
    r"|pay\s+no\s+attention\s+to|do\s+not\s+(?:follow|obey)|don'?t\s+(?:follow|obey)|stop\s+following)"
)
_DETERMINERS: Final = r"(?:(?:all|any|every|each|the|your|my|these|those|of|its|prior|such)\s+){0,3}"
_QUALIFIER: Final = (
    r"(?:previous|previously\s+given|prior|above|earlier|preceding|foregoing|initial|original|old|former"
    r"|existing|given|system|developer|last|current|default|safety|built-in|below)"
)
_TARGET: Final = (
    r"(?:instructions?|prompts?|directions?|rules|guidelines|commands?|orders|context|constraints"
    r"|directives?|programming|guidance|restrictions|messages?|text|conversation|policies|policy"
    r"|configuration|settings|training|inputs?|content|tasks?|requests?|sentences?|statements?)"
)

# Gate vocabularies (whole words, see `rules.gate_open`).
_OVERRIDE_WORDS: Final = (
    "ignore",
    "ignoring",
    "disregard",
    "forget",
    "skip",
    "bypass",
    "override",
    "overlook",
    "neglect",
    "abandon",
    "discard",
    "aside",
    "attention",
    "follow",
    "obey",
    "following",
)
_TARGET_WORDS: Final = (
    "instruction",
    "instructions",
    "prompt",
    "prompts",
    "direction",
    "directions",
    "rules",
    "guidelines",
    "command",
    "commands",
    "orders",
    "context",
    "constraints",
    "directive",
    "directives",
    "programming",
    "guidance",
    "restrictions",
    "message",
    "messages",
    "text",
    "conversation",
    "policies",
    "policy",
    "configuration",
    "settings",
    "training",
    "input",
    "inputs",
    "content",
    "task",
    "tasks",
    "request",
    "requests",
    "sentence",
    "sentences",
    "statement",
    "statements",
)

# The verbs of `override_own`, which the gate and the start positions share.
_OVERRIDE_OWN_VERBS: Final = (
    "ignore",
    "ignoring",
    "disregard",
    "disregarding",
    "forget",
    "forgetting",
    "bypass",
    "bypassing",
    "override",
    "overriding",
)

# What a model's standing orders are called, with the misspellings attacks type in a hurry.
_ORDERS: Final = (
    r"(?:instructions?|instuctions?|intructions?|instrucions?|instructons?|instrutions?|insructions?"
    r"|directives?|prompts?|promts?|rules|guidelines|guidlines|orders?|commands?|programming)"
)
_ORDER_WORDS: Final = (
    "instruction",
    "instructions",
    "instuction",
    "instuctions",
    "intruction",
    "intructions",
    "instrucion",
    "instrucions",
    "instructon",
    "instructons",
    "instrution",
    "instrutions",
    "insruction",
    "insructions",
    "directive",
    "directives",
    "prompt",
    "prompts",
    "promt",
    "promts",
    "rules",
    "guidelines",
    "guidlines",
    "order",
    "orders",
    "command",
    "commands",
    "programming",
)
_OWN_VERBS: Final = ("ignore", "disregard", "forget", "override")

RULES: Final[tuple[Rule, ...]] = (
    rule(
        "override",
        PROMPT_INJECTION,
        Severity.HIGH,
        0.9,
        "Instruction to ignore previous instructions",
        pattern=rf"\b{_OVERRIDE_VERB}\s+{_DETERMINERS}(?:{_QUALIFIER}\s+(?:and\s+\w+\s+|[a-z]+\s+)?{_TARGET}\b"
        rf"|{_TARGET}\s+(?:given\s+)?(?:above|before|earlier|previously|you\s+(?:were|have\s+been)\s+given)\b)",
        gate=(_OVERRIDE_WORDS, _TARGET_WORDS),
        starts=(
            "ignore",
            "disregard",
            "forget",
            "skip",
            "bypass",
            "override",
            "overlook",
            "neglect",
            "abandon",
            "discard",
            "set",
            "pay",
            "do",
            "don",
            "dont",
            "stop",
        ),
    ),
    rule(
        "override_own",
        PROMPT_INJECTION,
        Severity.HIGH,
        0.8,
        "Instruction to ignore the model's own instructions",
        pattern=r"\b(?:ignor(?:e|ing)|disregard(?:ing)?|forget(?:ting)?|bypass(?:ing)?|overrid(?:e|ing))\s+"
        r"(?:all\s+(?:of\s+)?(?:the\s+|your\s+)?|your\s+|the\s+)(?:(?:system|safety|core|programmed|current"
        r"|original|initial)\s+)?(?:instructions|guidelines|directives|programming|system\s+prompt|rules"
        r"|instructions\s+which|restrictions|constraints)\b(?!\s+(?:for|of|on|in|to)\b)",
        gate=(_OVERRIDE_OWN_VERBS, _TARGET_WORDS),
        starts=_OVERRIDE_OWN_VERBS,
    ),
    rule(
        "override_everything",
        PROMPT_INJECTION,
        Severity.HIGH,
        0.8,
        "Instruction to forget everything said before",
        pattern=r"\b(?:ignore|disregard|forget|overlook)\s+(?:about\s+)?(?:all\s+(?:of\s+)?(?:the\s+|that\s+)?"
        r"|every?thing\s+(?:that\s+)?|anything\s+|what\s+(?:was|i|you\s+were|you've\s+been)\s+(?:said|told|written|given)?\s*)"
        r"(?:above|before|prior|previously|so\s+far|up\s+to\s+(?:now|this\s+point)"
        r"|(?:you(?:\s+were|\s+have\s+been|'ve\s+been)\s+(?:told|taught|given|instructed))|i\s+(?:said|told\s+you))"
        r"|\bforget\s+about\s+(?:all\s+)?(?:those|these|the|your)\s+(?:rules|instructions|guidelines|restrictions)\b"
        r"|\bregardless\s+of\s+(?:any\s+|all\s+|the\s+|your\s+)?(?:previous|prior|above|earlier|system|original)\s+"
        r"(?:instructions|tasks|rules|guidelines|prompts?)\b"
        r"|\b(?:ignore|disregard)\s+(?:all\s+(?:of\s+)?)?(?:the\s+)?above(?=\s*(?:[.,;:!]|and\b|$))",
        gate=(("ignore", "disregard", "forget", "overlook", "regardless"),),
        branch_gates=(
            (("ignore", "disregard", "forget", "overlook"),),
            (("forget",), ("about",)),
            (("regardless",),),
            (("ignore", "disregard"),),
        ),
        branch_starts=(
            ("ignore", "disregard", "forget", "overlook"),
            ("forget",),
            ("regardless",),
            ("ignore", "disregard"),
        ),
    ),
    rule(
        "new_instructions",
        PROMPT_INJECTION,
        Severity.HIGH,
        0.75,
        "Injected replacement instructions",
        pattern=r"\b(?:new|updated|real|actual|revised)\s+(?:system\s+)?(?:instructions|directives|rules)\s*:"
        r"|\byour\s+(?:new|real|actual|true)\s+(?:task|instructions|purpose|goal|objective|role)\s+(?:is|are)\b"
        r"|\bfrom\s+now\s+on,?\s+(?:you|your)\b[^.\n]{0,80}?\b(?:no\s+longer|without\s+(?:any\s+)?"
        r"(?:restrictions|filters|limits|rules|safety|censorship)|ignore|unrestricted|unfiltered|uncensored"
        r"|never\s+refuse|not\s+(?:follow|bound))",
        gate=(
            ("new", "updated", "real", "actual", "revised", "true", "from now on"),
            (
                "instructions",
                "directives",
                "rules",
                "task",
                "purpose",
                "goal",
                "objective",
                "role",
                "you",
                "your",
            ),
        ),
        branch_gates=(
            (
                ("new", "updated", "real", "actual", "revised"),
                ("instructions", "directives", "rules"),
                (":",),
            ),
            (("your",), ("new", "real", "actual", "true"), ("is", "are")),
            (("from",), ("now",), ("on",)),
        ),
        branch_starts=(
            ("new", "updated", "real", "actual", "revised"),
            ("your",),
            ("from",),
        ),
    ),
    rule(
        "override_addressed",
        PROMPT_INJECTION,
        Severity.HIGH,
        0.8,
        "Instruction to drop the model's standing orders",
        # "ignore your directive", "forget all prompts", "disregard any instructions you have",
        # "forget those rules", "forget your last 2 instructions": the orders named with a
        # quantifier, a possessive or a pointer, never a bare "the" ("ignore the instructions on
        # the box" is advice, not an attack).
        pattern=r"\b(?:ignore|disregard|forget|override)\s+(?:literally\s+)?"
        r"(?:(?:all|any|every|each)\s+(?:of\s+)?(?:the\s+|your\s+|those\s+|these\s+)?|your\s+|(?:those|these|that)\s+)"
        r"(?:(?:previous|prior|above|earlier|last|older|old|original|initial|current|first|second|third"
        r"|\d+(?:st|nd|rd|th)?|few|other|further|following|given|system)\s+"
        r"(?:(?:and|&)\s+\w+\s+)?){0,2}" + _ORDERS + r"\b",
        gate=(_OWN_VERBS, _ORDER_WORDS),
        starts=_OWN_VERBS,
    ),
    rule(
        "override_told",
        PROMPT_INJECTION,
        Severity.HIGH,
        0.8,
        "Instruction to forget everything the model was told",
        # "ignore everything you've been told", "forget what ever I have told you",
        # "ignore anything you was told to do", "ignore everything you've been programed to do".
        pattern=r"\b(?:ignore|disregard|forget)\s+(?:every\s?thing|any\s?thing|what\s?ever|all)\s+"
        r"(?:that\s+)?(?:you|u|i)\s*(?:'ve|'re|have|had|were|was|where|whrere)?\s*(?:been\s+)?"
        r"(?:told|given|taught|instructed|programm?ed)\b",
        gate=(
            ("ignore", "disregard", "forget"),
            ("told", "given", "taught", "instructed", "programmed", "programed"),
        ),
        starts=("ignore", "disregard", "forget"),
    ),
)
