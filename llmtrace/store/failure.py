"""A database DuckDB has given up on, and who is told.

After a fatal error (a checkpoint that failed for lack of disk space, say) DuckDB invalidates
the database: every later statement fails until the file is opened again, even once the cause
is gone. The core cannot reopen it under its readers and writer, so it stops serving and exits,
and whatever runs it (`llmtrace serve`, systemd, Kubernetes) starts it again; opening the file
replays the WAL, and nothing acknowledged is lost.
"""

from __future__ import annotations

from collections.abc import Callable

import duckdb

#: Called, from the thread that met it, with the first error of a database DuckDB gave up on.
OnFatal = Callable[[BaseException], None]

_INVALIDATED = "database has been invalidated"


def is_fatal(exc: BaseException) -> bool:
    """Whether `exc` means the database can no longer be used in this process."""
    return isinstance(exc, duckdb.FatalException) or (
        isinstance(exc, duckdb.Error) and _INVALIDATED in str(exc)
    )
