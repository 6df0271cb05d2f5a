"""Arrow schemas of the rows the writer appends; they mirror the current table definitions.

The ingest edge builds Arrow tables with exactly these schemas; the writer inserts them by column
name, so a migration that adds a column only needs the new field here and in the builder.
"""

from __future__ import annotations

import pyarrow as pa

_TS = pa.timestamp("us", tz="UTC")
_STR = pa.string()
_I64 = pa.int64()
_F64 = pa.float64()
_BOOL = pa.bool_()

SPAN_ROW_SCHEMA = pa.schema(
    [
        ("tenant", _STR),
        ("trace_id", pa.binary()),
        ("span_id", pa.binary()),
        ("parent_span_id", pa.binary()),
        ("name", _STR),
        ("agent", _STR),
        ("operation", _STR),
        ("provider", _STR),
        ("request_model", _STR),
        ("response_model", _STR),
        ("start_time", _TS),
        ("end_time", _TS),
        ("ttft_us", _I64),
        ("status_code", pa.int8()),
        ("http_status_code", pa.int32()),
        ("error_message", _STR),
        ("error_type", _STR),
        ("input_tokens", _I64),
        ("output_tokens", _I64),
        ("total_tokens", _I64),
        ("cache_read_input_tokens", _I64),
        ("cache_creation_input_tokens", _I64),
        ("reasoning_output_tokens", _I64),
        ("usage_estimated", _BOOL),
        ("cost_usd", _F64),
        ("cost_input_usd", _F64),
        ("cost_output_usd", _F64),
        ("security_score", pa.int32()),
        ("session_id", _STR),
        ("client_address", _STR),
        ("user_agent", _STR),
        ("upstream_request_id", _STR),
        ("server_address", _STR),
        ("api_key_fingerprint", _STR),
        ("temperature", _F64),
        ("top_p", _F64),
        ("max_tokens", _I64),
        ("stream", _BOOL),
        ("frequency_penalty", _F64),
        ("presence_penalty", _F64),
        ("seed", _I64),
        ("choice_count", _I64),
        ("output_type", _STR),
        ("stop_sequences", pa.list_(_STR)),
        ("request_messages", _STR),
        ("request_tools", _STR),
        ("request_body", _STR),
        ("request_truncated", _BOOL),
        ("response_id", _STR),
        ("response_choices", _STR),
        ("finish_reasons", pa.list_(_STR)),
        ("response_body", _STR),
        ("response_truncated", _BOOL),
        ("attributes", _STR),
        ("attributes_pb", pa.binary()),
        ("ingest_time", _TS),
    ]
)

FINDING_ROW_SCHEMA = pa.schema(
    [
        ("tenant", _STR),
        ("id", _STR),
        ("trace_id", pa.binary()),
        ("span_id", pa.binary()),
        ("type", _STR),
        ("severity", pa.int8()),
        ("confidence", _F64),
        ("detector", _STR),
        ("location", _STR),
        ("description", _STR),
        ("excerpt", _STR),
        ("metadata", _STR),
        ("create_time", _TS),
    ]
)

#: Scores computed after ingest (post-ack analysis): one row per span and source.
SCORE_ROW_SCHEMA = pa.schema(
    [
        ("tenant", _STR),
        ("trace_id", pa.binary()),
        ("span_id", pa.binary()),
        ("source", _STR),
        ("score", pa.int32()),
        ("create_time", _TS),
    ]
)
