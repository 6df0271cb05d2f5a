"""The settings tree: frozen dataclasses whose field defaults are the documented defaults.

Every leaf is a str, int, float, bool or tuple of str (a YAML list, or a comma-separated
environment value). The loader derives key paths (`grpc.listen_addr`),
environment variable names and type conversion from these classes, so adding a field here is
all it takes to make it configurable; its validation rule lives in `values.py` (`RULES`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
CAPTURE_BODIES = ("full", "redacted", "metadata")
ENFORCEMENT_MODES = ("log", "flag", "block")
ENFORCEMENT_DEPTHS = ("fast", "full")
#: Per-category overrides: `inherit` follows `enforcement.mode`.
CATEGORY_ACTIONS = ("inherit", "log", "flag", "block")
SEVERITIES = ("info", "low", "medium", "high", "critical")
OPERATING_POINTS = ("high_recall", "balanced", "high_precision")
#: The core's CPU priority under `llmtrace serve`, beside the proxy workers.
CORE_PRIORITIES = ("background", "normal")


@dataclass(frozen=True, slots=True)
class GrpcSettings:
    """The core's gRPC server."""

    listen_addr: str = "127.0.0.1:50051"
    max_message_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """The Prometheus scrape endpoint."""

    enabled: bool = True
    listen_addr: str = "127.0.0.1:9464"


@dataclass(frozen=True, slots=True)
class StorageSettings:
    """The DuckDB file the core owns."""

    database_path: str = "./llmtrace.duckdb"
    auto_migrate: bool = True


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    """Log level and renderer (logs always go to stderr)."""

    level: str = "info"
    format: str = "text"
    # One structlog line per proxied request (method, path, status, duration, tenant). Off by
    # default: every request is already recorded, in more detail, as a span; the line costs about
    # a tenth of a worker's throughput (docs/benchmarks.md).
    access_log: bool = False


@dataclass(frozen=True, slots=True)
class ShutdownSettings:
    """Graceful stop: how long in-flight work may take after SIGTERM."""

    timeout_seconds: float = 30.0


@dataclass(frozen=True, slots=True)
class SqlSettings:
    """Bounds on ad-hoc read-only SQL (CLI and admin RPC)."""

    max_rows: int = 10_000
    timeout_seconds: float = 10.0


@dataclass(frozen=True, slots=True)
class QuerySettings:
    """Page sizes for List RPCs."""

    max_page_size: int = 1000
    default_page_size: int = 50


@dataclass(frozen=True, slots=True)
class CaptureSettings:
    """What the shim keeps of each exchange."""

    # full: messages and answers as sent; redacted: PII and secrets masked before storage;
    # metadata: no content at all (model, usage, timings, status; no upstream error text).
    bodies: str = "full"
    # Content beyond this (per request or response side) is truncated in the span, marked so.
    max_body_bytes: int = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ShipperSettings:
    """How the shim delivers spans to the core: batches, retries, and the on-disk spool."""

    batch_max_spans: int = 500
    batch_max_bytes: int = 4 * 1024 * 1024
    # A batch goes out when full or when its oldest span has waited this long; also the most a
    # SIGKILLed shim can lose.
    flush_interval_ms: int = 200
    # Spans waiting in memory, and their bytes; beyond either, batches go to the spool.
    queue_max_spans: int = 20_000
    queue_max_bytes: int = 64 * 1024 * 1024
    spool_dir: str = "./llmtrace-spool"
    spool_max_bytes: int = 1024 * 1024 * 1024
    # Spans the core rejects as invalid are appended here (JSON lines), never retried.
    dead_letter_path: str = "./llmtrace-spool/dead-letter.jsonl"
    retry_initial_ms: int = 100
    retry_max_ms: int = 5_000
    # Deadline of one IngestSpans call; past it the batch is retried (ingest is idempotent).
    rpc_timeout_ms: int = 10_000


@dataclass(frozen=True, slots=True)
class SecurityAnalysisSettings:
    """The core's analysis of every ingested span (after the ack) and of `Analyze` calls."""

    enabled: bool = True
    # Where on the evaluated precision/recall curve the fused verdict sits (docs/security.md).
    operating_point: str = "balanced"
    # Spans waiting for analysis; beyond this new spans are stored unanalysed and counted
    # (llmtrace_analysis_spans_shed_total), so ingest never waits for analysis.
    queue_max_spans: int = 10_000
    # ... and their serialized bytes (content included); beyond either, new spans are shed.
    queue_max_bytes: int = 256 * 1024 * 1024
    # Spans analysed together (one classifier batch).
    batch_max_spans: int = 256
    # Past this a batch's analysis is abandoned and counted; its spans stay stored.
    timeout_ms: int = 5_000
    # The ONNX classifier; empty means the model shipped in the package.
    model_path: str = ""
    # Processes answering Analyze calls (started on the first call), each with its own analyzer.
    analyze_processes: int = 1


@dataclass(frozen=True, slots=True)
class EnforcementSettings:
    """What the shim does with findings inline, before forwarding a request."""

    # log: no inline scan (the core analyses every span after the fact); flag: forward and add
    # X-LLMTrace-Flagged / X-LLMTrace-Findings headers; block: answer 403 without forwarding.
    mode: str = "log"
    # fast: regex tiers in the shim process; full: the core's Analyze RPC (regex tiers here if it fails).
    depth: str = "fast"
    # Findings below either floor are recorded but never acted on.
    min_severity: str = "high"
    min_confidence: float = 0.5
    full_timeout_ms: int = 200
    # Per-category actions overriding `mode` (inherit, log, flag, block).
    injection: str = "inherit"
    jailbreak: str = "inherit"
    pii: str = "inherit"
    secrets: str = "inherit"
    tool_use: str = "inherit"


@dataclass(frozen=True, slots=True)
class StreamingAnalysisSettings:
    """Checks on streamed answers as chunks arrive (PII and secrets)."""

    enabled: bool = False
    # Cut the stream when a critical finding appears; the chunk that carried it has already
    # reached the client.
    early_stop_on_critical: bool = False


@dataclass(frozen=True, slots=True)
class BoundaryDefenseSettings:
    """Wrap untrusted message content in randomised delimiters (rewrites request bodies)."""

    enabled: bool = False
    # Measure what would be wrapped without changing the request.
    shadow_mode: bool = False
    wrap_roles: tuple[str, ...] = ("tool",)


@dataclass(frozen=True, slots=True)
class Settings:
    """The resolved configuration of one process."""

    listen_addr: str = "127.0.0.1:8080"
    upstream_url: str = "https://api.openai.com"
    # The core the shim ships to; empty means grpc.listen_addr (the core `serve` starts).
    core_addr: str = ""
    # Shim worker processes sharing listen_addr.
    workers: int = 1
    # Under `serve`: `background` runs the core on CPU the proxy leaves (Linux's idle scheduling
    # class), so that its bursts of ingest never delay a client; `normal` shares the CPU evenly.
    core_priority: str = "background"
    # Bounds the wait for upstream response headers and every idle gap between chunks, never a
    # whole stream (a ten-minute stream works). The OpenAI SDK's own default is 600 s.
    timeout_ms: int = 600_000
    connection_timeout_ms: int = 10_000
    max_request_size_bytes: int = 32 * 1024 * 1024
    grpc: GrpcSettings = field(default_factory=GrpcSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    shutdown: ShutdownSettings = field(default_factory=ShutdownSettings)
    sql: SqlSettings = field(default_factory=SqlSettings)
    query: QuerySettings = field(default_factory=QuerySettings)
    capture: CaptureSettings = field(default_factory=CaptureSettings)
    shipper: ShipperSettings = field(default_factory=ShipperSettings)
    security_analysis: SecurityAnalysisSettings = field(default_factory=SecurityAnalysisSettings)
    enforcement: EnforcementSettings = field(default_factory=EnforcementSettings)
    streaming_analysis: StreamingAnalysisSettings = field(default_factory=StreamingAnalysisSettings)
    boundary_defense: BoundaryDefenseSettings = field(default_factory=BoundaryDefenseSettings)
    # Recognised keys of features not built yet, by dotted key path, kept verbatim so that
    # `llmtrace validate` can show them (redacted). Nothing reads them at run time.
    not_built: Mapping[str, object] = field(default_factory=dict, compare=False)


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem found in the configuration, located by its dotted key path."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class ConfigError(Exception):
    """The configuration is invalid; `issues` lists every problem found, not just the first."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = list(issues)
        super().__init__(self.issues)

    def __str__(self) -> str:
        return "\n".join(str(issue) for issue in self.issues)


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """What `load_config` returns: the settings, non-fatal warnings, and the file used."""

    settings: Settings
    warnings: list[ConfigIssue]
    source: str | None
