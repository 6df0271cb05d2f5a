"""Tokenizer for the filter language (see ``llmtrace.query.filter`` for the grammar)."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from llmtrace.query.errors import QueryError

_NUMBER = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
# What a malformed number such as `0af3` or `1.2.3` runs on to, so the error quotes all of it.
_NUMBER_TAIL = re.compile(r"[A-Za-z0-9_.+-]*")
_COMPARATORS = ("<=", ">=", "!=", "<", ">", "=", ":")
_KEYWORDS = {"AND", "OR", "NOT"}
_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "*": "*", "n": "\n", "t": "\t", "r": "\r"}


class TokenKind(enum.Enum):
    """Lexical classes of the filter language."""

    LPAREN = "("
    RPAREN = ")"
    COMPARATOR = "comparator"
    STRING = "string"
    NUMBER = "number"
    TEXT = "text"
    STAR = "*"
    MINUS = "-"
    AND = "AND"
    OR = "OR"
    NOT = "NOT"
    EOF = "end of filter"


@dataclass(frozen=True, slots=True)
class Token:
    """A token with its 1-based source column, for error messages."""

    kind: TokenKind
    text: str
    column: int
    #: Decoded contents of a STRING token.
    value: str = ""
    #: Indexes into ``value`` of unescaped ``*`` characters (wildcards) in a STRING token.
    wildcards: tuple[int, ...] = ()

    def describe(self) -> str:
        """How to name this token in an error message."""
        if self.kind is TokenKind.EOF:
            return "the end of the filter"
        return repr(self.text)


def filter_error(message: str, column: int) -> QueryError:
    """A filter error pointing at a 1-based column."""
    return QueryError("filter", f"{message} at column {column}")


def tokenize(text: str) -> list[Token]:
    """Split a filter into tokens, ending with an EOF token; raises QueryError on bad input."""
    tokens: list[Token] = []
    i = 0
    while i < len(text):
        char = text[i]
        column = i + 1
        if char.isspace():
            i += 1
        elif char in "()":
            tokens.append(Token(TokenKind.LPAREN if char == "(" else TokenKind.RPAREN, char, column))
            i += 1
        elif char in "\"'":
            token, i = _string(text, i)
            tokens.append(token)
        elif char == "*":
            tokens.append(Token(TokenKind.STAR, char, column))
            i += 1
        elif _starts_number(text, i, tokens):
            token, i = _number(text, i)
            tokens.append(token)
        elif char == "-":
            tokens.append(Token(TokenKind.MINUS, char, column))
            i += 1
        elif match := _WORD.match(text, i):
            word = match.group()
            kind = TokenKind[word] if word in _KEYWORDS else TokenKind.TEXT
            tokens.append(Token(kind, word, column))
            i = match.end()
        elif comparator := next((c for c in _COMPARATORS if text.startswith(c, i)), None):
            tokens.append(Token(TokenKind.COMPARATOR, comparator, column))
            i += len(comparator)
        else:
            raise filter_error(f"unexpected character {char!r}", column)
    tokens.append(Token(TokenKind.EOF, "", len(text) + 1))
    return tokens


def _starts_number(text: str, i: int, tokens: list[Token]) -> bool:
    # A leading '-' is negation (`-a = 1`) unless it directly follows a comparator (`a > -1`).
    if text[i] == "-":
        after_comparator = bool(tokens) and tokens[-1].kind is TokenKind.COMPARATOR
        return after_comparator and _NUMBER.match(text, i) is not None
    return text[i].isdigit() or (text[i] == "." and text[i + 1 : i + 2].isdigit())


def _number(text: str, start: int) -> tuple[Token, int]:
    match = _NUMBER.match(text, start)
    assert match is not None  # guaranteed by _starts_number
    end = match.end()
    tail = _NUMBER_TAIL.match(text, end)
    if tail is not None and tail.end() > end:
        bad = text[start : tail.end()]
        raise filter_error(f"invalid number {bad!r} (quote string values)", start + 1)
    return Token(TokenKind.NUMBER, match.group(), start + 1), end


def _string(text: str, start: int) -> tuple[Token, int]:
    quote = text[start]
    chars: list[str] = []
    wildcards: list[int] = []
    i = start + 1
    while i < len(text):
        char = text[i]
        if char == quote:
            value = "".join(chars)
            return Token(TokenKind.STRING, text[start : i + 1], start + 1, value, tuple(wildcards)), i + 1
        if char == "\\":
            escaped = text[i + 1 : i + 2]
            if not escaped:
                break
            if escaped not in _ESCAPES:
                raise filter_error(f"invalid escape sequence {text[i : i + 2]!r} in string", i + 1)
            chars.append(_ESCAPES[escaped])
            i += 2
            continue
        if char == "*":
            wildcards.append(len(chars))
        chars.append(char)
        i += 1
    raise filter_error("unterminated string", start + 1)
