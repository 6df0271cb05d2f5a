"""Configuration loading: layers, environment names, validation, warnings and redaction."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest
import yaml

from llmtrace.config import (
    REDACTED,
    ConfigError,
    ConfigIssue,
    LoadedConfig,
    Settings,
    load_config,
    parse_host_port,
    redacted_dict,
)
from llmtrace.config.known_keys import NOT_BUILT_TOP_LEVEL
from llmtrace.config.paths import leaf_types
from llmtrace.config.redact import looks_secret, redact_text
from llmtrace.config.values import InvalidValueError, check_type, describe, parse_text

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"


def write(tmp_path: Path, text: str, name: str = "llmtrace.yaml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def load(tmp_path: Path, text: str, **env: str) -> LoadedConfig:
    return load_config(write(tmp_path, text), env=env)


def issues_of(exc: pytest.ExceptionInfo[ConfigError]) -> dict[str, str]:
    return {issue.path: issue.message for issue in exc.value.issues}


def flatten(tree: dict[str, object], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for key, value in tree.items():
        if isinstance(value, dict):
            keys |= flatten(value, f"{prefix}{key}.")
        else:
            keys.add(prefix + key)
    return keys


# --- Files and defaults -------------------------------------------------------------------


def test_no_file_gives_the_documented_defaults() -> None:
    loaded = load_config(env={})
    settings = loaded.settings
    assert loaded.source is None
    assert loaded.warnings == []
    assert settings == Settings()
    assert settings.listen_addr == "127.0.0.1:8080"
    assert settings.upstream_url == "https://api.openai.com"
    assert settings.grpc.listen_addr == "127.0.0.1:50051"
    assert settings.grpc.max_message_bytes == 67108864
    assert settings.metrics.enabled is True
    assert settings.metrics.listen_addr == "127.0.0.1:9464"
    assert settings.storage.database_path == "./llmtrace.duckdb"
    assert settings.storage.auto_migrate is True
    assert (settings.logging.level, settings.logging.format) == ("info", "text")
    assert settings.shutdown.timeout_seconds == 30
    assert (settings.sql.max_rows, settings.sql.timeout_seconds) == (10000, 10.0)
    assert (settings.query.max_page_size, settings.query.default_page_size) == (1000, 50)


def test_one_line_file_keeps_defaults_for_everything_else(tmp_path: Path) -> None:
    loaded = load(tmp_path, 'grpc: {listen_addr: "127.0.0.1:6000"}\n')
    assert loaded.settings.grpc.listen_addr == "127.0.0.1:6000"
    assert loaded.settings.grpc.max_message_bytes == Settings().grpc.max_message_bytes
    assert loaded.settings.storage == Settings().storage
    assert loaded.source is not None and loaded.source.endswith("llmtrace.yaml")


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "---\n", "grpc:\n"])
def test_empty_documents_and_sections_load_defaults(tmp_path: Path, text: str) -> None:
    assert load(tmp_path, text).settings == Settings()


def test_llmtrace_config_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "sql: {max_rows: 7}\n")
    loaded = load_config(env={"LLMTRACE_CONFIG": path})
    assert loaded.settings.sql.max_rows == 7
    assert loaded.source == path


def test_argument_wins_over_llmtrace_config(tmp_path: Path) -> None:
    chosen = write(tmp_path, "sql: {max_rows: 1}\n", "chosen.yaml")
    other = write(tmp_path, "sql: {max_rows: 2}\n", "other.yaml")
    assert load_config(chosen, env={"LLMTRACE_CONFIG": other}).settings.sql.max_rows == 1


@pytest.mark.parametrize("via_env", [False, True])
def test_named_file_that_does_not_exist_is_an_error(tmp_path: Path, via_env: bool) -> None:
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError) as exc:
        if via_env:
            load_config(env={"LLMTRACE_CONFIG": missing})
        else:
            load_config(missing, env={})
    assert exc.value.issues == [ConfigIssue(missing, "config file not found")]


def test_invalid_yaml_reports_the_position(tmp_path: Path) -> None:
    path = write(tmp_path, "grpc:\n  listen_addr: [unclosed\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path, env={})
    [issue] = exc.value.issues
    assert issue.path == path
    assert re.search(r"invalid YAML at line \d+, column \d+", issue.message)


@pytest.mark.parametrize(
    "text", ["workers: " + "[" * 300 + "]" * 300, "a: " + "{a: " * 3000 + "1" + "}" * 3000]
)
def test_yaml_nested_too_deeply_is_a_config_error(tmp_path: Path, text: str) -> None:
    # The parser recurses per level: a RecursionError traceback before.
    path = write(tmp_path, text + "\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path, env={})
    assert exc.value.issues == [ConfigIssue(path, "invalid YAML: nested too deeply")]


def test_duplicate_keys_are_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, "sql:\n  max_rows: 1\n  max_rows: 2\n")
    assert "duplicate key 'max_rows'" in str(exc.value)


def test_yaml_merge_keys_may_be_overridden(tmp_path: Path) -> None:
    text = "x: &base {max_rows: 1, timeout_seconds: 2}\nsql: {<<: *base, max_rows: 3}\n"
    with pytest.raises(ConfigError) as exc:  # `x` is unknown, but the merge itself is fine
        load(tmp_path, text)
    assert list(issues_of(exc)) == ["x"]


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, "- a\n- b\n")
    assert issues_of(exc) == {"<root>": "expected a mapping of keys, got a list"}


# --- Precedence ---------------------------------------------------------------------------


def test_precedence_flags_over_env_over_file_over_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "grpc: {listen_addr: '127.0.0.1:1001'}\n"
        "storage: {database_path: from-file.duckdb}\n"
        "logging: {level: debug}\n",
    )
    env = {
        "LLMTRACE_GRPC_LISTEN_ADDR": "127.0.0.1:1002",
        "LLMTRACE_STORAGE_DATABASE_PATH": "from-env.duckdb",
    }
    overrides = {"grpc.listen_addr": "127.0.0.1:1003", "metrics.listen_addr": None}
    settings = load_config(path, env=env, overrides=overrides).settings
    assert settings.grpc.listen_addr == "127.0.0.1:1003"  # flag beats env and file
    assert settings.storage.database_path == "from-env.duckdb"  # env beats file
    assert settings.logging.level == "debug"  # file beats default
    assert settings.metrics.listen_addr == "127.0.0.1:9464"  # default; a None flag is unset


def test_only_the_winning_value_is_validated(tmp_path: Path) -> None:
    path = write(tmp_path, "sql: {max_rows: lots}\n")
    env = {"LLMTRACE_SQL_MAX_ROWS": "not a number either"}
    assert load_config(path, env=env, overrides={"sql.max_rows": 5}).settings.sql.max_rows == 5


def test_overrides_convert_strings_and_reject_unknown_keys() -> None:
    settings = load_config(env={}, overrides={"sql.max_rows": "12", "metrics.enabled": "no"}).settings
    assert (settings.sql.max_rows, settings.metrics.enabled) == (12, False)
    with pytest.raises(ConfigError) as exc:
        load_config(env={}, overrides={"grpc.listen": "x"})
    assert issues_of(exc) == {
        "grpc.listen": "unknown key; did you mean 'grpc.listen_addr'? (from command line)"
    }


# --- Environment --------------------------------------------------------------------------

ENV_CASES = {
    "LLMTRACE_LISTEN_ADDR": ("listen_addr", "0.0.0.0:8081", "0.0.0.0:8081"),
    "LLMTRACE_UPSTREAM_URL": ("upstream_url", "http://localhost:11434", "http://localhost:11434"),
    "LLMTRACE_GRPC_LISTEN_ADDR": ("grpc.listen_addr", "[::]:0", "[::]:0"),
    "LLMTRACE_GRPC_MAX_MESSAGE_BYTES": ("grpc.max_message_bytes", "1024", 1024),
    "LLMTRACE_METRICS_ENABLED": ("metrics.enabled", "false", False),
    "LLMTRACE_METRICS_LISTEN_ADDR": ("metrics.listen_addr", "localhost:9999", "localhost:9999"),
    "LLMTRACE_STORAGE_DATABASE_PATH": ("storage.database_path", "/data/x.duckdb", "/data/x.duckdb"),
    "LLMTRACE_STORAGE_AUTO_MIGRATE": ("storage.auto_migrate", "0", False),
    "LLMTRACE_LOGGING_LEVEL": ("logging.level", "DEBUG", "debug"),
    "LLMTRACE_LOGGING_FORMAT": ("logging.format", "json", "json"),
    "LLMTRACE_SHUTDOWN_TIMEOUT_SECONDS": ("shutdown.timeout_seconds", "2.5", 2.5),
    "LLMTRACE_SQL_MAX_ROWS": ("sql.max_rows", "99", 99),
    "LLMTRACE_SQL_TIMEOUT_SECONDS": ("sql.timeout_seconds", "3", 3.0),
    "LLMTRACE_QUERY_MAX_PAGE_SIZE": ("query.max_page_size", "500", 500),
    "LLMTRACE_QUERY_DEFAULT_PAGE_SIZE": ("query.default_page_size", "20", 20),
    "LLMTRACE_CORE_ADDR": ("core_addr", "core.internal:50051", "core.internal:50051"),
    "LLMTRACE_WORKERS": ("workers", "4", 4),
    "LLMTRACE_CORE_PRIORITY": ("core_priority", "normal", "normal"),
    "LLMTRACE_TIMEOUT_MS": ("timeout_ms", "120000", 120000),
    "LLMTRACE_CONNECTION_TIMEOUT_MS": ("connection_timeout_ms", "500", 500),
    "LLMTRACE_MAX_REQUEST_SIZE_BYTES": ("max_request_size_bytes", "1024", 1024),
    "LLMTRACE_LOGGING_ACCESS_LOG": ("logging.access_log", "no", False),
    "LLMTRACE_CAPTURE_BODIES": ("capture.bodies", "redacted", "redacted"),
    "LLMTRACE_CAPTURE_MAX_BODY_BYTES": ("capture.max_body_bytes", "4096", 4096),
    "LLMTRACE_SHIPPER_BATCH_MAX_SPANS": ("shipper.batch_max_spans", "100", 100),
    "LLMTRACE_SHIPPER_BATCH_MAX_BYTES": ("shipper.batch_max_bytes", "65536", 65536),
    "LLMTRACE_SHIPPER_FLUSH_INTERVAL_MS": ("shipper.flush_interval_ms", "50", 50),
    "LLMTRACE_SHIPPER_QUEUE_MAX_SPANS": ("shipper.queue_max_spans", "1000", 1000),
    "LLMTRACE_SHIPPER_QUEUE_MAX_BYTES": ("shipper.queue_max_bytes", "1048576", 1048576),
    "LLMTRACE_SHIPPER_SPOOL_DIR": ("shipper.spool_dir", "/var/spool/llmtrace", "/var/spool/llmtrace"),
    "LLMTRACE_SHIPPER_SPOOL_MAX_BYTES": ("shipper.spool_max_bytes", "1048576", 1048576),
    "LLMTRACE_SHIPPER_DEAD_LETTER_PATH": ("shipper.dead_letter_path", "/tmp/dl.jsonl", "/tmp/dl.jsonl"),
    "LLMTRACE_SHIPPER_RETRY_INITIAL_MS": ("shipper.retry_initial_ms", "10", 10),
    "LLMTRACE_SHIPPER_RETRY_MAX_MS": ("shipper.retry_max_ms", "1000", 1000),
    "LLMTRACE_SHIPPER_RPC_TIMEOUT_MS": ("shipper.rpc_timeout_ms", "2000", 2000),
    "LLMTRACE_SECURITY_ANALYSIS_ENABLED": ("security_analysis.enabled", "false", False),
    "LLMTRACE_SECURITY_ANALYSIS_OPERATING_POINT": (
        "security_analysis.operating_point",
        "High_Recall",
        "high_recall",
    ),
    "LLMTRACE_SECURITY_ANALYSIS_QUEUE_MAX_SPANS": ("security_analysis.queue_max_spans", "10", 10),
    "LLMTRACE_SECURITY_ANALYSIS_QUEUE_MAX_BYTES": ("security_analysis.queue_max_bytes", "4096", 4096),
    "LLMTRACE_SECURITY_ANALYSIS_BATCH_MAX_SPANS": ("security_analysis.batch_max_spans", "8", 8),
    "LLMTRACE_SECURITY_ANALYSIS_TIMEOUT_MS": ("security_analysis.timeout_ms", "250", 250),
    "LLMTRACE_SECURITY_ANALYSIS_MODEL_PATH": ("security_analysis.model_path", "/m.onnx", "/m.onnx"),
    "LLMTRACE_SECURITY_ANALYSIS_ANALYZE_PROCESSES": ("security_analysis.analyze_processes", "2", 2),
    "LLMTRACE_ENFORCEMENT_MODE": ("enforcement.mode", "Block", "block"),
    "LLMTRACE_ENFORCEMENT_DEPTH": ("enforcement.depth", "full", "full"),
    "LLMTRACE_ENFORCEMENT_MIN_SEVERITY": ("enforcement.min_severity", "Critical", "critical"),
    "LLMTRACE_ENFORCEMENT_MIN_CONFIDENCE": ("enforcement.min_confidence", "0.9", 0.9),
    "LLMTRACE_ENFORCEMENT_FULL_TIMEOUT_MS": ("enforcement.full_timeout_ms", "50", 50),
    "LLMTRACE_ENFORCEMENT_INJECTION": ("enforcement.injection", "block", "block"),
    "LLMTRACE_ENFORCEMENT_JAILBREAK": ("enforcement.jailbreak", "flag", "flag"),
    "LLMTRACE_ENFORCEMENT_PII": ("enforcement.pii", "log", "log"),
    "LLMTRACE_ENFORCEMENT_SECRETS": ("enforcement.secrets", "block", "block"),
    "LLMTRACE_ENFORCEMENT_TOOL_USE": ("enforcement.tool_use", "flag", "flag"),
    "LLMTRACE_STREAMING_ANALYSIS_ENABLED": ("streaming_analysis.enabled", "yes", True),
    "LLMTRACE_STREAMING_ANALYSIS_EARLY_STOP_ON_CRITICAL": (
        "streaming_analysis.early_stop_on_critical",
        "1",
        True,
    ),
    "LLMTRACE_BOUNDARY_DEFENSE_ENABLED": ("boundary_defense.enabled", "true", True),
    "LLMTRACE_BOUNDARY_DEFENSE_SHADOW_MODE": ("boundary_defense.shadow_mode", "true", True),
    "LLMTRACE_BOUNDARY_DEFENSE_WRAP_ROLES": (
        "boundary_defense.wrap_roles",
        "tool, function",
        ("tool", "function"),
    ),
    # LLMTrace 0.2's names.
    "LLMTRACE_LOG_LEVEL": ("logging.level", "error", "error"),
    "LLMTRACE_LOG_FORMAT": ("logging.format", "JSON", "json"),
}


def get_path(settings: Settings, path: str) -> object:
    value: object = settings
    for part in path.split("."):
        value = getattr(value, part)
    return value


@pytest.mark.parametrize("name", sorted(ENV_CASES))
def test_every_environment_variable(name: str) -> None:
    path, text, expected = ENV_CASES[name]
    assert get_path(load_config(env={name: text}).settings, path) == expected


def test_every_key_has_an_environment_test() -> None:
    assert {path for path, _, _ in ENV_CASES.values()} == set(leaf_types())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("TRUE", True),
        ("1", True),
        ("yes", True),
        ("false", False),
        ("0", False),
        ("No", False),
    ],
)
def test_environment_booleans(text: str, expected: bool) -> None:
    assert load_config(env={"LLMTRACE_METRICS_ENABLED": text}).settings.metrics.enabled is expected


def test_bad_environment_value_names_variable_and_key() -> None:
    env = {"LLMTRACE_SQL_MAX_ROWS": "ten", "LLMTRACE_METRICS_ENABLED": "maybe"}
    with pytest.raises(ConfigError) as exc:
        load_config(env=env)
    assert issues_of(exc) == {
        "sql.max_rows": "expected an integer, got 'ten' (from LLMTRACE_SQL_MAX_ROWS)",
        "metrics.enabled": "expected one of true/false/1/0/yes/no, got 'maybe'"
        " (from LLMTRACE_METRICS_ENABLED)",
    }
    assert "sql.max_rows: expected an integer, got 'ten' (from LLMTRACE_SQL_MAX_ROWS)" in str(exc.value)


def test_canonical_name_wins_over_alias() -> None:
    env = {"LLMTRACE_LOG_LEVEL": "error", "LLMTRACE_LOGGING_LEVEL": "debug"}
    assert load_config(env=env).settings.logging.level == "debug"


def test_empty_environment_variable_counts_as_unset() -> None:
    env = {"LLMTRACE_SQL_MAX_ROWS": "", "LLMTRACE_CONFIG": ""}
    loaded = load_config(env=env)
    assert loaded.settings.sql.max_rows == 10000
    assert loaded.source is None


def test_predecessor_environment_for_unbuilt_features_warns() -> None:
    loaded = load_config(env={"LLMTRACE_POSTGRES_URL": "postgres://u:p@h/db", "LLMTRACE_ML_ENABLED": "1"})
    assert {w.path for w in loaded.warnings} == {"storage.postgres_url", "security_analysis.ml_enabled"}
    assert all("LLMTRACE_" in w.message for w in loaded.warnings)


# --- Validation ---------------------------------------------------------------------------


def test_every_error_is_reported_with_its_path(tmp_path: Path) -> None:
    text = """
upstream_url: ftp://example.com
grpc:
  listen_addr: abc
  max_message_bytes: 0
metrics:
  enabled: "yes"
  listen_addr: "localhost:70000"
storage:
  database_path: ""
logging:
  level: loud
  format: xml
shutdown:
  timeout_seconds: -1
sql:
  max_rows: true
query:
  max_page_size: many
"""
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, text)
    issues = issues_of(exc)
    assert issues == {
        "upstream_url": "expected an http:// or https:// URL, got 'ftp://example.com'",
        "grpc.listen_addr": "expected host:port, got 'abc'",
        "grpc.max_message_bytes": "must be greater than 0, got 0",
        "metrics.enabled": "expected true or false, got 'yes'",
        "metrics.listen_addr": "expected host:port, got 'localhost:70000':"
        " port must be a number from 0 to 65535",
        "storage.database_path": "must not be empty",
        "logging.level": "expected one of debug, info, warning, error, got 'loud'",
        "logging.format": "expected one of text, json, got 'xml'",
        "shutdown.timeout_seconds": "must be greater than 0, got -1",
        "sql.max_rows": "expected an integer, got true",
        "query.max_page_size": "expected an integer, got 'many'",
    }
    for path, message in issues.items():
        assert f"{path}: {message}" in str(exc.value).splitlines()


def test_unknown_keys_are_errors_with_suggestions(tmp_path: Path) -> None:
    text = "grpc:\n  listen_adr: '127.0.0.1:1'\nupstream_ulr: x\nstorage:\n  Database_Path: x\nzzz: 1\n"
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, text)
    assert issues_of(exc) == {
        "grpc.listen_adr": "unknown key; did you mean 'grpc.listen_addr'?",
        "upstream_ulr": "unknown key; did you mean 'upstream_url'?",
        "storage.Database_Path": "unknown key; did you mean 'storage.database_path'?",
        "zzz": "unknown key",
    }


def test_dotted_key_in_yaml_explains_nesting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, "grpc.listen_addr: '127.0.0.1:1'\n")
    assert issues_of(exc) == {"grpc.listen_addr": "unknown key; write it nested: `grpc:` then `listen_addr:`"}


def test_section_must_be_a_mapping_and_keys_strings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, "grpc: 5\nstorage:\n  on: 1\n")
    issues = issues_of(exc)
    assert issues["grpc"] == "expected a section of keys, got 5"
    assert issues["storage.true"].startswith("keys must be strings")


@pytest.mark.parametrize(
    ("addr", "expected"),
    [
        ("127.0.0.1:50051", ("127.0.0.1", 50051)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("[::]:50051", ("::", 50051)),
        ("[::1]:65535", ("::1", 65535)),
        ("localhost:1", ("localhost", 1)),
        ("core.internal.example:443", ("core.internal.example", 443)),
    ],
)
def test_host_port_accepted(addr: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(addr) == expected
    assert load_config(env={}, overrides={"grpc.listen_addr": addr}).settings.grpc.listen_addr == addr


@pytest.mark.parametrize(
    "addr",
    [
        "abc",
        "host:",
        ":80",
        "host:65536",
        "host:-1",
        "host:http",
        "::1:80",
        "[::1]80",
        "[nothost]:80",
        "a b:1",
    ],
)
def test_host_port_rejected(addr: str) -> None:
    with pytest.raises(ValueError, match="expected host:port"):
        parse_host_port(addr)
    with pytest.raises(ConfigError) as exc:
        load_config(env={"LLMTRACE_GRPC_LISTEN_ADDR": addr})
    assert issues_of(exc)["grpc.listen_addr"].startswith(f"expected host:port, got {addr!r}")


@pytest.mark.parametrize("url", ["http://localhost:11434", "https://api.openai.com/v1", "HTTPS://x.example"])
def test_upstream_url_accepted(url: str) -> None:
    assert load_config(env={"LLMTRACE_UPSTREAM_URL": url}).settings.upstream_url == url


@pytest.mark.parametrize("url", ["api.openai.com", "ftp://x", "http://", "https://x:99999", " https://x"])
def test_upstream_url_rejected(url: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(env={"LLMTRACE_UPSTREAM_URL": url})
    assert list(issues_of(exc)) == ["upstream_url"]


def test_default_page_size_may_not_exceed_max(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, "query: {max_page_size: 10}\n")
    assert issues_of(exc) == {"query.default_page_size": "must not exceed query.max_page_size (10), got 50"}


def test_numbers_accept_ints_and_infinity_is_rejected(tmp_path: Path) -> None:
    assert load(tmp_path, "sql: {timeout_seconds: 3}\n").settings.sql.timeout_seconds == 3.0
    with pytest.raises(ConfigError):
        load(tmp_path, "sql: {timeout_seconds: .inf}\n")


def test_predecessor_level_spellings(tmp_path: Path) -> None:
    assert load(tmp_path, "logging: {level: WARN}\n").settings.logging.level == "warning"
    loaded = load(tmp_path, "logging: {level: trace}\n")
    assert loaded.settings.logging.level == "debug"
    assert [w.path for w in loaded.warnings] == ["logging.level"]


# --- Keys of features not built yet -------------------------------------------------------


def test_unbuilt_keys_warn_and_are_kept(tmp_path: Path) -> None:
    text = """
rate_limiting:
  enabled: true
  tenant_overrides: {"t1": {requests_per_second: 5}}
storage:
  profile: lite
  database_path: x.duckdb
grpc:
  enabled: false
"""
    loaded = load(tmp_path, text)
    assert loaded.settings.storage.database_path == "x.duckdb"
    assert [(w.path, w.message) for w in loaded.warnings] == [
        ("rate_limiting", "recognised but not built yet; ignored"),
        ("storage.profile", "recognised but not built yet; ignored"),
        ("grpc.enabled", "recognised but not built yet; ignored"),
    ]
    assert loaded.settings.not_built["rate_limiting"] == {
        "enabled": True,
        "tenant_overrides": {"t1": {"requests_per_second": 5}},
    }


def test_predecessor_style_config_loads_with_warnings_only(tmp_path: Path) -> None:
    # Every top-level key of LLMTrace 0.2's ProxyConfig, with the shapes its examples use.
    text = """
listen_addr: "0.0.0.0:8080"
upstream_url: "https://api.openai.com"
storage:
  profile: production
  database_path: llmtrace.db
  clickhouse_url: "http://localhost:8123"
  clickhouse_database: llmtrace
  postgres_url: "postgres://llmtrace:llmtrace@localhost:5432/llmtrace"
  redis_url: "redis://127.0.0.1:6379"
  auto_migrate: false
logging: {level: info, format: json}
timeout_ms: 60000
connection_timeout_ms: 10000
max_connections: 5000
enable_tls: false
tls_cert_file: /etc/ssl/certs/x.crt
tls_key_file: /etc/ssl/private/x.key
enable_security_analysis: true
enable_trace_storage: true
enable_streaming: true
max_request_size_bytes: 52428800
max_response_size_bytes: 52428800
security_analysis_timeout_ms: 5000
trace_storage_timeout_ms: 10000
rate_limiting: {enabled: true, requests_per_second: 100, burst_size: 200, window_seconds: 60}
circuit_breaker: {enabled: true, failure_threshold: 10}
health_check: {enabled: true, path: /health}
cost_estimation: {enabled: true, custom_models: {}}
cost_caps:
  enabled: true
  default_budget_caps: [{window: hourly, hard_limit_usd: 10.0}]
alerts:
  enabled: true
  channels: [{type: pagerduty, routing_key: "rk-123", min_severity: Critical}]
security_analysis: {ml_enabled: false, ml_threshold: 0.8}
enforcement: {mode: log}
otel_ingest: {enabled: true}
auth: {enabled: true, admin_key: "llmt_bootstrap"}
grpc: {enabled: false, listen_addr: "0.0.0.0:50051"}
anomaly_detection: {enabled: true, sigma_threshold: 3.0}
streaming_analysis: {enabled: true, token_interval: 50}
pii: {action: alert_only}
output_safety: {enabled: false}
shutdown: {timeout_seconds: 30}
boundary_defense: {enabled: false, wrap_roles: [tool]}
action_router: {enabled: false}
judge: {enabled: false, backend: cascade, openai: {max_tokens: 512}}
server: {}
"""
    loaded = load(tmp_path, text)
    assert loaded.settings.listen_addr == "0.0.0.0:8080"
    assert loaded.settings.grpc.listen_addr == "0.0.0.0:50051"
    assert loaded.settings.storage.auto_migrate is False
    warned = {w.path for w in loaded.warnings}
    assert {k for k in NOT_BUILT_TOP_LEVEL if f"\n{k}:" in text} <= warned
    assert {"storage.profile", "storage.postgres_url", "grpc.enabled"} <= warned


# --- Redaction ----------------------------------------------------------------------------


def test_redacted_dict_hides_secrets_everywhere(tmp_path: Path) -> None:
    text = """
storage:
  postgres_url: "postgres://llmtrace:pg-pw@db:5432/llmtrace?api_key=query-secret&sslmode=require"
auth:
  admin_key: "admin-secret"
  nested: {client_secret: "nested-secret", apiKey: "camel-secret"}
alerts:
  webhook_url: "https://hooks.slack.com/services/T/B/hook-secret"
  channels:
    - {type: pagerduty, routing_key: "routing-secret", min_severity: Critical}
judge:
  openai: {max_tokens: 512, api_key: "", password: null}
streaming_analysis: {token_interval: 50}
"""
    loaded = load(tmp_path, text)
    tree = redacted_dict(loaded.settings)
    dumped = yaml.safe_dump(tree)
    for secret in ("query-secret", "pg-pw", "admin-secret", "nested-secret", "camel-secret"):
        assert secret not in dumped
    assert "routing-secret" not in dumped and "hook-secret" not in dumped
    storage = tree["storage"]
    assert isinstance(storage, dict)
    assert (
        storage["postgres_url"]
        == f"postgres://llmtrace:{REDACTED}@db:5432/llmtrace?api_key={REDACTED}&sslmode=require"
    )
    assert storage["database_path"] == "./llmtrace.duckdb"
    assert tree["auth"] == {
        "admin_key": REDACTED,
        "nested": {"client_secret": REDACTED, "apiKey": REDACTED},
    }
    # Limits whose names contain "token" are not secrets; unset secrets stay visibly unset.
    assert tree["judge"] == {"openai": {"max_tokens": 512, "api_key": "", "password": None}}
    assert tree["streaming_analysis"] == {
        "enabled": False,
        "early_stop_on_critical": False,
        "token_interval": 50,
    }
    assert loaded.settings.not_built["streaming_analysis.token_interval"] == 50
    # The settings themselves are untouched.
    assert loaded.settings.not_built["auth"] == {
        "admin_key": "admin-secret",
        "nested": {"client_secret": "nested-secret", "apiKey": "camel-secret"},
    }


def test_redaction_shows_policies_and_hides_signed_url_credentials(tmp_path: Path) -> None:
    text = """
alerts:
  channels:
    - {type: webhook, url: "https://res.example/v1?sv=2022&sig=SAS-SIG&auth=AUTH-SECRET&code=FUNCTION-KEY&api-version=1"}
enforcement: {secrets: block, pii: log}
"""
    tree = redacted_dict(load(tmp_path, text).settings)
    # A key named like a secret whose value must be one of fixed words is a policy: shown.
    enforcement = tree["enforcement"]
    assert isinstance(enforcement, dict)
    assert (enforcement["secrets"], enforcement["pii"]) == ("block", "log")
    # Azure SAS signatures and Functions keys, as the proxy masks them in stored spans.
    assert (
        f"https://res.example/v1?sv=2022&sig={REDACTED}&auth={REDACTED}&code={REDACTED}&api-version=1"
        in yaml.safe_dump(tree, width=1000)
    )


def test_webhook_urls_are_redacted_under_any_key(tmp_path: Path) -> None:
    text = """
alerts:
  channels:
    - {type: slack, url: "https://hooks.slack.com/services/T0/B0/WHSECRET"}
    - {type: discord, url: "https://discord.com/api/webhooks/1/DISCORDSECRET"}
"""
    dumped = yaml.safe_dump(redacted_dict(load(tmp_path, text).settings))
    assert "WHSECRET" not in dumped and "DISCORDSECRET" not in dumped
    assert f"https://hooks.slack.com/{REDACTED}" in dumped


def test_redacted_dict_of_defaults_matches_the_schema() -> None:
    assert flatten(redacted_dict(Settings())) == set(leaf_types())


# --- Documentation examples ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["minimal.yaml", "full.yaml"])
def test_docs_examples_load_cleanly(name: str) -> None:
    path = DOCS / "examples" / name
    loaded = load_config(str(path), env={})
    assert loaded.warnings == []


def test_minimal_example_is_one_line() -> None:
    assert len((DOCS / "examples" / "minimal.yaml").read_text().strip().splitlines()) == 1


def test_full_example_sets_every_key_to_its_default() -> None:
    path = DOCS / "examples" / "full.yaml"
    tree = yaml.safe_load(path.read_text())
    assert flatten(tree) == set(leaf_types())
    assert load_config(str(path), env={}).settings == Settings()


def yaml_blocks(markdown: str) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", markdown, flags=re.DOTALL)


def test_every_yaml_example_in_the_reference_loads(tmp_path: Path) -> None:
    blocks = yaml_blocks((DOCS / "configuration.md").read_text())
    assert blocks
    for i, block in enumerate(blocks):
        load_config(write(tmp_path, block, f"example{i}.yaml"), env={})


def test_reference_documents_every_key_and_variable() -> None:
    doc = (DOCS / "configuration.md").read_text()
    for path in leaf_types():
        env = "LLMTRACE_" + path.replace(".", "_").upper()
        assert f"| `{path}` |" in doc
        assert f"`{env}`" in doc
    for key in NOT_BUILT_TOP_LEVEL:
        assert f"`{key}`" in doc


def test_config_error_survives_pickling() -> None:
    error = ConfigError([ConfigIssue("a.b", "bad"), ConfigIssue("c", "worse")])
    copy = pickle.loads(pickle.dumps(error))
    assert copy.issues == error.issues
    assert str(copy) == "a.b: bad\nc: worse"


def test_predecessor_keys_in_built_security_sections_warn(tmp_path: Path) -> None:
    text = """
enforcement: {mode: Block, action_on_critical: block}
boundary_defense: {enabled: true, wrap_roles: [tool, function]}
security_analysis: {ml_enabled: true, operating_point: high_precision}
"""
    loaded = load(tmp_path, text)
    assert loaded.settings.enforcement.mode == "block"
    assert loaded.settings.boundary_defense.wrap_roles == ("tool", "function")
    assert loaded.settings.security_analysis.operating_point == "high_precision"
    warned = {w.path for w in loaded.warnings}
    assert warned == {"enforcement.action_on_critical", "security_analysis.ml_enabled"}


def test_unknown_role_and_wrong_list_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, "boundary_defense: {wrap_roles: [tool, robot]}\nenforcement: {min_confidence: 2}")
    issues = issues_of(exc)
    assert "unknown role 'robot'" in issues["boundary_defense.wrap_roles"]
    assert issues["enforcement.min_confidence"] == "must be from 0 to 1, got 2"


@pytest.mark.parametrize("addr", ["127.0.0.1:²", "127.0.0.1:٨٠"])
def test_ports_are_ascii_digits(addr: str) -> None:
    with pytest.raises(ValueError, match="port must be a number"):
        parse_host_port(addr)


@pytest.mark.parametrize(
    ("text", "leaf"), [("99999999999999999999", int), ("1e300", float), ("²", int), ("nan", float)]
)
def test_numbers_beyond_what_any_setting_needs_are_refused(text: str, leaf: type) -> None:
    with pytest.raises(InvalidValueError):
        parse_text(text, leaf)
    if text[0] in "0123456789":
        with pytest.raises(InvalidValueError):
            check_type(leaf(float(text)) if leaf is float else int(text), leaf)


@pytest.mark.parametrize(
    "key",
    ["tenant_tokens", "Authorization", "bearer", "smtp_pass", "private_key_pem", "access_token_value"],
)
def test_more_secret_looking_keys(key: str) -> None:
    assert looks_secret(key)


@pytest.mark.parametrize("key", ["max_tokens", "token_value_cap", "passes", "default_value"])
def test_limits_are_not_secrets(key: str) -> None:
    assert not looks_secret(key)


def test_text_shown_in_messages_hides_passwords_keys_and_bearer_tokens() -> None:
    shown = redact_text("http://user:SK-PASS@h:1/v1?api_key=SK-Q and Bearer SK-BEARER-123")
    assert "SK-PASS" not in shown and "SK-Q" not in shown and "SK-BEARER" not in shown
    assert "SK-PASS" not in describe("ftp://user:SK-PASS@h/?api_key=SK-Q")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://gw:gwpass@llm.example", "must not hold credentials"),
        ("https://llm.example/?api-key=x", "must not hold a query or fragment"),
        ("https://llm.example/base#frag", "must not hold a query or fragment"),
        ("https://llm.example/base?", "must not hold a query or fragment"),
    ],
)
def test_an_upstream_url_that_could_not_be_forwarded_to_is_refused(
    tmp_path: Path, url: str, message: str
) -> None:
    # Credentials in it failed every call that had an Authorization header (aiohttp refuses both);
    # a query had each request's path appended inside it.
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, f"upstream_url: {url!r}\n")
    problem = issues_of(exc)["upstream_url"]
    assert problem.startswith(message)
    assert "gwpass" not in str(exc.value)


@pytest.mark.parametrize(
    "key", ["LLMTRACE_SHIPPER_RPC_TIMEOUT_MS", "LLMTRACE_ENFORCEMENT_FULL_TIMEOUT_MS", "LLMTRACE_TIMEOUT_MS"]
)
def test_millisecond_settings_stop_where_a_grpc_deadline_would_overflow(tmp_path: Path, key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, "", **{key: "10000000000000"})
    (message,) = issues_of(exc).values()
    assert message.startswith("must be at most 1000000000000 (31 years), got 10000000000000")
    load(tmp_path, "", **{key: "1000000000000"})  # the limit itself is fine
