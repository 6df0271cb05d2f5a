"""Recursive-descent parser from filter tokens to a small syntax tree (no field resolution here).

Precedence follows AIP-160: ``OR`` binds tightest, then juxtaposition (implicit ``AND``), then
explicit ``AND``; ``NOT``/``-`` apply to one term.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from llmtrace.query.errors import QueryError
from llmtrace.query.lexer import Token, TokenKind, filter_error, tokenize

MAX_FILTER_CHARS = 4096
MAX_FILTER_DEPTH = 32

# Tokens that can only begin a new term; seeing one after a complete term means implicit AND.
_TERM_STARTS = frozenset(
    {
        TokenKind.LPAREN,
        TokenKind.NOT,
        TokenKind.MINUS,
        TokenKind.TEXT,
        TokenKind.STRING,
        TokenKind.NUMBER,
        TokenKind.STAR,
        TokenKind.COMPARATOR,
    }
)
_KEYWORDS = frozenset({"AND", "OR", "NOT"})
_VALUE_KINDS = frozenset({TokenKind.STRING, TokenKind.NUMBER, TokenKind.TEXT, TokenKind.STAR})


@dataclass(frozen=True, slots=True)
class Comparison:
    """``field operator value``, kept as tokens so errors can point at each part."""

    field: Token
    operator: Token
    value: Token


@dataclass(frozen=True, slots=True)
class Junction:
    """Two or more nodes joined by AND or OR."""

    op: Literal["AND", "OR"]
    children: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Negation:
    """NOT of one node."""

    child: Node


Node = Comparison | Junction | Negation


def parse_filter(text: str) -> Node | None:
    """Parse a filter; None for an empty or all-whitespace filter. Raises QueryError(field="filter")."""
    if len(text) > MAX_FILTER_CHARS:
        raise QueryError("filter", f"filter is longer than {MAX_FILTER_CHARS} characters")
    parser = _Parser(tokenize(text))
    if parser.peek().kind is TokenKind.EOF:
        return None
    node = parser.expression()
    trailing = parser.peek()
    if trailing.kind is not TokenKind.EOF:
        raise filter_error(f"unexpected {trailing.describe()}", trailing.column)
    return node


class _Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self._tokens = tokens
        self._pos = 0
        self._depth = 0

    def peek(self) -> Token:
        return self._tokens[self._pos]

    def _next(self) -> Token:
        token = self._tokens[self._pos]
        if token.kind is not TokenKind.EOF:
            self._pos += 1
        return token

    def expression(self) -> Node:
        children = [self._sequence()]
        while self.peek().kind is TokenKind.AND:
            self._next()
            children.append(self._sequence())
        return _join("AND", children)

    def _sequence(self) -> Node:
        children = [self._factor()]
        while self.peek().kind in _TERM_STARTS:
            children.append(self._factor())
        return _join("AND", children)

    def _factor(self) -> Node:
        children = [self._term()]
        while self.peek().kind is TokenKind.OR:
            self._next()
            children.append(self._term())
        return _join("OR", children)

    def _term(self) -> Node:
        token = self.peek()
        if token.kind in (TokenKind.NOT, TokenKind.MINUS):
            self._next()
            self._enter(token)
            node: Node = Negation(self._term())
            self._depth -= 1
            return node
        if token.kind is TokenKind.LPAREN:
            self._next()
            self._enter(token)
            if self.peek().kind is TokenKind.RPAREN:
                raise filter_error("empty parentheses", token.column)
            node = self.expression()
            closing = self._next()
            if closing.kind is not TokenKind.RPAREN:
                raise filter_error(
                    f"expected ')' to close the '(' at column {token.column}, found {closing.describe()}",
                    closing.column,
                )
            self._depth -= 1
            return node
        return self._comparison()

    def _comparison(self) -> Node:
        field = self._next()
        if field.kind is not TokenKind.TEXT:
            raise filter_error(f"expected a field name, found {field.describe()}", field.column)
        op = self._next()
        if op.kind is not TokenKind.COMPARATOR and field.text.upper() in _KEYWORDS:
            raise filter_error(
                f"logical operators are upper case: use {field.text.upper()!r} instead of {field.text!r}",
                field.column,
            )
        if op.kind is not TokenKind.COMPARATOR:
            raise filter_error(
                f"expected a comparison operator (= != < <= > >= :) after {field.text!r}, "
                f"found {op.describe()}",
                op.column,
            )
        value = self._next()
        if value.kind not in _VALUE_KINDS:
            raise filter_error(f"expected a value after {op.text!r}, found {value.describe()}", value.column)
        return Comparison(field, op, value)

    def _enter(self, token: Token) -> None:
        self._depth += 1
        if self._depth > MAX_FILTER_DEPTH:
            raise filter_error(f"filter nests deeper than {MAX_FILTER_DEPTH} levels", token.column)


def _join(op: Literal["AND", "OR"], children: list[Node]) -> Node:
    if len(children) == 1:
        return children[0]
    # Flatten `a AND (b AND c)` chains so the SQL stays shallow and readable.
    flat: list[Node] = []
    for child in children:
        flat.extend(child.children if isinstance(child, Junction) and child.op == op else (child,))
    return Junction(op, tuple(flat))
