"""Keyset pagination: sort-key values to and from page tokens, and the "rows after" predicate.

Token values are JSON scalars chosen so the round trip is exact: timestamps as integer
microseconds since the Unix epoch, floats as ``float.hex()`` text, ids as lowercase hex, enums
as their integer rank. As bind parameters they become ``datetime`` (UTC), ``float``, ``bytes`` and
``int``, so each comparison is against a parameter of the column's own type (which keeps DuckDB's
min/max pruning usable, unlike comparing ``epoch_us(column)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from llmtrace.query.errors import QueryError
from llmtrace.query.fields import FieldKind, SqlFragment, operand_sql
from llmtrace.query.order import OrderTerm

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def token_values_from_row(order: Sequence[OrderTerm], row_values: Sequence[object]) -> list[object]:
    """Convert the sort-key values of a result row (as DuckDB returns them) to token values.

    ``row_values`` holds one value per order term, in order. A NULL or wrongly typed value is a
    programming error (sort expressions must be non-NULL) and raises ``TypeError``.
    """
    if len(row_values) != len(order):
        raise TypeError(f"expected {len(order)} sort-key values, got {len(row_values)}")
    return [_to_token(term, value) for term, value in zip(order, row_values, strict=True)]


def sort_values_from_token(order: Sequence[OrderTerm], values: Sequence[object]) -> list[object]:
    """Convert decoded token values back to bind parameters of each sort key's column type.

    Raises ``QueryError(field="page_token")`` if the values do not fit ``order`` (for example a
    token minted before a field changed type).
    """
    if len(values) != len(order):
        raise _malformed()
    return [_from_token(term, value) for term, value in zip(order, values, strict=True)]


def keyset_predicate(order: Sequence[OrderTerm], last_values: Sequence[object]) -> SqlFragment:
    """Rows strictly after the row whose sort-key token values are ``last_values``, in ``order``.

    Uses the expanded form ``(a > ?) OR (a = ? AND b > ?) OR ...`` (``<`` for descending keys), so
    mixed directions work, behind a leading ``a >= ?`` bound that the planner can push into the scan.
    """
    if not order:
        raise ValueError("keyset pagination needs at least one sort key")
    params = sort_values_from_token(order, last_values)
    exprs = [operand_sql(term.field) for term in order]
    disjuncts: list[str] = []
    bound: list[object] = []
    for i, term in enumerate(order):
        equal = [f"{exprs[j]} = ?" for j in range(i)]
        after = f"{exprs[i]} {'<' if term.descending else '>'} ?"
        disjuncts.append("(" + " AND ".join([*equal, after]) + ")")
        bound.extend(params[: i + 1])
    first = f"{exprs[0]} {'<=' if order[0].descending else '>='} ?"
    return SqlFragment(f"({first} AND ({' OR '.join(disjuncts)}))", [params[0], *bound])


def _to_token(term: OrderTerm, value: object) -> object:
    kind = term.field.kind
    if kind is FieldKind.STRING and isinstance(value, str):
        return value
    if kind in (FieldKind.INT, FieldKind.ENUM) and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is FieldKind.FLOAT and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value).hex()
    if kind is FieldKind.BOOL and isinstance(value, bool):
        return value
    if kind is FieldKind.TIMESTAMP and isinstance(value, datetime):
        # A naive value comes from a plain TIMESTAMP column, which stores UTC by convention.
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return (aware - _EPOCH) // _MICROSECOND
    if kind is FieldKind.BYTES_HEX and isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    raise TypeError(
        f"sort key {term.field.name!r} ({kind.value}) got {type(value).__name__}; "
        "sort expressions must be non-NULL values of the field's kind"
    )


def _from_token(term: OrderTerm, value: object) -> object:
    kind = term.field.kind
    try:
        if kind is FieldKind.STRING and isinstance(value, str):
            return value
        if kind in (FieldKind.INT, FieldKind.ENUM) and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind is FieldKind.FLOAT and isinstance(value, str):
            return float.fromhex(value)
        if kind is FieldKind.BOOL and isinstance(value, bool):
            return value
        if kind is FieldKind.TIMESTAMP and isinstance(value, int) and not isinstance(value, bool):
            return _EPOCH + _MICROSECOND * value
        if kind is FieldKind.BYTES_HEX and isinstance(value, str):
            return bytes.fromhex(value)
    except (ValueError, OverflowError):
        pass
    raise _malformed()


def _malformed() -> QueryError:
    return QueryError("page_token", "page token is malformed")
