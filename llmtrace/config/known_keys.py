"""Keys that are recognised but belong to features not built yet.

They come from LLMTrace 0.2 (the Rust proxy this project replaces: its `ProxyConfig`,
`config.example.yaml` and `examples/config-*.yaml`) and from this project's plan. A file that
sets them loads with a warning instead of failing, so a predecessor config keeps working while
the features arrive. When a feature is built, move its keys into `schema.py`.
"""

from __future__ import annotations

from typing import Final

#: Top-level keys whose whole value (scalar or section, any shape) is accepted and ignored.
NOT_BUILT_TOP_LEVEL: Final = frozenset(
    {
        # LLMTrace 0.2 proxy settings (timeouts, TLS and limits of the HTTP listener).
        "max_connections",
        "max_response_size_bytes",
        "security_analysis_timeout_ms",
        "trace_storage_timeout_ms",
        "enable_tls",
        "tls_cert_file",
        "tls_key_file",
        "enable_security_analysis",
        "enable_trace_storage",
        "enable_streaming",
        # LLMTrace 0.2 feature sections.
        "rate_limiting",
        "circuit_breaker",
        "health_check",
        "cost_estimation",
        "cost_caps",
        "alerts",
        "otel_ingest",
        "auth",
        "anomaly_detection",
        "pii",
        "output_safety",
        "action_router",
        "judge",
        "server",
        "feature_flags",
        # Planned here: shim-to-core wiring, pricing, budgets, tenancy, lake and reports.
        "pricing",
        "budgets",
        "tenants",
        "lake",
        "reports",
    }
)

#: Keys inside implemented sections that are recognised but ignored.
NOT_BUILT_NESTED: Final = frozenset(
    {
        # LLMTrace 0.2 storage profiles; this core stores everything in one DuckDB file.
        "storage.profile",
        "storage.postgres_url",
        "storage.clickhouse_url",
        "storage.clickhouse_database",
        "storage.redis_url",
        # The core always serves gRPC; LLMTrace 0.2 made it optional.
        "grpc.enabled",
        # LLMTrace 0.2 security settings this version replaces: the classifier always runs in
        # the core (security_analysis.enabled), and streamed answers are checked per chunk.
        "security_analysis.ml_enabled",
        "security_analysis.ml_threshold",
        "security_analysis.ml_preload",
        "security_analysis.ml_cache_dir",
        "security_analysis.ml_model",
        "streaming_analysis.token_interval",
    }
)

#: Sections that also existed in LLMTrace 0.2 with keys of its own: an unknown key in them
#: warns instead of failing, so a predecessor config keeps loading.
PREDECESSOR_SECTIONS: Final = frozenset(
    {"security_analysis", "enforcement", "streaming_analysis", "boundary_defense"}
)

#: LLMTrace 0.2 environment variables that set keys of features not built yet.
NOT_BUILT_ENV: Final = {
    "LLMTRACE_STORAGE_PROFILE": "storage.profile",
    "LLMTRACE_CLICKHOUSE_URL": "storage.clickhouse_url",
    "LLMTRACE_CLICKHOUSE_DATABASE": "storage.clickhouse_database",
    "LLMTRACE_POSTGRES_URL": "storage.postgres_url",
    "LLMTRACE_REDIS_URL": "storage.redis_url",
    "LLMTRACE_ML_ENABLED": "security_analysis.ml_enabled",
    "LLMTRACE_ML_PRELOAD": "security_analysis.ml_preload",
    "LLMTRACE_ML_CACHE_DIR": "security_analysis.ml_cache_dir",
}

NOT_BUILT_MESSAGE: Final = "recognised but not built yet; ignored"
