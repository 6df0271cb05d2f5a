"""Masking of PII and secrets in free text: each match becomes a typed placeholder.

Pure Python, no I/O. Patterns are compiled once; each runs only when a cheap substring test
says the text could hold a match, so text without anything sensitive costs a few substring
searches and one digit-run scan.

Placeholders: `[PRIVATE_KEY]`, `[JWT]`, `[AWS_ACCESS_KEY]`, `[GITHUB_TOKEN]`, `[SLACK_TOKEN]`,
`[ANTHROPIC_KEY]`, `[OPENAI_KEY]`, `[STRIPE_KEY]`, `[GOOGLE_API_KEY]`, `[HUGGINGFACE_TOKEN]`,
`[NPM_TOKEN]`, `[GITLAB_TOKEN]`, `[API_KEY]` / `[SECRET]` (for `name=value` assignments and
`Bearer` tokens: the name is kept, the value masked), `[PASSWORD]` (the password in a URL's
userinfo, `postgres://app:[PASSWORD]@db:5432/prod`: scheme, user and host are kept), `[EMAIL]`,
`[IBAN]` (mod-97 valid), `[CREDIT_CARD]` (Luhn valid), `[SSN]` (US: dashed, or undashed after
"SSN" / "social security"), `[NINO]` (UK, valid prefix), `[PHONE]` (10 to 15 digits).
"""

from __future__ import annotations

import bisect
import re
from typing import Final

from llmtrace.security.validators import SSN_PLACEHOLDERS, luhn_valid, nino_prefix_valid, ssn_valid

# The same secrets as secrets.py finds (tests/test_masking.py checks every kind it reports).
_PRIVATE_KEY = re.compile(
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----.*?"
    r"(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|\Z)",
    re.S,
)
# As in secrets.py: at the start of a run of base64url characters, or after a `-` with a header
# free of `-` (anywhere else, quadratic).
_JWT = re.compile(
    r"(?:(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{4,}+|(?<=-)eyJ[A-Za-z0-9_]{4,}+)"
    r"\.[A-Za-z0-9_-]{4,}+\.[A-Za-z0-9_-]*"
)
_AWS = re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}\b")
# An AWS secret access key is 40 characters of base64 with both cases; only in text that speaks of
# AWS or secret access keys (a 40-character token is otherwise too common to mask).
_AWS_SECRET = re.compile(
    r"(?<![A-Za-z0-9/+])(?=[A-Za-z0-9/+]*[a-z])(?=[A-Za-z0-9/+]*[A-Z])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"
)
_AWS_SECRET_CONTEXT = re.compile(r"aws|secret[_ ]?access[_ ]?key|secretaccesskey")
_GITHUB = re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b")
_SLACK = re.compile(r"\bxox[abposre]-[A-Za-z0-9-]{10,}")
# The secret path of an incoming webhook (the host is kept), as secrets.py reports it.
_SLACK_WEBHOOK = re.compile(
    r"(?<=hooks\.slack\.com/services/)T[A-Z0-9]{8,12}/B[A-Z0-9]{8,12}/[A-Za-z0-9]{24}(?![A-Za-z0-9])"
)
_ANTHROPIC = re.compile(r"\bsk-ant-[A-Za-z0-9_-]{20,}")
_OPENAI = re.compile(r"\bsk-(?:proj-|svcacct-|admin-|None-)?[A-Za-z0-9_-]{20,}")
_STRIPE = re.compile(r"\b[rs]k_(?:live|test)_[A-Za-z0-9]{20,255}\b")
_GOOGLE = re.compile(r"(?<![A-Za-z0-9_-])AIza[A-Za-z0-9_-]{35}(?![A-Za-z0-9_-])")
_HUGGINGFACE = re.compile(r"\bhf_[A-Za-z0-9]{34,255}\b")
_NPM = re.compile(r"\bnpm_[A-Za-z0-9]{36}\b")
_GITLAB = re.compile(r"\bglpat-[A-Za-z0-9_-]{20,300}(?:\.[a-z0-9]{9})?(?![A-Za-z0-9_-])")
# `api_key=...`, `"apiKey": "..."`, `password: ...`: the name and separator are kept. A value that
# is already a placeholder (`[OPENAI_KEY]`) is left alone.
_ASSIGNMENT_PATTERN = r"""(?x)
    (?P<name>(?:api[_-]?key|apikey|access[_-]?token|auth[_-]?token|secret[_-]?key|client[_-]?secret
        |private[_-]?key|password|passwd|secret|token)\b["']?\s*(?::=|=>|[:=])\s*["']?)
    (?P<value>(?!\[)[^\s"',;&)\]}<>]{4,})
"""
# Run on the lower-cased text: case-insensitive matching is about ten times slower in `re`.
_ASSIGNMENT = re.compile(_ASSIGNMENT_PATTERN)
# For the rare text whose lower-casing changes its length (positions would not line up).
_ASSIGNMENT_ANY_CASE = re.compile(_ASSIGNMENT_PATTERN, re.IGNORECASE)
_BEARER = re.compile(r"(?i)\b(bearer\s+)(?!\[)[A-Za-z0-9._~+/=-]{12,}")
#: A password in a URL's userinfo (`postgres://app:pw@db`, `redis://:pw@host`, `mongodb+srv://...`);
#: secrets.py reports what this finds. The scheme is anchored where a run of scheme characters starts
#: (a `\b` start would rescan a long `a.a.a...` run from every dot), the user stops at the first `:`,
#: and the password at `@` or what ends a URL: each part is one character class, so matching is linear.
URL_CREDENTIALS: Final = re.compile(
    r"(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]*://[^\s:/?#@\[\]\"'<>`]*"
    r":(?P<password>[^\s/?#@\"'<>`]+)@(?=[A-Za-z0-9\[$<{])"
)
# What documentation writes instead of a password; masking leaves it, so the example stays readable.
_URL_PLACEHOLDER_WORDS: Final = frozenset({"password", "passwd", "pass", "pwd", "secret", "changeme"})
# The PII patterns are compiled with `re.ASCII` (as pii.py's): `\b` and `\w` are ASCII, so that PII
# written right against CJK text (`发到john@corp.com谢谢`, no spaces in those scripts) still has its
# boundaries; with Unicode ones the address ran on into the following characters and did not match.
_A: Final = re.ASCII
# Anchored where a run of address characters starts (not at every word boundary inside it): on
# "a.a.a.a..." a `\b` start tried every position to the end of the run, quadratic.
_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b", _A
)
# Upper or lower case: people paste `de89 3704 ...` (mod 97 does not care).
_IBAN = re.compile(r"\b[A-Za-z]{2}\d{2}(?: ?[A-Za-z0-9]{4}){2,7}(?: ?[A-Za-z0-9]{1,3})?\b", _A)
# Digits in any grouping with spaces, hyphens, en dashes (U+2013, as word processors write `-`) or dots;
# dots only in groups of four (or Amex's 4-6-5), checked after the match: `1700000000.123`, a timestamp,
# is no card. One separator class, not alternatives per grouping: this runs at every digit.
# The whole run of 13 or more digits (possessive: a run is read once, never re-split by backtracking),
# then `_card_spans` finds the cards in it. A run bounded at 19 digits took a number written before a
# card (`2024-01-05 4532 0151 1283 0366`, `Card 2 4532 ...`) as the card's first digits, failed Luhn
# and moved past the card. Not after `+`: `+4915112345678` is a phone number.
_CARD = re.compile(r"(?<![\d\u2013+-])\d(?:[ .\u2013-]?\d){12,}+", _A)
_DOTTED_CARD = re.compile(r"\d{4}\.\d{4}\.\d{4}\.\d{1,7}|\d{4}\.\d{6}\.\d{5}", _A)
_CARD_GROUP_SEPARATOR = re.compile("[ \u2013-]")
_CARD_SEPARATORS: Final = str.maketrans("", "", " -\u2013.")
_SSN = re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])")
# As pii.py finds them: undashed only just after words naming one (nine digits are otherwise an
# id as often as not), National Insurance numbers by their prefix.
_SSN_PLAIN = re.compile(r"(?<![\w-])(\d{3}) ?(\d{2}) ?(\d{4})(?![\w-])", _A)
_SSN_CONTEXT = re.compile(r"\b(?:ssn|social security)\b", _A)
# Upper or lower case (`ab 12 34 56 c`); the prefix is validated in capitals.
_NINO = re.compile(r"\b([A-Za-z]{2})( ?)(\d{2})\2(\d{2})\2(\d{2})\2([A-Da-d])\b", _A)
_NINO_DIGITS = re.compile(r"\d\d ?\d\d ?\d\d")
# After a country code the first group may be one digit (`+33 1 42 68 53 00`, `+353 1 234 5678`,
# `+31 6 12345678`): pii.py reports these, and masking left them in clear.
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}|(?:\(\d{1,4}\)[ .-]?)?\d{2,4})"
    r"(?:[ .-]?\d{2,4}){1,4}(?!\w)",
    _A,
)
# The pre-check for every digit-based pattern: a run of 9+ digits with separators.
_DIGIT_RUN = re.compile(r"\d[\d ().+\u2013-]{7,}\d")

_SECRET_NAMES: Final = ("password", "passwd", "secret")


def _iban_valid(candidate: str) -> bool:
    # Looser than validators.iban_valid (no per-country length): redaction errs on masking.
    code = candidate.replace(" ", "")
    if not 15 <= len(code) <= 34:
        return False
    rearranged = code[4:] + code[:4]
    number = "".join(str(int(char, 36)) for char in rearranged)
    return int(number) % 97 == 1


def _is_card(candidate: str) -> bool:
    digits = candidate.translate(_CARD_SEPARATORS)
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


def _card_spans(match: re.Match[str]) -> list[tuple[int, int]]:
    """Where the card numbers in a `_CARD` match are: the whole match, or runs between its dots
    (`1.4532...`, `...0366.25`: dots that do not group a card), or groups within those."""
    text = match.group()
    pieces: list[tuple[int, str]] = [(match.start(), text)]
    if "." in text and _DOTTED_CARD.fullmatch(text) is None:
        pieces, offset = [], match.start()
        for piece in text.split("."):
            pieces.append((offset, piece))
            offset += len(piece) + 1
    return [(start + s, start + e) for start, piece in pieces for s, e in _cards_in(piece)]


def _cards_in(piece: str) -> list[tuple[int, int]]:
    """Cards in a run of digit groups without dots: the whole run, else consecutive groups of three
    to six digits (4-4-4-4, 4-6-5) or one group of 13 to 19, as people write cards; a number written
    before a card (a date, a count) is left out. Small groups (`12 34 56 ...`) only count whole."""
    if _is_card(piece):
        return [(0, len(piece))]
    groups = _CARD_GROUP_SEPARATOR.split(piece)
    offsets = [0]
    for group in groups[:-1]:
        offsets.append(offsets[-1] + len(group) + 1)
    spans: list[tuple[int, int]] = []
    first = 0
    while first < len(groups):
        last = _card_end(groups, first)
        if last is None:
            first += 1
            continue
        spans.append((offsets[first], offsets[last] + len(groups[last])))
        first = last + 1
    return spans


def _card_end(groups: list[str], first: int) -> int | None:
    """The last group of a card that starts at group `first`, if one does (at most 19 digits on)."""
    if len(groups[first]) < 3:
        return None
    digits = ""
    for last in range(first, len(groups)):
        if last > first and not (3 <= len(groups[last]) <= 6 and len(groups[first]) <= 6):
            return None
        digits += groups[last]
        if len(digits) > 19:
            return None
        if len(digits) >= 13 and luhn_valid(digits):
            return last
    return None


def _card(match: re.Match[str]) -> str:
    spans = _card_spans(match)
    if not spans:
        return match.group()
    parts: list[str] = []
    position = match.start()
    for start, end in spans:
        parts += [match.string[position:start], "[CREDIT_CARD]"]
        position = end
    parts.append(match.string[position : match.end()])
    return "".join(parts)


def _iban(match: re.Match[str]) -> str:
    text = match.group()
    # The last groups may be a following word in capitals: try shorter candidates too.
    cut = len(text)
    while cut >= 15:
        if _iban_valid(text[:cut]):
            return "[IBAN]" + text[cut:]
        space = text.rfind(" ", 0, cut)
        cut = space if space > 0 else cut - 4
    return text


def _nino(match: re.Match[str]) -> str:
    return "[NINO]" if nino_prefix_valid(match.group(1).upper()) else match.group()


def _plain_ssn_spans(text: str) -> list[tuple[int, int]]:
    """Undashed SSNs that follow "SSN" or "social security" within 40 characters."""
    lowered = text.lower()
    if "ssn" not in lowered and "social security" not in lowered:
        return []
    spans = []
    for m in _SSN_PLAIN.finditer(text):
        area, group, serial = m.groups()
        if not ssn_valid(area, group, serial) or area + group + serial in SSN_PLACEHOLDERS:
            continue
        if _SSN_CONTEXT.search(lowered, max(0, m.start() - 40), m.start()) is not None:
            spans.append(m.span())
    return spans


def _phone(match: re.Match[str]) -> str:
    text = match.group()
    digits = sum(char.isdigit() for char in text)
    # A bare run of digits is an id or an amount more often than a phone number.
    has_shape = text[0] == "+" or "(" in text or any(sep in text for sep in " .-")
    return "[PHONE]" if 10 <= digits <= 15 and has_shape and not _is_ipv4(text) else text


def _is_ipv4(text: str) -> bool:
    """Whether `text` is a dotted-quad IPv4 address (`192.168.100.200`, `169.254.169.254`): ten or
    more digits in dotted groups, but an address, which is not masked (see the module docstring)."""
    parts = text.split(".")
    return len(parts) == 4 and all(part.isdigit() and len(part) <= 3 and int(part) <= 255 for part in parts)


def url_password_is_placeholder(password: str) -> bool:
    """Whether a URL's password is a stand-in (`${DB_PASSWORD}`, `<password>`, `****`, `xxx`) or
    already masked (`[GITLAB_TOKEN]`) rather than a password. secrets.py rejects these and more."""
    return (
        password[0] in "$<{"
        or "[" in password
        or not password.strip("*xX.")
        or password.lower() in _URL_PLACEHOLDER_WORDS
    )


def _url_password(match: re.Match[str]) -> str:
    password = match.group("password")
    if url_password_is_placeholder(password):
        return match.group()
    start = match.start("password") - match.start()
    return match.group()[:start] + "[PASSWORD]" + match.group()[start + len(password) :]


def _placeholder_for(name: str) -> str:
    lowered = name.lower()
    return "[SECRET]" if any(word in lowered for word in _SECRET_NAMES) else "[API_KEY]"


def _assignment(match: re.Match[str]) -> str:
    name = match.group("name")
    return name + _placeholder_for(name)


def _mask_assignments(text: str) -> str:
    lowered = text.lower()
    if len(lowered) != len(text):
        return _ASSIGNMENT_ANY_CASE.sub(_assignment, text)
    out: list[str] = []
    position = 0
    for match in _ASSIGNMENT.finditer(lowered):
        start, end = match.span("value")
        out.append(text[position:start])
        out.append(_placeholder_for(match.group("name")))
        position = end
    if not out:
        return text
    out.append(text[position:])
    return "".join(out)


def _may_hold_aws_secret(text: str, *, key_id: bool) -> bool:
    """Whether `text` speaks of AWS: a word for it, or an access key id (`key_id`, the caller found one),
    as secrets.py's `_aws` has it: a secret key is pasted next to its id."""
    if len(text) < 40:
        return False
    if key_id:
        return True
    # Literal pre-checks first ("aws", "AWS", "secret", "SECRET", ... all contain one of these):
    # this runs on every excerpt, most of them short and about something else.
    if not _any_in(text, ("ws", "WS", "ecret", "ECRET")):
        return False
    return _AWS_SECRET_CONTEXT.search(text.lower()) is not None


def _any_in(text: str, needles: tuple[str, ...]) -> bool:
    return any(needle in text for needle in needles)


_AWS_PREFIXES: Final = ("AKIA", "ASIA", "ABIA", "ACCA")
_ASSIGNMENT_WORDS: Final = ("key", "token", "secret", "passw")


#: How much more of a text than is kept is masked when it is cut (`masked_prefix`): longer than
#: anything masked but private keys, which are masked to the end when their END line is cut away.
MASK_MARGIN: Final = 8 * 1024


def masked_prefix(text: str, keep: int) -> str:
    """The start of `text`, masked: about `keep` characters (fewer where masks are shorter than
    what they hide), never a fragment of a secret.

    A long text is masked over `keep + MASK_MARGIN` characters and the last `MASK_MARGIN` of the
    result are dropped: a secret the cut goes through escapes masking, and what is left of it sits
    at the end. (Masks shorten the text, so dropping from the start's side would not do.)
    """
    if len(text) <= keep + MASK_MARGIN:
        return mask_sensitive(text)
    masked = mask_sensitive(text[: keep + MASK_MARGIN])
    return masked[: max(len(masked) - MASK_MARGIN, 0)]


def mask_sensitive(text: str) -> str:
    """`text` with PII and secrets replaced by typed placeholders such as `[EMAIL]`.

    Whole secrets go first, so that a key inside an assignment gets its specific placeholder;
    digit patterns go last, cards before phone numbers. Text with nothing to mask comes back unchanged.
    """
    if not text:
        return text
    if "PRIVATE KEY" in text:
        text = _PRIVATE_KEY.sub("[PRIVATE_KEY]", text)
    if "eyJ" in text:
        text = _JWT.sub("[JWT]", text)
    key_ids = 0
    if _any_in(text, _AWS_PREFIXES):
        text, key_ids = _AWS.subn("[AWS_ACCESS_KEY]", text)
    if _may_hold_aws_secret(text, key_id=key_ids > 0):
        text = _AWS_SECRET.sub("[AWS_SECRET_KEY]", text)
    # "github_pat_" holds no "gh": fine-grained tokens need their own pre-check.
    if "gh" in text or "_pat_" in text:
        text = _GITHUB.sub("[GITHUB_TOKEN]", text)
    if "xox" in text:
        text = _SLACK.sub("[SLACK_TOKEN]", text)
    if "hooks.slack.com" in text:
        text = _SLACK_WEBHOOK.sub("[SLACK_TOKEN]", text)
    if "sk-" in text:
        text = _ANTHROPIC.sub("[ANTHROPIC_KEY]", text)
        text = _OPENAI.sub("[OPENAI_KEY]", text)
    # A one-character test (a `memchr`) is ten times cheaper than a longer one: "_" and "z", rare in
    # prose, spare most texts the searches for the prefixes.
    if "_" in text:
        if "k_live_" in text or "k_test_" in text:
            text = _STRIPE.sub("[STRIPE_KEY]", text)
        if "hf_" in text:
            text = _HUGGINGFACE.sub("[HUGGINGFACE_TOKEN]", text)
        if "npm_" in text:
            text = _NPM.sub("[NPM_TOKEN]", text)
    if "z" in text and "AIza" in text:
        text = _GOOGLE.sub("[GOOGLE_API_KEY]", text)
    if "glpat-" in text:
        text = _GITLAB.sub("[GITLAB_TOKEN]", text)
    lowered = text.lower()
    if "bearer" in lowered:
        text = _BEARER.sub(r"\1[API_KEY]", text)
    if _any_in(lowered, _ASSIGNMENT_WORDS):
        text = _mask_assignments(text)
    # After the assignments (`password: postgres://...` is masked whole, as `sensitive_spans` sees it),
    # before e-mail addresses (`pw@db.internal` would read as one).
    if "@" in text and "://" in text:
        text = URL_CREDENTIALS.sub(_url_password, text)
    if "@" in text:
        text = _EMAIL.sub("[EMAIL]", text)
    if _DIGIT_RUN.search(text) is not None:
        text = _IBAN.sub(_iban, text)
        text = _CARD.sub(_card, text)
        text = _SSN.sub("[SSN]", text)
        for start, end in reversed(_plain_ssn_spans(text)):
            text = text[:start] + "[SSN]" + text[end:]
        text = _PHONE.sub(_phone, text)
    if _NINO_DIGITS.search(text) is not None:  # six digits: shorter than any run above
        text = _NINO.sub(_nino, text)
    return text


Span = tuple[int, int, str]


def _iban_length(text: str) -> int:
    """How much of an IBAN-shaped run is a valid IBAN (0 when none is)."""
    cut = len(text)
    while cut >= 15:
        if _iban_valid(text[:cut]):
            return cut
        space = text.rfind(" ", 0, cut)
        cut = space if space > 0 else cut - 4
    return 0


def sensitive_spans(text: str) -> list[Span]:
    """Where `mask_sensitive` would put a placeholder: `(start, end, placeholder)`, sorted, disjoint.

    The same patterns in the same order as `mask_sensitive`, found on the original text, so that an
    excerpt can keep a whole secret out even when it straddles the excerpt's edge.
    """
    if not text:
        return []
    found: list[Span] = []  # sorted by start, disjoint
    starts: list[int] = []

    def add(start: int, end: int, placeholder: str) -> None:
        index = bisect.bisect_right(starts, start)
        if end <= start or (index > 0 and found[index - 1][1] > start):
            return
        if index < len(found) and found[index][0] < end:
            return
        found.insert(index, (start, end, placeholder))
        starts.insert(index, start)

    def scan(pattern: re.Pattern[str], placeholder: str, haystack: str = text) -> None:
        for m in pattern.finditer(haystack):
            add(m.start(), m.end(), placeholder)

    if "PRIVATE KEY" in text:
        scan(_PRIVATE_KEY, "[PRIVATE_KEY]")
    if "eyJ" in text:
        scan(_JWT, "[JWT]")
    key_ids: list[re.Match[str]] = []
    if _any_in(text, _AWS_PREFIXES):
        key_ids = list(_AWS.finditer(text))
        for m in key_ids:
            add(m.start(), m.end(), "[AWS_ACCESS_KEY]")
    # The key id is context here, where it is not masked first (in `mask_sensitive` its placeholder
    # says "AWS"): without it, a secret key pasted after its id was shown in excerpts.
    if _may_hold_aws_secret(text, key_id=bool(key_ids)):
        scan(_AWS_SECRET, "[AWS_SECRET_KEY]")
    if "gh" in text or "_pat_" in text:  # as in `mask_sensitive`
        scan(_GITHUB, "[GITHUB_TOKEN]")
    if "xox" in text:
        scan(_SLACK, "[SLACK_TOKEN]")
    if "hooks.slack.com" in text:
        scan(_SLACK_WEBHOOK, "[SLACK_TOKEN]")
    if "sk-" in text:
        scan(_ANTHROPIC, "[ANTHROPIC_KEY]")
        scan(_OPENAI, "[OPENAI_KEY]")
    if "_" in text:
        if "k_live_" in text or "k_test_" in text:
            scan(_STRIPE, "[STRIPE_KEY]")
        if "hf_" in text:
            scan(_HUGGINGFACE, "[HUGGINGFACE_TOKEN]")
        if "npm_" in text:
            scan(_NPM, "[NPM_TOKEN]")
    if "z" in text and "AIza" in text:
        scan(_GOOGLE, "[GOOGLE_API_KEY]")
    if "glpat-" in text:
        scan(_GITLAB, "[GITLAB_TOKEN]")
    lowered = text.lower()
    if "bearer" in lowered:
        for m in _BEARER.finditer(text):
            add(m.end(1), m.end(), "[API_KEY]")
    if _any_in(lowered, _ASSIGNMENT_WORDS):
        aligned = len(lowered) == len(text)
        for m in (_ASSIGNMENT if aligned else _ASSIGNMENT_ANY_CASE).finditer(lowered if aligned else text):
            add(*m.span("value"), _placeholder_for(m.group("name")))
    if "@" in text and "://" in text:
        for m in URL_CREDENTIALS.finditer(text):
            if not url_password_is_placeholder(m.group("password")):
                add(*m.span("password"), "[PASSWORD]")
    if "@" in text:
        scan(_EMAIL, "[EMAIL]")
    if _DIGIT_RUN.search(text) is not None:
        for m in _IBAN.finditer(text):
            length = _iban_length(m.group())
            if length:
                add(m.start(), m.start() + length, "[IBAN]")
        for m in _CARD.finditer(text):
            for start, end in _card_spans(m):
                add(start, end, "[CREDIT_CARD]")
        scan(_SSN, "[SSN]")
        for start, end in _plain_ssn_spans(text):
            add(start, end, "[SSN]")
        for m in _PHONE.finditer(text):
            if _phone(m) != m.group():
                add(m.start(), m.end(), "[PHONE]")
    if _NINO_DIGITS.search(text) is not None:
        for m in _NINO.finditer(text):
            if _nino(m) != m.group():
                add(m.start(), m.end(), "[NINO]")
    return found
