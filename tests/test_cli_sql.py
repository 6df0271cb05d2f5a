"""`llmtrace sql`: on the database file when no core runs, over gRPC when one does, same output."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import datetime as dt
import decimal
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import grpc
import pytest
import yaml

import llmtrace.cli.main as cli
from llmtrace.api.v1 import common_pb2, ingest_service_pb2, ingest_service_pb2_grpc, span_pb2
from llmtrace.cli.sql_command import Column, Result, from_any_value, to_plain, write_result
from llmtrace.config.schema import SecurityAnalysisSettings
from llmtrace.rpc.query import sql_value
from llmtrace.server import Core
from llmtrace.store.database import DatabaseLockedError, open_database
from tests.conftest import core_settings
from tests.factories import make_span

SOURCE_ROOT = Path(cli.__file__).resolve().parents[2]
START_NS = 1_760_000_000 * 1_000_000_000  # 2025-10-09T08:53:20Z
TRACE_A = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
TRACE_B = bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")

#: Covers every kind of value the two paths must print alike: text with CSV/JSON specials,
#: integers, doubles, NULLs, booleans, timestamps, intervals, decimals, UUIDs, blobs, lists,
#: structs, maps and JSON.
QUERY = """
SELECT
    span_id,
    request_model,
    error,
    input_tokens,
    cost_usd,
    security_score,
    is_error,
    start_time,
    end_time - start_time AS elapsed,
    ttft_ms,
    finish_reasons,
    attributes,
    CAST(cost_usd AS DECIMAL(12, 6)) AS cost_dec,
    from_hex(span_id) AS raw_id,
    [input_tokens, output_tokens] AS tokens,
    {'model': request_model, 'tokens': total_tokens} AS summary,
    MAP {'in': input_tokens} AS token_map,
    CAST('6f1c1f5e-3f39-4d53-9d3c-3a0b8e7f0c11' AS UUID) AS fixed_uuid,
    CAST(0.1 AS REAL) AS real_value,
    DATE '2025-01-02' AS day
FROM spans
ORDER BY span_id
"""


def _spans() -> list[span_pb2.Span]:
    first = make_span(model="gpt-4o", prompt="Hello", start_ns=START_NS, duration_ms=1500)
    first.trace_id, first.span_id = TRACE_A, bytes.fromhex("00f067aa0ba902b7")
    first.usage.input_tokens, first.usage.output_tokens = 12, 30
    first.cost.total_usd = 0.00125
    first.security_score = 80
    first.attributes.add(key="user.tier", value=common_pb2.AnyValue(string_value="gold"))
    first.attributes.add(key="retries", value=common_pb2.AnyValue(int_value=2))

    second = make_span(model="claude-3-5-sonnet", prompt="Bye", start_ns=START_NS + 10**9, duration_ms=250)
    second.trace_id, second.span_id = TRACE_A, bytes.fromhex("53995c3f42cd8ad8")
    second.parent_span_id = first.span_id
    second.status.code = span_pb2.STATUS_CODE_ERROR
    second.status.http_status_code = 502
    second.status.error_message = 'upstream said "no", then\nclosed, abruptly'
    second.usage.input_tokens, second.usage.output_tokens = 7, 0
    second.ClearField("cost")  # unpriced: cost_usd is NULL
    second.ClearField("time_to_first_token")  # ttft_ms is NULL

    other = make_span(tenant="other", start_ns=START_NS)  # another tenant: never shown
    other.trace_id = TRACE_B
    return [first, second, other]


async def _ingest(database: Path) -> None:
    # The exports below are compared field by field: no post-ingest analysis scores.
    settings = dataclasses.replace(
        core_settings(database), security_analysis=SecurityAnalysisSettings(enabled=False)
    )
    core = Core(settings)
    bound = await core.start()
    try:
        async with grpc.aio.insecure_channel(bound.grpc) as channel:
            stub = ingest_service_pb2_grpc.IngestServiceStub(channel)
            response = await stub.IngestSpans(ingest_service_pb2.IngestSpansRequest(spans=_spans()))
            assert response.accepted_spans == 3, response
    finally:
        await core.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _write_config(path: Path, database: Path, grpc_addr: str, **sections: dict[str, object]) -> Path:
    config: dict[str, object] = {
        "grpc": {"listen_addr": grpc_addr},
        "metrics": {"listen_addr": "127.0.0.1:0"},
        "storage": {"database_path": str(database)},
        **sections,
    }
    path.write_text(yaml.safe_dump(config))
    return path


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMTRACE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SOURCE_ROOT), os.environ.get("PYTHONPATH")]))
    env["TZ"] = "UTC"  # TIMESTAMPTZ values print in the process's zone
    return env


def llmtrace(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmtrace.cli.main", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def sql(config: Path, query: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return llmtrace(
        "sql",
        "--config",
        str(config),
        "--log-level",
        "debug",
        "--tenant",
        "acme",
        *extra,
        query,
        cwd=config.parent,
    )


@dataclass(frozen=True)
class Setup:
    """A populated database with no core on it, and a copy served by a core subprocess."""

    file_config: Path  # database file, nothing listening on grpc.listen_addr
    rpc_config: Path  # a copy of the file, held by the running core
    rpc_database: Path
    core: subprocess.Popen[str]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("sql")
    database = root / "file.duckdb"
    asyncio.run(_ingest(database))
    served = root / "served.duckdb"
    shutil.copyfile(database, served)  # the core checkpointed on stop: the file is complete

    file_config = _write_config(root / "file.yaml", database, f"127.0.0.1:{_free_port()}")
    core_config = _write_config(
        root / "core.yaml",
        served,
        "127.0.0.1:0",
        sql={"timeout_seconds": 2.0},
        shutdown={"timeout_seconds": 5},
        # The two paths must read the same rows: no analysis scores added by the served core.
        security_analysis={"enabled": False},
    )
    ready = root / "ready.json"
    log = (root / "core.log").open("w")
    core = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llmtrace.cli.main",
            "core",
            "--config",
            str(core_config),
            "--ready-file",
            str(ready),
        ],
        cwd=root,
        env=_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert core.poll() is None, (root / "core.log").read_text()
            assert time.monotonic() < deadline, "core did not become ready"
            time.sleep(0.05)
        bound = json.loads(ready.read_text())["grpc"]
        rpc_config = _write_config(root / "rpc.yaml", served, bound)
        yield Setup(file_config=file_config, rpc_config=rpc_config, rpc_database=served, core=core)
    finally:
        core.send_signal(signal.SIGTERM)
        try:
            code = core.wait(timeout=30)
        finally:
            if core.poll() is None:
                core.kill()
            log.close()
        assert code == 0, (root / "core.log").read_text()


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


# --- (a) no core running: the file is read directly -------------------------------------------------


def test_file_path_csv(setup: Setup) -> None:
    result = sql(setup.file_config, QUERY, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(_ok(result))))
    assert "on the database file" in result.stderr
    assert "over gRPC" not in result.stderr
    assert [r["span_id"] for r in rows] == ["00f067aa0ba902b7", "53995c3f42cd8ad8"]
    first, second = rows
    assert first["request_model"] == "gpt-4o"
    assert first["input_tokens"] == "12"
    assert first["cost_usd"] == "0.00125"
    assert first["security_score"] == "80"
    assert first["is_error"] == "false"
    assert dt.datetime.fromisoformat(first["start_time"]) == dt.datetime(
        2025, 10, 9, 8, 53, 20, tzinfo=dt.UTC
    )
    assert first["elapsed"] == "0:00:01.500000"
    assert first["ttft_ms"] == "40.0"
    assert json.loads(first["finish_reasons"]) == ["stop"]
    assert json.loads(first["attributes"]) == {"user.tier": "gold", "retries": 2}
    assert first["cost_dec"] == "0.00125"
    assert first["raw_id"] == "00f067aa0ba902b7"  # BLOB as hex
    assert json.loads(first["tokens"]) == [12, 30]
    assert json.loads(first["summary"]) == {"model": "gpt-4o", "tokens": 42}
    assert json.loads(first["token_map"]) == {"in": 12}
    assert first["fixed_uuid"] == "6f1c1f5e-3f39-4d53-9d3c-3a0b8e7f0c11"
    assert first["day"] == "2025-01-02"
    assert second["error"] == 'upstream said "no", then\nclosed, abruptly'  # quoting survives
    assert second["is_error"] == "true"
    assert second["cost_usd"] == second["security_score"] == second["ttft_ms"] == ""  # NULL


def test_file_path_json(setup: Setup) -> None:
    rows = json.loads(_ok(sql(setup.file_config, QUERY, "--format", "json")))
    assert isinstance(rows, list) and len(rows) == 2
    first, second = rows
    assert first["span_id"] == "00f067aa0ba902b7"
    assert first["input_tokens"] == 12
    assert first["cost_usd"] == pytest.approx(0.00125)
    assert first["security_score"] == 80
    assert first["is_error"] is False
    assert dt.datetime.fromisoformat(first["start_time"]) == dt.datetime(
        2025, 10, 9, 8, 53, 20, tzinfo=dt.UTC
    )
    assert first["elapsed"] == "0:00:01.500000"
    assert first["finish_reasons"] == ["stop"]
    assert first["attributes"] == {"user.tier": "gold", "retries": 2}  # JSON column embedded
    assert first["cost_dec"] == pytest.approx(0.00125)
    assert first["raw_id"] == "00f067aa0ba902b7"
    assert first["tokens"] == [12, 30]
    assert first["summary"] == {"model": "gpt-4o", "tokens": 42}
    assert first["token_map"] == {"in": 12}
    assert first["fixed_uuid"] == "6f1c1f5e-3f39-4d53-9d3c-3a0b8e7f0c11"
    assert first["real_value"] == pytest.approx(0.1)
    assert second["error"] == 'upstream said "no", then\nclosed, abruptly'
    assert second["is_error"] is True
    assert second["cost_usd"] is None and second["security_score"] is None and second["ttft_ms"] is None


def test_file_path_table(setup: Setup) -> None:
    query = "SELECT request_model, input_tokens, cost_usd FROM spans ORDER BY input_tokens"
    out = _ok(sql(setup.file_config, query))
    assert out == (
        "request_model     | input_tokens | cost_usd\n"
        "------------------+--------------+---------\n"
        "claude-3-5-sonnet |            7 |     NULL\n"
        "gpt-4o            |           12 |  0.00125\n"
        "(2 rows)\n"
    )
    escaped = _ok(sql(setup.file_config, "SELECT error FROM spans WHERE is_error"))
    assert escaped.splitlines()[2] == 'upstream said "no", then\\nclosed, abruptly'
    assert escaped.endswith("(1 row)\n")


def test_truncation_is_reported(setup: Setup) -> None:
    result = sql(
        setup.file_config, "SELECT span_id FROM spans ORDER BY span_id", "--format", "csv", "--max-rows", "1"
    )
    assert _ok(result) == "span_id\n00f067aa0ba902b7\n"
    assert "truncated after 1 rows" in result.stderr
    table = _ok(sql(setup.file_config, "SELECT span_id FROM spans ORDER BY span_id", "--max-rows", "1"))
    assert table.endswith("(1 row; truncated, more rows matched)\n")


@pytest.mark.parametrize("path", ["file", "rpc"])
def test_invalid_tenant_exits_2(setup: Setup, path: str) -> None:
    config = setup.file_config if path == "file" else setup.rpc_config
    result = llmtrace("sql", "--config", str(config), "--tenant", " acme", "SELECT 1", cwd=config.parent)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "invalid tenant" in result.stderr


def test_missing_database_file_exits_2(tmp_path: Path) -> None:
    config = _write_config(tmp_path / "c.yaml", tmp_path / "absent.duckdb", f"127.0.0.1:{_free_port()}")
    result = sql(config, "SELECT 1")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "absent.duckdb does not exist" in result.stderr
    assert not (tmp_path / "absent.duckdb").exists()  # read-only: nothing created


# --- (b) a core runs: the query goes over gRPC --------------------------------------------------------


def test_rpc_path_is_used_while_the_core_holds_the_file(setup: Setup, tmp_path: Path) -> None:
    # The core process holds the file locked, so the local path cannot be what answers.
    with pytest.raises(DatabaseLockedError):
        open_database(setup.rpc_database, read_only=True)
    result = sql(setup.rpc_config, "SELECT count(*) AS n FROM spans", "--format", "csv")
    assert _ok(result) == "n\n2\n"
    assert "over gRPC" in result.stderr
    assert "on the database file" not in result.stderr

    # No core on the configured address and the file locked: a clear error, exit 1.
    stray = _write_config(tmp_path / "stray.yaml", setup.rpc_database, f"127.0.0.1:{_free_port()}")
    locked = sql(stray, "SELECT 1")
    assert locked.returncode == 1
    assert locked.stdout == ""
    assert "locked by another process" in locked.stderr
    assert "Traceback" not in locked.stderr


def test_a_database_path_flag_reads_that_file_even_while_a_core_answers(setup: Setup, tmp_path: Path) -> None:
    # The core on grpc.listen_addr serves another file: its rows were the answer before.
    other = tmp_path / "other.duckdb"
    missing = sql(setup.rpc_config, "SELECT count(*) AS n FROM spans", "--database-path", str(other))
    assert missing.returncode == 2 and missing.stdout == ""
    assert "other.duckdb does not exist" in missing.stderr and "over gRPC" not in missing.stderr
    # The core's own file, named: locked by it, said so.
    held = sql(setup.rpc_config, "SELECT 1", "--database-path", str(setup.rpc_database))
    assert held.returncode == 1 and "leave out --database-path" in held.stderr


@pytest.mark.parametrize("fmt", ["table", "csv", "json"])
def test_both_paths_print_identical_output(setup: Setup, fmt: str) -> None:
    local = sql(setup.file_config, QUERY, "--format", fmt)
    remote = sql(setup.rpc_config, QUERY, "--format", fmt)
    assert "on the database file" in local.stderr
    assert "over gRPC" in remote.stderr
    assert _ok(remote) == _ok(local)
    assert local.stdout.count("00f067aa0ba902b7") >= 1


# --- (c) refused and timed-out queries ------------------------------------------------------------------


@pytest.mark.parametrize("path", ["file", "rpc"])
@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("SELECT * FROM span_rows", "relation 'span_rows' is not available"),
        ("SELEC 1", "syntax error"),
        ("DELETE FROM spans", "only SELECT statements are allowed"),
    ],
)
def test_refused_query_exits_2(setup: Setup, path: str, query: str, message: str) -> None:
    config = setup.file_config if path == "file" else setup.rpc_config
    result = sql(config, query, "--format", "json")
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert message in result.stderr
    assert "Traceback" not in result.stderr


SLOW = (
    "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r WHERE x < 10000000000) "
    "SELECT count(*) FROM r"
)


def test_timeout_exits_3_on_the_file(setup: Setup, tmp_path: Path) -> None:
    source = yaml.safe_load(setup.file_config.read_text())
    config = _write_config(
        tmp_path / "slow.yaml",
        Path(source["storage"]["database_path"]),
        source["grpc"]["listen_addr"],
        sql={"timeout_seconds": 0.3},
    )
    result = sql(config, SLOW)
    assert result.returncode == 3, result.stderr
    assert result.stdout == ""
    assert "timed out" in result.stderr


def test_timeout_exits_3_over_rpc(setup: Setup) -> None:
    result = sql(setup.rpc_config, SLOW)  # the core's sql.timeout_seconds is 2
    assert result.returncode == 3, result.stderr
    assert result.stdout == ""
    assert "timed out" in result.stderr


# --- value conversion, in process ---------------------------------------------------------------------


def test_local_values_match_their_wire_encoding() -> None:
    conn = duckdb.connect()
    row = conn.execute(
        """
        SELECT NULL, true, 42, -9223372036854775808, 1.5::DOUBLE, 'nan'::DOUBLE, 0.1::REAL, 'text',
               TIMESTAMPTZ '2024-01-01 10:00:00+02', TIMESTAMP '2024-01-01 10:00:00', DATE '2024-02-29',
               TIME '12:34:56', INTERVAL '1 month 2 days 3 hours', 12.345::DECIMAL(10, 3),
               uuid(), 'ab'::BLOB, [1, NULL, 3], [[1], []], {'a': 1, 'b': [true]}, MAP {1: 'x', 2: 'y'},
               '{"k": [1]}'::JSON, [1, 2]::INTEGER[2], 'a'::ENUM('a', 'b'),
               12345678901234567890123::HUGEINT, 18446744073709551615::UBIGINT,
               9223372036854775807::UBIGINT, [170141183460469231731687303715884105727::HUGEINT]
        """
    ).fetchone()
    assert row is not None
    for value in row:
        # repr: NaN equals itself, and 1 is not 1.0.
        assert repr(to_plain(value)) == repr(from_any_value(sql_value(value))), value


def test_writers_handle_edge_values() -> None:
    result = Result(
        columns=[Column("a", "DOUBLE"), Column("a", "BLOB"), Column("j", "JSON"), Column("s", "VARCHAR")],
        rows=[[float("nan"), b"\x00\xff", '{"x": 1}', "tab\there"], [float("-inf"), None, "not json", None]],
        truncated=False,
    )
    out = io.StringIO()
    write_result(result, "json", out)
    assert json.loads(out.getvalue()) == [
        {"a": "NaN", "a_2": "00ff", "j": {"x": 1}, "s": "tab\there"},
        {"a": "-Infinity", "a_2": None, "j": "not json", "s": None},
    ]
    out = io.StringIO()
    write_result(Result(columns=[Column("n", "BIGINT")], rows=[], truncated=False), "json", out)
    assert out.getvalue() == "[]\n"
    out = io.StringIO()
    write_result(result, "table", out)
    assert out.getvalue().splitlines()[2] == '      NaN | 00ff | {"x": 1} | tab\\there'


def test_decimal_and_uuid_reduce_like_the_wire() -> None:
    assert to_plain(decimal.Decimal("1.50")) == 1.5
    value = uuid.UUID(int=1)
    assert to_plain(value) == str(value)
    assert to_plain((1, b"x", {"k": dt.date(2024, 1, 1)})) == [1, b"x", {"k": "2024-01-01"}]


def test_table_escapes_every_control_character(setup: Setup) -> None:
    # Span text is untrusted: ESC ] 0 ; ... BEL retitled the terminal, written raw before.
    query = "SELECT chr(27) || ']0;pwned' || chr(7) AS esc, 'a' || chr(155) || 'b' || chr(8232) AS c1"
    out = _ok(sql(setup.file_config, query))
    assert out.splitlines()[2] == "\\x1b]0;pwned\\x07 | a\\x9bb\\u2028"
    assert all(c.isprintable() or c == "\n" for c in out)


def test_table_escapes_column_names_and_measures_escaped_text() -> None:
    result = Result(
        columns=[Column("\x1b[2Jname", "VARCHAR"), Column("n", "BIGINT")],
        rows=[["x\x00y\x7f\u2029", 1], ["\\", 22]],
        truncated=False,
    )
    out = io.StringIO()
    write_result(result, "table", out)
    assert out.getvalue() == (
        "\\x1b[2Jname      | n\n"
        "-----------------+---\n"
        "x\\x00y\\x7f\\u2029 |  1\n"
        "\\\\               | 22\n"
        "(2 rows)\n"
    )


@pytest.mark.parametrize("path", ["file", "rpc"])
def test_query_or_tenant_that_is_not_utf8_exits_2(setup: Setup, path: str) -> None:
    # Bytes a shell passes as they are (`$(printf "select '\xff'")`) arrive as lone surrogates:
    # a DuckDB InvalidInputException or UnicodeEncodeError traceback before.
    config = setup.file_config if path == "file" else setup.rpc_config
    not_utf8 = b"\xff".decode("utf-8", "surrogateescape")
    result = sql(config, f"SELECT '{not_utf8}' AS x")
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert "llmtrace: invalid query: character 9 is not valid UTF-8 text" in result.stderr
    assert "Traceback" not in result.stderr
    result = llmtrace(
        "sql", "--config", str(config), "--tenant", f"acme{not_utf8}", "SELECT 1", cwd=config.parent
    )
    assert result.returncode == 2, result.stderr
    assert "invalid tenant 'acme\\udcff': not valid UTF-8 text" in result.stderr
    assert "Traceback" not in result.stderr
