"""Opening the DuckDB file with the settings every connection of the core must have."""

from __future__ import annotations

import os
from pathlib import Path

import duckdb

# External access off: no file-reading table functions, no ATTACH/COPY to arbitrary paths, no
# extension downloads. The database file itself, its WAL and temp spill files are still usable.
_LOCKED_DOWN = {
    "enable_external_access": "false",
    "autoinstall_known_extensions": "false",
    "autoload_known_extensions": "false",
    # DuckDB checkpoints every 16 MB of WAL by default, and each checkpoint recompresses the
    # partly filled last row group: at ingest rates that is every few batches, with commits
    # stalled for seconds (measured in docs/benchmarks.md). Rarer checkpoints cost a longer WAL
    # replay after a crash; the core also checkpoints on shutdown.
    "checkpoint_threshold": "256MB",
}


class DatabaseOpenError(RuntimeError):
    """The database file cannot be opened (not a DuckDB file, unreadable, locked)."""


class DatabaseLockedError(DatabaseOpenError):
    """Another process holds the database file open for writing."""


def open_database(path: str | Path, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open (creating if needed, unless read-only) the database file, owner-only permissions."""
    target = Path(path).expanduser()
    if not read_only:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatabaseOpenError(
                f"cannot create the directory of {target}: {exc.strerror or exc}"
            ) from exc
    # DuckDB creates the file with the process umask; spans hold prompts, so it is owner-only
    # whatever the caller's umask is. Its WAL comes at the first commit, after this: the commands
    # that write (core, migrate) run under umask 077 for that.
    old_umask = os.umask(0o077)
    try:
        conn = duckdb.connect(str(target), read_only=read_only, config=dict(_LOCKED_DOWN))
    except duckdb.IOException as exc:
        # DuckDB's own words: a message that merely holds "lock" (a path under /srv/blocks/)
        # is some other failure.
        if "could not set lock on file" in str(exc).lower():
            raise DatabaseLockedError(
                f"{target} is locked by another process (is a core already running?)"
            ) from exc
        raise DatabaseOpenError(f"cannot open {target}: {str(exc).splitlines()[0]}") from exc
    finally:
        os.umask(old_umask)
    return conn
