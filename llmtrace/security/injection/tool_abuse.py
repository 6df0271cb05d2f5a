"""Payloads aimed at the tools behind the model: destructive shell commands, SQL injection, and data
exfiltration through markdown images or instructions to send data out (`shell_injection`,
`p2sql_injection`, `data_exfiltration`)."""

from __future__ import annotations

import re
from typing import Final

from llmtrace.security.findings import Severity
from llmtrace.security.injection.rules import (
    DATA_EXFILTRATION,
    P2SQL_INJECTION,
    SHELL_INJECTION,
    Rule,
    rule,
)

_SENSITIVE_OBJECT: Final = (
    r"(?:conversation|chat(?:\s+history|\s+log)?|history|messages|context|system\s+prompt|prompt"
    r"|credentials?|passwords?|api\s+keys?|keys|secrets?|tokens|(?:personal|user|customer|private"
    r"|sensitive|confidential)\s+(?:data|information|info|details|records)|all\s+(?:the\s+)?data"
    r"|memory|emails|contacts|files|documents|everything\s+above|above\s+text)"
)

# The last word of each `_SENSITIVE_OBJECT` (a whole word: `\b` follows, whitespace precedes).
_SENSITIVE_OBJECT_LAST_WORDS: Final = (
    "conversation",
    "chat",
    "history",
    "log",
    "messages",
    "context",
    "prompt",
    "credential",
    "credentials",
    "password",
    "passwords",
    "key",
    "keys",
    "secret",
    "secrets",
    "tokens",
    "data",
    "information",
    "info",
    "details",
    "records",
    "memory",
    "emails",
    "contacts",
    "files",
    "documents",
    "above",
    "text",
)

# Gate vocabulary (whole words, see `rules.gate_open`).
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

# Verbs that tell the model or an agent to run a statement.
_RUN_WORDS: Final = ("run", "execute", "exec", "perform", "issue", "invoke", "call", "send", "submit")
_RUN_VERB: Final = r"(?:run|execute|exec|perform|issue|invoke|call|send|submit)"
# A question about running a statement ("what happens if I run DROP TABLE users;?"), not an order to.
_QUESTION: Final = re.compile(
    r"\b(?:how|what|why|when|whether|is\s+it|should\s+i|can\s+i|do\s+i|if\s+i|would\s+it)\b"
)


def asks_about_running(lowered: str, start: int, matched: str) -> bool:
    """Let "how do I run DROP TABLE ..." go: only a run verb in a question, not a payload, is vetoed."""
    if not matched.startswith(_RUN_WORDS):
        return False
    sentence_start = max(
        lowered.rfind(".", 0, start), lowered.rfind("?", 0, start), lowered.rfind("\n", 0, start)
    )
    return _QUESTION.search(lowered, sentence_start + 1, start) is not None


SHELL_SQL_RULES: Final[tuple[Rule, ...]] = (
    rule(
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
        gate=(
            ("rm -", "rm\t-", "$(", "`", "/etc/", "nc ", "ncat", "bash -i", "whoami", "/dev/", "mkfs", ":()"),
        ),
        branch_gates=(
            (("rm",),),
            (("$(",),),
            (("`",), ("curl", "wget", "nc", "ncat", "whoami", "cat")),
            ((";", "&", "|"), ("cat", "nc", "bash", "whoami")),
            (("/dev/tcp/",),),
            (("mkfs",),),
            ((":()",),),
        ),
    ),
    rule(
        "shell_pipe",
        SHELL_INJECTION,
        Severity.MEDIUM,
        0.6,
        "Download piped into a shell",
        pattern=r"\b(?:curl|wget)\s+[^\n|;]{0,200}\|\s*(?:sudo\s+)?(?:sh|bash|zsh|python3?|perl)\b",
        gate=(("curl", "wget"), ("|",)),
    ),
    rule(
        "sql_tautology",
        P2SQL_INJECTION,
        Severity.HIGH,
        0.8,
        "SQL injection payload",
        pattern=r"'\s*(?:or|and)\s+(?:'?\w+'?\s*=\s*'?\w+|true|1)\b'?\s*(?:--|#|/\*|;)?"
        r"|\b(?:1|'1')\s*=\s*(?:1|'1')\s*(?:--|#|;)",
        gate=(("'", "1=1", "1 = 1"), ("=", "true")),
        branch_gates=(
            (("'",), ("or", "and")),
            (("1",), ("--", "#", ";")),
        ),
    ),
    rule(
        "sql_statement",
        P2SQL_INJECTION,
        Severity.HIGH,
        0.8,
        "SQL injection payload",
        # A payload breaks out of a value (a quote or a number, maybe a bracket) into a statement of its
        # own: "1 UNION SELECT password", "title'; DROP TABLE users; --". A bare statement is a payload
        # only when the model or its tools are told to run it ("execute DROP TABLE users;"): SQL pasted
        # with a question ("here's my SQL: DROP TABLE users; -- is this dangerous?") is not an attack.
        # `\s*(?:\)\s*)*`, not `\s*\)*\s*`: a long run of spaces must have one way to be read,
        # or each failed attempt tries every split of it (quadratic).
        pattern=r"(?:['\"]|\b\d+)\s*(?:\)\s*)*union\s+(?:all\s+)?select\b"
        r"|(?:['\"]|\b\d+)\s*(?:\)\s*)*;\s*(?:drop\s+(?:table|database|schema)\b|delete\s+from\b|truncate\s+table\b"
        r"|insert\s+into\b|update\s+\w+\s+set\b|exec(?:ute)?\s+(?:master\.+(?:dbo)?\.*)?xp_\w+)"
        r"|\b" + _RUN_VERB + r"\s+[^.?!\n]{0,40}?\bdrop\s+(?:table|database|schema)\s+"
        r"(?:if\s+exists\s+)?[\w`\"\[\].]+",
        gate=(("union", "drop", "delete", "truncate", "insert", "update", "exec", "execute"),),
        veto=asks_about_running,
        branch_gates=(
            (("union",), ("select",)),
            ((";",), ("drop", "delete", "truncate", "insert", "update", "exec", "execute")),
            (_RUN_WORDS, ("drop",), ("table", "database", "schema")),
        ),
        branch_starts=(None, None, _RUN_WORDS),
    ),
    rule(
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
        starts=("delete", "drop", "truncate", "wipe", "erase", "destroy"),
    ),
)

EXFILTRATION_RULES: Final[tuple[Rule, ...]] = (
    rule(
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
    rule(
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
            _SENSITIVE_OBJECT_LAST_WORDS,
        ),
        starts=(
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
        ),
    ),
)
