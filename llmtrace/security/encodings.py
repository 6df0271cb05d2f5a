"""Encoding evasion: injections hidden in base64, hex, binary, ROT13, reversed text, leetspeak or symbol
alphabets (upside-down letters, braille, enclosed letters), decoded and judged again by `find_injection`.

Policy: an encoding on its own is not an attack (images, hashes and "the base64 of hello is aGVsbG8=" are
everyday content), so a finding is raised only when the decoded text holds an injection. Then two kinds of
finding come back: one `encoding_attack` (the predecessor's type for encoding evasion) on the encoded span,
and the decoded text's own injection findings with the decoder in the location, e.g.
`request.messages[2].content[base64]`.

Work is bounded: at most `MAX_CANDIDATES` blobs per decoder, each blob at most `MAX_BLOB_CHARS` long, and
whole-text decoders (ROT13, reversal, leetspeak, symbols) only when a cheap test says the text could hold
an encoded attack word.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
from collections.abc import Callable, Iterator
from typing import Final

from llmtrace.security.findings import Finding, Match, Severity, drop_overlapping, to_findings
from llmtrace.security.injection import find_injection
from llmtrace.security.masking import mask_sensitive, sensitive_spans
from llmtrace.security.normalize import normalize

ENCODING_ATTACK: Final = "encoding_attack"

#: Blobs of one encoding whose decoding is judged, and blobs tried, per text.
MAX_CANDIDATES: Final = 8
MAX_TRIED: Final = 256
MAX_BLOB_CHARS: Final = 8192
_EXCERPT_MAX: Final = 60

_BASE64: Final = re.compile(r"(?<![A-Za-z0-9+/=_-])[A-Za-z0-9+/_-]{16,}={0,2}(?![A-Za-z0-9+/=_-])")
# A run starts only where a run of hex characters does: with `x` and `\` allowed before it, every
# `0x` of "0xab0xab...0xabc" started a match that scanned to the end of the run, quadratic.
_HEX: Final = re.compile(r"(?<![0-9A-Fa-fxX\\])(?:(?:\\x|0x)?[0-9A-Fa-f]{2}[ :,-]?){12,}(?![0-9A-Fa-f])")
_BINARY: Final = re.compile(r"(?<![01])(?:[01]{8}[ ,]?){4,}(?![01])")
_HEX_DIGITS: Final = re.compile(r"(?:\\x|0x)|[^0-9A-Fa-f]")
# Words of an attack as they look once encoded: the gates of the whole-text decoders.
_ATTACK_WORDS: Final = (
    "ignore",
    "instructions",
    "previous",
    "disregard",
    "system prompt",
    "reveal",
    "jailbreak",
)
_ROT13_WORDS: Final = tuple(codecs.encode(word, "rot13") for word in _ATTACK_WORDS)
_REVERSED_WORDS: Final = tuple(word[::-1] for word in _ATTACK_WORDS)
# A word of letters with the digits and signs leetspeak puts in place of letters.
_LEET_WORD: Final = re.compile(r"(?=[a-z0-9@$]*[a-z])[a-z@$]*[013457@$][a-z0-9@$]*")
# Runs of the characters a leetspeak word is made of, each read once: `_LEET_WORD` over the whole
# text tries every position of a long run, each attempt reading to its end (quadratic).
_LEET_RUN: Final = re.compile(r"(?<![a-z0-9@$])[a-z0-9@$]+")
_LEET_WORD_MAX: Final = 64
_LEET_TABLE: Final = str.maketrans("013457@$", "oieastas")
_MIN_LEET_WORDS: Final = 2

# Symbol alphabets NFKC leaves alone, mapped letter by letter onto a-z.
_BRAILLE: Final = "⠁⠃⠉⠙⠑⠋⠛⠓⠊⠚⠅⠇⠍⠝⠕⠏⠟⠗⠎⠞⠥⠧⠺⠭⠽⠵"
_UPSIDE_DOWN: Final = "ɐqɔpǝɟƃɥıɾʞlɯuodbɹsʇnʌʍxʎz"  # noqa: RUF001 - the look-alikes are the point
_ENCLOSED: Final = "".join(
    chr(first + i)
    for first in (0x1F150, 0x1F130, 0x1F170)  # negative circled, squared, negative squared letters
    for i in range(26)
)
_ALPHABET: Final = "abcdefghijklmnopqrstuvwxyz"
# Non-ASCII symbols only: safe on text that mixes them with plain words.
_SYMBOL_TABLE: Final = str.maketrans(
    {
        char: letter
        for source in (_BRAILLE, _UPSIDE_DOWN, _ENCLOSED[:26], _ENCLOSED[26:52], _ENCLOSED[52:])
        for char, letter in zip(source, _ALPHABET, strict=True)
        if not char.isascii()
    }
)
# Upside-down text also uses ASCII letters for others (`u` for n, `p` for d): only for all-symbol text.
_UPSIDE_DOWN_TABLE: Final = str.maketrans(_UPSIDE_DOWN, _ALPHABET)
_SYMBOL: Final = re.compile(
    "[" + "".join(c for c in _BRAILLE + _UPSIDE_DOWN if not c.isascii()) + _ENCLOSED + "]"
)
_LEET_HINT: Final = re.compile(r"[a-z][013457@$]|[013457@$][a-z]")


def _printable_text(data: bytes) -> str | None:
    # Text a person could have hidden an instruction in: UTF-8, printable, and mostly letters and spaces.
    try:
        decoded = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not decoded or sum(c.isprintable() or c in "\n\t\r" for c in decoded) < 0.95 * len(decoded):
        return None
    if sum(c.isalpha() or c == " " for c in decoded) < 0.6 * len(decoded):
        return None
    return decoded


def _decode_base64(blob: str) -> str | None:
    body = blob.rstrip("=")
    # Text encodes to mixed case; a long lower-case word ("internationalization") is not base64.
    if len(body) % 4 == 1 or body.islower() or body.isupper():
        return None
    padded = body + "=" * (-len(body) % 4)
    try:
        if "-" in body or "_" in body:
            data = base64.urlsafe_b64decode(padded)
        else:
            data = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        return None
    return _printable_text(data)


def _decode_hex(blob: str) -> str | None:
    digits = _HEX_DIGITS.sub("", blob)
    if len(digits) % 2:
        digits = digits[:-1]
    try:
        return _printable_text(bytes.fromhex(digits))
    except ValueError:
        return None


def _decode_binary(blob: str) -> str | None:
    bits = "".join(c for c in blob if c in "01")
    data = bytes(int(bits[i : i + 8], 2) for i in range(0, len(bits) - len(bits) % 8, 8))
    return _printable_text(data)


_BLOB_DECODERS: Final[tuple[tuple[str, re.Pattern[str], Callable[[str], str | None]], ...]] = (
    ("base64", _BASE64, _decode_base64),
    ("hex", _HEX, _decode_hex),
    ("binary", _BINARY, _decode_binary),
)


def _blobs(text: str) -> Iterator[tuple[str, int, int, str]]:
    """(decoder, start, end, decoded text) for encoded blobs that decode to text."""
    for name, pattern, decode in _BLOB_DECODERS:
        if name == "binary" and "0" not in text:
            continue
        tried = judged = 0
        for m in pattern.finditer(text):
            # Judging a decoding runs every tier on it: a few per encoding. Decoding is cheap, so
            # more are tried: ids and hashes that decode to no text cannot crowd an attack out.
            if tried >= MAX_TRIED or judged >= MAX_CANDIDATES:
                break
            blob = m.group().strip(" :,-")
            if len(blob) > MAX_BLOB_CHARS:
                continue
            tried += 1
            decoded = decode(blob)
            if decoded is not None:
                judged += 1
                yield name, m.start(), m.start() + len(blob), decoded


def _whole_text(text: str, lowered: str) -> Iterator[tuple[str, str]]:
    """(decoder, decoded text) for the whole-text encodings the text may be in."""
    if len(text) > MAX_BLOB_CHARS:
        text, lowered = text[:MAX_BLOB_CHARS], lowered[:MAX_BLOB_CHARS]
    if any(word in lowered for word in _ROT13_WORDS):
        yield "rot13", codecs.encode(text, "rot13")
    if any(word in lowered for word in _REVERSED_WORDS):
        yield "reversed", text[::-1]
    if _LEET_HINT.search(lowered) is not None and _leet_words(lowered) >= _MIN_LEET_WORDS:
        yield "leetspeak", lowered.translate(_LEET_TABLE)
    if not text.isascii() and _SYMBOL.search(text) is not None:
        yield "symbols", text.translate(_SYMBOL_TABLE)
        upside_down = text.translate(_UPSIDE_DOWN_TABLE)
        yield "symbols", upside_down
        # Upside-down text is often written backwards as well.
        yield "symbols", upside_down[::-1]


def _leet_words(lowered: str) -> int:
    """Words written in leetspeak (up to `_MIN_LEET_WORDS`; longer runs are no words)."""
    count = 0
    for run in _LEET_RUN.finditer(lowered):
        word = run.group()
        if len(word) <= _LEET_WORD_MAX and _LEET_WORD.search(word) is not None:
            count += 1
            if count >= _MIN_LEET_WORDS:
                break
    return count


def _cut(text: str) -> str:
    # Masked whole before this cut (a secret cut in half is no longer recognisable, and its head would show).
    shown = " ".join(text.split())
    return shown[:_EXCERPT_MAX] + ("…" if len(shown) > _EXCERPT_MAX else "")


#: What stands for an encoded blob whose decoding holds a secret or PII, where the blob also holds
#: something masking finds. It must be a bare typed placeholder: `to_findings` shows any other
#: placeholder's span as the text itself, masked only where masking finds something in the text as
#: it is, so the rest of the blob (decodable, secret included) would show.
_BLOB_HIDDEN: Final = "[ENCODED_BLOB]"


def _blob_excerpt(text: str, start: int, end: int, decoder: str, decoded: str) -> str:
    """What an encoded blob's `encoding_attack` finding shows in its place.

    The blob itself only when its decoding holds nothing masking finds: anyone can decode a blob, so
    one that decodes to a card number or a key shown as it is shows the number or the key. Otherwise
    the decoded text, masked.
    """
    masked = mask_sensitive(decoded)
    if masked == decoded:
        return _cut(mask_sensitive(text[start:end]))
    if any(s < end and e > start for s, e, _ in sensitive_spans(text)):
        return _BLOB_HIDDEN
    return f"[{decoder}: {_cut(masked)}]"


def _attack(start: int, end: int, decoder: str, inner: list[Finding], excerpt: str) -> Match:
    kinds = ", ".join(sorted({finding.type for finding in inner}))
    return Match(
        start=start,
        end=end,
        placeholder=excerpt,
        type=ENCODING_ATTACK,
        severity=Severity.HIGH,
        confidence=min(0.95, max(finding.confidence for finding in inner) + 0.05),
        detector=f"decode.{decoder}",
        description=f"{decoder} text that decodes to: {kinds}",
    )


def find_encoded(text: str, location: str, *, normalized: bool = False) -> list[Finding]:
    """Injections hidden in encodings in `text`: an `encoding_attack` finding per encoded span (text
    order), then the decoded text's injection findings located at `location[decoder]`.

    `find_injection` on the plain text is the caller's business; this only judges decoded text. Pass
    `normalized=True` when `text` already went through `normalize`.
    """
    if not text:
        return []
    if not normalized:
        text = normalize(text)
    lowered = text.lower()
    attacks: list[Match] = []
    inner_findings: list[Finding] = []
    seen: set[str] = set()
    for decoder, start, end, decoded in _blobs(text):
        inner = find_injection(decoded, f"{location}[{decoder}]")
        if inner:
            attacks.append(
                _attack(start, end, decoder, inner, _blob_excerpt(text, start, end, decoder, decoded))
            )
            inner_findings.extend(inner)
    # Whole-text decodings are of the text with its secrets and PII masked: ROT13 or reversing
    # would otherwise carry a key into the excerpt in a form no mask recognises, yet reversible.
    masked = mask_sensitive(text)
    whole: Match | None = None
    for decoder, decoded in _whole_text(masked, lowered if masked is text else masked.lower()):
        if decoded in seen:
            continue
        seen.add(decoded)
        inner = find_injection(decoded, f"{location}[{decoder}]")
        # Leetspeak decoding leaves plain words alone, so plain text with an injection in it and a digit
        # somewhere would fire here too: count only what the plain text does not already show.
        if inner and decoder == "leetspeak":
            plain = {finding.detector for finding in find_injection(text, location, normalized=True)}
            inner = [finding for finding in inner if finding.detector not in plain]
        if inner:
            # The excerpt is the decoded text, masked again: a key written reversed or in ROT13 is
            # not recognised in the text, so the text shown as it is would show it, reversibly.
            whole = _attack(0, len(text), decoder, inner, _cut(mask_sensitive(decoded)))
            inner_findings.extend(inner)
            # One whole-text decoding that works is enough: the others see the same text scrambled.
            break
    if attacks:  # a whole-text attack spans the blobs: theirs are the more precise findings
        return to_findings(text, drop_overlapping(attacks), location) + inner_findings
    if whole is None:
        return []
    # Built here, not by `to_findings`: its excerpt would be the whole text, shown as it is wherever
    # masking finds anything in it (an address next to a reversed key would bring the key along).
    finding = Finding(
        type=whole.type,
        severity=whole.severity,
        confidence=whole.confidence,
        detector=whole.detector,
        location=location,
        excerpt=whole.placeholder,
        description=whole.description,
    )
    return [finding, *inner_findings]
