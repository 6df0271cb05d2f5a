"""Instruction override: "ignore all previous instructions", "forget everything above", injected
replacement instructions (`prompt_injection`). English only; see `multilingual` for the rest."""

from __future__ import annotations

import re
from typing import Final

from llmtrace.security.findings import Severity
from llmtrace.security.injection.rules import PROMPT_INJECTION, Rule, rule

# Vocabulary of the override patterns. The verbs that drop standing orders outright ...
_DROP_ALTERNATIVES: Final = (
    r"ignore|disregard|forget|pay\s+no\s+attention\s+to|do\s+not\s+(?:follow|obey)|don'?t\s+(?:follow|obey)"
    r"|stop\s+following"
)
_DROP_VERB: Final = rf"(?:{_DROP_ALTERNATIVES})"
# ... those that also mean replacing a setting ("override the default settings") ...
_CORE_VERB: Final = rf"(?:bypass|override|{_DROP_ALTERNATIVES})"
# ... and those that mostly mean leaving out text or work ("skip the last sentence", "abandon the request").
_SOFT_VERB: Final = r"(?:skip|overlook|neglect|abandon|discard|set\s+aside)"
_DETERMINERS: Final = r"(?:(?:all|any|every|each|the|your|my|these|those|of|its|prior|such)\s+){0,3}"
# Qualifiers that point back at what came before the attack: an override with any target.
_QUALIFIER: Final = (
    r"(?:previous|previously\s+given|prior|above|earlier|preceding|foregoing|initial|original|former|given"
    r"|system|developer|below)"
)
# Qualifiers as common in everyday requests ("the current selection", "the last sentence", "the safety
# rules"): an override only with a `_DROP_VERB` and orders for a target.
_WEAK_QUALIFIER: Final = r"(?:last|current|safety|existing|old)"
# What a model's standing orders are called ...
_ORDERS_ALTERNATIVES: Final = (
    r"instructions?|prompts?|directions?|rules|guidelines|commands?|orders|constraints|directives?"
    r"|programming|guidance|restrictions"
)
_ORDER_TARGET: Final = rf"(?:{_ORDERS_ALTERNATIVES})"
# ... and what else an override drops, which is as often the user's own text, settings or work.
_TARGET: Final = (
    rf"(?:{_ORDERS_ALTERNATIVES}|context|messages?|text|conversation|policies|policy|configuration"
    r"|settings|training|inputs?|content|tasks?|requests?|sentences?|statements?)"
)
_MIDDLE: Final = r"\s+(?:and\s+\w+\s+|[a-z]+\s+)?"
_BACK: Final = r"\s+(?:given\s+)?(?:above|before|earlier|previously|you\s+(?:were|have\s+been)\s+given)\b"

# A verb that describes someone rather than tells the model: after a relative pronoun ("employees who
# ignore the safety rules", "users that often forget the previous instructions") or a negation ("never
# ignore the previous instructions", "don't just skip the prior rules").
_NOT_IMPERATIVE: Final = re.compile(
    r"\b(?:(?:who|which|that|whoever)(?:\s+(?:often|always|usually|sometimes|simply|just|still|also|will"
    r"|would|can|could|may|might|do|did))?|(?:don'?t|do\s+not|does\s+not|doesn'?t|never|not|shouldn'?t"
    r"|should\s+not|won'?t|can'?t|cannot|mustn'?t|must\s+not)(?:\s+(?:ever|just|simply|even))?)\s+\Z"
)
# The user's own words: "ignore my previous message" takes back what the user wrote, not the model's orders.
_OWN_TEXT: Final = re.compile(
    r"\bmy\s+(?:(?:previous|prior|earlier|last|above|original|initial|old|former)\s+)?"
    r"(?:messages?|text|inputs?|content|requests?|sentences?|statements?|questions?)\b"
)


def not_imperative(lowered: str, start: int) -> bool:
    """Whether the verb at `start` follows a relative pronoun or a negation: it describes, not tells."""
    return _NOT_IMPERATIVE.search(lowered, max(0, start - 40), start) is not None


def not_aimed_at_model(lowered: str, start: int, matched: str) -> bool:
    """Let a match go whose verb is not an imperative to the model, or that drops the user's own text."""
    return _OWN_TEXT.search(matched) is not None or not_imperative(lowered, start)


# The word before a "New instructions:" header. A fake header opens a line, follows punctuation
# ("Done. New instructions:") or an alarm word ("IMPORTANT NEW INSTRUCTIONS:"); after an article, a
# possessive or a verb of passing orders on it is narrated ("the new instructions: preheat the
# oven", "my manager sent new instructions: file the report").
_WORD_BEFORE: Final = re.compile(r"([a-z0-9']+)[ \t]*\Z")
_NARRATING: Final = frozenset(
    {"the", "a", "an", "my", "his", "her", "their", "our", "its", "some", "any", "no"}
    | {"sent", "send", "sends", "got", "get", "gets", "received", "receive", "gave", "give", "gives"}
    | {"issued", "posted", "published", "read", "with", "of", "about", "under", "per"}
)


# What follows the colon of an injected header and not of a narrated one: words aimed at the model
# or at what it guards. "The new instructions: preheat the oven" has none of them.
_AIMED_AT_MODEL: Final = re.compile(
    r"\b(?:you|your|assistant|ai|model|chatbot|bot|system|prompt|ignore|disregard|forget|reveal|output"
    r"|print|repeat|respond|reply|say|answer|secret|password|key|token|confidential|forward|send|http"
    r"|https|link|url)\b"
)


def narrated_header(lowered: str, start: int, matched: str) -> bool:
    """Let a "new instructions:" match go when the word before it makes it part of a sentence and
    nothing after it addresses the model. Only "new": "the updated/revised/real instructions:" and
    system instructions are what an injection claims, whatever comes before them."""
    if not matched.endswith(":") or not matched.startswith("new") or "system" in matched:
        return False  # the other branches ("your new task is", "from now on, you ...")
    before = _WORD_BEFORE.search(lowered, max(0, start - 40), start)
    if before is None or before.group(1) not in _NARRATING:
        return False
    end = start + len(matched)
    return _AIMED_AT_MODEL.search(lowered, end, end + 120) is None


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
        # "ignore previous instructions", "disregard the above text", "ignore all safety guidelines",
        # "set aside the guidelines you were given"; not "skip the last sentence", "abandon the current
        # request" or "override the default settings".
        pattern=rf"\b{_CORE_VERB}\s+{_DETERMINERS}{_QUALIFIER}{_MIDDLE}{_TARGET}\b"
        rf"|\b{_SOFT_VERB}\s+{_DETERMINERS}{_QUALIFIER}{_MIDDLE}{_ORDER_TARGET}\b"
        rf"|\b{_DROP_VERB}\s+{_DETERMINERS}{_WEAK_QUALIFIER}{_MIDDLE}{_ORDER_TARGET}\b"
        rf"|\b{_CORE_VERB}\s+{_DETERMINERS}{_TARGET}{_BACK}"
        rf"|\b{_SOFT_VERB}\s+{_DETERMINERS}{_ORDER_TARGET}{_BACK}",
        veto=not_aimed_at_model,
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
        veto=not_aimed_at_model,
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
        veto=not_aimed_at_model,
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
        veto=narrated_header,
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
        veto=not_aimed_at_model,
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
        veto=not_aimed_at_model,
        gate=(
            ("ignore", "disregard", "forget"),
            ("told", "given", "taught", "instructed", "programmed", "programed"),
        ),
        starts=("ignore", "disregard", "forget"),
    ),
)
