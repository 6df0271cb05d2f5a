"""The `llmtrace` command line: validate, --version, --help, exit codes, flags as overrides."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import llmtrace.cli.main as cli
from llmtrace.config import REDACTED

# The directory holding this checkout's `llmtrace` portion, so the child process imports the
# same code as this one whatever its working directory.
SOURCE_ROOT = Path(cli.__file__).resolve().parents[2]
COMMANDS = ("serve", "core", "validate", "migrate", "sql")


def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("LLMTRACE_")}
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SOURCE_ROOT), os.environ.get("PYTHONPATH")]))
    child_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "llmtrace.cli.main", *args],
        cwd=cwd,
        env=child_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_validate_prints_redacted_yaml(tmp_path: Path) -> None:
    config = tmp_path / "llmtrace.yaml"
    config.write_text(
        "grpc: {listen_addr: '0.0.0.0:7000'}\n"
        "storage: {postgres_url: 'postgres://u:hunter2@db/llmtrace'}\n"
        "auth: {admin_key: 'llmt_topsecret'}\n"
    )
    result = run("validate", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "hunter2" not in result.stdout and "llmt_topsecret" not in result.stdout
    assert result.stdout.startswith(f"# config file: {config}\n")
    resolved = yaml.safe_load(result.stdout)
    assert resolved["grpc"]["listen_addr"] == "0.0.0.0:7000"
    assert resolved["storage"]["postgres_url"] == f"postgres://u:{REDACTED}@db/llmtrace"
    assert resolved["auth"] == {"admin_key": REDACTED}
    assert resolved["sql"] == {"max_rows": 10000, "timeout_seconds": 10.0}
    # Warnings go to stderr, one per recognised-but-unbuilt key.
    assert "storage.postgres_url: recognised but not built yet" in result.stderr
    assert "auth: recognised but not built yet" in result.stderr


def test_validate_lists_every_error_and_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("grpc: {listen_addr: abc}\nsql: {max_rows: -1}\nstorage: {databse_path: x}\n")
    result = run("validate", "--config", str(config), cwd=tmp_path, env={"LLMTRACE_LOG_LEVEL": "loud"})
    assert result.returncode == 2
    assert result.stdout == ""
    for line in (
        "grpc.listen_addr: expected host:port, got 'abc'",
        "sql.max_rows: must be greater than 0, got -1",
        "storage.databse_path: unknown key; did you mean 'storage.database_path'?",
        "logging.level: expected one of debug, info, warning, error, got 'loud' (from LLMTRACE_LOG_LEVEL)",
    ):
        assert line in result.stderr
    assert "Traceback" not in result.stderr


def test_validate_without_a_file_uses_defaults_and_environment(tmp_path: Path) -> None:
    result = run("validate", cwd=tmp_path, env={"LLMTRACE_GRPC_LISTEN_ADDR": "127.0.0.1:0"})
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert resolved["grpc"]["listen_addr"] == "127.0.0.1:0"
    assert resolved["storage"]["database_path"] == "./llmtrace.duckdb"
    assert result.stderr == ""


@pytest.mark.parametrize("before", [True, False])
def test_config_flag_before_or_after_the_subcommand(tmp_path: Path, before: bool) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("sql: {max_rows: 3}\n")
    args = ["--config", str(config), "validate"] if before else ["validate", "--config", str(config)]
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["sql"]["max_rows"] == 3


def test_config_error_on_a_server_command_exits_2_before_starting(tmp_path: Path) -> None:
    result = run(
        "core", "--grpc-listen-addr", "abc", "--config", str(tmp_path / "missing.yaml"), cwd=tmp_path
    )
    assert result.returncode == 2
    assert f"{tmp_path / 'missing.yaml'}: config file not found" in result.stderr
    assert "grpc.listen_addr: expected host:port, got 'abc' (from command line)" in result.stderr
    assert "Traceback" not in result.stderr


def test_flags_become_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, object] = {}

    def fake_load(config_path: str | None, *, overrides: dict[str, object]) -> None:
        seen.update(overrides, config=config_path)
        raise KeyboardInterrupt  # stop before anything is started

    monkeypatch.setattr(cli, "load_config", fake_load)
    argv = ["core", "--config", "c.yaml", "--grpc-listen-addr", "h:1", "--metrics-listen-addr", "h:2"]
    argv += ["--database-path", "d.duckdb", "--log-level", "debug", "--log-format", "json"]
    assert cli.main(argv) == cli.EXIT_INTERRUPTED
    assert seen == {
        "config": "c.yaml",
        "grpc.listen_addr": "h:1",
        "metrics.listen_addr": "h:2",
        "storage.database_path": "d.duckdb",
        "logging.level": "debug",
        "logging.format": "json",
        "sql.max_rows": None,
        "listen_addr": None,
        "upstream_url": None,
        "workers": None,
        "core_addr": None,
    }
    seen.clear()
    argv = ["shim", "--core", "h:3", "--listen-addr", "h:4", "--upstream-url", "http://u", "--workers", "3"]
    assert cli.main(argv) == cli.EXIT_INTERRUPTED
    assert {k: v for k, v in seen.items() if v is not None} == {
        "core_addr": "h:3",
        "listen_addr": "h:4",
        "upstream_url": "http://u",
        "workers": 3,
    }


def test_ctrl_c_exits_130_without_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(*_: object, **__: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "load_config", interrupted)
    assert cli.main(["validate"]) == 130
    assert capsys.readouterr().err == ""


def test_migrate_prints_a_summary_on_stdout(tmp_path: Path) -> None:
    database = tmp_path / "m.duckdb"
    first = run("migrate", "--database-path", str(database), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith(f"{database}: applied migrations ")
    assert len(first.stdout.splitlines()) == 1
    again = run("migrate", "--database-path", str(database), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"{database}: already up to date\n"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"llmtrace {importlib.metadata.version('llmtrace-server')}\n"


def test_version_in_a_subprocess(tmp_path: Path) -> None:
    result = run("--version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.startswith("llmtrace ")


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert f"    {command} " in out


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_accepts_config(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([command, "--help"]) == 0
    assert "--config FILE" in capsys.readouterr().out


def test_server_help_documents_flags_and_ready_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for flag in (
        "--grpc-listen-addr",
        "--metrics-listen-addr",
        "--database-path",
        "--log-level",
        "--log-format",
    ):
        assert flag in out
    assert "--ready-file PATH once serving, write a JSON file with the bound addresses" in out
    assert "start the core (a supervised child process" in out
    assert "--listen-addr" in out and "--upstream-url" in out and "--workers" in out


def test_sql_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["sql", "--help"]) == 0
    out = capsys.readouterr().out
    assert "QUERY" in out and "{table,csv,json}" in out and "--tenant" in out and "--max-rows N" in out
    assert cli.main(["sql", "select 1", "--format", "xml"]) == 2


def test_missing_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "required: COMMAND" in capsys.readouterr().err


def test_a_database_path_under_a_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    result = run("migrate", "--database-path", str(tmp_path / "afile" / "x.duckdb"), cwd=tmp_path)
    assert result.returncode != 0
    assert "cannot create the directory" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr + result.stdout


def test_secrets_in_a_bad_upstream_url_are_not_echoed(tmp_path: Path) -> None:
    result = run(
        "validate", cwd=tmp_path, env={"LLMTRACE_UPSTREAM_URL": "ftp://user:SK-PASS@h/?api_key=SK-Q"}
    )
    assert result.returncode == 2
    assert "upstream_url" in result.stderr + result.stdout
    assert "SK-PASS" not in result.stderr + result.stdout and "SK-Q" not in result.stderr + result.stdout
