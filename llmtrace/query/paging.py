"""Page size rules shared by every List RPC."""

from __future__ import annotations

from typing import Final

from llmtrace.query.errors import QueryError

DEFAULT_PAGE_SIZE: Final = 50
MAX_PAGE_SIZE: Final = 1000


def effective_page_size(
    requested: int, *, default: int = DEFAULT_PAGE_SIZE, maximum: int = MAX_PAGE_SIZE
) -> int:
    """The page size to use: the default for 0, capped at the maximum (AIP-158 coerces, not rejects)."""
    if requested < 0:
        raise QueryError("page_size", "page_size must not be negative")
    if requested == 0:
        return min(default, maximum)
    return min(requested, maximum)
