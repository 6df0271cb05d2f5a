"""Regenerates the field and column tables in docs/query.md and docs/sql.md from the code.

The tables sit between `<!-- BEGIN GENERATED: name -->` and `<!-- END GENERATED: name -->`.
`python tools/docs_sync.py` rewrites them; `--check` exits 1 when the docs are stale (the test
suite runs the check, so the docs cannot drift from the catalogs and the views).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import duckdb

from llmtrace.query import FieldKind, FieldSpec
from llmtrace.store.catalogs import FINDING_FIELDS, SPAN_FIELDS, TRACE_FIELDS
from llmtrace.store.migrations import apply_migrations
from llmtrace.store.queries import FINDING_LIST, TRACE_LIST, span_list_query

ROOT = Path(__file__).resolve().parent.parent

_KIND_TEXT = {
    FieldKind.STRING: "string",
    FieldKind.INT: "integer",
    FieldKind.FLOAT: "number",
    FieldKind.BOOL: "`true` / `false`",
    FieldKind.TIMESTAMP: 'timestamp (`"2026-11-27T10:00:00Z"`)',
    FieldKind.ENUM: "enum",
    FieldKind.BYTES_HEX: 'id as hex (`"0af7651916cd43dd8448eb211c80319c"`)',
}

#: What each view column holds; a column missing here fails the docs check.
VIEW_COLUMNS: dict[str, str] = {
    "trace_id": "trace id, 32 lowercase hex characters",
    "span_id": "span id, 16 lowercase hex characters",
    "parent_span_id": "parent span id as hex; empty for a root span",
    "tenant": "tenant that owns the row",
    "name": "span name",
    "agent": "agent or application that made the call",
    "operation": "`gen_ai.operation.name`: `chat`, `embeddings`, ...",
    "provider": "`gen_ai.provider.name`: `openai`, `anthropic`, ...",
    "request_model": "model asked for",
    "response_model": "model that answered",
    "start_time": "when the request was received (UTC)",
    "end_time": "when the exchange ended (UTC)",
    "duration_ms": "end_time - start_time in milliseconds",
    "ttft_ms": "time to first token in milliseconds; NULL when unknown",
    "status_code": "HTTP status sent to the client; 0 when none",
    "error": "error message; empty on success",
    "error_type": "error class (`timeout`, `upstream_unreachable`, ...)",
    "is_error": "true when the span failed (error status or HTTP status >= 400)",
    "input_tokens": "input tokens",
    "output_tokens": "output tokens",
    "total_tokens": "input + output tokens",
    "cache_read_input_tokens": "input tokens read from the provider's cache",
    "cache_creation_input_tokens": "input tokens written to the provider's cache",
    "reasoning_output_tokens": "output tokens spent on reasoning",
    "usage_estimated": "true when token counts were estimated, not reported by the provider",
    "cost_usd": "cost in USD; NULL when the model has no known price",
    "security_score": "0-100, the most severe finding's base score; NULL when not analysed",
    "session_id": "session that groups calls into a trace",
    "client_address": "address of the calling client",
    "user_agent": "client user agent",
    "upstream_request_id": "request id returned by the provider",
    "server_address": "upstream API host",
    "temperature": "`temperature` parameter; NULL when not sent",
    "top_p": "`top_p` parameter; NULL when not sent",
    "max_tokens": "`max_tokens` (or `max_completion_tokens`) parameter; NULL when not sent",
    "stream": "whether the response was streamed; NULL when unknown",
    "request_messages": "input messages as JSON: `[{role, parts: [{type, content}]}]`",
    "request_tools": "tool definitions as JSON: `[{type, name, description, parameters}]`",
    "request_body": "raw request body when captured (possibly truncated)",
    "request_truncated": "true when request content was truncated at capture",
    "response_id": "response id from the provider",
    "response_choices": "output messages as JSON, with `index` and `finish_reason`",
    "finish_reasons": "finish reason of each choice, in choice order (empty when unknown)",
    "response_body": "raw response body when captured (possibly truncated)",
    "response_truncated": "true when response content was truncated at capture",
    "attributes": "other attributes as a JSON object",
    "ingest_time": "when the core committed the span",
    "id": "finding id",
    "type": "finding type (`prompt_injection`, `pii_detected`, ...)",
    "severity": "`info`, `low`, `medium`, `high` or `critical`",
    "confidence": "detector confidence, 0-1",
    "detector": "detector that produced the finding",
    "location": "where in the exchange, e.g. `request.messages[2].content`",
    "description": "human-readable explanation",
    "excerpt": "matched text with secrets and PII masked",
    "metadata": "detector metadata as a JSON object",
    "create_time": "when the finding was created",
    "span_count": "number of spans in the trace",
    "error_count": "number of failed spans in the trace",
    "max_security_score": "highest security score in the trace; NULL when none was analysed",
    "models": "distinct request models in the trace (sorted list)",
    "agents": "distinct agents in the trace (sorted list)",
}


#: Where a view's column means something else than the same-named column of `spans`.
VIEW_COLUMN_OVERRIDES: dict[tuple[str, str], str] = {
    ("traces", "cost_usd"): "sum of the priced spans' cost in USD; 0 when none was priced",
    ("traces", "input_tokens"): "sum of input tokens over the trace's spans",
    ("traces", "output_tokens"): "sum of output tokens over the trace's spans",
    ("traces", "total_tokens"): "sum of total tokens over the trace's spans",
    ("traces", "start_time"): "earliest span start (UTC)",
    ("traces", "end_time"): "latest span end (UTC)",
    ("traces", "duration_ms"): "end_time - start_time of the trace in milliseconds",
    ("traces", "session_id"): "session id of the trace's spans, if any",
    ("findings", "trace_id"): "trace of the span the finding is about",
    ("findings", "span_id"): "span the finding is about",
}


def _fields_table(title: str, catalog: dict[str, FieldSpec], default_order: str, tiebreak: str) -> str:
    lines = [
        f"### {title}",
        "",
        f"Default order: `{default_order}`; tiebreak: `{tiebreak}`.",
        "",
        "| field | type | order_by |",
        "| --- | --- | --- |",
    ]
    for spec in catalog.values():
        kind = _KIND_TEXT[spec.kind]
        if spec.enum_values:
            kind = "enum: " + ", ".join(f"`{v}`" for v in spec.enum_values)
        lines.append(f"| `{spec.name}` | {kind} | {'yes' if spec.orderable else 'no'} |")
    return "\n".join(lines)


def fields_section() -> str:
    """The per-resource field tables for docs/query.md."""
    spans = span_list_query(full=False)
    return "\n\n".join(
        [
            "Unknown values compare as sentinels so that every field can be sorted: `ttft_ms` and "
            "`security_score` are -1 when unknown or not analysed, `cost_usd` is 0 when unpriced. "
            "`model` is an alias of `request_model`.",
            _fields_table(
                "ListSpans and GetStats", SPAN_FIELDS, spans.default_order, ", ".join(spans.tiebreak)
            ),
            _fields_table(
                "ListTraces", TRACE_FIELDS, TRACE_LIST.default_order, ", ".join(TRACE_LIST.tiebreak)
            ),
            _fields_table(
                "ListFindings (`model`, `provider` and `agent` are those of the finding's span)",
                FINDING_FIELDS,
                FINDING_LIST.default_order,
                ", ".join(FINDING_LIST.tiebreak),
            ),
        ]
    )


def views_section() -> str:
    """The column tables of the SQL views for docs/sql.md."""
    conn = duckdb.connect()
    apply_migrations(conn)
    parts: list[str] = []
    for view in ("spans", "findings", "traces"):
        rows = conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = ? ORDER BY ordinal_position",
            [view],
        ).fetchall()
        parts.append(f"### `{view}`\n\n| column | type | meaning |\n| --- | --- | --- |")
        for name, data_type in rows:
            if name not in VIEW_COLUMNS:
                raise SystemExit(f"tools/docs_sync.py: describe column {view}.{name} in VIEW_COLUMNS")
            meaning = VIEW_COLUMN_OVERRIDES.get((view, name), VIEW_COLUMNS[name])
            parts[-1] += f"\n| `{name}` | {data_type} | {meaning} |"
    conn.close()
    return "\n\n".join(parts)


def _replace(text: str, name: str, body: str) -> str:
    pattern = re.compile(
        rf"(<!-- BEGIN GENERATED: {name} -->\n).*?(<!-- END GENERATED: {name} -->)", re.DOTALL
    )
    if not pattern.search(text):
        raise SystemExit(f"tools/docs_sync.py: markers for {name!r} not found")
    return pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)


def main(argv: list[str] | None = None) -> int:
    """Rewrite (or with --check, verify) the generated sections."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="fail if the docs are out of date")
    args = parser.parse_args(argv)
    stale: list[str] = []
    for path, name, body in (
        (ROOT / "docs/query.md", "fields", fields_section()),
        (ROOT / "docs/sql.md", "views", views_section()),
    ):
        old = path.read_text()
        new = _replace(old, name, body)
        if new != old:
            stale.append(str(path.relative_to(ROOT)))
            if not args.check:
                path.write_text(new)
    if args.check and stale:
        print(f"stale generated docs: {', '.join(stale)}; run `python tools/docs_sync.py`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
