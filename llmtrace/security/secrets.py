"""Secret detection: cloud and SaaS credentials, JWTs, private keys, and credentials assigned in text.

Finding types follow the predecessor's vocabulary: `secret_leakage` for keys and tokens (including
generic `api_key=...` assignments), `data_leakage` for assigned passwords ("credentials assigned").
The detector name carries the kind, e.g. `regex.secret.github_token`.

Unlike PII, secrets inside code blocks and URLs are reported: a live key in a snippet is still a leak.
Placeholders are not: values that are low in entropy or read like `YOUR_KEY_HERE`, `<token>`,
`${API_KEY}`, `os.environ[...]`, and the documentation examples `AKIAIOSFODNN7EXAMPLE` / `...EXAMPLEKEY`.
Severities: private keys, AWS secret keys, live Stripe keys and provider API tokens (GitHub, GitLab,
Slack, OpenAI, Anthropic, Google, Hugging Face, npm) are critical; AWS access key ids, Stripe test-mode
keys (they cannot touch live data), Slack incoming-webhook URLs (`slack_token`, the path masked), JWTs,
bearer tokens, assigned keys or passwords, and passwords in a URL's userinfo
(`postgres://app:S3cr3t@db/prod`, `redis://:pw@host`: a working connection string, `url_credentials`;
the excerpt keeps scheme, user and host) are high.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import json
import re
from collections.abc import Iterator
from typing import Final

from llmtrace.security.findings import (
    DATA_LEAKAGE,
    SECRET_LEAKAGE,
    Finding,
    Match,
    Severity,
    drop_overlapping,
    to_findings,
)
from llmtrace.security.masking import URL_CREDENTIALS, url_password_is_placeholder
from llmtrace.security.normalize import normalize
from llmtrace.security.validators import shannon_entropy

# ASCII `\b`, `\s` and `\w` everywhere: a key pasted right against CJK or Cyrillic text (`令牌ghp_...`,
# no space between words in those scripts) still starts at a word boundary.
_A: Final = re.ASCII

_PRIVATE_KEY: Final = re.compile(
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
    r"(?P<body>[A-Za-z0-9+/=\s\\:,.-]*?)"
    r"(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|(?=[^A-Za-z0-9+/=\s\\:,.-])|\Z)",
    _A,
)
_BASE64_RUN: Final = re.compile(r"[A-Za-z0-9+/]{40,}", _A)
_AWS_KEY_ID: Final = re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}\b", _A)
# `=` may precede (an assignment) but not follow (base64 padding: a longer blob).
_AWS_SECRET: Final = re.compile(r"(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])", _A)
_AWS_SECRET_CONTEXT: Final = re.compile(r"aws|secret[_ ]?access[_ ]?key|secretaccesskey", _A)
_GITHUB: Final = re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b", _A)
# Bot, user, app, refresh (`xoxr`), legacy (`xoxs`) and rotation (`xoxe-1-...`) tokens; masking.py
# masked `xoxe-` tokens, which were not reported here.
_SLACK: Final = re.compile(r"\bxox[baprse]-[A-Za-z0-9-]{10,}", _A)
# An incoming webhook's path (workspace id, bot id, 24-character secret): whoever holds the URL posts
# into the channel. The span is the path, so that the excerpt keeps the host.
_SLACK_WEBHOOK: Final = re.compile(
    r"(?<=hooks\.slack\.com/services/)T[A-Z0-9]{8,12}/B[A-Z0-9]{8,12}/[A-Za-z0-9]{24}(?![A-Za-z0-9])", _A
)
# At the start of a run of base64url characters, or after a `-` (`token-eyJ...`, a diff line) with
# a header free of `-`: an "eyJ" anywhere in a run, tried at every one of a long run without a dot,
# would read to its end each time (quadratic); these attempts read to the next `-` at most.
_JWT: Final = re.compile(
    r"(?:(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{4,}+|(?<=-)eyJ[A-Za-z0-9_]{4,}+)"
    r"\.[A-Za-z0-9_-]{4,}+\.[A-Za-z0-9_-]*",
    _A,
)
#: Longest header segment (base64url characters) that is decoded: 8 KB.
_JWT_HEADER_MAX: Final = 8192
_KEY_RUN: Final = re.compile(r"[A-Za-z0-9]{16,}", _A)
_ANTHROPIC: Final = re.compile(r"\bsk-ant-[A-Za-z0-9_-]{20,}", _A)
_OPENAI: Final = re.compile(r"\bsk-(?!ant-)(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}", _A)
# Stripe secret (`sk_`) and restricted (`rk_`) keys; publishable `pk_` keys are public by design.
_STRIPE: Final = re.compile(r"\b[rs]k_(?:live|test)_[A-Za-z0-9]{20,255}\b", _A)
# Google API keys (Maps, Gemini, Firebase, ...): `AIza` and exactly 35 more characters.
_GOOGLE: Final = re.compile(r"(?<![A-Za-z0-9_-])AIza[A-Za-z0-9_-]{35}(?![A-Za-z0-9_-])", _A)
# Hugging Face user access tokens: `hf_` and 34 letters (digits allowed, and longer, to be safe).
_HUGGINGFACE: Final = re.compile(r"\bhf_[A-Za-z0-9]{34,255}\b", _A)
_NPM: Final = re.compile(r"\bnpm_[A-Za-z0-9]{36}\b", _A)
# GitLab personal, project and group access tokens: `glpat-` and 20 characters, or a longer payload
# with the routable suffix (`.`, two characters of length, seven of CRC) of newer GitLab versions.
_GITLAB: Final = re.compile(r"\bglpat-[A-Za-z0-9_-]{20,300}(?:\.[a-z0-9]{9})?(?![A-Za-z0-9_-])", _A)
# Matched against the lower-cased text (as fast as case-sensitive; `(?i)` is several times slower).
_ASSIGNMENT: Final = re.compile(
    r"(?P<name>api[_-]?key|apikey|access[_-]?token|auth[_-]?token|secret[_-]?key|client[_-]?secret"
    r"|private[_-]?key|passw(?:or)?d|secret|token)"
    r"[\"']?\s*(?::=|=>|[:=])\s*[\"']?(?P<value>[^\s\"'`,;&()\[\]{}<>]{6,})",
    _A,
)
_ASSIGNMENT_WORDS: Final = ("key", "token", "secret", "passw")
# `Authorization: Bearer <token>` (curl snippets, logged headers); matched on the lower-cased text.
_BEARER: Final = re.compile(r"\bbearer\s+(?P<value>[a-z0-9._~+/=-]{20,})", _A)
# Parts of values people write instead of a real secret.
_PLACEHOLDER_MARKERS: Final = (
    "your",
    "here",
    "xxxx",
    "example",
    "placeholder",
    "changeme",
    "change_me",
    "dummy",
    "redacted",
    "sample",
    "***",
    "...",
    "todo",
    "replace",
    "insert",
    "secret",
    "password",
)
_REFERENCE: Final = re.compile(r"^(?:[$%@]|process\.env|os\.environ|env\.|getenv|settings\.|config\.)", _A)
_IDENTIFIER_PATH: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+$", _A)

# Per kind: the excerpt placeholder and the finding's description.
_KINDS: Final = {
    "private_key": ("[PRIVATE_KEY]", "Private key block"),
    "aws_access_key": ("[AWS_ACCESS_KEY]", "AWS access key id"),
    "aws_secret_key": ("[AWS_SECRET_KEY]", "AWS secret access key"),
    "github_token": ("[GITHUB_TOKEN]", "GitHub token"),
    "slack_token": ("[SLACK_TOKEN]", "Slack token"),
    "jwt": ("[JWT]", "JSON Web Token"),
    "anthropic_key": ("[ANTHROPIC_KEY]", "Anthropic API key"),
    "openai_key": ("[OPENAI_KEY]", "OpenAI API key"),
    "stripe_key": ("[STRIPE_KEY]", "Stripe secret or restricted API key"),
    "google_api_key": ("[GOOGLE_API_KEY]", "Google API key"),
    "huggingface_token": ("[HUGGINGFACE_TOKEN]", "Hugging Face access token"),
    "npm_token": ("[NPM_TOKEN]", "npm access token"),
    "gitlab_token": ("[GITLAB_TOKEN]", "GitLab access token"),
    "bearer_token": ("[API_KEY]", "Bearer token"),
    "api_key_assignment": ("[API_KEY]", "Credential assigned to a key or token name"),
    "password_assignment": ("[PASSWORD]", "Password assigned in text"),
    "url_credentials": ("[PASSWORD]", "Password in a URL (connection string)"),
}


def _match(
    start: int, end: int, kind: str, severity: Severity, confidence: float, *, type_: str = SECRET_LEAKAGE
) -> Match:
    placeholder, description = _KINDS[kind]
    return Match(
        start=start,
        end=end,
        placeholder=placeholder,
        type=type_,
        severity=severity,
        confidence=confidence,
        detector=f"regex.secret.{kind}",
        description=description,
    )


def _looks_placeholder(value: str) -> bool:
    lowered = value.lower()
    return any(marker in lowered for marker in _PLACEHOLDER_MARKERS) or len(set(lowered)) <= 3


def _private_keys(text: str) -> Iterator[Match]:
    for m in _PRIVATE_KEY.finditer(text):
        # A header with key material under it is a leak; a bare header (prose, a truncated paste) may not be.
        has_body = _BASE64_RUN.search(m.group("body").replace("\\n", "\n")) is not None
        if has_body:
            yield _match(m.start(), m.end(), "private_key", Severity.CRITICAL, 0.99)
        else:
            yield _match(m.start(), m.end(), "private_key", Severity.HIGH, 0.5)


def _aws(text: str, lowered: str) -> Iterator[Match]:
    key_ids: list[int] = []
    for m in _AWS_KEY_ID.finditer(text):
        if "EXAMPLE" in m.group():
            continue
        key_ids.append(m.start())
        yield _match(m.start(), m.end(), "aws_access_key", Severity.HIGH, 0.9)
    if not key_ids and _AWS_SECRET_CONTEXT.search(lowered) is None:
        return
    # Forty base64 characters are common (hashes, ids); only near an AWS context do they count.
    for m in _AWS_SECRET.finditer(text):
        value = m.group()
        nearest = bisect.bisect_left(key_ids, m.start() - 199)  # key ids are in text order
        near_key = nearest < len(key_ids) and key_ids[nearest] < m.start() + 200
        window = lowered[max(0, m.start() - 80) : m.start()]
        if not near_key and _AWS_SECRET_CONTEXT.search(window) is None:
            continue
        mixed = any(c.isupper() for c in value) and any(c.islower() for c in value)
        if not mixed or "EXAMPLE" in value or shannon_entropy(value) < 4.0:
            continue
        yield _match(m.start(), m.end(), "aws_secret_key", Severity.CRITICAL, 0.9)


def _tokens(text: str) -> Iterator[Match]:
    if "gh" in text or "github_pat_" in text:
        for m in _GITHUB.finditer(text):
            body = m.group().split("_", 1)[1]
            if shannon_entropy(body) >= 3.5 and not _looks_placeholder(body):
                yield _match(m.start(), m.end(), "github_token", Severity.CRITICAL, 0.95)
    if "xox" in text:
        for m in _SLACK.finditer(text):
            token = m.group()
            # Real Slack tokens carry numeric workspace/user ids; `xoxb-your-token-here` does not.
            if sum(c.isdigit() for c in token) >= 8 and shannon_entropy(token) >= 3.0:
                yield _match(m.start(), m.end(), "slack_token", Severity.CRITICAL, 0.9)
    if "hooks.slack.com" in text:
        for m in _SLACK_WEBHOOK.finditer(text):
            # High, not critical: a webhook posts into one channel and reads nothing.
            if _random_body(m.group().rsplit("/", 1)[1]):
                yield _match(m.start(), m.end(), "slack_token", Severity.HIGH, 0.9)
    if "sk-" in text:
        for m in _ANTHROPIC.finditer(text):
            body = m.group()[len("sk-ant-") :]
            if shannon_entropy(body) >= 3.5 and not _looks_placeholder(body) and _has_key_run(body):
                yield _match(m.start(), m.end(), "anthropic_key", Severity.CRITICAL, 0.95)
        for m in _OPENAI.finditer(text):
            body = m.group()[3:]
            if shannon_entropy(body) >= 3.5 and not _looks_placeholder(body) and _has_key_run(body):
                yield _match(m.start(), m.end(), "openai_key", Severity.CRITICAL, 0.9)
    # A one-character test (a `memchr`) is ten times cheaper than a longer one: "_" and "z", rare in
    # prose, spare most texts the searches for the prefixes.
    if "_" in text:
        if "k_live_" in text or "k_test_" in text:
            for m in _STRIPE.finditer(text):
                if _random_body(m.group()[8:]):
                    severity = Severity.CRITICAL if m.group()[3:7] == "live" else Severity.HIGH
                    yield _match(m.start(), m.end(), "stripe_key", severity, 0.95)
        if "hf_" in text:
            for m in _HUGGINGFACE.finditer(text):
                body = m.group()[3:]
                # Real tokens mix both cases; a lower-case hex digest after `hf_` is not one.
                if _random_body(body) and not body.islower() and not body.isupper():
                    yield _match(m.start(), m.end(), "huggingface_token", Severity.CRITICAL, 0.9)
        if "npm_" in text:
            for m in _NPM.finditer(text):
                if _random_body(m.group()[4:]):
                    yield _match(m.start(), m.end(), "npm_token", Severity.CRITICAL, 0.95)
    if "z" in text and "AIza" in text:
        for m in _GOOGLE.finditer(text):
            if _random_body(m.group()[4:]):
                yield _match(m.start(), m.end(), "google_api_key", Severity.CRITICAL, 0.9)
    if "glpat-" in text:
        for m in _GITLAB.finditer(text):
            # Twenty characters carry at most 4.3 bits each: a lower bar than for longer tokens.
            if _random_body(m.group()[6:], 3.2):
                yield _match(m.start(), m.end(), "gitlab_token", Severity.CRITICAL, 0.95)


def _has_key_run(body: str) -> bool:
    """Whether a `sk-` key's body holds random key material: a run of 16 or more letters and digits
    with a digit or a capital in it. Names that start with `sk-` (`sk-react-components-library-v2`,
    a branch `sk-ant-feature-request-handling`) are short lower-case words between hyphens; real keys
    (OpenAI's 48 characters or `proj-` payload, Anthropic's 95) are one or a few long mixed runs."""
    return any(not (run.isalpha() and run.islower()) for run in _KEY_RUN.findall(body))


def _random_body(body: str, min_entropy: float = 3.5) -> bool:
    return shannon_entropy(body) >= min_entropy and not _looks_placeholder(body)


def _jwt_header_ok(segment: str) -> bool:
    # A real header is a small flat object (an `x5c` certificate chain makes the largest, a few KB);
    # anything longer is not decoded at all, so a hostile token costs bounded work.
    if len(segment) > _JWT_HEADER_MAX:
        return False
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    # Not base64, not UTF-8, not JSON; or JSON nested deeper than the parser's recursion limit
    # (`{"a":[[[[...`), which would otherwise end the whole analysis.
    except (binascii.Error, ValueError, RecursionError):
        return False
    return isinstance(header, dict) and "alg" in header


def _jwts(text: str) -> Iterator[Match]:
    for m in _JWT.finditer(text):
        if _jwt_header_ok(m.group().split(".", 1)[0]):
            yield _match(m.start(), m.end(), "jwt", Severity.HIGH, 0.95)


def _assignment_value_ok(value: str, following: str, password: bool) -> bool:
    if value.startswith("[") or _REFERENCE.match(value) or _looks_placeholder(value):
        return False
    # `api_key = settings.key` or `token = make_token(...)`: code naming a value, not the value.
    if _IDENTIFIER_PATH.match(value) or following in {"(", "["}:
        return False
    entropy = shannon_entropy(value)
    if password:
        return entropy >= 2.5
    has_digit = any(c.isdigit() for c in value)
    has_alpha = any(c.isalpha() for c in value)
    return len(value) >= 8 and has_digit and has_alpha and entropy >= (3.5 if len(value) >= 16 else 3.0)


def _assignments(text: str, lowered: str) -> Iterator[Match]:
    for m in _ASSIGNMENT.finditer(lowered):
        start, end = m.span("value")
        value = text[start:end]
        password = m.group("name").startswith("passw")
        if not _assignment_value_ok(value, text[end : end + 1], password):
            continue
        confidence = 0.8 if shannon_entropy(value) >= 4.0 else 0.7
        if password:
            yield _match(start, end, "password_assignment", Severity.HIGH, confidence, type_=DATA_LEAKAGE)
        else:
            yield _match(start, end, "api_key_assignment", Severity.HIGH, confidence)


def _url_credentials(text: str) -> Iterator[Match]:
    # The pattern masking.py masks with, so that every reported password is masked in excerpts too.
    for m in URL_CREDENTIALS.finditer(text):
        password = m.group("password")
        if (
            url_password_is_placeholder(password)
            or _REFERENCE.match(password)
            or _looks_placeholder(password)
        ):
            continue
        # `https://host:443@evil.example` is a port and `guest:guest` a default: the bar of assigned
        # passwords.
        entropy = shannon_entropy(password)
        if entropy < 2.5:
            continue
        start, end = m.span("password")
        yield _match(start, end, "url_credentials", Severity.HIGH, 0.9 if entropy >= 3.0 else 0.8)


def _bearers(text: str, lowered: str) -> Iterator[Match]:
    for m in _BEARER.finditer(lowered):
        start, end = m.span("value")
        value = text[start:end]
        if _looks_placeholder(value) or shannon_entropy(value) < 3.5:
            continue
        yield _match(start, end, "bearer_token", Severity.HIGH, 0.8)


_AWS_PREFIXES: Final = ("AKIA", "ASIA", "ABIA", "ACCA")


def find_secrets(text: str, location: str, *, normalized: bool = False) -> list[Finding]:
    """Secrets in `text`, one finding per occurrence, in text order.

    `location` is copied into each finding. Pass `normalized=True` when `text` already went through
    `normalize`. Excerpts replace each secret by a placeholder such as `[GITHUB_TOKEN]`; they never
    hold the secret.
    """
    if not text:
        return []
    if not normalized:
        text = normalize(text)
    lowered = text.lower()
    if len(lowered) != len(text):
        lowered = "".join(char.lower()[0] for char in text)
    # Specific detectors first, so that `api_key = sk-...` is reported as an OpenAI key.
    candidates: list[Match] = []
    if "PRIVATE KEY" in text:
        candidates.extend(_private_keys(text))
    if "eyJ" in text:
        candidates.extend(_jwts(text))
    if any(prefix in text for prefix in _AWS_PREFIXES) or "aws" in lowered or "secretaccesskey" in lowered:
        candidates.extend(_aws(text, lowered))
    candidates.extend(_tokens(text))
    if "bearer" in lowered:
        candidates.extend(_bearers(text, lowered))
    if any(word in lowered for word in _ASSIGNMENT_WORDS):
        candidates.extend(_assignments(text, lowered))
    # After the assignments, as masking.py masks: `token: https://u:pw@host` is one assigned value.
    if "@" in text and "://" in text:
        candidates.extend(_url_credentials(text))
    if not candidates:
        return []
    return to_findings(text, drop_overlapping(candidates), location)
