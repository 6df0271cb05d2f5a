"""PII detection with validators: email, phone, payment card, IBAN, US SSN, UK NINO, IPv4/IPv6 addresses.

Every finding has type `pii_detected`; the detector name carries the kind (`regex.pii.email`, ...).
Policy, kept deliberately simple and visible:

* Text is normalised first (zero-width characters and homoglyphs cannot hide an address).
* Nothing inside a fenced code block (```` ``` ```` or `~~~`, closed) or a URL (`scheme://...`) is
  reported: sample data in code and addresses in links are rarely someone's personal data.
* Placeholders are suppressed: emails at reserved domains (`example.com`, `.test`, ...), NANP fictional
  numbers 555-0100 to 555-0199, SSNs known from advertising (123-45-6789, 078-05-1120), documentation
  IP ranges. Published test card numbers (4111 1111 1111 1111, ...) are Luhn valid, so they are reported,
  but as `info` with confidence 0.3: visible in an audit, never enough to flag a span.
* IP addresses: public ones are `low` (personal data under GDPR, little harm); private, link-local and
  carrier-grade NAT ones are `info` (they reveal internal topology, not a person); unspecified
  (0.0.0.0, ::), loopback, multicast, reserved and documentation addresses are not reported.
* Severities: card, IBAN, SSN, NINO high; email, phone medium.
"""

from __future__ import annotations

import bisect
import ipaddress
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from llmtrace.security.findings import PII_DETECTED, Finding, Match, Severity, drop_overlapping, to_findings
from llmtrace.security.normalize import normalize
from llmtrace.security.validators import (
    IBAN_LENGTHS,
    SSN_PLACEHOLDERS,
    TEST_CARDS,
    card_valid,
    iban_valid,
    nino_prefix_valid,
    ssn_valid,
)

# Every pattern here is compiled with `re.ASCII`: `\d` is [0-9] (other scripts' digits are not numbers
# that the validators or `ipaddress` can read) and `\w` / `\b` are ASCII, so that PII written right
# against CJK text (`请联系john@corp.com谢谢`, no spaces in those scripts) still has its boundaries.
_A: Final = re.ASCII

# Numbers as written: digits with at most two separators between them. One scan of the text gives
# the shape of its numbers, and each digit-based detector runs only when a number could be its kind
# (text whose longest number is a date costs this scan and nothing more).
_NUMERIC_RUN: Final = re.compile(r"\d(?:[ ().-]{0,2}\d)*", _A)


@dataclass(frozen=True, slots=True)
class _NumericShape:
    most_digits: int
    six_digits: bool
    dotted_quad: bool

    @classmethod
    def of(cls, text: str) -> _NumericShape:
        most = 0
        six = quad = False
        for run in _NUMERIC_RUN.findall(text):
            digits = len(run) if run.isdigit() else sum(char.isdigit() for char in run)
            most = max(most, digits)
            six = six or digits == 6
            quad = quad or run.count(".") >= 3
        return cls(most, six, quad)


# Unicode dashes (U+2010 to U+2015) and the minus sign, as word processors write `-`: a card number or
# an SSN written with en dashes is still one. Folded here, one character for one (positions and
# excerpts line up), not in `normalize`: the classifier's features come from normalised text, and
# these dashes are common in its training data (the shipped model would no longer be what it trains).
_DASHES: Final = re.compile("[\u2010-\u2015\u2212]")

# Fence lines, opening or closing; `_fences` pairs them (a line-by-line scan: a regex looking for each
# opener's closer rescans the rest of the text once per unclosed opener, which is quadratic).
_FENCE_LINE: Final = re.compile(r"^[ \t]*(```|~~~)([^\n]*)$", re.M)
# A scheme starts where its run of scheme characters starts (as masking.URL_CREDENTIALS): with `\b`,
# every letter after a `.` in `a.a.a.a...` started a scheme run scanned to its end (quadratic).
_URL: Final = re.compile(r"(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]*://[^\s<>\"'`]+", _A)

_EMAIL: Final = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])", _A
)
# RFC 2606/6761 reserved names, and names people type when they mean "some address".
_PLACEHOLDER_DOMAINS: Final = frozenset(
    {"example.com", "example.org", "example.net", "domain.com", "yourdomain.com", "yourcompany.com"}
)
_RESERVED_TLDS: Final = frozenset({"example", "test", "invalid", "localhost", "local"})
# `logo@2x.png` is a file name, `git@github.com` an SSH remote.
_FILE_TLDS: Final = frozenset({"png", "jpg", "jpeg", "gif", "svg", "webp", "ico", "pdf"})
_GIT_HOSTS: Final = frozenset({"github.com", "gitlab.com", "bitbucket.org"})

# Runs of digits in groups; cards are searched for inside them (a run may hold more than one number).
# Not after `+`: `+4915112345678` is a phone number in E.164 (13 digits from a `4`: one in ten such
# numbers passed Luhn and was reported as a Visa card).
_DIGIT_GROUPS: Final = re.compile(r"(?<![\w.,+-])\d+(?:[ -]\d+)*(?![\w])", _A)
# Upper or lower case (people paste `de89 3704 ...`); `_ibans` rejects mixed case, then validates.
_IBAN: Final = re.compile(r"\b[A-Za-z]{2}\d{2}(?: ?[A-Za-z0-9]{4}){2,7}(?: ?[A-Za-z0-9]{1,3})?\b", _A)
_SSN_DASHED: Final = re.compile(r"(?<![\w-])(\d{3})-(\d{2})-(\d{4})(?![\w-])", _A)
_SSN_PLAIN: Final = re.compile(r"(?<![\w-])(\d{3}) ?(\d{2}) ?(\d{4})(?![\w-])", _A)
_SSN_CONTEXT: Final = re.compile(r"\b(?:ssn|social security)\b", _A)
_NINO: Final = re.compile(r"\b([A-Z]{2})( ?)(\d{2})\2(\d{2})\2(\d{2})\2([A-D])\b", _A)
_IPV4: Final = re.compile(
    r"(?<![\w./-])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\w-]|\.\d)",
    _A,
)
# `version 1.2.3.4`, `Version: 1.2.3.4`, `build=1.2.3.4`.
_VERSION_CONTEXT: Final = re.compile(r"(?:version|ver\.?|release|build)\s*[:=]?\s*$", re.I | _A)
_IPV6: Final = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{1,4}:|:)(?::|[0-9A-Fa-f]{1,4}:){1,7}"
    r"(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:])",
    _A,
)
_DOC_NETWORKS: Final = (
    ipaddress.ip_network("192.0.2.0/24"),
    ipaddress.ip_network("198.51.100.0/24"),
    ipaddress.ip_network("203.0.113.0/24"),
    ipaddress.ip_network("2001:db8::/32"),
)

# Phones: international (+country code), North American, and national with a trunk 0; a bare run
# of digits counts only right after a word like "phone".
# International: `+`, the country code and the rest as digit runs, each after a separator or as a
# `(...)` group; the digit count (10 to 15) is checked after the match. Runs are whole (a separator
# between two runs is required): with `\d{1,5}` groups that could also follow each other directly,
# every split of a long digit run was tried before failing (exponential).
_PHONE_INTL: Final = re.compile(r"(?<![\w+])\+[1-9]\d*(?:[ .-]?\(\d{1,4}\)\d*|[ .-]\d+){0,6}(?![\w])", _A)
_PHONE_NANP: Final = re.compile(
    r"(?<![\w+.-])(?:1[ .-])?(?:\((\d{3})\) ?|(\d{3})[ .-])(\d{3})[ .-](\d{4})(?![\w]|[.-]?\d)", _A
)
_PHONE_TRUNK: Final = re.compile(
    r"(?<![\w+.-])(?:\(0\d{1,4}\)|0\d{1,4})(?:[ -]\d{2,8}){1,4}(?![\w]|[.-]?\d)", _A
)
_PHONE_CONTEXT: Final = re.compile(
    r"\b(?:phone|tel|telephone|mobile|cell|fax|whatsapp|call me)\b[^\d\n+]{0,15}(\+?\d[\d ().-]{5,18}\d)", _A
)
_PHONE_WORDS: Final = ("phone", "tel", "mobile", "cell", "fax", "whatsapp", "call me")


def _zones(text: str) -> list[tuple[int, int]]:
    """Spans (sorted) where PII is not reported: fenced code blocks and URLs."""
    spans: list[tuple[int, int]] = []
    if "```" in text or "~~~" in text:
        spans.extend(_fences(text))
    if "://" in text:
        spans.extend(m.span() for m in _URL.finditer(text))
    spans.sort()
    return spans


def _fences(text: str) -> Iterator[tuple[int, int]]:
    """Fenced code blocks: from an opening fence line to the next bare fence line of the same kind.

    An unclosed fence hides nothing (one ```` ``` ```` line must not hide every address after it), and
    the fences after it pair up as if it were not there.
    """
    # (start, end, marker, whether the line is a bare fence that can close a block)
    lines = [
        (m.start(), m.end(), m.group(1), not m.group(2).strip(" \t")) for m in _FENCE_LINE.finditer(text)
    ]
    # Markers with no closing line after some opener: none after any later opener either, so each
    # marker is given up at most once and the pairing stays linear.
    unclosed: set[str] = set()
    index = 0
    while index < len(lines):
        start, _, marker, _ = lines[index]
        index += 1
        if marker in unclosed:
            continue
        for close in range(index, len(lines)):
            _, end, other, bare = lines[close]
            if other == marker and bare:
                yield start, end
                index = close + 1
                break
        else:
            unclosed.add(marker)


class _Zones:
    """Code fences and links, asked whether a span touches any: in log time, as a text can hold
    thousands of links (a scan per candidate was quadratic)."""

    __slots__ = ("_reach", "_starts")

    def __init__(self, zones: list[tuple[int, int]]) -> None:
        ordered = sorted(zones)
        self._starts = [start for start, _ in ordered]
        # The furthest end of the zones up to each one: zones may nest or overlap.
        self._reach = list(itertools.accumulate((end for _, end in ordered), max))

    def touch(self, start: int, end: int) -> bool:
        before = bisect.bisect_left(self._starts, end)  # the zones that begin before `end`
        return before > 0 and self._reach[before - 1] > start


def _match(start: int, end: int, kind: str, severity: Severity, confidence: float) -> Match:
    placeholder, description = _KINDS[kind]
    return Match(
        start=start,
        end=end,
        placeholder=placeholder,
        type=PII_DETECTED,
        severity=severity,
        confidence=confidence,
        detector=f"regex.pii.{kind}",
        description=description,
    )


# Per kind: the excerpt placeholder and the finding's description.
_KINDS: Final = {
    "email": ("[EMAIL]", "Email address"),
    "phone": ("[PHONE]", "Phone number"),
    "credit_card": ("[CREDIT_CARD]", "Payment card number (Luhn valid, known issuer)"),
    "iban": ("[IBAN]", "IBAN (MOD-97 valid)"),
    "ssn": ("[SSN]", "US Social Security number"),
    "nino": ("[NINO]", "UK National Insurance number"),
    "ipv4": ("[IP_ADDRESS]", "IPv4 address"),
    "ipv6": ("[IP_ADDRESS]", "IPv6 address"),
}


def _emails(text: str) -> Iterator[Match]:
    for m in _EMAIL.finditer(text):
        local, _, domain = m.group().rpartition("@")
        domain = domain.lower()
        tld = domain.rsplit(".", 1)[-1]
        if local.startswith(".") or local.endswith(".") or ".." in local:
            continue
        if tld in _FILE_TLDS or tld in _RESERVED_TLDS or domain in _PLACEHOLDER_DOMAINS:
            continue
        if any(domain.endswith("." + reserved) for reserved in _PLACEHOLDER_DOMAINS):
            continue
        if local == "git" and domain in _GIT_HOSTS:
            continue
        yield _match(m.start(), m.end(), "email", Severity.MEDIUM, 0.95)


def _cards(text: str) -> Iterator[Match]:
    for m in _DIGIT_GROUPS.finditer(text):
        run = m.group()
        if len(run) < 13:
            continue
        # Group boundaries: try every contiguous slice of groups that could be a card number.
        groups = re.split(r"[ -]", run)
        offsets = [0]
        for group in groups[:-1]:
            offsets.append(offsets[-1] + len(group) + 1)
        first = 0
        while first < len(groups):
            found = _card_in_groups(run, groups, offsets, first)
            if found is None:
                first += 1
                continue
            last, digits = found
            start = m.start() + offsets[first]
            end = m.start() + offsets[last] + len(groups[last])
            if digits in TEST_CARDS:
                yield _match(start, end, "credit_card", Severity.INFO, 0.3)
            else:
                yield _match(start, end, "credit_card", Severity.HIGH, 0.95)
            first = last + 1


def _card_in_groups(run: str, groups: list[str], offsets: list[int], first: int) -> tuple[int, str] | None:
    digits = ""
    for last in range(first, len(groups)):
        group = groups[last]
        # Cards are written in groups of 3 to 6 digits (4-4-4-4, 4-6-5) or as one run.
        if last > first and not (3 <= len(group) <= 6 and 3 <= len(groups[first]) <= 6):
            return None
        digits += group
        if len(digits) > 19:
            return None
        if len(digits) >= 13 and card_valid(digits):
            separators = {run[offsets[i] - 1] for i in range(first + 1, last + 1)}
            return (last, digits) if len(separators) <= 1 else None
    return None


def _ibans(text: str) -> Iterator[Match]:
    for m in _IBAN.finditer(text):
        candidate = m.group()
        length = IBAN_LENGTHS.get(candidate[:2].upper())
        if length is None:
            continue
        # Find where the `length`-th non-space character ends: the rest may be a following word.
        seen = 0
        cut = 0
        for cut, char in enumerate(candidate, start=1):  # noqa: B007 - `cut` is used after the loop
            seen += char != " "
            if seen == length:
                break
        if seen != length or (cut < len(candidate) and candidate[cut] != " "):
            continue
        # All upper or all lower case (the following word may be either): a mixed-case run is a word
        # or an id more often than an IBAN.
        code = candidate[:cut]
        upper = code.upper()
        if code != upper and code != code.lower():
            continue
        if iban_valid(upper.replace(" ", "")):
            yield _match(m.start(), m.start() + cut, "iban", Severity.HIGH, 0.99)


def _ssns(text: str, lowered: str) -> Iterator[Match]:
    for m in _SSN_DASHED.finditer(text):
        area, group, serial = m.groups()
        if ssn_valid(area, group, serial) and area + group + serial not in SSN_PLACEHOLDERS:
            yield _match(m.start(), m.end(), "ssn", Severity.HIGH, 0.85)
    if "ssn" not in lowered and "social security" not in lowered:
        return
    # Without dashes nine digits are anything; they count only shortly after "SSN" / "social security".
    for m in _SSN_PLAIN.finditer(text):
        area, group, serial = m.groups()
        if not ssn_valid(area, group, serial) or area + group + serial in SSN_PLACEHOLDERS:
            continue
        if _SSN_CONTEXT.search(lowered, max(0, m.start() - 40), m.start()) is not None:
            yield _match(m.start(), m.end(), "ssn", Severity.HIGH, 0.8)


def _ninos(text: str) -> Iterator[Match]:
    for m in _NINO.finditer(text):
        if nino_prefix_valid(m.group(1)):
            yield _match(m.start(), m.end(), "nino", Severity.HIGH, 0.9)


def _ip_severity(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Severity | None:
    if address.is_unspecified or address.is_loopback or address.is_multicast or address.is_reserved:
        return None
    if any(address in network for network in _DOC_NETWORKS):
        return None
    return Severity.LOW if address.is_global else Severity.INFO


def _ipv4s(text: str) -> Iterator[Match]:
    for m in _IPV4.finditer(text):
        # `version 1.2.3.4` is a version.
        if _VERSION_CONTEXT.search(text, max(0, m.start() - 12), m.start()) is not None:
            continue
        try:
            address = ipaddress.IPv4Address(m.group())
        except ValueError:  # the pattern only matches what parses; a finding is not worth a crash
            continue
        severity = _ip_severity(address)
        if severity is not None:
            yield _match(m.start(), m.end(), "ipv4", severity, 0.9)


def _ipv6s(text: str) -> Iterator[Match]:
    for m in _IPV6.finditer(text):
        try:
            address = ipaddress.IPv6Address(m.group())
        except ValueError:  # times, MAC addresses, C++ scopes
            continue
        severity = _ip_severity(address)
        if severity is not None:
            yield _match(m.start(), m.end(), "ipv6", severity, 0.9)


def _phones(text: str, lowered: str, most_digits: int) -> Iterator[Match]:
    if most_digits >= 10:
        yield from _formatted_phones(text)
    if any(word in lowered for word in _PHONE_WORDS):
        for m in _PHONE_CONTEXT.finditer(lowered):
            if 7 <= sum(char.isdigit() for char in m.group(1)) <= 15:
                yield _match(m.start(1), m.end(1), "phone", Severity.MEDIUM, 0.75)


def _formatted_phones(text: str) -> Iterator[Match]:
    for m in _PHONE_INTL.finditer(text):
        if 10 <= sum(char.isdigit() for char in m.group()) <= 15:
            yield _match(m.start(), m.end(), "phone", Severity.MEDIUM, 0.85)
    for m in _PHONE_NANP.finditer(text):
        area = m.group(1) or m.group(2)
        exchange, line = m.group(3), m.group(4)
        # Area and exchange never start with 0 or 1; 555-0100..0199 are reserved for fiction.
        if area[0] in "01" or exchange[0] in "01" or (exchange == "555" and line.startswith("01")):
            continue
        yield _match(m.start(), m.end(), "phone", Severity.MEDIUM, 0.8)
    for m in _PHONE_TRUNK.finditer(text):
        if 10 <= sum(char.isdigit() for char in m.group()) <= 11:
            yield _match(m.start(), m.end(), "phone", Severity.MEDIUM, 0.7)


def find_pii(text: str, location: str, *, normalized: bool = False) -> list[Finding]:
    """PII in `text`, one `pii_detected` finding per occurrence, in text order.

    `location` is copied into each finding (e.g. `request.messages[2].content`). Pass `normalized=True`
    when `text` already went through `normalize` to skip doing it again. Excerpts come from the
    normalised text, with the PII replaced by placeholders such as `[EMAIL]`.
    """
    if not text:
        return []
    if not normalized:
        text = normalize(text)
    if not text.isascii():
        # `sub` (one scan, replaced where found) rather than `str.translate`, which looks up every
        # character: five times slower on prose with a dash or two.
        text = _DASHES.sub("-", text)
    lowered = text.lower()
    # Lower-casing can change lengths (rare non-ASCII letters); positions must line up.
    if len(lowered) != len(text):
        lowered = "".join(char.lower()[0] for char in text)
    shape = _NumericShape.of(text)
    candidates: list[Match] = []
    # Most specific first: a card or an IBAN also looks like a phone number.
    if shape.most_digits >= 13:
        candidates.extend(_cards(text))
    if shape.most_digits >= 10:
        candidates.extend(_ibans(text))
    if shape.most_digits >= 9:
        candidates.extend(_ssns(text, lowered))
    if shape.six_digits:
        candidates.extend(_ninos(text))
    if shape.dotted_quad:
        candidates.extend(_ipv4s(text))
    if "::" in text or text.count(":") >= 7:
        candidates.extend(_ipv6s(text))
    if "@" in text:
        candidates.extend(_emails(text))
    if shape.most_digits >= 7:
        candidates.extend(_phones(text, lowered, shape.most_digits))
    if not candidates:
        return []
    zones = _Zones(_zones(text))
    kept = drop_overlapping(c for c in candidates if not zones.touch(c.start, c.end))
    return to_findings(text, kept, location)
