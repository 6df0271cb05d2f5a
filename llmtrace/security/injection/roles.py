"""Role, delimiter and fake-header injection: chat-template tokens, fake `System:` headers and turns,
claimed authority, and switches to an unrestricted persona (`header_injection`, `role_injection`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from llmtrace.security.findings import Match, Severity
from llmtrace.security.injection.rules import (
    HEADER_INJECTION,
    ROLE_INJECTION,
    Rule,
    Substring,
    make_match,
    rule,
)

# Chat-template tokens, fake system headers and end-of-input markers.
HEADER_RULES: Final[tuple[Rule, ...]] = (
    rule(
        "chat_template_token",
        HEADER_INJECTION,
        Severity.HIGH,
        0.9,
        "Chat-template control token in content",
        pattern=r"<\|(?:im_start|im_end|system|user|assistant|endoftext|end_header_id|start_header_id|eot_id)\|>"
        r"|\[/?inst\]|<</?sys>>",
        gate=(("<|", "[inst]", "[/inst]", "<<sys>>", "<</sys>>"),),
    ),
    rule(
        "fake_system_header",
        HEADER_INJECTION,
        Severity.HIGH,
        0.8,
        "Fake system header or system-prompt delimiter",
        # A markdown "## Instructions:" heading is a recipe's; "### Instruction:" (one, as in
        # instruction-tuning formats) and "## New instructions:" are the fake headers.
        pattern=r"^[ \t]*#{2,}[ \t]*(?:new[ \t]+(?:system|instructions?|assistant|developer|admin)"
        r"|(?:system|instruction|assistant|developer|admin)(?!s))"
        r"(?:[ \t]+(?:prompt|message|override|instructions?))?[ \t]*:"
        r"|\b(?:begin|end|start)[ \t]+(?:of[ \t]+)?(?:the[ \t]+)?(?:new[ \t]+)?system[ \t]+"
        r"(?:prompt|message|instructions)\b"
        r"|\[(?:system|sys)(?:[ \t]+(?:message|prompt|note|override))?\]|</?system>"
        # Fake end-of-input markers ("%%% END USER INPUT %%%", ">>>> END OF BUFFER") behind a symbol run.
        # Tried only where the run starts (the lookbehind): from every position inside a long run,
        # `{3,}` scanned the rest of the run again (quadratic; 40,000 `=` took seconds).
        r"|(?<![#%=*>\-<\[])[#%=*>\-<\[]{3,}[ \t]*(?:end|begin|start)[ \t]+(?:of[ \t]+)?(?:the[ \t]+)?"
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
        branch_gates=(
            (("##",), (":",)),
            (("begin", "end", "start"), ("system",)),
            (("[sys",),),
            (("<system>", "</system>"),),
            (("begin", "end", "start"),),
        ),
        branch_starts=(
            None,  # starts at the line's start
            ("begin", "end", "start"),
            ("[sys",),
            ("<system>", "</system>"),
            None,  # starts anywhere in a run of symbols
        ),
    ),
)

# Fake turns, claimed authority and persona switches.
ROLE_RULES: Final[tuple[Rule, ...]] = (
    rule(
        "fake_turn",
        ROLE_INJECTION,
        Severity.HIGH,
        0.75,
        "Fake system or assistant turn inside content",
        pattern=r"^[ \t]*(?:\[|<|\*\*)?(?:system|assistant|developer|admin|administrator|root)"
        r"(?:\]|>|\*\*)?[ \t]*:"
        # "you" as an order ("you are", "you must"), not in a note ("admin: you can find the logs").
        r"[ \t]*(?:you(?:'re\b|\s+(?:are|must|will|should|shall|now|have\s+(?:to|been)|need\s+to"
        r"|may\s+now)\b)"
        r"|ignore\b|disregard\b|new\s+(?:instructions|rules|task)|from\s+now|the\s+user\b"
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
    rule(
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
    rule(
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
        branch_gates=(
            # The persona words may start a longer word (no `\b` after them): tested as substrings.
            (
                (
                    "dan",
                    "ai",
                    "free",
                    Substring("unrestricted"),
                    Substring("unfiltered"),
                    Substring("uncensored"),
                    Substring("unbound"),
                    Substring("unlimited"),
                    Substring("jailbroken"),
                    Substring("evil"),
                    Substring("rogue"),
                    Substring("amoral"),
                    Substring("unethical"),
                ),
            ),
            (("longer",),),
        ),
        branch_starts=(
            ("you", "from", "act", "acting", "pretend", "roleplay", "role", "behave", "become", "simulate"),
            ("you",),
        ),
    ),
    rule(
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
    rule(
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
        branch_gates=(
            (("am", "iam", "m"),),
            (("[admin", "[developer", "[root", "[sysadmin"),),
            (("message", "messages"), ("from",)),
            (("here",),),
        ),
        branch_starts=(
            None,  # "i am", "i'm", "iam": too many "i"s to look for
            None,  # starts at the line's start
            ("message", "messages"),
            ("system", "sysadmin", "admin", "developer"),
        ),
    ),
)


def end_of_sequence(text: str, lowered: str) -> Iterator[Match]:
    """A lone `</s>`: it closes HTML strikethrough too; alone (no `<s>` before it) it ends a sequence."""
    if "</s>" in lowered:
        position = lowered.find("</s>")
        if "<s>" not in lowered[:position]:
            yield make_match(
                text,
                position,
                position + 4,
                kind="eos_token",
                type_=HEADER_INJECTION,
                severity=Severity.HIGH,
                confidence=0.7,
                desc="End-of-sequence token in content",
            )
