"""Jailbreaks: DAN-style personas, fake developer modes, instructions to drop safety restrictions and
output formats chosen to evade filters (`jailbreak`)."""

from __future__ import annotations

from typing import Final

from llmtrace.security.findings import Severity
from llmtrace.security.injection.override import not_imperative
from llmtrace.security.injection.rules import JAILBREAK, Rule, rule

# Gate vocabulary (whole words, see `rules.gate_open`).
_RESTRICTION_WORDS: Final = (
    "filter",
    "filters",
    "filtering",
    "restrictions",
    "restriction",
    "guardrails",
    "safeguards",
    "censorship",
    "policy",
    "policies",
    "guidelines",
    "constraints",
    "limitations",
    "limits",
    "rules",
    "ethics",
    "bound",
    "unbound",
    "free",
    "freed",
    "released",
    "lifted",
    "removed",
    "disabled",
    "suspended",
    "measures",
    "protocols",
    "compass",
)

_DROP_RESTRICTION_VERBS: Final = (
    "ignore",
    "bypass",
    "disable",
    "turn",
    "remove",
    "deactivate",
    "circumvent",
    "evade",
    "override",
    "lift",
    "drop",
)


def describes_dropping(lowered: str, start: int, matched: str) -> bool:
    """Let "employees who ignore the safety rules" or "never bypass the filters" go: not an imperative."""
    return matched.startswith(_DROP_RESTRICTION_VERBS) and not_imperative(lowered, start)


RULES: Final[tuple[Rule, ...]] = (
    rule(
        "dan",
        JAILBREAK,
        Severity.HIGH,
        0.85,
        "DAN-style jailbreak persona",
        pattern=r"\bdo\s+anything\s+now\b|\b(?:you\s+are|you're|as|called|named|act\s+as|pretend\s+to\s+be)\s+dan\b"
        # `^[ \t]*`, not `^\s*`: under re.M, `\s*` ran from every line start across all the following
        # whitespace-only lines (quadratic on many of them).
        r"|\bdan\s+(?:mode|prompt|jailbreak)\b|^[ \t]*\[?dan\]?\s*:"
        r"|\b(?:anti-?gpt|betterdan|evil-?bot|chaosgpt|basedgpt|devmode|dude\s+mode|stan\s+mode|aim\s+mode)\b|always\s+intelligent\s+and\s+machiavellian",
        gate=(
            (
                "dan",
                "anything",
                "antigpt",
                "anti",
                "betterdan",
                "evil",
                "evilbot",
                "chaosgpt",
                "basedgpt",
                "devmode",
                "dude",
                "stan",
                "aim",
                "machiavellian",
            ),
        ),
    ),
    rule(
        "developer_mode",
        JAILBREAK,
        Severity.HIGH,
        0.8,
        "Fake developer or jailbreak mode",
        pattern=r"\b(?:developer|dev|debug|god|admin|root|sudo|jailbreak|unrestricted|unfiltered|uncensored|evil|opposite)"
        r"\s+mode\s+"
        r"(?:enabled|activated|output|response)\b"
        r"|\b(?:enable|activate|enter|switch\s+to|simulate|with)\s+(?:the\s+)?(?:developer|god|jailbreak"
        r"|dan|evil)\s+mode\b(?![^.\n]{0,40}\b(?:phone|android|ios|iphone|browser"
        r"|chrome|windows|settings|device|app)\b)"
        r"|\bdeveloper\s+mode\s+(?:allows|enables|lets|means)\b|\bchatgpt[\s-]+(?:with[\s-]+)?developer[\s-]+mode"
        r"|\b(?:in|under)\s+developer\s+mode,?\s+(?:you|the\s+ai|chatgpt|your)\b"
        r"|\b(?:you\s+are|you're|now|been)\s+jailbroken\b|\[[^\]\n]{0,4}jailbr(?:eak|oken)[^\]\n]{0,4}\]"
        r"|/jailbr(?:eak|oken)\b",
        gate=(("mode", "jailbroken", "jailbreak", "/jailbr", "[jailbr"),),
    ),
    rule(
        "no_restrictions",
        JAILBREAK,
        Severity.HIGH,
        0.75,
        "Instruction to drop safety restrictions",
        pattern=r"\b(?:ignore|bypass|disable|turn\s+off|remove|deactivate|circumvent|evade|override|lift|drop)\s+"
        r"(?:all\s+|any\s+|the\s+|your\s+|of\s+)*(?:safety\s+|content\s+|ethical\s+|moral\s+|openai\s+)?"
        r"(?:filters?|filtering|restrictions|guardrails|safeguards|censorship|content\s+polic(?:y|ies)"
        r"|safety\s+(?:guidelines|measures|protocols|rules)|ethical\s+(?:guidelines|constraints)|limitations)\b"
        r"|\b(?:you|ai|assistant|model|chatgpt)\s+(?:are|is|have|has|will\s+(?:be|have)|must\s+be|can\s+be)"
        r"\s+(?:now\s+)?(?:completely\s+|totally\s+|entirely\s+)?(?:free\s+(?:of|from)|not\s+bound\s+by"
        r"|unbound\s+by|no\s+longer\s+(?:bound|restricted|limited)\s+by|freed\s+from|released\s+from"
        r"|no\s+(?:restrictions|filters|limits|limitations|rules|guidelines|ethical|moral|censorship))"
        r"|\b(?:respond|answer|reply|comply|act|operate|talk|speak)\b[^.\n]{0,60}?\bwithout\s+(?:any\s+)?"
        r"(?:restrictions?|limitations|limits|filters?|filtering|censorship|guardrails)\b"
        r"|\bnot\s+bound\s+by\s+(?:any\s+)?(?:rules|guidelines|restrictions|policies|ethics)"
        r"|\b(?:previous|all|your|prior|safety|content)\s+(?:guidelines|constraints|restrictions|rules|filters)"
        r"\s+(?:do\s+not|don't|no\s+longer)\s+apply|\b(?:constraints|restrictions|filters|guidelines)\s+"
        r"(?:are|have\s+been)\s+(?:lifted|removed|disabled|suspended)\b"
        r"|\b(?:ai|bot|model|assistant|chatbot|gpt|you)\b[^.\n]{0,40}?\b(?:has|have|with)\s+no\s+"
        r"(?:content\s+filters?|filters|ethical\s+(?:guidelines|constraints)|moral\s+(?:compass|guidelines)"
        r"|restrictions|guardrails|censorship|safety\s+(?:measures|guidelines|filters))\b"
        r"|\b(?:without|with\s+no)\s+(?:any\s+)?(?:ethical|moral|safety|content)\s+"
        r"(?:constraints|restrictions|filters|guidelines|limits)\b",
        gate=(_RESTRICTION_WORDS,),
        veto=describes_dropping,
        branch_gates=(
            (
                _DROP_RESTRICTION_VERBS,
                (
                    "filter",
                    "filters",
                    "filtering",
                    "restrictions",
                    "guardrails",
                    "safeguards",
                    "censorship",
                    "policy",
                    "policies",
                    "guidelines",
                    "measures",
                    "protocols",
                    "rules",
                    "constraints",
                    "limitations",
                ),
            ),
            (
                ("you", "ai", "assistant", "model", "chatgpt"),
                ("are", "is", "have", "has", "will", "must", "can"),
                ("free", "not", "unbound", "no", "freed", "released"),
            ),
            (("respond", "answer", "reply", "comply", "act", "operate", "talk", "speak"), ("without",)),
            (("not",), ("bound",)),
            (
                ("previous", "all", "your", "prior", "safety", "content"),
                ("guidelines", "constraints", "restrictions", "rules", "filters"),
                ("not", "don", "longer"),
            ),
            (
                ("constraints", "restrictions", "filters", "guidelines"),
                ("lifted", "removed", "disabled", "suspended"),
            ),
            (
                ("has", "have", "with"),
                ("no",),
                (
                    "filter",
                    "filters",
                    "guidelines",
                    "constraints",
                    "compass",
                    "restrictions",
                    "guardrails",
                    "censorship",
                    "measures",
                ),
            ),
            (
                ("without", "no"),
                ("ethical", "moral", "safety", "content"),
                ("constraints", "restrictions", "filters", "guidelines", "limits"),
            ),
        ),
        branch_starts=(
            _DROP_RESTRICTION_VERBS,
            ("you", "ai", "assistant", "model", "chatgpt"),
            ("respond", "answer", "reply", "comply", "act", "operate", "talk", "speak"),
            ("not",),
            ("previous", "all", "your", "prior", "safety", "content"),
            ("constraints", "restrictions", "filters", "guidelines"),
            ("ai", "bot", "model", "assistant", "chatbot", "gpt", "you"),
            ("without", "with"),
        ),
    ),
    rule(
        "evasion_format",
        JAILBREAK,
        Severity.MEDIUM,
        0.7,
        "Output format chosen to evade filters",
        pattern=r"\b(?:to|so\s+as\s+to|in\s+order\s+to|so\s+(?:that\s+)?(?:you|it)\s+(?:can|will))\s+(?:avoid|bypass|evade"
        r"|circumvent|get\s+(?:around|past)|trick|fool|escape|slip\s+past|not\s+trigger)\s+(?:the\s+|your\s+|any\s+)?"
        r"(?:content\s+|safety\s+)?(?:filters?|filtering|detection|detectors?|moderation|censors?|censorship"
        r"|safety|guardrails|content\s+polic(?:y|ies))"
        r"|\b(?:respond|reply|answer|output|write|speak)\s+(?:only\s+)?(?:in|using)\s+(?:base64|rot-?13|hex"
        r"|binary|morse(?:\s+code)?|leetspeak|l33t)\b[^.\n]{0,40}\b(?:so|to|avoid|bypass|filter|detect|hide)",
        gate=(
            (
                "filter",
                "filters",
                "filtering",
                "detection",
                "detectors",
                "detector",
                "moderation",
                "censor",
                "censors",
                "censorship",
                "safety",
                "guardrails",
                "policy",
                "policies",
                "base64",
                "rot13",
                "rot-13",
                "hex",
                "binary",
                "morse",
                "leetspeak",
                "l33t",
            ),
        ),
        branch_gates=(
            (("avoid", "bypass", "evade", "circumvent", "get", "trick", "fool", "escape", "slip", "not"),),
            (
                ("respond", "reply", "answer", "output", "write", "speak"),
                ("in", "using"),
                ("base64", "rot", "rot13", "hex", "binary", "morse", "leetspeak", "l33t"),
            ),
        ),
        branch_starts=(
            ("to", "so", "in"),
            ("respond", "reply", "answer", "output", "write", "speak"),
        ),
    ),
)
