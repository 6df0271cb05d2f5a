"""`llmtrace sql`: one sandboxed read-only query, over gRPC when a core runs, else on the file.

A running core holds the DuckDB file locked, so when one answers a health check on
`grpc.listen_addr` the query goes to it (QueryService.ExecuteSql); otherwise the file is opened
read-only here and the same sandbox runs in this process. Either way the values are reduced to
the same plain Python values before printing (what the wire can carry: None, bool, int, float,
str, bytes, lists and string-keyed dicts), so both paths print byte-identical output.

stdout carries only the result; logs, warnings and errors go to stderr. Exit codes: 0 success,
1 core or database unavailable, 2 refused or invalid query (or a missing database file),
3 the query ran past its time limit.
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import json
import math
import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, TextIO, TypeAlias

import grpc
import structlog

from llmtrace.config import Settings, parse_host_port
from llmtrace.limits import tenant_problem

if TYPE_CHECKING:
    from llmtrace.api.v1 import common_pb2

EXIT_OK: Final = 0
EXIT_UNAVAILABLE: Final = 1
EXIT_REFUSED: Final = 2
EXIT_TIMEOUT: Final = 3

FORMATS: Final = ("table", "csv", "json")

#: How long the health check may take before the core counts as not running.
HEALTH_TIMEOUT_S: Final = 1.0
#: Extra time the RPC gets beyond the SQL timeout, for transfer of a large result.
RPC_MARGIN_S: Final = 30.0
_INT32_MAX: Final = 2**31 - 1
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_QUERY_SERVICE: Final = "llmtrace.api.v1.QueryService"

_log = structlog.get_logger("llmtrace.cli.sql")

#: A result value as printed: what an AnyValue can carry, in Python.
Plain: TypeAlias = bool | int | float | str | bytes | list["Plain"] | dict[str, "Plain"] | None


@dataclass(frozen=True)
class Column:
    """A result column: name and DuckDB type name."""

    name: str
    type: str


@dataclass(frozen=True)
class Result:
    """A query result reduced to plain values."""

    columns: list[Column]
    rows: list[list[Plain]]
    truncated: bool


class SqlCommandError(Exception):
    """The query could not be answered; `exit_code` says why."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.message = message


def run_sql(
    settings: Settings, *, query: str, fmt: str, tenant: str, max_rows: int | None, file_only: bool = False
) -> int:
    """Run `query` for `tenant` and print the result in `fmt`; returns the exit code.

    `file_only` (a `--database-path` given): that file, never a core, which may serve another."""
    if fmt not in FORMATS:
        return _fail(EXIT_REFUSED, f"unknown output format {fmt!r}; expected one of {', '.join(FORMATS)}")
    cap = settings.sql.max_rows if max_rows is None else max_rows
    if cap <= 0:
        return _fail(EXIT_REFUSED, f"max rows must be greater than 0, got {cap}")
    # Argument bytes that are not UTF-8 arrive as lone surrogates (Python's surrogateescape), which
    # DuckDB and gRPC cannot take: refused here rather than failing with a traceback there.
    if not _is_utf8(query):
        return _fail(
            EXIT_REFUSED, f"invalid query: character {_first_not_utf8(query)} is not valid UTF-8 text"
        )
    if not _is_utf8(tenant):
        return _fail(EXIT_REFUSED, f"invalid tenant {tenant!r}: not valid UTF-8 text")
    # The core's rule for tenants, so the file path refuses what the RPC would refuse.
    problem = tenant_problem(tenant)
    if problem is not None:
        return _fail(EXIT_REFUSED, f"invalid tenant {tenant!r}: the tenant {problem}")
    try:
        target = None if file_only else _core_target(settings.grpc.listen_addr)
        result: Result | None = None
        if target is not None:
            result = _query_core(settings, target, query=query, tenant=tenant, max_rows=cap)
        if result is None:
            result = _query_file(settings, query=query, tenant=tenant, max_rows=cap, file_only=file_only)
    except SqlCommandError as exc:
        return _fail(exc.exit_code, exc.message)
    write_result(result, fmt, sys.stdout)
    sys.stdout.flush()
    if result.truncated and fmt != "table":
        print(
            f"llmtrace: warning: result truncated after {len(result.rows)} rows; more rows matched "
            "(--max-rows, sql.max_rows; or, through the core, the result reached grpc.max_message_bytes)",
            file=sys.stderr,
        )
    return EXIT_OK


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _first_not_utf8(text: str) -> int:
    """The 1-based position of the first lone surrogate: shown rather than a query that may be long."""
    return next(i for i, c in enumerate(text) if "\ud800" <= c <= "\udfff") + 1


def _fail(code: int, message: str) -> int:
    print(f"llmtrace: {message}", file=sys.stderr)
    return code


# --- over gRPC ------------------------------------------------------------------------------------


def _core_target(listen_addr: str) -> str | None:
    """Where to reach a core listening on `listen_addr`; None when it cannot be dialled (port 0)."""
    try:
        host, port = parse_host_port(listen_addr)
    except ValueError:
        return None
    if port == 0:
        return None
    # A core bound to every interface is reachable on loopback.
    if host in ("", "0.0.0.0"):  # noqa: S104 - comparing, not binding
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _query_core(settings: Settings, target: str, *, query: str, tenant: str, max_rows: int) -> Result | None:
    """The result from the core at `target`, or None when no core answers there."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: PLC0415 - only when dialling

    from llmtrace.api.v1 import query_service_pb2, query_service_pb2_grpc  # noqa: PLC0415

    limit = settings.grpc.max_message_bytes
    options = [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]
    with grpc.insecure_channel(target, options=options) as channel:
        try:
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=_QUERY_SERVICE), timeout=HEALTH_TIMEOUT_S
            )
        except grpc.RpcError as exc:
            _log.debug("no core answers; using the database file", target=target, code=_code_name(exc))
            return None
        if health.status != health_pb2.HealthCheckResponse.SERVING:
            _log.debug("core is not serving; using the database file", target=target)
            return None
        _log.debug("running the query on the core over gRPC", target=target)
        request = query_service_pb2.ExecuteSqlRequest(
            tenant=tenant, query=query, max_rows=min(max_rows, _INT32_MAX)
        )
        try:
            response = query_service_pb2_grpc.QueryServiceStub(channel).ExecuteSql(
                request, timeout=settings.sql.timeout_seconds + RPC_MARGIN_S
            )
        except grpc.RpcError as exc:
            raise _rpc_failure(exc, target) from None
    return Result(
        columns=[Column(c.name, c.type) for c in response.columns],
        rows=[[from_any_value(v) for v in row.values] for row in response.rows],
        truncated=response.truncated,
    )


def _code_name(exc: grpc.RpcError) -> str:
    code = exc.code() if isinstance(exc, grpc.Call) else None
    return code.name if code is not None else "UNKNOWN"


def _rpc_failure(exc: grpc.RpcError, target: str) -> SqlCommandError:
    code = exc.code() if isinstance(exc, grpc.Call) else None
    details = (exc.details() if isinstance(exc, grpc.Call) else None) or str(exc)
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED):
        return SqlCommandError(EXIT_REFUSED, f"query refused: {details}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return SqlCommandError(EXIT_TIMEOUT, f"query timed out: {details}")
    name = code.name if code is not None else "UNKNOWN"
    return SqlCommandError(EXIT_UNAVAILABLE, f"core at {target} failed the query ({name}): {details}")


def from_any_value(value: common_pb2.AnyValue) -> Plain:
    """An llmtrace.api.v1.AnyValue as a plain value (unset is None)."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [from_any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: from_any_value(kv.value) for kv in value.kvlist_value.values}
    plain: Plain = getattr(value, kind)
    return plain


# --- on the file ----------------------------------------------------------------------------------


def _query_file(settings: Settings, *, query: str, tenant: str, max_rows: int, file_only: bool) -> Result:
    import duckdb  # noqa: PLC0415 - heavy, only on this path

    from llmtrace.store.database import (  # noqa: PLC0415
        DatabaseLockedError,
        DatabaseOpenError,
        open_database,
    )
    from llmtrace.store.migrations import current_version  # noqa: PLC0415
    from llmtrace.store.sql_sandbox import (  # noqa: PLC0415
        RowEncoding,
        SqlRefused,
        SqlTimeout,
        execute_sandboxed,
    )

    path = Path(settings.storage.database_path).expanduser()
    if not path.is_file():
        raise SqlCommandError(
            EXIT_REFUSED,
            f"database file {path} does not exist (storage.database_path"
            + (
                "; --database-path reads only that file)"
                if file_only
                else f"; no core answered on {settings.grpc.listen_addr})"
            ),
        )
    _log.debug("running the query on the database file", path=str(path))
    try:
        conn = open_database(path, read_only=True)
    except DatabaseLockedError:
        raise SqlCommandError(
            EXIT_UNAVAILABLE,
            f"{path} is locked by another process (a running core?); leave out --database-path to "
            "ask the core on grpc.listen_addr"
            if file_only
            else f"{path} is locked by another process, and no core answered on "
            f"{settings.grpc.listen_addr}; point grpc.listen_addr at the running core",
        ) from None
    except DatabaseOpenError as exc:
        raise SqlCommandError(EXIT_UNAVAILABLE, str(exc)) from None
    except duckdb.Error as exc:
        raise SqlCommandError(EXIT_UNAVAILABLE, f"cannot open {path}: {_first_line(exc)}") from None
    try:
        if current_version(conn) == 0:
            raise SqlCommandError(
                EXIT_UNAVAILABLE, f"{path} has no LLMTrace schema; run `llmtrace migrate` or start the core"
            )
        cursor = conn.cursor()
        try:
            result = execute_sandboxed(
                cursor,
                tenant=tenant,
                query=query,
                max_rows=max_rows,
                timeout_s=settings.sql.timeout_seconds,
                # Reduced as fetched, so the time limit covers it as it does on the core.
                encoding=RowEncoding(encode=lambda row: [to_plain(v) for v in row]),
            )
        except SqlRefused as exc:
            raise SqlCommandError(EXIT_REFUSED, f"query refused: {exc.message}") from None
        except SqlTimeout as exc:
            raise SqlCommandError(EXIT_TIMEOUT, f"query timed out: {exc}") from None
        finally:
            cursor.close()
    finally:
        conn.close()
    return Result(
        columns=[Column(c.name, c.type) for c in result.columns],
        rows=result.rows,
        truncated=result.truncated,
    )


def to_plain(value: object) -> Plain:
    """A DuckDB result value reduced the way ExecuteSql encodes it (see rpc.query.sql_value)."""
    if isinstance(value, int) and not isinstance(value, bool) and not _INT64_MIN <= value <= _INT64_MAX:
        return str(value)  # HUGEINT, UBIGINT: AnyValue's int is 64-bit
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return str(value)
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    return str(value)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


# --- output ---------------------------------------------------------------------------------------


def write_result(result: Result, fmt: str, out: TextIO) -> None:
    """Print `result` to `out` as a table, CSV or a JSON array of objects."""
    writers: dict[str, Callable[[Result, TextIO], None]] = {
        "table": _write_table,
        "csv": _write_csv,
        "json": _write_json,
    }
    writers[fmt](result, out)


def json_ready(value: Plain) -> object:
    """`value` with bytes as hex and non-finite floats as strings, ready for json.dumps."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, float) and not math.isfinite(value):
        # The protobuf JSON mapping's spelling; JSON itself has no NaN or Infinity.
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, list):
        return [json_ready(v) for v in value]
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    return value


def _dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(", ", ": "))


def cell_text(value: Plain) -> str:
    """A value as text for table and CSV cells (NULL is empty in CSV, shown as NULL in tables)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, float):
        ready = json_ready(value)
        return ready if isinstance(ready, str) else repr(value)
    if isinstance(value, list | dict):
        return _dumps(json_ready(value))
    return str(value)


def _write_csv(result: Result, out: TextIO) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([c.name for c in result.columns])
    writer.writerows([cell_text(v) for v in row] for row in result.rows)


def _object_keys(columns: Sequence[Column]) -> list[str]:
    """Column names as object keys; a repeated name gets a `_2`, `_3`... suffix."""
    keys: list[str] = []
    seen: set[str] = set()
    for column in columns:
        key, n = column.name, 1
        while key in seen:
            n += 1
            key = f"{column.name}_{n}"
        seen.add(key)
        keys.append(key)
    return keys


def _json_cell(value: Plain, column: Column) -> object:
    # JSON columns (attributes, messages) are embedded as JSON, not as strings holding JSON.
    if column.type == "JSON" and isinstance(value, str):
        try:
            return json_ready(json.loads(value))
        except ValueError:
            return value
    return json_ready(value)


def _write_json(result: Result, out: TextIO) -> None:
    keys = _object_keys(result.columns)
    if not result.rows:
        out.write("[]\n")
        return
    out.write("[\n")
    last = len(result.rows) - 1
    for i, row in enumerate(result.rows):
        obj = {k: _json_cell(v, c) for k, v, c in zip(keys, row, result.columns, strict=True)}
        out.write(_dumps(obj) + (",\n" if i < last else "\n"))
    out.write("]\n")


_NUMERIC_PREFIXES: Final = (
    "TINYINT",
    "SMALLINT",
    "INTEGER",
    "BIGINT",
    "HUGEINT",
    "UTINYINT",
    "USMALLINT",
    "UINTEGER",
    "UBIGINT",
    "UHUGEINT",
    "FLOAT",
    "DOUBLE",
    "DECIMAL",
)


def _is_numeric(column: Column) -> bool:
    return column.type.startswith(_NUMERIC_PREFIXES) and not column.type.endswith("]")


_NAMED_ESCAPES: Final = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
#: Every C0 and C1 control character, and the Unicode line and paragraph separators, shown as an
#: escape: span text is untrusted LLM traffic, and ESC or BEL reaching a terminal runs its control
#: sequences (retitling the window, rewriting what is on screen); a line break splits a row.
_TABLE_ESCAPES: Final = str.maketrans(
    {chr(c): f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
    | {"\u2028": "\\u2028", "\u2029": "\\u2029"}
    | _NAMED_ESCAPES
)


def _table_text(text: str) -> str:
    return text.translate(_TABLE_ESCAPES)


def _table_cell(value: Plain) -> str:
    if value is None:
        return "NULL"
    return _table_text(cell_text(value))


def _write_table(result: Result, out: TextIO) -> None:
    # Column names too: a query names them (`SELECT 1 AS "<ESC>]0;..."`), or a stored key does.
    header = [_table_text(c.name) for c in result.columns]
    cells = [[_table_cell(v) for v in row] for row in result.rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]
    numeric = [_is_numeric(c) for c in result.columns]

    def line(values: Sequence[str], right: Sequence[bool]) -> str:
        parts = [v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right, strict=True)]
        return " | ".join(parts).rstrip()

    if header:
        out.write(line(header, [False] * len(header)) + "\n")
        out.write("-+-".join("-" * w for w in widths) + "\n")
        for row in cells:
            out.write(line(row, numeric) + "\n")
    count = len(result.rows)
    footer = f"({count} row{'' if count == 1 else 's'}"
    if result.truncated:
        footer += "; truncated, more rows matched"
    out.write(footer + ")\n")
