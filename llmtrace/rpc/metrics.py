"""Prometheus metrics of the core (served on `metrics.listen_addr`)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

RPC_TOTAL = Counter(
    "llmtrace_core_rpc_total", "RPCs handled by the core, by method and status code.", ["method", "code"]
)
RPC_DURATION = Histogram(
    "llmtrace_core_rpc_duration_seconds",
    "RPC handling time in seconds, by method.",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
SPANS_ACCEPTED = Counter("llmtrace_core_spans_accepted_total", "Spans accepted by ingest (committed).")
SPANS_REJECTED = Counter("llmtrace_core_spans_rejected_total", "Spans rejected by ingest as invalid.")
