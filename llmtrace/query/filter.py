r"""Compile AIP-160 style filters to parameterised DuckDB SQL.

Grammar (a subset of AIP-160; keywords are upper case)::

    filter      = [ expression ]
    expression  = sequence { "AND" sequence }
    sequence    = factor { factor }                 (juxtaposition: implicit AND)
    factor      = term { "OR" term }
    term        = [ "NOT" | "-" ] term | "(" expression ")" | comparison
    comparison  = FIELD COMPARATOR value
    COMPARATOR  = "=" | "!=" | "<" | "<=" | ">" | ">=" | ":"
    value       = STRING | NUMBER | WORD | "*"

So ``OR`` binds tighter than juxtaposition, which binds tighter than ``AND``:
``a AND b OR c`` means ``a AND (b OR c)``. Literals: ``"..."`` or ``'...'`` strings with the
escapes ``\" \' \\ \* \n \t \r``; integers; floats (``1.5``, ``2e-3``); bare words for booleans
(``true``/``false``), enum names and simple strings; ``*`` after ``:`` tests presence. Timestamps
are quoted RFC 3339 strings with a zone. ``id`` fields take hex text. A string compared with ``=``,
``!=`` or ``:`` may start and/or end with an unescaped ``*`` wildcard (``"gpt-4*"``: prefix match).

Comparisons on a missing (NULL) value are false; ``NOT`` negates exactly, so ``NOT a = 1`` also
matches rows where ``a`` is missing while ``a != 1`` does not. Every literal becomes a ``?``
parameter; field SQL comes only from the catalog. Limits: 4096 characters, 32 nesting levels.
"""

from __future__ import annotations

from collections.abc import Mapping

from llmtrace.query.fields import FieldKind, FieldSpec, SqlFragment, operand_sql, presence_operand_sql
from llmtrace.query.lexer import Token, TokenKind, filter_error
from llmtrace.query.literals import literal_param
from llmtrace.query.parser import Comparison, Junction, Negation, Node, parse_filter

_ORDERED = ("=", "!=", "<", "<=", ">", ">=", ":")
_EQUALITY = ("=", "!=", ":")
_OPERATORS = {
    FieldKind.STRING: _ORDERED,
    FieldKind.INT: _ORDERED,
    FieldKind.FLOAT: _ORDERED,
    FieldKind.TIMESTAMP: _ORDERED,
    FieldKind.ENUM: _ORDERED,
    FieldKind.BOOL: _EQUALITY,
    FieldKind.BYTES_HEX: _EQUALITY,
}


def compile_filter(text: str, catalog: Mapping[str, FieldSpec]) -> SqlFragment:
    """Compile a filter to a boolean SQL fragment over the catalog's fields.

    An empty filter compiles to ``TRUE``. Raises ``QueryError(field="filter")`` with the column of
    the problem for syntax errors, unknown or non-filterable fields, and literals of the wrong type.
    """
    node = parse_filter(text)
    if node is None:
        return SqlFragment("TRUE", [])
    params: list[object] = []
    return SqlFragment(_emit(node, catalog, params), params)


def _emit(node: Node, catalog: Mapping[str, FieldSpec], params: list[object]) -> str:
    if isinstance(node, Junction):
        return "(" + f" {node.op} ".join(_emit(child, catalog, params) for child in node.children) + ")"
    if isinstance(node, Negation):
        # COALESCE makes NOT two-valued: NOT over a comparison on a missing value is true.
        return f"(NOT COALESCE({_emit(node.child, catalog, params)}, FALSE))"
    return _comparison(node, catalog, params)


def _comparison(node: Comparison, catalog: Mapping[str, FieldSpec], params: list[object]) -> str:
    spec = _resolve(node.field, catalog)
    expr = operand_sql(spec)
    op = node.operator.text
    value = node.value
    if value.kind is TokenKind.STAR:
        if op != ":":
            raise filter_error(f"'*' is only allowed after ':' (as in {spec.name}:*)", value.column)
        # Test the value before any sort sentinel is substituted: `stream:*` must not match
        # unknown streams just because they sort as false.
        present = presence_operand_sql(spec)
        # Unset strings and ids are stored empty, not NULL: "has a value" means non-empty.
        if spec.kind is FieldKind.STRING:
            return f"coalesce({present}, '') <> ''"
        if spec.kind is FieldKind.BYTES_HEX:
            return f"coalesce(octet_length({present}), 0) > 0"
        return f"{present} IS NOT NULL"
    if op not in _OPERATORS[spec.kind]:
        allowed = " ".join(_OPERATORS[spec.kind])
        raise filter_error(
            f"operator {op!r} is not supported for field {spec.name!r} (use one of {allowed})",
            node.operator.column,
        )
    if spec.kind is FieldKind.STRING and value.kind is TokenKind.STRING and value.wildcards:
        return _like(spec, expr, op, value, params)
    params.append(literal_param(spec, value))
    return f"{expr} {'=' if op == ':' else op} ?"


def _resolve(field: Token, catalog: Mapping[str, FieldSpec]) -> FieldSpec:
    spec = catalog.get(field.text)
    if spec is not None and spec.filterable:
        return spec
    allowed = ", ".join(sorted(name for name, s in catalog.items() if s.filterable))
    reason = "cannot be filtered on" if spec is not None else "is not a known field"
    raise filter_error(f"{field.text!r} {reason} (filterable fields: {allowed})", field.column)


def _like(spec: FieldSpec, expr: str, op: str, value: Token, params: list[object]) -> str:
    text = value.value
    last = len(text) - 1
    if op not in _EQUALITY:
        raise filter_error(
            f"wildcards in {spec.name!r} values are only allowed with = != and : "
            "(escape a literal '*' as \\*)",
            value.column,
        )
    if any(i not in (0, last) for i in value.wildcards):
        raise filter_error(
            "a '*' wildcard may only start or end a string (escape a literal '*' as \\*)", value.column
        )
    leading = 0 in value.wildcards
    trailing = last in value.wildcards and (last > 0 or not leading)
    core = text[1 if leading else 0 : last if trailing else len(text)]
    escaped = core.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    params.append(f"{'%' if leading else ''}{escaped}{'%' if trailing else ''}")
    negate = "NOT " if op == "!=" else ""
    return f"{expr} {negate}LIKE ? ESCAPE '\\'"
