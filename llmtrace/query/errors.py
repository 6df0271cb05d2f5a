"""The one exception the query layer raises for bad client input."""

from __future__ import annotations


class QueryError(ValueError):
    """A request's filter, order_by, page_token or page_size is invalid.

    ``field`` names the request field at fault; the RPC layer turns this into INVALID_ARGUMENT
    with a ``BadRequest`` field violation carrying ``field`` and ``message``.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message

    def __repr__(self) -> str:
        return f"QueryError(field={self.field!r}, message={self.message!r})"
