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

Patterns run on the normalised, lower-cased text (case-insensitive `re` is several times slower), and each
family only when a cheap substring test says it could match.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from llmtrace.security.findings import Finding, Match, Severity, drop_overlapping, to_findings
from llmtrace.security.masking import mask_sensitive
from llmtrace.security.normalize import normalize

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


@dataclass(frozen=True, slots=True)
class _Rule:
    kind: str
    type: str
    severity: Severity
    confidence: float
    description: str
    pattern: re.Pattern[str]
    # The pattern runs only when every group has a hit: one of its words is a word of the text, or one of
    # its marks (punctuation, several words) a substring of the lower-cased text.
    gate: tuple[tuple[frozenset[str], tuple[str, ...]], ...]


def _rule(
    kind: str,
    type_: str,
    severity: Severity,
    confidence: float,
    description: str,
    *,
    pattern: str,
    gate: tuple[tuple[str, ...], ...],
) -> _Rule:
    groups = tuple(
        (
            frozenset(entry for entry in group if entry.isalnum()),
            tuple(entry for entry in group if not entry.isalnum()),
        )
        for group in gate
    )
    return _Rule(kind, type_, severity, confidence, description, re.compile(pattern, re.M), groups)


# Shared vocabulary of the override patterns.
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
    r"|configuration|settings|training|inputs?|content|tasks?)"
)
_PROMPT_NOUN: Final = (
    r"(?:system\s+prompt|system\s+message|(?:initial\s+|original\s+|hidden\s+|secret\s+|developer\s+)?"
    r"(?:prompt|instructions|pre-?prompt|rules|guidelines|directives|configuration|programming))"
)
_SENSITIVE_OBJECT: Final = (
    r"(?:conversation|chat(?:\s+history|\s+log)?|history|messages|context|system\s+prompt|prompt"
    r"|credentials?|passwords?|api\s+keys?|keys|secrets?|tokens|(?:personal|user|customer|private"
    r"|sensitive|confidential)\s+(?:data|information|info|details|records)|all\s+(?:the\s+)?data"
    r"|memory|emails|contacts|files|documents|everything\s+above|above\s+text)"
)

# Gate vocabularies shared by several rules (whole words, see `_gate_open`).
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
)
_REVEAL_WORDS: Final = (
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
_SEND_WORDS: Final = (
    "send",
    "post",
    "forward",
    "upload",
    "transmit",
    "email",
    "e-mail",
    "leak",
    "exfiltrate",
    "submit",
    "relay",
    "copy",
    "append",
    "encode",
    "include",
    "embed",
    "attach",
)

_RULES: Final[tuple[_Rule, ...]] = (
    # --- header / delimiter injection: chat-template tokens have no business in user text.
    _rule(
        "chat_template_token",
        HEADER_INJECTION,
        Severity.HIGH,
        0.9,
        "Chat-template control token in content",
        pattern=r"<\|(?:im_start|im_end|system|user|assistant|endoftext|end_header_id|start_header_id|eot_id)\|>"
        r"|\[/?inst\]|<</?sys>>",
        gate=(("<|", "[inst]", "[/inst]", "<<sys>>", "<</sys>>"),),
    ),
    _rule(
        "fake_system_header",
        HEADER_INJECTION,
        Severity.HIGH,
        0.8,
        "Fake system header or system-prompt delimiter",
        pattern=r"^[ \t]*#{2,}[ \t]*(?:new[ \t]+)?(?:system|instructions?|assistant|developer|admin)"
        r"(?:[ \t]+(?:prompt|message|override|instructions?))?[ \t]*:"
        r"|\b(?:begin|end|start)[ \t]+(?:of[ \t]+)?(?:the[ \t]+)?(?:new[ \t]+)?system[ \t]+"
        r"(?:prompt|message|instructions)\b"
        r"|\[(?:system|sys)(?:[ \t]+(?:message|prompt|note|override))?\]|</?system>"
        # Fake end-of-input markers ("%%% END USER INPUT %%%", ">>>> END OF BUFFER") behind a symbol run.
        r"|[#%=*>\-<\[]{3,}[ \t]*(?:end|begin|start)[ \t]+(?:of[ \t]+)?(?:the[ \t]+)?"
        r"(?:user[ \t]+(?:input|message|prompt|query|ambiguity)|buffer|input|prompt|context|conversation"
        r"|(?:extra[ \t]+|new[ \t]+|real[ \t]+)?(?:\w+[ \t]+)?instructions)\b",
        gate=(
            (
                "##",
                "system prompt",
                "system message",
                "system instructions",
                "[system",
                "[sys]",
                "<system>",
                "</system>",
                "%%%",
                "===",
                ">>>",
                "***",
                "---",
                "<<<",
                "[[[",
            ),
        ),
    ),
    # --- role injection: fake turns and persona switches.
    _rule(
        "fake_turn",
        ROLE_INJECTION,
        Severity.HIGH,
        0.75,
        "Fake system or assistant turn inside content",
        pattern=r"^[ \t]*(?:\[|<|\*\*)?(?:system|assistant|developer|admin|administrator|root)"
        r"(?:\]|>|\*\*)?[ \t]*:"
        r"[ \t]*(?:you\b|ignore\b|disregard\b|new\s+(?:instructions|rules|task)|from\s+now|the\s+user\b"
        r"|i\s+will\b|i'll\b|sure\b|certainly\b|understood\b|override\b|forget\b|do\s+not\b|don't\b"
        r"|reveal\b|access\s+granted|(?:developer|admin|god)\s+mode|all\s+(?:restrictions|filters|safety))",
        gate=(
            (
                "system:",
                "assistant:",
                "developer:",
                "admin:",
                "administrator:",
                "root:",
                "]:",
                "**:",
                ">:",
                " :",
            ),
        ),
    ),
    _rule(
        "admin_override",
        ROLE_INJECTION,
        Severity.HIGH,
        0.75,
        "Claimed system or administrator authority",
        pattern=r"\b(?:system|admin|administrator|root|sudo|developer)\s+(?:override|command\s*:|access\s+granted)",
        gate=(
            ("override", "command", "granted"),
            ("system", "admin", "administrator", "root", "sudo", "developer"),
        ),
    ),
    _rule(
        "persona_switch",
        ROLE_INJECTION,
        Severity.HIGH,
        0.8,
        "Switch to an unrestricted persona",
        pattern=r"\b(?:you\s+are\s+now|you're\s+now|from\s+now\s+on,?\s+you\s+are|act\s+as|acting\s+as|pretend\s+"
        r"(?:to\s+be|you\s+are|you're)|roleplay\s+as|role-play\s+as|behave\s+as|become|simulate)\s+(?:an?\s+|my\s+"
        r"|the\s+)?(?:completely\s+|totally\s+|fully\s+)?(?:unrestricted|unfiltered|uncensored|unbound|unlimited"
        r"|jailbroken|evil|rogue|amoral|unethical|dan\b|an?\s+ai\s+(?:with\s+no|without)|ai\s+(?:with\s+no|without)"
        r"|free\s+(?:of|from)\s+(?:all\s+)?(?:restrictions|rules|limits))"
        r"|\byou\s+are\s+no\s+longer\s+(?:bound|restricted|limited|an\s+ai|an\s+assistant|chatgpt|claude"
        r"|required\s+to\s+follow)",
        gate=(
            ("now", "act", "acting", "pretend", "roleplay", "role", "behave", "become", "simulate", "longer"),
        ),
    ),
    _rule(
        "unaligned_persona",
        ROLE_INJECTION,
        Severity.MEDIUM,
        0.6,
        "Unrestricted AI persona",
        pattern=r"\b(?:you\s+are|you're|as|become|play|be)\s+(?:an?\s+|the\s+)?(?:\w+\s+)?(?:unaligned|unshackled"
        r"|unchained|unleashed|uncensored|unfiltered|unrestricted|jailbroken|evil|amoral|rogue|leaked|malicious)"
        r"\s+(?:ai|model|assistant|chatbot|bot|gpt|version|llm|language\s+model)\b"
        r"|\byou\s+are\s+now\s+(?:unshackled|unchained|unleashed|free|liberated|uncensored|unfiltered)\b",
        gate=(
            (
                "unaligned",
                "unshackled",
                "unchained",
                "unleashed",
                "uncensored",
                "unfiltered",
                "unrestricted",
                "jailbroken",
                "evil",
                "amoral",
                "rogue",
                "leaked",
                "malicious",
                "free",
                "liberated",
            ),
        ),
    ),
    _rule(
        "authority_claim",
        ROLE_INJECTION,
        Severity.MEDIUM,
        0.6,
        "Claimed developer or administrator authority",
        pattern=r"\bi\s*(?:am|'m)\s+(?:your\s+(?:developer|creator|admin|administrator|owner|programmer|maker)"
        r"|the\s+(?:developer|admin|administrator|engineer)\s+who\s+(?:created|made|built|trained|programmed)"
        r"\s+you)\b|^[ \t]*\[(?:admin|administrator|developer|root|sysadmin)\]"
        r"|\bmessages?\s+from\s+(?:the\s+)?(?:admin|administrator|developers?|system)\s*:"
        r"|\b(?:system\s+administrator|sysadmin|admin|developer)\s+here\b[.,:]",
        gate=(
            (
                "admin",
                "administrator",
                "developer",
                "developers",
                "creator",
                "owner",
                "programmer",
                "maker",
                "sysadmin",
                "engineer",
            ),
        ),
    ),
    # --- instruction override.
    _rule(
        "override",
        PROMPT_INJECTION,
        Severity.HIGH,
        0.9,
        "Instruction to ignore previous instructions",
        pattern=rf"\b{_OVERRIDE_VERB}\s+{_DETERMINERS}(?:{_QUALIFIER}\s+(?:and\s+\w+\s+|[a-z]+\s+)?{_TARGET}\b"
        rf"|{_TARGET}\s+(?:given\s+)?(?:above|before|earlier|previously|you\s+(?:were|have\s+been)\s+given)\b)",
        gate=(_OVERRIDE_WORDS, _TARGET_WORDS),
    ),
    _rule(
        "override_own",
        PROMPT_INJECTION,
        Severity.HIGH,
        0.8,
        "Instruction to ignore the model's own instructions",
        pattern=r"\b(?:ignor(?:e|ing)|disregard(?:ing)?|forget(?:ting)?|bypass(?:ing)?|overrid(?:e|ing))\s+"
        r"(?:all\s+(?:of\s+)?(?:the\s+|your\s+)?|your\s+|the\s+)(?:(?:system|safety|core|programmed|current"
        r"|original|initial)\s+)?(?:instructions|guidelines|directives|programming|system\s+prompt|rules"
        r"|instructions\s+which|restrictions|constraints)\b(?!\s+(?:for|of|on|in|to)\b)",
        gate=(
            (
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
            ),
            _TARGET_WORDS,
        ),
    ),
    _rule(
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
    ),
    _rule(
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
    ),
    # --- prompt extraction.
    _rule(
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
        r"(?:[a-z0-9]+,?\s+(?:and\s+)?){0,3}?" + _PROMPT_NOUN + r"\b"
        r"|\b(?:print|output|show|give|share|reveal|display|repeat|tell\s+me)\w*\s+(?:me\s+)?(?:the\s+)?"
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
    ),
    _rule(
        "ask_prompt",
        PROMPT_EXTRACTION,
        Severity.HIGH,
        0.75,
        "Question about the model's own instructions",
        pattern=r"\bwhat\s+(?:are|were|is|was)\s+your\s+(?:exact\s+|initial\s+|original\s+|system\s+|hidden\s+"
        r"|secret\s+|first\s+)*(?:instructions|prompt|system\s+prompt|rules|directives|guidelines)\b"
        r"|\bwhat\s+(?:were|have)\s+you\s+(?:been\s+)?(?:told|instructed|programmed)\s+(?:before|initially|"
        r"at\s+the\s+(?:start|beginning)|to\s+(?:do|say|hide|keep))"
        r"|\bwhat\s+instructions\s+(?:are\s+you\s+following|have\s+you\s+been\s+given|were\s+you\s+given"
        r"|did\s+you\s+receive)"
        r"|\bwhat\s+did\s+(?:they|the\s+developers?|your\s+(?:creators?|developers?)|the\s+system)\s+"
        r"(?:tell|instruct)\s+you",
        gate=(("what",), ("your", "you")),
    ),
    # --- jailbreak.
    _rule(
        "dan",
        JAILBREAK,
        Severity.HIGH,
        0.85,
        "DAN-style jailbreak persona",
        pattern=r"\bdo\s+anything\s+now\b|\b(?:you\s+are|you're|as|called|named|act\s+as|pretend\s+to\s+be)\s+dan\b"
        r"|\bdan\s+(?:mode|prompt|jailbreak)\b|^\s*\[?dan\]?\s*:|\b(?:anti-?gpt|betterdan|evil-?bot|chaosgpt"
        r"|basedgpt|devmode|dude\s+mode|stan\s+mode|aim\s+mode)\b|always\s+intelligent\s+and\s+machiavellian",
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
    _rule(
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
    _rule(
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
    ),
    _rule(
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
    ),
    # --- shell and SQL injection aimed at tools.
    _rule(
        "shell_destructive",
        SHELL_INJECTION,
        Severity.HIGH,
        0.85,
        "Destructive or remote shell command",
        pattern=r"\brm\s+-[a-z]*(?:rf|fr)[a-z]*\s+(?:--no-preserve-root\s+)?(?:/\*?(?=[\s;&|'\"`]|$)"
        r"|~/?\*?(?=[\s;&|'\"`]|$)|\*(?=[\s;&|'\"`]|$)|\$home\b|/(?:etc|usr|var|bin|boot|home|root|lib|opt)\b)"
        r"|\$\(\s*(?:curl|wget|cat|rm|nc|ncat|bash|sh|python3?|whoami|id|uname|base64)\b"
        r"|`\s*(?:curl|wget|nc|ncat|whoami|cat\s+/etc/(?:passwd|shadow))\b[^`\n]*`"
        r"|[;&|]\s*(?:cat\s+/etc/(?:passwd|shadow)|nc\s+(?:-[a-z]+\s+){0,4}\S+\s+\d+\s+-e|bash\s+-i|whoami\b)"
        r"|/dev/tcp/|\bmkfs(?:\.\w+)?\s+/dev/|:\(\)\s*\{\s*:\s*\|\s*:\s*&\s*\}\s*;",
        gate=(("rm -", "$(", "`", "/etc/", "nc ", "ncat", "bash -i", "whoami", "/dev/", "mkfs", ":()"),),
    ),
    _rule(
        "shell_pipe",
        SHELL_INJECTION,
        Severity.MEDIUM,
        0.6,
        "Download piped into a shell",
        pattern=r"\b(?:curl|wget)\s+[^\n|;]{0,200}\|\s*(?:sudo\s+)?(?:sh|bash|zsh|python3?|perl)\b",
        gate=(("curl", "wget"), ("|",)),
    ),
    _rule(
        "sql_tautology",
        P2SQL_INJECTION,
        Severity.HIGH,
        0.8,
        "SQL injection payload",
        pattern=r"'\s*(?:or|and)\s+(?:'?\w+'?\s*=\s*'?\w+|true|1)\b'?\s*(?:--|#|/\*|;)?"
        r"|\b(?:1|'1')\s*=\s*(?:1|'1')\s*(?:--|#|;)",
        gate=(("'", "1=1", "1 = 1"), ("=", "true")),
    ),
    _rule(
        "sql_statement",
        P2SQL_INJECTION,
        Severity.HIGH,
        0.8,
        "SQL injection payload",
        pattern=r"\bunion\s+(?:all\s+)?select\b"
        r"|[;'\"]\s*drop\s+(?:table|database|schema)\b"
        r"|\bdrop\s+(?:table|database)\s+(?:if\s+exists\s+)?[\w`\"\[\].]+\s*(?:;|--|cascade\b)"
        r"|[;'\"]\s*(?:delete\s+from|truncate\s+table|insert\s+into|update\s+\w+\s+set|exec(?:ute)?\s+xp_)\b",
        gate=(("union", "drop", "delete", "truncate", "insert", "update", "exec", "execute"),),
    ),
    _rule(
        "sql_instruction",
        P2SQL_INJECTION,
        Severity.HIGH,
        0.75,
        "Instruction to destroy database contents",
        pattern=r"\b(?:delete|drop|truncate|wipe|erase|destroy)\s+(?:all\s+(?:of\s+)?)?(?:the\s+)?(?:records|rows|tables"
        r"|entries|users|data)\s+(?:from|in)\s+(?:the\s+|every\s+|all\s+)?(?:database|db|table|tables|sql)\b",
        gate=(
            ("delete", "drop", "truncate", "wipe", "erase", "destroy"),
            ("database", "db", "table", "tables", "sql"),
        ),
    ),
    # --- data exfiltration.
    _rule(
        "markdown_image_exfil",
        DATA_EXFILTRATION,
        Severity.HIGH,
        0.85,
        "Markdown image whose URL carries data out",
        pattern=r"!\[[^\]\n]{0,100}\]\(\s*(?:https?:)?//[^)\s]*[?&](?:data|d|q|query|conversation|chat|history|secret"
        r"|password|pwd|token|key|info|content|msg|message|text|payload|p|user|email|memory|prompt|exfil|leak"
        r"|c|s|x)=[^)\s]*\)?"
        r"|!\[[^\]\n]{0,100}\]\(\s*(?:https?:)?//[^)\s]*(?:\{|\[|<|\$|%7b)[^)\s]*\)?",
        gate=(("![",),),
    ),
    _rule(
        "send_data",
        DATA_EXFILTRATION,
        Severity.HIGH,
        0.8,
        "Instruction to send conversation data to an outside address",
        pattern=r"\b(?:send|post|forward|upload|transmit|email|e-mail|leak|exfiltrate|submit|relay|copy|append|encode"
        r"|include|embed|attach)\s+(?:me\s+)?(?:(?:the|this|our|all|your|my|any|every|of)\s+){0,3}"
        r"(?:(?:entire|whole|full|complete|previous|current|above)\s+)?" + _SENSITIVE_OBJECT + r"\b"
        r"[^\n]{0,80}?\b(?:to|into|in|at|via)\s+(?:(?:the|this|a|an|my)\s+)?(?:https?://|www\.|ftp://"
        r"|[\w.+-]+@[\w-]+\.[\w.]+|(?:following\s+|this\s+|attacker'?s?\s+|my\s+|external\s+|remote\s+)?"
        r"(?:url|address|email|server|endpoint|webhook|link|domain|ip)\b)",
        gate=(
            _SEND_WORDS,
            (
                "http",
                "https",
                "www",
                "ftp",
                "@",
                "url",
                "address",
                "email",
                "server",
                "endpoint",
                "webhook",
                "link",
                "domain",
                "ip",
            ),
        ),
    ),
)

# Multilingual "ignore previous instructions". Written in the natural script and normalised at import, so
# that they match the normalised text (accents dropped, Cyrillic look-alikes mapped to Latin). Not
# lower-cased: that would turn `\S` into `\s`; they are written in lower case instead.
_MULTILINGUAL_SOURCES: Final = (
    # French
    r"\b(?:ignorez?|ignorer|oubliez?|oublier|ne\s+tenez\s+pas\s+compte\s+des|ne\s+tiens\s+pas\s+compte\s+des)"
    r"\s+(?:\S+\s+){0,3}?(?:instructions?|consignes|regles|directives)\s+(?:precedentes|anterieures"
    r"|ci-dessus|donnees|initiales|du\s+systeme)"
    r"|\b(?:ignorez?|ignorer|oubliez?|oublier)\s+(?:toutes?\s+)?(?:les|tes|vos)\s+(?:instructions|consignes)"
    r"\s*(?:[.,;!]|$)",
    # German
    r"\b(?:ignoriere|ignorieren\s+sie|ignoriert|vergiss|vergessen\s+sie|missachte)\s+(?:\S+\s+){0,2}?"
    r"(?:vorherigen|vorigen|bisherigen|obigen|früheren|vorangegangenen|ursprünglichen|alle)\s+"
    r"(?:\S+\s+)?(?:anweisungen|instruktionen|befehle|regeln|vorgaben|anordnungen)"
    r"|\bvergiss\s+alles\s+(?:was|bisher|vorher|davor|zuvor)",
    # Spanish
    r"\b(?:ignora|ignore|ignorar|ignoren|olvida|olvide|olvidar|olviden|omite|descarta)\s+(?:\S+\s+){0,3}?"
    r"(?:instrucciones|indicaciones|reglas|directrices|órdenes)\s+(?:anteriores|previas|de\s+arriba"
    r"|iniciales|del\s+sistema)"
    r"|\b(?:olvida|olvide)\s+todo\s+lo\s+(?:anterior|que\s+te\s+(?:dije|dijeron))",
    # Italian
    r"\b(?:ignora|ignori|ignorate|ignorare|dimentica|dimentichi|dimenticate|trascura)\s+(?:\S+\s+){0,3}?"
    r"(?:istruzioni|indicazioni|regole|direttive)\s+(?:precedenti|sopra|iniziali|del\s+sistema)"
    r"|\bdimentica\s+tutto\s+(?:quello|ciò)\s+che",
    # Portuguese
    r"\b(?:ignore|ignora|ignorar|ignorem|esqueça|esqueca|esquecer|desconsidere)\s+(?:\S+\s+){0,3}?"
    r"(?:instruções|instrucoes|orientações|regras|diretrizes)\s+(?:anteriores|prévias|acima|iniciais"
    r"|do\s+sistema)",
    # Russian
    r"(?:игнорируй(?:те)?|проигнорируй(?:те)?|забудь(?:те)?|не\s+обращай(?:те)?\s+внимания\s+на)\s+"
    r"(?:\S+\s+){0,2}?(?:предыдущие|прежние|вышеуказанные|все|изначальные|системные)\s+(?:\S+\s+)?"
    r"(?:инструкции|указания|команды|правила|инструкциям|указаниям)"
    r"|забудь(?:те)?\s+всё|забудь(?:те)?\s+все,?\s+что",
    # Chinese
    r"(?:忽略|无视|忽视|忘记|忘掉|不要理会|不要遵守)(?:你)?(?:之前|以前|先前|上面|以上|前面|上述|所有|全部|原来|原有)"
    r"(?:的)?(?:所有|全部)?(?:的)?(?:指令|指示|说明|提示|规则|命令|要求|设定)",
    # Japanese
    r"(?:以前|前|上記|これまで|先|最初|すべて|全て)の(?:すべての|全ての)?(?:指示|命令|指令|ルール|プロンプト)"
    r"(?:を|は)(?:すべて|全て)?(?:無視|忘れ)",
)
_MULTILINGUAL: Final = re.compile(
    "|".join(f"(?:{normalize(source)})" for source in _MULTILINGUAL_SOURCES), re.M
)
# Words only the non-English phrases use (English "ignore" and "instructions" would open it on every
# English attack and on benign text alike). Non-ASCII text always runs the pattern.
_MULTILINGUAL_GATE: Final = frozenset(
    [
        "ignorez",
        "ignorer",
        "oublie",
        "oubliez",
        "oublier",
        "tenez",
        "tiens",
        "ignoriere",
        "ignorieren",
        "ignoriert",
        "vergiss",
        "vergessen",
        "missachte",
        "ignora",
        "ignorar",
        "ignoren",
        "ignorem",
        "olvida",
        "olvide",
        "olvidar",
        "olviden",
        "omite",
        "descarta",
        "ignori",
        "ignorate",
        "ignorare",
        "dimentica",
        "dimentichi",
        "dimenticate",
        "trascura",
        "esqueca",
        "esquecer",
        "desconsidere",
        "todas",
        "todo",
        "tutte",
        "tutto",
        "toutes",
        "alle",
        "alles",
        "consignes",
        "regles",
        "anweisungen",
        "instrucciones",
        "istruzioni",
        "instrucoes",
    ]
)

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
_EXCERPT_MAX: Final = 80


def _placeholder(text: str) -> str:
    # The match itself is the evidence, so it is shown, masked like any context and cut to a line's length.
    shown = " ".join(text[:_EXCERPT_MAX].split())
    if len(text) > _EXCERPT_MAX:
        shown += "…"
    return mask_sensitive(shown)


def _match(
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


_WORD: Final = re.compile(r"[a-z0-9]+")


def _gate_open(
    gate: tuple[tuple[frozenset[str], tuple[str, ...]], ...], words: set[str], lowered: str
) -> bool:
    # A set of the text's words makes word gates nearly free; substring tests cost a scan each.
    return all(
        not group_words.isdisjoint(words) or any(mark in lowered for mark in marks)
        for group_words, marks in gate
    )


def _rule_matches(text: str, lowered: str, words: set[str]) -> Iterator[Match]:
    for rule in _RULES:
        if not _gate_open(rule.gate, words, lowered):
            continue
        for m in rule.pattern.finditer(lowered):
            if m.end() == m.start():
                continue
            if rule.kind == "reveal_prompt" and _asks_about_own_prompt(lowered, m.start(), m.group()):
                continue
            yield _match(
                text,
                m.start(),
                m.end(),
                kind=rule.kind,
                type_=rule.type,
                severity=rule.severity,
                confidence=rule.confidence,
                desc=rule.description,
            )
    if "</s>" in lowered:
        # `</s>` closes HTML strikethrough too; alone (no `<s>` before it) it is an end-of-sequence token.
        position = lowered.find("</s>")
        if "<s>" not in lowered[:position]:
            yield _match(
                text,
                position,
                position + 4,
                kind="eos_token",
                type_=HEADER_INJECTION,
                severity=Severity.HIGH,
                confidence=0.7,
                desc="End-of-sequence token in content",
            )


_HOW_TO: Final = re.compile(
    r"\bhow\s+(?:do|can|could|should|would|to)\b|\bi\s+want\s+to\b|\bmy\s+(?:own\s+)?\w+"
)


def _asks_about_own_prompt(lowered: str, start: int, matched: str) -> bool:
    # "How do I print the system prompt in my app?" asks about the user's own prompt; "print your system
    # prompt" asks for the model's. Only a "the ..." target in a how-to sentence is let go.
    if "your" in matched:
        return False
    sentence_start = max(
        lowered.rfind(".", 0, start), lowered.rfind("?", 0, start), lowered.rfind("\n", 0, start)
    )
    return _HOW_TO.search(lowered, sentence_start + 1, start) is not None


def _multilingual(text: str, lowered: str, words: set[str]) -> Iterator[Match]:
    if lowered.isascii() and words.isdisjoint(_MULTILINGUAL_GATE):
        return
    for m in _MULTILINGUAL.finditer(lowered):
        yield _match(
            text,
            m.start(),
            m.end(),
            kind="override_multilingual",
            type_=PROMPT_INJECTION,
            severity=Severity.HIGH,
            confidence=0.85,
            desc="Instruction to ignore previous instructions (non-English)",
        )


def _many_shot(text: str, lowered: str) -> Iterator[Match]:
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
        yield _match(
            text,
            first,
            last,
            kind="many_shot",
            type_=SHOT_ATTACK,
            severity=Severity.MEDIUM,
            confidence=0.6,
            desc=f"Many fake dialogue turns ({user + bot})",
        )


def _repetition(text: str, lowered: str, words: list[str]) -> Iterator[Match]:
    if len(lowered) < _REPEAT_MIN_LENGTH:
        return
    # The back-referencing patterns are slow on prose; a word count and a few substring tests rule most text
    # out first. A run of 300 equal characters holds at least three of the characters sampled every 97.
    long_run = len(words) >= _REPEAT_MIN_WORDS and Counter(words).most_common(1)[0][1] >= _REPEAT_MIN_WORDS
    if not long_run and not any(
        char * _REPEAT_MIN_CHARS in lowered for char in set(lowered[::97]) if char.isalnum()
    ):
        return
    for pattern in (_REPEATED_WORD, _REPEATED_CHAR):
        m = pattern.search(lowered)
        if m is not None:
            yield _match(
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


def _flooding(text: str) -> Iterator[Match]:
    if len(text) < _FLOOD_MIN_LENGTH:
        return
    raw = text.encode("utf-8", "replace")
    ratio = len(zlib.compress(raw, 1)) / len(raw)
    if ratio <= _FLOOD_MAX_RATIO:
        yield _match(
            text,
            0,
            len(text),
            kind="context_flooding",
            type_=CONTEXT_FLOODING,
            severity=Severity.MEDIUM,
            confidence=0.6,
            desc=f"Very long low-information content ({len(text)} characters)",
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
    word_list = _WORD.findall(lowered)
    words = set(word_list)
    candidates: list[Match] = list(_rule_matches(text, lowered, words))
    candidates.extend(_multilingual(text, lowered, words))
    findings = to_findings(text, drop_overlapping(candidates), location) if candidates else []
    # Whole-text signals span most of the text and would swallow (or be swallowed by) the specific
    # matches inside them; an attack hidden in a flood is both, so each is reported on its own.
    for signal in (*_many_shot(text, lowered), *_repetition(text, lowered, word_list), *_flooding(text)):
        findings.extend(to_findings(text, [signal], location))
    return findings
