"""Text normalisation run before every detector, so that disguised text looks like what it disguises.

Steps, in order: NFKC (fullwidth and compatibility forms to their plain forms, exotic spaces to a space);
removal of invisible characters (zero-width, bidi controls, tag characters, variation selectors, control
characters other than newline and tab); line breaks to `\\n`; Cyrillic and Greek look-alikes to ASCII,
the blanks NFKC keeps (Ogham space mark, Braille blank) to a space;
accents on Latin letters dropped; runs of spaces inside a line collapsed to one, trailing spaces removed and
more than one blank line collapsed to one. Leading indentation is kept (code detection needs it).

The result is for detection only: it is lossy (Russian text comes out as Latin look-alikes) and offsets
do not line up with the input.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

# Characters to delete: control characters but \t and \n (\r, \v, \f, NEL become newlines first), every
# `Cf` (format) character (a test checks the list against the Unicode database): zero-width space and
# joiners, bidi embeddings and isolates, word joiner, BOM, soft hyphen, tag characters used for "ASCII
# smuggling"; also variation selectors, the combining grapheme joiner and the invisible Hangul fillers.
_INVISIBLE: Final = re.compile(
    "[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f"
    "\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u206f"
    "\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff9-\ufffb"
    "\u0600-\u0605\u06dd\u070f\u0890\u0891\u08e2]"
)
# Outside the BMP (a separate class: a set mixing both planes is several times slower to scan).
_INVISIBLE_ASTRAL: Final = re.compile(
    "[\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a"
    "\U000e0000-\U000e007f\U000e0100-\U000e01ef]"
)
_ASTRAL: Final = re.compile("[\U00010000-\U0010ffff]")
_LINE_BREAK: Final = re.compile("\r\n?|[\x0b\x0c\x85\u2028\u2029]")
_LINE_BREAK_CHAR: Final = re.compile("[\r\x0b\x0c\x85\u2028\u2029]")
_CONTROL: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
# Substrings that may need whitespace work (checked with `in`, faster than one regex with alternatives).
_SPACE_HINTS: Final = ("  ", "\t\t", " \t", "\t ", " \n", "\t\n", "\n\n\n")
_INNER_SPACES: Final = re.compile(r"(?<=\S)[ \t]{2,}")
_TRAILING_SPACES: Final = re.compile(r"[ \t]+(?=\n|\Z)")
_BLANK_LINES: Final = re.compile(r"\n{3,}")
# A combining mark on a Latin letter (after decomposition): `ígnore` is `ignore`.
_LATIN_ACCENT: Final = re.compile(r"(?<=[A-Za-z])[\u0300-\u036f]+")
_COMBINING: Final = re.compile(r"[\u0300-\u036f]")

# Look-alikes that NFKC leaves alone: letters that render like an ASCII letter in common fonts.
# The first string maps character by character onto the second.
_HOMOGLYPH_SOURCE: Final = (
    "АВЕЁКМНОРСТХУЅІЇЈԚԜҺавеёкмнорстухѕіїјһԁԛԝү"  # Cyrillic
    "οΑΒΕΖΗΙΚΜΝΟΡΤΥΧαικνρτυχϲϳ"  # Greek
    "ɡɩ"  # noqa: RUF001 - Latin (the look-alikes are the point)
    # Blanks that NFKC leaves alone (U+1680 Ogham space mark, U+2800 Braille blank) become spaces:
    # words joined by Braille blanks are still a sentence. In this table, so the search costs nothing
    # more. (Dashes are not folded here: the classifier's features come from this text, and en and em
    # dashes, common in its training data, would change the shipped model; pii.py folds them.)
    "\u1680\u2800"
)
_HOMOGLYPH_TARGET: Final = "ABEEKMHOPCTXYSIIJQWHabeekmhopctyxsiijhdqwyoABEZHIKMNOPTYXaikvptuxcjgi  "
_HOMOGLYPH_TABLE: Final = str.maketrans(_HOMOGLYPH_SOURCE, _HOMOGLYPH_TARGET)
_HOMOGLYPH: Final = re.compile(f"[{_HOMOGLYPH_SOURCE}]")
_HOMOGLYPH_MAP: Final = {chr(k): chr(v) for k, v in _HOMOGLYPH_TABLE.items()}
#: Look-alikes in the first characters past which a text counts as dense with them.
_DENSITY_SAMPLE: Final = 256
_DENSE: Final = 12


def _needs_space_work(text: str) -> bool:
    return any(hint in text for hint in _SPACE_HINTS) or text.endswith((" ", "\t"))


def _collapse_spaces(text: str) -> str:
    # Each substitution only when a substring test says it has work: most text has none.
    if "  " in text or "\t\t" in text or " \t" in text or "\t " in text:
        text = _INNER_SPACES.sub(" ", text)
    if " \n" in text or "\t\n" in text or text.endswith((" ", "\t")):
        text = _TRAILING_SPACES.sub("", text)
    if "\n\n\n" in text:
        text = _BLANK_LINES.sub("\n\n", text)
    return text


def _remove_invisible(text: str) -> str:
    if _LINE_BREAK_CHAR.search(text) is not None:
        text = _LINE_BREAK.sub("\n", text)
    if _INVISIBLE.search(text) is not None:
        text = _INVISIBLE.sub("", text)
    if _ASTRAL.search(text) is not None:
        text = _INVISIBLE_ASTRAL.sub("", text)
    return text


def _replace_homoglyphs(text: str) -> str:
    # `str.translate` looks every character up (about 45 us per KB of non-ASCII text). Prose with a
    # few look-alikes (typographic quotes, an accented name) is four times faster replaced match by
    # match; Cyrillic or Greek prose, dense with them, is not, and keeps `translate`.
    if len(_HOMOGLYPH.findall(text, 0, _DENSITY_SAMPLE)) > _DENSE:
        return text.translate(_HOMOGLYPH_TABLE)
    return _HOMOGLYPH.sub(lambda m: _HOMOGLYPH_MAP[m.group()], text)


def normalize(text: str) -> str:
    """`text` in the canonical form detectors match against (see the module docstring).

    Plain ASCII text without control characters or runs of spaces comes back as is, after one
    `isascii()`, one regex scan and a few substring tests.
    """
    if text.isascii():
        if _CONTROL.search(text) is None and not _needs_space_work(text):
            return text
        return _collapse_spaces(_remove_invisible(text))
    text = _remove_invisible(unicodedata.normalize("NFKC", text))
    if _HOMOGLYPH.search(text) is not None:
        text = _replace_homoglyphs(text)
    if not text.isascii():
        decomposed = unicodedata.normalize("NFD", text)
        if _COMBINING.search(decomposed) is not None:
            stripped = _LATIN_ACCENT.sub("", decomposed)
            if stripped != decomposed:
                text = unicodedata.normalize("NFC", stripped)
    return _collapse_spaces(text)


_JSON_ESCAPE: Final = re.compile(r'\\(u[0-9a-fA-F]{4}|["\\/bfnrt])')
_SIMPLE_ESCAPES: Final = {
    '"': '"',
    "\\": "\\",
    "/": "/",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
}


def unescape_json(text: str) -> str:
    """JSON text with its string escapes read (`\\u0070` as `p`): tool-call arguments are JSON,
    and a key written with escapes is the same key to the tool that reads them. Surrogate escapes
    are left as they are (a lone half is no character)."""
    if "\\" not in text:
        return text

    def read(found: re.Match[str]) -> str:
        escape = found.group(1)
        if escape[0] != "u":
            return _SIMPLE_ESCAPES[escape]
        code = int(escape[1:], 16)
        return found.group(0) if 0xD800 <= code <= 0xDFFF else chr(code)

    return _JSON_ESCAPE.sub(read, text)
