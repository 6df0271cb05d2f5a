"""Configuration against hostile or odd input: regex cost, YAML aliases, bytes that are not UTF-8,
stray newlines in addresses, `~` in paths, and secrets in forms redaction used to miss."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from llmtrace.config import REDACTED, ConfigError, ConfigIssue, Settings, load_config, redacted_dict
from llmtrace.config.redact import looks_secret, redact_text
from llmtrace.config.schema import ShipperSettings
from llmtrace.config.yaml_file import MAX_NESTING

#: Far above what linear scans of 200,000 characters take, far below what quadratic ones did
#: (`a-` * 40,000 took 0.4 s, and the time grows fourfold with each doubling).
_LINEAR_BOUND_S = 0.5


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "llmtrace.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


# --- Redaction: linear time, and whole passwords ----------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "a-" * 100_000,  # a URL scheme that never reaches `://`
        "?" * 200_000,  # query parameter names that never reach `=`
        "a://u:" + "x" * 200_000,  # a password that never reaches `@`
        "a://:" * 40_000,  # URLs that never end
        "https://" * 25_000,  # header-like `https:` names before a long word
        "a:" * 100_000,
        "x-api-key:" * 20_000,
        "bearer " * 30_000,
        "a=" * 100_000,
        "password='" * 30_000,  # quoted values that never close
        "password=a " * 30_000,
        "?a={" * 50_000,  # braced values that never close
    ],
    ids=[
        "scheme",
        "query",
        "password",
        "urls",
        "https",
        "colons",
        "headers",
        "bearer",
        "assignments",
        "unclosed",
        "secrets",
        "braces",
    ],
)
def test_redaction_takes_linear_time_on_hostile_text(text: str) -> None:
    start = time.perf_counter()
    redact_text(text)
    assert time.perf_counter() - start < _LINEAR_BOUND_S


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("postgres://user:p@ss@db/llm", f"postgres://user:{REDACTED}@db/llm"),
        ("redis://:ab/cd@cache:6379", f"redis://:{REDACTED}@cache:6379"),
        ("http://default:pa#ss@ch:8123", f"http://default:{REDACTED}@ch:8123"),
        ("http://u:pa?ss@h/x", f"http://u:{REDACTED}@h/x"),
        # Each URL of a list keeps its own host.
        ("a://u:p@h,b://v:q@i", f"a://u:{REDACTED}@h,b://v:{REDACTED}@i"),
        ("see https://a.b/c?next=http://u:pw@h/x", f"see https://a.b/c?next=http://u:{REDACTED}@h/x"),
        ("one ftp://u:p@ss@h two ftp://u:q@h", f"one ftp://u:{REDACTED}@h two ftp://u:{REDACTED}@h"),
        # As before: nothing to hide.
        ("http://localhost:11434", "http://localhost:11434"),
        ("https://user@host:8080/v1", "https://user@host:8080/v1"),
        ("postgres://llmtrace:pg-pw@db:5432/x", f"postgres://llmtrace:{REDACTED}@db:5432/x"),
    ],
)
def test_url_passwords_with_at_slash_and_hash_are_hidden_whole(text: str, shown: str) -> None:
    assert redact_text(text) == shown


def test_a_200_kb_config_validates_quickly(tmp_path: Path) -> None:
    # `validate` of such a file took 10.75 s.
    path = _write(tmp_path, f'alerts:\n  note: "{"a-" * 100_000}"\n')
    start = time.perf_counter()
    redacted_dict(load_config(path, env={}).settings)
    assert time.perf_counter() - start < 2 * _LINEAR_BOUND_S


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("Authorization: Basic dXNlcjpwYXNz", f"Authorization: Basic {REDACTED}"),
        ("Authorization: Bearer sk-1", f"Authorization: Bearer {REDACTED}"),
        ("x-api-key: sk-ant-123", f"x-api-key: {REDACTED}"),
        ("Proxy-Authorization:Basic abc", f"Proxy-Authorization:Basic {REDACTED}"),
        ("headers: x-api-key: sk-1", f"headers: x-api-key: {REDACTED}"),
        (
            """curl -H 'x-api-key: sk-1' -H "Authorization: Bearer t" https://h/""",
            f"""curl -H 'x-api-key: {REDACTED}' -H "Authorization: Bearer {REDACTED}" https://h/""",
        ),
        ("https://app/cb#access_token=tok&state=1", f"https://app/cb#access_token={REDACTED}&state=1"),
        ("https://app/cb#state=1&id_token=tok", f"https://app/cb#state=1&id_token={REDACTED}"),
        ("https://h/v1?%6Bey=AIzaS&x=1", f"https://h/v1?%6Bey={REDACTED}&x=1"),
        # Not secrets: plain `name: value` text and fragments.
        ("Content-Type: application/json", "Content-Type: application/json"),
        ("https://docs.example/page#section=2", "https://docs.example/page#section=2"),
    ],
)
def test_header_values_and_url_fragments_are_hidden(text: str, shown: str) -> None:
    assert redact_text(text) == shown


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        # libpq connection strings, quoted values with spaces and escapes included.
        ("host=db port=5432 password=pw-1 dbname=llm", f"host=db port=5432 password={REDACTED} dbname=llm"),
        ("host=db password='a b\\' c' user=u", f"host=db password={REDACTED} user=u"),
        ("host=db sslpassword=pw-2", f"host=db sslpassword={REDACTED}"),
        # Separators may be part of a password: hidden up to whitespace.
        ("password=hun;ter2 user=u", f"password={REDACTED} user=u"),
        ("token=a&b,c next", f"token={REDACTED} next"),
        ("password=hun'ter2 next", f"password={REDACTED} next"),
        ("Server=db;Pwd={hun;ter2};Uid=sa", f"Server=db;Pwd={REDACTED};Uid=sa"),
        # ODBC, .env lines and command-line flags.
        ("Server=db;Uid=u;Pwd=pw-3;", f"Server=db;Uid=u;Pwd={REDACTED};"),
        ("OPENAI_API_KEY=sk-4\nDEBUG=1", f"OPENAI_API_KEY={REDACTED}\nDEBUG=1"),
        ("run --api-key=sk-5 --max_tokens=5", f"run --api-key={REDACTED} --max_tokens=5"),
        ("token = tok-6 rest", f"token = {REDACTED} rest"),
        # Not secrets: limits, paths, comparisons.
        ("max_tokens=100 timeout=5 sslkey=/etc/k", "max_tokens=100 timeout=5 sslkey=/etc/k"),
        ("a == b", "a == b"),
        ("password=", "password="),
    ],
)
def test_key_value_assignments_outside_urls_are_hidden(text: str, shown: str) -> None:
    assert redact_text(text) == shown


def test_a_connection_string_is_redacted_in_shown_config(tmp_path: Path) -> None:
    path = _write(tmp_path, 'alerts:\n  note: "host=db user=llm password=DSN-SECRET dbname=x"\n')
    dumped = yaml.safe_dump(redacted_dict(load_config(path, env={}).settings))
    assert "DSN-SECRET" not in dumped
    assert f"password={REDACTED}" in dumped


def test_header_lists_are_redacted_in_validate_output(tmp_path: Path) -> None:
    text = """
alerts:
  headers: ["Authorization: Basic BASIC-SECRET", "x-api-key: KEY-SECRET", "Accept: text/plain"]
  callback: "https://app.example/cb#access_token=FRAGMENT-SECRET"
"""
    dumped = yaml.safe_dump(redacted_dict(load_config(_write(tmp_path, text), env={}).settings))
    for secret in ("BASIC-SECRET", "KEY-SECRET", "FRAGMENT-SECRET"):
        assert secret not in dumped
    assert "Accept: text/plain" in dumped


# --- YAML aliases ------------------------------------------------------------------------------


def _laughs(levels: int) -> str:
    lines = ["alerts:", "  l0: &l0 [" + ", ".join(["x"] * 10) + "]"]
    lines += [f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, levels + 1)]
    lines += ["  m0: &m0 {" + ", ".join(f"k{j}: x" for j in range(10)) + "}"]
    lines += [
        f"  m{i}: &m{i} {{" + ", ".join(f"k{j}: *m{i - 1}" for j in range(10)) + "}"
        for i in range(1, levels + 1)
    ]
    return "\n".join(lines) + "\n"


def test_billion_laughs_validates_in_the_space_of_the_file(tmp_path: Path) -> None:
    # Ten to the ninth items if walked alias by alias: minutes and all memory before.
    path = _write(tmp_path, _laughs(8))
    start = time.perf_counter()
    tree = redacted_dict(load_config(path, env={}).settings)
    dumped = yaml.safe_dump(tree, sort_keys=False)
    assert time.perf_counter() - start < 2.0
    assert len(dumped) < 20_000  # shared nodes stay shared, printed as YAML aliases
    alerts = tree["alerts"]
    assert isinstance(alerts, dict)
    assert alerts["l8"][0] is alerts["l8"][9] is alerts["l7"]


def test_secrets_under_shared_nodes_stay_hidden(tmp_path: Path) -> None:
    text = """
alerts:
  base: &base {password: PW-SECRET, url: "http://u:URL-SECRET@h", level: 1}
  copies: [*base, *base, {nested: *base}]
"""
    tree = redacted_dict(load_config(_write(tmp_path, text), env={}).settings)
    dumped = yaml.safe_dump(tree)
    assert "PW-SECRET" not in dumped and "URL-SECRET" not in dumped
    alerts = tree["alerts"]
    assert isinstance(alerts, dict)
    assert alerts["copies"][2]["nested"] == {
        "password": REDACTED,
        "url": f"http://u:{REDACTED}@h",
        "level": 1,
    }


def test_an_alias_chain_deeper_than_allowed_is_a_config_error(tmp_path: Path) -> None:
    # A RecursionError traceback before: the parser sees one level per line, the value 3000.
    lines = ["alerts:", "  l0: &l0 [x]"] + [f"  l{i}: &l{i} [*l{i - 1}]" for i in range(1, 3000)]
    path = _write(tmp_path, "\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path, env={})
    assert exc.value.issues == [ConfigIssue(path, "invalid YAML: nested too deeply")]


def test_nesting_up_to_the_limit_is_accepted(tmp_path: Path) -> None:
    # `alerts:` is one level, the rest are lists: MAX_NESTING in all.
    text = "alerts: " + "[" * (MAX_NESTING - 1) + "]" * (MAX_NESTING - 1) + "\n"
    assert load_config(_write(tmp_path, text), env={}).settings.not_built["alerts"] is not None
    deeper = "alerts: " + "[" * MAX_NESTING + "]" * MAX_NESTING + "\n"
    with pytest.raises(ConfigError):
        load_config(_write(tmp_path, deeper), env={})


def _llmtrace(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`llmtrace ARGS` run from `cwd`, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "llmtrace.cli.main", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
    )


def test_validate_refuses_a_deep_alias_chain_without_a_traceback(tmp_path: Path) -> None:
    lines = ["alerts:", "  l0: &l0 [x]"] + [f"  l{i}: &l{i} [*l{i - 1}]" for i in range(1, 3000)]
    path = _write(tmp_path, "\n".join(lines) + "\n")
    result = _llmtrace(tmp_path, "validate", "--config", path)
    assert result.returncode == 2
    assert result.stderr == f"llmtrace: invalid configuration: {path}: invalid YAML: nested too deeply\n"


def test_redacting_a_deep_tree_given_directly_does_not_recurse_without_end() -> None:
    # Not from YAML (which refuses it): redacted_dict still answers, the depth cut short.
    deep: list[object] = ["x"]
    for _ in range(5000):
        deep = [deep]
    node = redacted_dict(Settings(not_built={"alerts": deep}))["alerts"]
    depth = 0
    while isinstance(node, list):
        [node] = node
        depth += 1
    assert node == "***nested too deeply to show***"
    assert depth < 200


# --- Text that is not UTF-8 --------------------------------------------------------------------


def test_yaml_lone_surrogate_is_an_error(tmp_path: Path) -> None:
    # Passed validation, then `migrate` failed with RuntimeError: std::bad_cast.
    path = _write(tmp_path, 'storage:\n  database_path: "\\udcff.duckdb"\n')
    with pytest.raises(ConfigError) as exc:
        load_config(path, env={})
    assert exc.value.issues == [
        ConfigIssue("storage.database_path", "must be valid UTF-8 text, got '\\udcff.duckdb'")
    ]


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("LLMTRACE_STORAGE_DATABASE_PATH", "storage.database_path"),
        ("LLMTRACE_BOUNDARY_DEFENSE_WRAP_ROLES", "boundary_defense.wrap_roles"),
        ("LLMTRACE_UPSTREAM_URL", "upstream_url"),
    ],
)
def test_environment_bytes_that_are_not_utf8_are_an_error(name: str, path: str) -> None:
    value = b"tool\xff".decode("utf-8", "surrogateescape")  # as Python reads such a variable
    with pytest.raises(ConfigError) as exc:
        load_config(env={name: value})
    assert exc.value.issues[0].path == path
    assert exc.value.issues[0].message.startswith("must be valid UTF-8 text")
    assert exc.value.issues[0].message.endswith(f"(from {name})")


def test_flag_bytes_that_are_not_utf8_are_an_error() -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(env={}, overrides={"storage.database_path": "db\udcff.duckdb"})
    [issue] = exc.value.issues
    assert issue.path == "storage.database_path"
    assert issue.message.startswith("must be valid UTF-8 text")


def test_migrate_refuses_a_database_path_that_is_not_utf8(tmp_path: Path) -> None:
    config = _write(tmp_path, 'storage:\n  database_path: "\\udcff.duckdb"\n')
    result = _llmtrace(tmp_path, "migrate", "--config", config)
    assert result.returncode == 2
    assert "llmtrace: invalid configuration: storage.database_path: must be valid UTF-8 text" in result.stderr
    assert "Traceback" not in result.stderr


# --- Addresses with a stray newline --------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("LLMTRACE_LISTEN_ADDR", "listen_addr"),
        ("LLMTRACE_GRPC_LISTEN_ADDR", "grpc.listen_addr"),
        ("LLMTRACE_METRICS_LISTEN_ADDR", "metrics.listen_addr"),
        ("LLMTRACE_CORE_ADDR", "core_addr"),
    ],
)
@pytest.mark.parametrize("addr", ["127.0.0.1\n:0", "localhost\n:80", "[::1%eth0\n]:1"])
def test_a_newline_in_a_host_is_an_error(name: str, path: str, addr: str) -> None:
    # `$` matched before the final newline: this validated, and then the server could not listen.
    with pytest.raises(ConfigError) as exc:
        load_config(env={name: addr})
    [issue] = exc.value.issues
    assert issue.path == path
    assert issue.message.startswith(f"expected host:port, got {addr!r}")


# --- `~` in the shipper's paths ----------------------------------------------------------------


def test_shim_expands_home_in_spool_and_dead_letter_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shim.app import _close_resources, _open_resources, create_app  # noqa: PLC0415 - Sanic

    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    # As from LLMTRACE_SHIPPER_SPOOL_DIR='~/spool': no shell expanded it.
    settings = Settings(shipper=ShipperSettings(spool_dir="~/spool", dead_letter_path="~/dead/letters.jsonl"))
    app = create_app(settings, core_addr="127.0.0.1:9")

    async def open_and_close() -> None:
        await _open_resources(app)
        try:
            assert app.ctx.shipper is not None
            assert app.ctx.shipper._dead_letters.path == home / "dead" / "letters.jsonl"
        finally:
            app.ctx.flush_timeout = 0.1
            await _close_resources(app)

    asyncio.run(open_and_close())
    assert (home / "spool").is_dir()
    assert not (work / "~").exists()


def test_a_token_as_a_urls_user_is_hidden_and_a_user_name_is_not() -> None:
    token = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
    shown = redact_text(f"https://{token}@github.com/org/repo.git")
    assert token not in shown and shown.endswith("@github.com/org/repo.git")
    assert redact_text("https://deploy@example.com/x") == "https://deploy@example.com/x"


def test_camel_case_keys_with_acronyms_are_judged_by_their_words() -> None:
    assert looks_secret("APIToken") and looks_secret("OAuthToken") and looks_secret("apiKey")
    assert not looks_secret("HTTPProxy") and not looks_secret("maxTokens")


# --- Worker count ------------------------------------------------------------------------------


def test_a_worker_count_past_the_bound_is_refused_from_file_and_flag(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(_write(tmp_path, "workers: 100000\n"), env={})
    assert "workers" in str(exc.value) and "at most 256" in str(exc.value)
    with pytest.raises(ConfigError):
        load_config(None, env={}, overrides={"workers": 257})
    assert load_config(None, env={}, overrides={"workers": 256}).settings.workers == 256
    # `llmtrace shim --workers N` is refused before anything starts, without a traceback.
    result = _llmtrace(tmp_path, "shim", "--workers", "100000", "--listen-addr", "127.0.0.1:0")
    assert result.returncode == 2, result.stderr
    assert "workers" in result.stderr and "Traceback" not in result.stderr
