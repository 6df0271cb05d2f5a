"""Exchanges the core reads (llmtrace.capture.raw): the same span as the shim would build, and
the core's handling of raw exchanges sent over IngestSpans."""

from __future__ import annotations

import gzip
import json
import os
import time
from pathlib import Path

import pytest

from llmtrace.api.v1 import ingest_service_pb2, query_service_pb2, span_pb2
from llmtrace.capture import ResponseCapture, build_span, parse_request
from llmtrace.capture.exchange import ExchangeMeta
from llmtrace.capture.raw import MAX_RAW_BODY_BYTES, raw_exchange_problems, read_raw_exchange
from llmtrace.capture.span import exchange_span
from tests.conftest import RunningCore

LIMIT = 1024 * 1024
CHAT = (
    b'{"model":"gpt-4o","messages":[{"role":"system","content":"Be terse."},{"role":"user","content":"Hi"}]}'
)
CHAT_ANSWER = json.dumps(
    {
        "id": "chatcmpl-1",
        "model": "gpt-4o-2024-08-06",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Hello."}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
    }
).encode()
STREAM_CHAT = b'{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"Count"}]}'


def _sse(*events: object, done: bool = True) -> bytes:
    out = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    return out + (b"data: [DONE]\n\n" if done else b"")


def _delta(text: str, finish: str | None = None) -> dict[str, object]:
    return {
        "id": "c1",
        "model": "gpt-4o",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}],
    }


ANTHROPIC = (
    b'{"model":"claude-3-5-sonnet","max_tokens":64,"system":"Be brief.",'
    b'"messages":[{"role":"user","content":"Hi"}]}'
)
ANTHROPIC_STREAM = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"m1","model":"claude-3-5-sonnet",'
    b'"usage":{"input_tokens":7,"output_tokens":0}}}\n\n'
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":"Hello"}}\n\n'
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
    b'"usage":{"output_tokens":3}}\n\n'
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
)

#: (name, path, request body, answer: (status, content type, encoding, chunks) or None, meta changes)
CASES: list[tuple[str, str, bytes, tuple[int, str, str, list[bytes]] | None, dict[str, object]]] = [
    ("chat json", "/v1/chat/completions", CHAT, (200, "application/json", "", [CHAT_ANSWER]), {}),
    (
        "chat json in pieces, gzip",
        "/v1/chat/completions",
        CHAT,
        (200, "application/json", "gzip", [gzip.compress(CHAT_ANSWER)[:10], gzip.compress(CHAT_ANSWER)[10:]]),
        {},
    ),
    (
        "chat stream without usage (estimated)",
        "/v1/chat/completions",
        STREAM_CHAT,
        (200, "text/event-stream", "", [_sse(_delta("one, "), _delta("two", "stop"))]),
        {"ttft_nano": 1_000_000},
    ),
    (
        "chat stream cut by the upstream",
        "/v1/chat/completions",
        STREAM_CHAT,
        (200, "text/event-stream", "", [_sse(_delta("one, "), done=False)[:-5]]),
        {"error_type": "upstream_stream_cut", "error_message": "cut"},
    ),
    (
        "upstream error",
        "/v1/chat/completions",
        CHAT,
        (429, "application/json", "", [b'{"error":{"message":"slow down","type":"rate_limit","code":"x"}}']),
        {"http_status": 429},
    ),
    ("upstream 500 without a body", "/v1/chat/completions", CHAT, (500, "", "", []), {"http_status": 500}),
    (
        "no answer (502)",
        "/v1/chat/completions",
        CHAT,
        None,
        {"http_status": 502, "error_type": "upstream_unreachable"},
    ),
    ("anthropic stream", "/v1/messages", ANTHROPIC, (200, "text/event-stream", "", [ANTHROPIC_STREAM]), {}),
    (
        "embeddings",
        "/v1/embeddings",
        b'{"model":"text-embedding-3-small","input":["a","b"]}',
        (
            200,
            "application/json",
            "",
            [b'{"data":[],"model":"text-embedding-3-small","usage":{"prompt_tokens":2}}'],
        ),
        {},
    ),
    (
        "unknown route",
        "/v1/files",
        b"not json at all",
        (200, "text/plain", "", [b"plain"]),
        {"method": "PUT"},
    ),
    (
        "models list",
        "/v1/models",
        b"",
        (200, "application/json", "", [b'{"data":[{"id":"gpt-4o"}]}']),
        {"method": "GET"},
    ),
    ("a body that is not JSON", "/v1/chat/completions", b"{oops", (400, "application/json", "", [b"{}"]), {}),
]


def _meta(path: str, **changes: object) -> ExchangeMeta:
    now = time.time_ns()
    meta = ExchangeMeta(
        trace_id=os.urandom(16),
        span_id=os.urandom(8),
        parent_span_id=b"",
        tenant="acme",
        agent="bot",
        session_id="s1",
        method="POST",
        path=path,
        query="",
        client_address="127.0.0.1",
        user_agent="OpenAI/Python 1.0",
        server_address="api.openai.com",
        api_key_fingerprint="0123456789abcdef",
        request_headers={"content-type": "application/json"},
        response_headers={"x-request-id": "req_1"},
        start_unix_nano=now - 5_000_000,
        end_unix_nano=now,
        http_status=200,
        upstream_request_id="req_1",
    )
    for key, value in changes.items():
        setattr(meta, key, value)
    return meta


def _shim_built(
    meta: ExchangeMeta, path: str, body: bytes, answer: tuple[int, str, str, list[bytes]] | None
) -> span_pb2.Span:
    request = parse_request(path, body, "application/json", max_body_bytes=LIMIT)
    response = None
    if answer is not None:
        status, content_type, encoding, chunks = answer
        capture = ResponseCapture(
            request, status=status, content_type=content_type, content_encoding=encoding, max_body_bytes=LIMIT
        )
        for chunk in chunks:
            capture.feed(chunk)
        response = capture.finish()
    return build_span(meta, request, response, bodies="full", max_body_bytes=LIMIT)


def _raw(
    meta: ExchangeMeta, path: str, body: bytes, answer: tuple[int, str, str, list[bytes]] | None
) -> span_pb2.Span:
    span = exchange_span(meta, bodies="full")
    raw = span.raw_exchange
    raw.method, raw.path, raw.request_content_type = meta.method, path, "application/json"
    raw.request_body, raw.max_body_bytes = body, LIMIT
    if answer is not None:
        status, content_type, encoding, chunks = answer
        raw.has_response, raw.response_status = True, status
        raw.response_content_type, raw.response_content_encoding = content_type, encoding
        raw.response_body = b"".join(chunks)
    return span


def raw_span(path: str, body: bytes, answer: tuple[int, str, str, list[bytes]] | None) -> span_pb2.Span:
    """A span as the shim sends it at full capture: what it observed, bodies attached unread."""
    return _raw(_meta(path), path, body, answer)


@pytest.mark.parametrize(("name", "path", "body", "answer", "changes"), CASES, ids=[c[0] for c in CASES])
def test_the_core_reads_an_exchange_into_the_span_the_shim_would_build(
    name: str,
    path: str,
    body: bytes,
    answer: tuple[int, str, str, list[bytes]] | None,
    changes: dict[str, object],
) -> None:
    meta = _meta(path, **changes)
    expected = _shim_built(meta, path, body, answer)
    span = _raw(meta, path, body, answer)
    assert raw_exchange_problems(span) == []
    read_raw_exchange(span)
    assert not span.HasField("raw_exchange")
    assert span == expected
    assert span.request.ListFields() or not body  # content really was read (not two empty spans)


def test_raw_exchanges_that_cannot_be_read_are_refused_with_the_field() -> None:
    meta = _meta("/v1/chat/completions")
    big = _raw(meta, "/v1/chat/completions", b"x" * (MAX_RAW_BODY_BYTES + 1), None)
    assert [field for field, _ in raw_exchange_problems(big)] == ["raw_exchange.request_body"]
    filled = _raw(meta, "/v1/chat/completions", CHAT, None)
    filled.request_model = "gpt-4o"
    filled.usage.input_tokens = 3
    assert [field for field, _ in raw_exchange_problems(filled)] == ["request_model", "usage"]
    negative = _raw(meta, "/v1/chat/completions", CHAT, None)
    negative.raw_exchange.max_body_bytes = -1
    assert [field for field, _ in raw_exchange_problems(negative)] == ["raw_exchange.max_body_bytes"]


async def test_the_core_stores_a_raw_exchange_read_and_rejects_a_bad_one(
    core: RunningCore, tmp_path: Path
) -> None:
    meta = _meta("/v1/chat/completions")
    good = _raw(meta, "/v1/chat/completions", CHAT, (200, "application/json", "", [CHAT_ANSWER]))
    bad = _raw(_meta("/v1/chat/completions"), "/v1/chat/completions", CHAT, None)
    bad.raw_exchange.response_body = b"y" * (MAX_RAW_BODY_BYTES + 1)
    reply = await core.ingest.IngestSpans(ingest_service_pb2.IngestSpansRequest(spans=[good, bad]))
    assert reply.accepted_spans == 1
    (rejection,) = reply.partial_success.rejections
    assert rejection.index == 1
    assert rejection.violations[0].field == "spans[1].raw_exchange.response_body"
    stored = (
        await core.query.GetSpan(
            query_service_pb2.GetSpanRequest(tenant="acme", trace_id=meta.trace_id, span_id=meta.span_id)
        )
    ).span
    assert stored.operation == "chat" and stored.request_model == "gpt-4o"
    assert stored.response_model == "gpt-4o-2024-08-06"
    assert [p.text for m in stored.request.messages for p in m.parts] == ["Be terse.", "Hi"]
    assert stored.response.choices[0].message.parts[0].text == "Hello."
    assert (stored.usage.input_tokens, stored.usage.output_tokens) == (9, 2)
    assert not stored.HasField("raw_exchange")


def test_an_unset_capture_limit_means_the_cores_own() -> None:
    span = raw_span("/v1/chat/completions", CHAT, (200, "application/json", "", [CHAT_ANSWER]))
    span.raw_exchange.max_body_bytes = 0  # an SDK that does not set it
    read_raw_exchange(span)
    assert [p.text for m in span.request.messages for p in m.parts] == ["Be terse.", "Hi"]
    assert not span.request.truncated and span.response.choices[0].message.parts[0].text == "Hello."


def test_a_decompression_bomb_is_read_only_so_far(tmp_path: Path) -> None:
    events = b"".join(b"data: " + json.dumps(_delta("x")).encode() + b"\n\n" for _ in range(20_000))
    bomb = gzip.compress(events * 40)  # about 90 MB of SSE events in about 0.3 MB
    assert len(bomb) < MAX_RAW_BODY_BYTES
    span = raw_span("/v1/chat/completions", STREAM_CHAT, (200, "text/event-stream", "gzip", [bomb]))
    started = time.process_time()
    read_raw_exchange(span)
    assert time.process_time() - started < 5  # reading it whole took minutes
    assert span.response.truncated
    assert span.response.choices[0].message.parts[0].text.startswith("xxx")


def test_reading_stops_where_the_shim_stopped_whatever_the_chunks() -> None:
    # Past the JSON buffer nothing more is read, so a corrupt tail after it is never reached,
    # whether the body comes in one piece (the core) or in many (the shim).
    body = gzip.compress(b'{"a": "' + b"y" * (9 << 20) + b'"}')[:-8] + b"corrupt!"
    request = parse_request("/v1/chat/completions", CHAT, "application/json", max_body_bytes=LIMIT)

    def read(chunks: list[bytes]) -> tuple[str, bool]:
        capture = ResponseCapture(
            request,
            status=200,
            content_type="application/json",
            content_encoding="gzip",
            max_body_bytes=LIMIT,
        )
        for chunk in chunks:
            capture.feed(chunk)
        answer = capture.finish()
        return answer.raw_body[:40], answer.truncated

    whole = read([body])
    assert whole == read([body[i : i + 1000] for i in range(0, len(body), 1000)])
    assert whole[1] and whole[0].startswith('{"a": "yyy')


def test_spans_for_analysis_are_copies_without_the_bodies_or_the_batch() -> None:
    from llmtrace.rpc.ingest import _parse_and_prepare, _prepare  # noqa: PLC0415 - the unit under test

    span = raw_span("/v1/chat/completions", CHAT, (200, "application/json", "", [CHAT_ANSWER]))
    other = span_pb2.Span()
    other.CopyFrom(span)
    other.span_id = bytes(8 - len(b"other")) + b"other"
    payload = ingest_service_pb2.IngestSpansRequest(spans=[span, other]).SerializeToString()
    analysed = _parse_and_prepare(payload, for_analysis=True).spans
    assert len(analysed) == 2
    for one in analysed:
        assert not one.HasField("raw_exchange") and one.request_model == "gpt-4o"
        assert one.request.body == "" and one.response.body == ""
        assert one.request.messages[1].parts[0].text == "Hi"
    request = ingest_service_pb2.IngestSpansRequest.FromString(payload)
    copies = _prepare(request.spans, for_analysis=True).spans
    request.spans[0].tenant = "someone-else"  # the batch's message, not the queued one
    assert copies[0].tenant == "acme"
