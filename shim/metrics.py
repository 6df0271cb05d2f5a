"""Prometheus metrics of the shim, served on its own `/metrics`.

With several workers, `llmtrace shim` points PROMETHEUS_MULTIPROC_DIR at a private directory
before any worker starts; each worker then writes its values there and `/metrics` in any worker
sums them all (gauges: `livesum`, so a dead worker's queue does not linger).
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as prometheus_multiprocess
from prometheus_client.registry import REGISTRY

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)

REQUESTS = Counter(
    "llmtrace_shim_requests_total",
    "Proxied requests, by operation and HTTP status class of the answer the client got.",
    ["operation", "status_class"],
)
REQUEST_DURATION = Histogram(
    "llmtrace_shim_request_duration_seconds",
    "Time from request receipt to the end of the response, by operation.",
    ["operation"],
    buckets=_LATENCY_BUCKETS,
)
SHIM_ERRORS = Counter(
    "llmtrace_shim_errors_total",
    "Answers the shim gave itself or exchanges that broke, by error type.",
    ["error_type"],
)
CAPTURE_FAILURES = Counter(
    "llmtrace_shim_capture_failures_total", "Exchanges whose span could not be built (a bug; see logs)."
)
QUEUE_SPANS = Gauge(
    "llmtrace_shim_queue_spans", "Spans waiting in memory to be shipped.", multiprocess_mode="livesum"
)
SPOOL_BYTES = Gauge(
    "llmtrace_shim_spool_bytes", "Bytes of batches waiting in the on-disk spool.", multiprocess_mode="livesum"
)
BATCHES = Counter(
    "llmtrace_shim_batches_total",
    "Span batches by outcome: sent (acknowledged by the core), failed (an attempt that will be "
    "retried), spooled (written to disk), rejected (the core refused spans as invalid).",
    ["outcome"],
)
SPANS_SHIPPED = Counter("llmtrace_shim_spans_shipped_total", "Spans acknowledged by the core.")
SPANS_DROPPED = Counter(
    "llmtrace_shim_spans_dropped_total",
    "Spans lost: the spool's disk budget was full, or the spool or the dead-letter file could not "
    "be written.",
)
BATCHES_LOST = Counter(
    "llmtrace_shim_batches_lost_total",
    "Batches lost whole, their spans uncounted: a spooled batch found corrupt (moved to the spool's "
    "corrupt/ directory) or missing, or a batch the core refused that cannot be decoded.",
    ["reason"],
)
SPANS_DEAD_LETTERED = Counter(
    "llmtrace_shim_spans_dead_lettered_total",
    "Spans the core rejected as invalid, kept in the dead-letter file.",
)
SHIP_LATENCY = Histogram(
    "llmtrace_shim_ship_latency_seconds",
    "Time from a span's capture to its acknowledgement by the core.",
    buckets=_LATENCY_BUCKETS,
)


ENFORCEMENT_FLAGGED = Counter(
    "llmtrace_shim_enforcement_flagged_total",
    "Requests forwarded with X-LLMTrace-Flagged, by finding category (one count per category).",
    ["category"],
)
ENFORCEMENT_BLOCKED = Counter(
    "llmtrace_shim_enforcement_blocked_total",
    "Requests answered 403 and not forwarded, by finding category (one count per category).",
    ["category"],
)
ENFORCEMENT_FAILOPEN = Counter(
    "llmtrace_shim_enforcement_failopen_total",
    "Requests not checked as configured, by reason: the gRPC status of the core's failed Analyze call "
    "(enforcement.depth: full; checked in the proxy instead), error (forwarded unchecked), "
    "decode_limit or undecodable_body (a compressed body checked only as far as it could be read).",
    ["reason"],
)
ENFORCEMENT_SCAN_DURATION = Histogram(
    "llmtrace_shim_enforcement_scan_seconds",
    "Time the inline check of a request took, by depth (fast: regex tiers here; full: Analyze RPC).",
    ["depth"],
    buckets=_LATENCY_BUCKETS,
)
STREAM_FINDINGS = Counter(
    "llmtrace_shim_stream_findings_total",
    "Findings made in streamed answers as they arrived (streaming_analysis), by category.",
    ["category"],
)
STREAM_EARLY_STOPS = Counter(
    "llmtrace_shim_stream_early_stops_total",
    "Streams cut because a critical finding appeared (streaming_analysis.early_stop_on_critical).",
)
BOUNDARY_REQUESTS = Counter(
    "llmtrace_shim_boundary_requests_total",
    "Chat requests with content to wrap (boundary_defense), by mode: wrapped, or shadow (counted only).",
    ["mode"],
)
BOUNDARY_MESSAGES = Counter(
    "llmtrace_shim_boundary_messages_total",
    "Messages whose content was wrapped (or, in shadow mode, would have been), by mode.",
    ["mode"],
)
BOUNDARY_SKIPPED = Counter(
    "llmtrace_shim_boundary_skipped_total",
    "Chat requests forwarded unwrapped (boundary_defense), by reason: large_number or unsupported_json "
    "(content to wrap, but rewriting could alter other values), compressed (every compressed chat "
    "request: not opened to look for content to wrap).",
    ["reason"],
)


def render_metrics() -> bytes:
    """The Prometheus text exposition, summed across workers in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        prometheus_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)
