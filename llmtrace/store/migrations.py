"""Schema migrations: forward-only, numbered, each applied once in its own transaction.

The `schema_version` table records what has been applied. Never edit a released migration:
add a new one. Views are the documented SQL surface (docs/sql.md); base tables are internal.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb

from llmtrace.store.database import open_database


class MigrationError(RuntimeError):
    """The schema cannot be brought to this build's version."""


@dataclass(frozen=True)
class Migration:
    """One schema change."""

    version: int
    name: str
    statements: tuple[str, ...]


_V1_TABLES = (
    """
    CREATE TABLE schema_version (
        version INTEGER PRIMARY KEY,
        name VARCHAR NOT NULL,
        applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
    )
    """,
    # One row per span. Ingest is idempotent on the primary key (INSERT OR IGNORE).
    # Content columns use ZSTD: for kilobyte-sized prompts it compresses better than DuckDB's
    # default FSST and checkpoints about twice as fast (docs/benchmarks.md); short metadata
    # strings keep the default dictionary encoding, which filters and groups fastest.
    """
    CREATE TABLE span_rows (
        tenant VARCHAR NOT NULL,
        trace_id BLOB NOT NULL,
        span_id BLOB NOT NULL,
        parent_span_id BLOB,
        name VARCHAR NOT NULL,
        agent VARCHAR NOT NULL,
        operation VARCHAR NOT NULL,
        provider VARCHAR NOT NULL,
        request_model VARCHAR NOT NULL,
        response_model VARCHAR NOT NULL,
        start_time TIMESTAMPTZ NOT NULL,
        end_time TIMESTAMPTZ NOT NULL,
        ttft_us BIGINT,
        status_code TINYINT NOT NULL,
        http_status_code INTEGER NOT NULL,
        error_message VARCHAR NOT NULL,
        error_type VARCHAR NOT NULL,
        input_tokens BIGINT NOT NULL,
        output_tokens BIGINT NOT NULL,
        total_tokens BIGINT NOT NULL,
        cache_read_input_tokens BIGINT NOT NULL,
        cache_creation_input_tokens BIGINT NOT NULL,
        reasoning_output_tokens BIGINT NOT NULL,
        usage_estimated BOOLEAN NOT NULL,
        cost_usd DOUBLE,
        cost_input_usd DOUBLE NOT NULL,
        cost_output_usd DOUBLE NOT NULL,
        security_score INTEGER,
        session_id VARCHAR NOT NULL,
        client_address VARCHAR NOT NULL,
        user_agent VARCHAR NOT NULL,
        upstream_request_id VARCHAR NOT NULL,
        server_address VARCHAR NOT NULL,
        api_key_fingerprint VARCHAR NOT NULL,
        temperature DOUBLE,
        top_p DOUBLE,
        max_tokens BIGINT,
        stream BOOLEAN,
        frequency_penalty DOUBLE,
        presence_penalty DOUBLE,
        seed BIGINT,
        choice_count BIGINT,
        output_type VARCHAR NOT NULL,
        stop_sequences VARCHAR[] NOT NULL,
        request_messages JSON NOT NULL USING COMPRESSION zstd,
        request_tools JSON NOT NULL USING COMPRESSION zstd,
        request_body VARCHAR NOT NULL USING COMPRESSION zstd,
        request_truncated BOOLEAN NOT NULL,
        response_id VARCHAR NOT NULL,
        response_choices JSON NOT NULL USING COMPRESSION zstd,
        finish_reasons VARCHAR[] NOT NULL,
        response_body VARCHAR NOT NULL USING COMPRESSION zstd,
        response_truncated BOOLEAN NOT NULL,
        attributes JSON NOT NULL,
        -- The same attributes as a serialized KeyValueList: JSON cannot tell every AnyValue
        -- apart (bytes, int vs double), and OTLP export must lose nothing. NULL when empty.
        attributes_pb BLOB,
        ingest_time TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (tenant, trace_id, span_id)
    )
    """,
    # One row per finding; ids are deterministic so a replayed span does not duplicate them.
    """
    CREATE TABLE finding_rows (
        tenant VARCHAR NOT NULL,
        id VARCHAR NOT NULL,
        trace_id BLOB NOT NULL,
        span_id BLOB NOT NULL,
        type VARCHAR NOT NULL,
        severity TINYINT NOT NULL,
        confidence DOUBLE NOT NULL,
        detector VARCHAR NOT NULL,
        location VARCHAR NOT NULL,
        description VARCHAR NOT NULL,
        excerpt VARCHAR NOT NULL,
        metadata JSON NOT NULL,
        create_time TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (tenant, id)
    )
    """,
    # Process-independent secrets, e.g. the key that signs page tokens (so tokens survive
    # restarts). Not reachable through the SQL views.
    """
    CREATE TABLE core_meta (
        key VARCHAR PRIMARY KEY,
        value BLOB NOT NULL
    )
    """,
    # Scores computed after ingest (analysis) are rows of their own, never UPDATEs of span_rows.
    """
    CREATE TABLE span_scores (
        tenant VARCHAR NOT NULL,
        trace_id BLOB NOT NULL,
        span_id BLOB NOT NULL,
        source VARCHAR NOT NULL,
        score INTEGER NOT NULL,
        create_time TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (tenant, trace_id, span_id, source)
    )
    """,
)

_V1_VIEWS = (
    """
    CREATE VIEW spans AS
    SELECT
        lower(hex(s.trace_id)) AS trace_id,
        lower(hex(s.span_id)) AS span_id,
        coalesce(lower(hex(s.parent_span_id)), '') AS parent_span_id,
        s.tenant,
        s.name,
        s.agent,
        s.operation,
        s.provider,
        s.request_model,
        s.response_model,
        s.start_time,
        s.end_time,
        (epoch_us(s.end_time) - epoch_us(s.start_time)) / 1000.0 AS duration_ms,
        s.ttft_us / 1000.0 AS ttft_ms,
        s.http_status_code AS status_code,
        s.error_message AS error,
        s.error_type,
        (s.status_code = 2 OR s.http_status_code >= 400) AS is_error,
        s.input_tokens,
        s.output_tokens,
        s.total_tokens,
        s.cache_read_input_tokens,
        s.cache_creation_input_tokens,
        s.reasoning_output_tokens,
        s.usage_estimated,
        s.cost_usd,
        CASE
            WHEN sc.score IS NULL THEN s.security_score
            WHEN s.security_score IS NULL THEN sc.score
            ELSE greatest(sc.score, s.security_score)
        END AS security_score,
        s.session_id,
        s.client_address,
        s.user_agent,
        s.upstream_request_id,
        s.server_address,
        s.temperature,
        s.top_p,
        s.max_tokens,
        s.stream,
        s.request_messages,
        s.request_tools,
        s.request_body,
        s.request_truncated,
        s.response_id,
        s.response_choices,
        s.finish_reasons,
        s.response_body,
        s.response_truncated,
        s.attributes,
        s.ingest_time
    FROM span_rows AS s
    LEFT JOIN (
        SELECT tenant, trace_id, span_id, max(score) AS score
        FROM span_scores
        GROUP BY tenant, trace_id, span_id
    ) AS sc
        ON sc.tenant = s.tenant AND sc.trace_id = s.trace_id AND sc.span_id = s.span_id
    """,
    """
    CREATE VIEW findings AS
    SELECT
        f.id,
        f.tenant,
        lower(hex(f.trace_id)) AS trace_id,
        lower(hex(f.span_id)) AS span_id,
        f.type,
        CASE f.severity
            WHEN 1 THEN 'info' WHEN 2 THEN 'low' WHEN 3 THEN 'medium'
            WHEN 4 THEN 'high' WHEN 5 THEN 'critical' ELSE 'unspecified'
        END AS severity,
        f.confidence,
        f.detector,
        f.location,
        f.description,
        f.excerpt,
        f.metadata,
        f.create_time
    FROM finding_rows AS f
    """,
    """
    CREATE VIEW traces AS
    SELECT
        trace_id,
        tenant,
        min(start_time) AS start_time,
        max(end_time) AS end_time,
        (epoch_us(max(end_time)) - epoch_us(min(start_time))) / 1000.0 AS duration_ms,
        count(*) AS span_count,
        count(*) FILTER (WHERE is_error) AS error_count,
        sum(input_tokens)::BIGINT AS input_tokens,
        sum(output_tokens)::BIGINT AS output_tokens,
        sum(total_tokens)::BIGINT AS total_tokens,
        coalesce(sum(cost_usd), 0) AS cost_usd,
        max(security_score) AS max_security_score,
        list_sort(list_distinct(list(request_model) FILTER (WHERE request_model <> ''))) AS models,
        list_sort(list_distinct(list(agent) FILTER (WHERE agent <> ''))) AS agents,
        max(session_id) AS session_id
    FROM spans
    GROUP BY tenant, trace_id
    """,
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "spans, findings, scores and their views",
        (
            *_V1_TABLES,
            *_V1_VIEWS,
            "INSERT INTO core_meta VALUES ('page_token_key', "
            "unhex(sha256(gen_random_uuid()::VARCHAR || gen_random_uuid()::VARCHAR)))",
        ),
    ),
)


def latest_version() -> int:
    """The schema version this build expects."""
    return MIGRATIONS[-1].version


def current_version(conn: duckdb.DuckDBPyConnection) -> int:
    """The highest applied migration, 0 for an empty database."""
    # fetchall, not fetchone: DuckDB keeps a partly fetched result open on the connection.
    exists = conn.execute(
        "SELECT count(*) FROM information_schema.tables "
        "WHERE table_schema = 'main' AND table_name = 'schema_version'"
    ).fetchall()
    if exists[0][0] == 0:
        return 0
    rows = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchall()
    return int(rows[0][0])


def apply_migrations(conn: duckdb.DuckDBPyConnection) -> list[int]:
    """Apply every pending migration, each in its own transaction; return the versions applied."""
    applied: list[int] = []
    version = current_version(conn)
    if version > latest_version():
        raise MigrationError(
            f"database schema version {version} is newer than this build supports "
            f"({latest_version()}); upgrade llmtrace"
        )
    for migration in MIGRATIONS:
        if migration.version <= version:
            continue
        conn.execute("BEGIN TRANSACTION")
        try:
            for statement in migration.statements:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_version (version, name) VALUES (?, ?)",
                [migration.version, migration.name],
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        applied.append(migration.version)
    return applied


def migrate_database(database_path: str | Path) -> list[int]:
    """Open the database file, apply pending migrations, close it (`llmtrace migrate`)."""
    conn = open_database(database_path)
    try:
        return apply_migrations(conn)
    finally:
        conn.close()
