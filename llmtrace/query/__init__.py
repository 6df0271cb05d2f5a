"""Query language for List RPCs: AIP-160 filters, AIP-132 order_by, keyset page tokens.

All of it produces parameterised DuckDB SQL from a per-resource catalog of ``FieldSpec``; client
text never reaches SQL except as ``?`` parameters. The syntax is documented in docs/query.md.
"""

from __future__ import annotations

from llmtrace.query.errors import QueryError
from llmtrace.query.fields import FieldKind, FieldSpec, SqlFragment
from llmtrace.query.filter import compile_filter
from llmtrace.query.keyset import keyset_predicate, sort_values_from_token, token_values_from_row
from llmtrace.query.order import OrderTerm, order_sql_clause, parse_order_by
from llmtrace.query.page_token import PageTokenCodec, query_fingerprint
from llmtrace.query.paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, effective_page_size

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "FieldKind",
    "FieldSpec",
    "OrderTerm",
    "PageTokenCodec",
    "QueryError",
    "SqlFragment",
    "compile_filter",
    "effective_page_size",
    "keyset_predicate",
    "order_sql_clause",
    "parse_order_by",
    "query_fingerprint",
    "sort_values_from_token",
    "token_values_from_row",
]
