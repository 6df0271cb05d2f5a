"""Field catalogs and SQL fragments: the only places field SQL and parameters come from."""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

_PLAIN_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")


class FieldKind(enum.Enum):
    """How a field's filter literals are parsed and how its values are bound and stored in tokens."""

    STRING = "string"
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    #: A TIMESTAMPTZ column; literals are quoted RFC 3339 strings, bound as UTC ``datetime``.
    TIMESTAMP = "timestamp"
    #: An integer rank column; literals are the names in ``FieldSpec.enum_values``.
    ENUM = "enum"
    #: A BLOB column (trace and span ids); literals are hex text, bound as ``bytes``.
    BYTES_HEX = "bytes_hex"


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One field a List RPC can filter or order by.

    ``name`` is what clients write; ``sql`` is a SQL expression over the queried relation and is
    the only SQL that reaches a query from a catalog entry (client text never does). A field used
    for ordering must never evaluate to NULL -- give a COALESCE'd expression -- because keyset
    pagination compares sort keys with ``=``/``<``/``>``, which never match NULL.

    ``field:*`` ("has a value") must not see that sentinel as a value, so such a field gives
    ``presence_sql``: SQL that is NULL exactly when the value is missing (default: ``sql``).
    """

    name: str
    sql: str
    kind: FieldKind
    #: Enum value name -> rank stored in the column; comparisons use the ranks. ENUM fields only.
    enum_values: Mapping[str, int] | None = None
    filterable: bool = True
    orderable: bool = True
    presence_sql: str | None = None

    def __post_init__(self) -> None:
        if (self.kind is FieldKind.ENUM) != bool(self.enum_values):
            raise ValueError(f"field {self.name!r}: enum_values is required for ENUM fields and only them")


@dataclass(frozen=True, slots=True)
class SqlFragment:
    """A boolean SQL expression with its ``?`` parameters, in order.

    ``sql`` is self-contained: it can be placed next to ``AND`` without extra parentheses.
    """

    sql: str
    params: list[object] = field(default_factory=list)

    def __and__(self, other: SqlFragment) -> SqlFragment:
        if self.sql == "TRUE" and not self.params:
            return other
        if other.sql == "TRUE" and not other.params:
            return self
        return SqlFragment(f"({self.sql} AND {other.sql})", [*self.params, *other.params])


def operand_sql(spec: FieldSpec) -> str:
    """The field's SQL, parenthesised unless it is a plain (possibly qualified) column name.

    Catalog expressions such as ``a || b`` must not bind looser than the operator placed after them.
    """
    return _operand(spec.sql)


def presence_operand_sql(spec: FieldSpec) -> str:
    """SQL that is NULL exactly when the field has no value, parenthesised like ``operand_sql``."""
    return _operand(spec.sql if spec.presence_sql is None else spec.presence_sql)


def _operand(sql: str) -> str:
    if _PLAIN_IDENTIFIER.fullmatch(sql):
        return sql
    return f"({sql})"
