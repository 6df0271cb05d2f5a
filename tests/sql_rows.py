"""ExecuteSql answers as plain Python values, for tests that compare rows."""

from __future__ import annotations

from typing import Any

from llmtrace.api.v1 import common_pb2, query_service_pb2


def plain_value(value: common_pb2.AnyValue) -> Any:
    """An AnyValue as the Python value it holds (arrays as lists, key-value lists as dicts)."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [plain_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: plain_value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind)


def plain_rows(response: query_service_pb2.ExecuteSqlResponse) -> list[list[Any]]:
    """Every row of an ExecuteSql answer as a list of plain values."""
    return [[plain_value(v) for v in row.values] for row in response.rows]
