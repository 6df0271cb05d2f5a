"""Configuration: defaults < YAML file < LLMTRACE_* environment < overrides (CLI flags).

See docs/configuration.md for every key.
"""

from __future__ import annotations

from llmtrace.config.loader import load_config
from llmtrace.config.redact import REDACTED, redacted_dict
from llmtrace.config.schema import (
    ConfigError,
    ConfigIssue,
    GrpcSettings,
    LoadedConfig,
    LoggingSettings,
    MetricsSettings,
    QuerySettings,
    Settings,
    ShutdownSettings,
    SqlSettings,
    StorageSettings,
)
from llmtrace.config.values import parse_host_port

__all__ = [
    "REDACTED",
    "ConfigError",
    "ConfigIssue",
    "GrpcSettings",
    "LoadedConfig",
    "LoggingSettings",
    "MetricsSettings",
    "QuerySettings",
    "Settings",
    "ShutdownSettings",
    "SqlSettings",
    "StorageSettings",
    "load_config",
    "parse_host_port",
    "redacted_dict",
]
