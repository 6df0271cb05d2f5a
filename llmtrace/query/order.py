"""AIP-132 ``order_by`` parsing: ``field [asc|desc], field2 [asc|desc]``."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from llmtrace.query.errors import QueryError
from llmtrace.query.fields import FieldSpec, operand_sql

MAX_ORDER_BY_CHARS = 1024
_TERM = re.compile(r"\s*(\S+)(?:\s+(\S+))?\s*")


@dataclass(frozen=True, slots=True)
class OrderTerm:
    """One sort key: a catalog field and its direction."""

    field: FieldSpec
    descending: bool = False


def parse_order_by(
    text: str,
    catalog: Mapping[str, FieldSpec],
    default: str = "",
    tiebreak: Sequence[str] = (),
) -> list[OrderTerm]:
    """Parse ``order_by`` (or ``default`` when it is blank) and append the tiebreak fields.

    Tiebreak fields are appended ascending unless already present, so that with a unique tiebreak
    (such as trace and span id) the order is total, which keyset pagination needs. Raises
    ``QueryError(field="order_by")`` for syntax errors, unknown or non-orderable fields, bad
    directions and repeated fields; ``ValueError`` for a tiebreak field missing from the catalog.
    """
    if len(text) > MAX_ORDER_BY_CHARS:
        raise QueryError("order_by", f"order_by is longer than {MAX_ORDER_BY_CHARS} characters")
    terms = _parse_terms(text if text.strip() else default, catalog)
    present = {term.field.name for term in terms}
    for name in tiebreak:
        if name not in catalog:
            raise ValueError(f"tiebreak field {name!r} is not in the catalog")
        spec = catalog[name]
        if spec.name not in present:
            terms.append(OrderTerm(spec))
            present.add(spec.name)
    return terms


def order_sql_clause(order: Sequence[OrderTerm]) -> str:
    """The ORDER BY list for ``order``, e.g. ``start_time DESC, trace_id ASC``."""
    return ", ".join(f"{operand_sql(t.field)} {'DESC' if t.descending else 'ASC'}" for t in order)


def _parse_terms(text: str, catalog: Mapping[str, FieldSpec]) -> list[OrderTerm]:
    if not text.strip():
        return []
    terms: list[OrderTerm] = []
    offset = 0
    for part in text.split(","):
        column = offset + 1
        offset += len(part) + 1
        match = _TERM.fullmatch(part)
        if match is None:
            message = "empty sort field" if not part.strip() else "expected 'field' or 'field desc'"
            raise QueryError("order_by", f"{message} at column {column}")
        name, direction = match.group(1), match.group(2)
        spec = catalog.get(name)
        if spec is None or not spec.orderable:
            allowed = ", ".join(sorted(n for n, s in catalog.items() if s.orderable))
            reason = "cannot be ordered by" if spec is not None else "is not a known field"
            raise QueryError(
                "order_by",
                f"{name!r} {reason} at column {column + match.start(1)} (orderable fields: {allowed})",
            )
        if direction is not None and direction.lower() not in ("asc", "desc"):
            raise QueryError(
                "order_by",
                f"invalid direction {direction!r} at column {column + match.start(2)} (use asc or desc)",
            )
        if any(term.field.name == spec.name for term in terms):
            raise QueryError("order_by", f"field {name!r} appears more than once in order_by")
        terms.append(OrderTerm(spec, descending=direction is not None and direction.lower() == "desc"))
    return terms
