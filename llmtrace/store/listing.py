"""Generic keyset-paginated listing: filter, order, page token, LIMIT n+1.

Every List RPC is one `ListQuery` (a relation, its field catalog and default order) run through
`list_page`. Pages never use OFFSET: the token carries the last row's sort keys, so deep pages
cost the same as the first and rows inserted meanwhile cause neither gaps nor repeats.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llmtrace.query import (
    FieldSpec,
    PageTokenCodec,
    compile_filter,
    effective_page_size,
    keyset_predicate,
    order_sql_clause,
    parse_order_by,
    query_fingerprint,
    token_values_from_row,
)
from llmtrace.store.reader import Row, StoreReader


@dataclass(frozen=True)
class ListQuery:
    """One listable resource."""

    resource: str
    #: SELECT list (no trailing comma).
    columns: str
    #: FROM clause body; `{tenant}` marks where the tenant parameter goes (possibly several times).
    relation: str
    #: Column that holds the tenant in `relation`.
    tenant_column: str
    catalog: dict[str, FieldSpec]
    default_order: str
    tiebreak: tuple[str, ...]


@dataclass(frozen=True)
class ListRequest:
    """The paging fields every List request has."""

    tenant: str
    page_size: int
    page_token: str
    filter: str
    order_by: str
    default_page_size: int = 50
    max_page_size: int = 1000


@dataclass(frozen=True)
class Page:
    """One page of rows and the token for the next (empty at the end)."""

    rows: list[Row]
    next_page_token: str
    #: The token that resumes after row i (`cut`).
    token_after: Callable[[int], str] | None = field(default=None, repr=False)

    def cut(self, count: int) -> Page:
        """The first `count` rows, and the token that resumes after them."""
        if count >= len(self.rows):
            return self
        assert self.token_after is not None and count > 0
        return Page(self.rows[:count], self.token_after(count - 1), self.token_after)


async def list_page(
    reader: StoreReader, codec: PageTokenCodec, query: ListQuery, req: ListRequest, *, max_bytes: int = 0
) -> Page:
    """Run one page of `query` for `req`; raises QueryError on a bad filter, order or token.

    With `max_bytes`, rows are read only until their content passes it (one at least): a page of
    large spans is cut to what one response can carry anyway, before it is all in memory."""
    size = effective_page_size(req.page_size, default=req.default_page_size, maximum=req.max_page_size)
    where = compile_filter(req.filter, query.catalog)
    order = parse_order_by(req.order_by, query.catalog, default=query.default_order, tiebreak=query.tiebreak)
    fingerprint = query_fingerprint(query.resource, req.tenant, req.filter, req.order_by)
    if req.page_token:
        where = where & keyset_predicate(order, codec.decode(req.page_token, fingerprint))
    relation_sql, relation_params = _bind_tenant(query.relation, req.tenant)
    keys = ", ".join(f"{term.field.sql} AS __k{i}" for i, term in enumerate(order))
    sql = (
        f"SELECT {query.columns}, {keys} FROM {relation_sql} "
        f"WHERE {query.tenant_column} = ? AND {where.sql} "
        f"ORDER BY {order_sql_clause(order)} LIMIT {size + 1}"
    )
    params = [*relation_params, req.tenant, *where.params]
    cut_short = False
    if max_bytes:
        rows, cut_short = await reader.fetch_bounded(sql, params, max_bytes)
    else:
        rows = await reader.fetch(sql, params)
    more = len(rows) > size or cut_short
    rows = rows[:size]
    sort_keys = [[row.pop(f"__k{i}") for i in range(len(order))] for row in rows]

    def token_after(index: int) -> str:
        return codec.encode(fingerprint, token_values_from_row(order, sort_keys[index]))

    return Page(rows, token_after(len(rows) - 1) if more else "", token_after)


def _bind_tenant(relation: str, tenant: str) -> tuple[str, list[Any]]:
    count = relation.count("{tenant}")
    return relation.replace("{tenant}", "?"), [tenant] * count
