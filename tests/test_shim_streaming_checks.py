"""Streaming output checks: PII and secrets found in streamed answers as chunks arrive.

Unit tests drive `shim.streaming_checks.StreamCheck` directly (split values found once, bounded
rescans, severity upgrades); end-to-end tests stream through the shim with the real openai SDK and
check the span and the early stop on a critical finding.
"""

from __future__ import annotations

import asyncio
import json
import time
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from openai.types.responses import ResponseFunctionCallArgumentsDeltaEvent
from prometheus_client import REGISTRY

from llmtrace.api.v1 import finding_pb2, span_pb2
from llmtrace.capture.exchange import MAX_FINDINGS
from llmtrace.config.schema import StreamingAnalysisSettings
from llmtrace.security.exchange import Exchange, ToolCall
from llmtrace.security.findings import Severity
from llmtrace.security.tiers import regex_exchange_findings
from shim import streaming_checks
from shim.streaming_checks import OVERLAP, StreamCheck
from tests.conftest import (
    OpenAIFactory,
    core_settings,
    running_core,
    running_shim,
    running_stack,
    shim_settings,
    wait_for_spans,
)
from tools.fake_upstream import FakeUpstreamConfig

KEY = "sk-test-0123456789abcdefghijklmnop"
CARD = "4539 1488 0343 6467"
TOKEN = "ghp_R7xk2Lm9Qp4Vz8Wn3Bt6Yc1Hd5Jf0Ga2Ks7E"
TAIL = " ".join(f"tailword{i}" for i in range(20))


def feed(check: StreamCheck, pieces: list[str], index: int = 0) -> list[Any]:
    found = []
    for piece in pieces:
        check.on_text(index, piece)
        found.extend(check.scan())
    return found


# --- units ---------------------------------------------------------------------------------------


def test_a_card_split_across_chunks_is_found_once() -> None:
    check = StreamCheck()
    found = feed(
        check, ["Your card ", "4539 ", "1488 ", "0343 ", "6467", " is on file. ", *["more text "] * 50]
    )
    assert [(f.type, f.detector, f.location) for f in found] == [
        ("pii_detected", "regex.pii.credit_card", "response.choices[0]")
    ]
    assert check.findings == found
    assert check.critical is None  # a card is high, not critical


def test_a_token_split_mid_word_is_found_once_and_is_critical() -> None:
    check = StreamCheck()
    found = feed(check, ["here: ", TOKEN[:10], TOKEN[10:25], TOKEN[25:], " done", " and more"])
    assert [f.type for f in found] == ["secret_leakage"]
    assert check.critical is not None
    assert check.critical.severity is Severity.CRITICAL
    assert TOKEN not in check.critical.excerpt  # excerpts are masked


def test_repeated_values_are_each_reported() -> None:
    check = StreamCheck()
    found = feed(check, [f"first {CARD} ", "then some words ", f"second {CARD} ", "end"])
    assert len(found) == 2


def test_choices_are_checked_separately() -> None:
    check = StreamCheck()
    check.on_text(0, f"card {CARD} ")
    check.on_text(1, "nothing here")
    check.on_text(1, f" but {TOKEN} now")
    found = check.scan()
    assert sorted(f.location for f in found) == ["response.choices[0]", "response.choices[1]"]


def scan_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The length of every text the streaming checks scan from now on, in order."""
    scanned: list[int] = []
    real = streaming_checks._find

    def spy(text: str, location: str, *, open_end: bool = False) -> Any:
        scanned.append(len(text))
        return real(text, location, open_end=open_end)

    monkeypatch.setattr(streaming_checks, "_find", spy)
    return scanned


def test_each_scan_reads_the_new_text_and_the_overlap_only(monkeypatch: pytest.MonkeyPatch) -> None:
    scanned = scan_sizes(monkeypatch)
    check = StreamCheck()
    piece = "lorem ipsum dolor sit amet "
    feed(check, [piece] * 2000)  # about 54 KB of answer
    assert max(scanned) <= OVERLAP + len(piece)
    assert len(scanned) == 2000  # one scan per chunk: the overlap alone is re-read only after a hit


def test_a_private_key_header_then_its_body_upgrades_to_critical() -> None:
    check = StreamCheck()
    feed(check, ["-----BEGIN RSA PRIVATE KEY-----\n"])
    assert check.critical is None
    feed(check, ["MIIEowIBAAKCAQEA7YdZ0kQ2vJ3x9Lm4Np8Qr5Ts1Uv6Wx2Yz3Ab4Cd5Ef6Gh7Ij8Kl\n"])
    assert check.critical is not None
    assert check.critical.detector.endswith("private_key")


def test_findings_kept_per_answer_are_capped() -> None:
    check = StreamCheck()
    found = feed(check, [f"card {CARD} and more words. " for _ in range(MAX_FINDINGS + 20)])
    assert len(found) == MAX_FINDINGS + 20  # each scan still reports what it found
    assert len(check.findings) == MAX_FINDINGS


# --- end to end ----------------------------------------------------------------------------------


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def test_streamed_answer_findings_go_on_the_span(tmp_path: Path, make_client: OpenAIFactory) -> None:
    config = FakeUpstreamConfig(chunk_delay_s=0.002)
    async with running_stack(
        tmp_path, config, streaming_analysis=StreamingAnalysisSettings(enabled=True)
    ) as stack:
        client = make_client(api_key=KEY, base_url=stack.shim.base_url + "/v1")
        prompt = f"Charge {CARD} please, then {TOKEN} and {TAIL}"
        stream = await client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": prompt}], stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == f"Echo: {prompt}"  # no early stop unless asked for
        [span] = await stack.spans()
        assert span.status.code == span_pb2.STATUS_CODE_OK
        ours = [f for f in span.findings if f.location == "response.choices[0]"]
        assert sorted(f.type for f in ours) == ["pii_detected", "secret_leakage"]
        assert span.security_score == 95


async def test_early_stop_on_a_critical_secret(tmp_path: Path, make_client: OpenAIFactory) -> None:
    before = metric("llmtrace_shim_stream_early_stops_total")
    config = FakeUpstreamConfig(chunk_delay_s=0.02)
    streaming = StreamingAnalysisSettings(enabled=True, early_stop_on_critical=True)
    async with running_stack(tmp_path, config, streaming_analysis=streaming) as stack:
        client = make_client(api_key=KEY, base_url=stack.shim.base_url + "/v1")
        prompt = f"The deploy token is {TOKEN} and {TAIL}"
        stream = await client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": prompt}], stream=True
        )
        received: list[str] = []
        with pytest.raises(openai.APIError) as caught:
            async for chunk in stream:
                if chunk.choices:
                    received.append(chunk.choices[0].delta.content or "")
        assert not isinstance(caught.value, openai.APIConnectionError)  # our error event, not a cut
        assert "secret_leakage" in caught.value.message
        text = "".join(received)
        assert TOKEN in text  # the chunk carrying it had already gone out
        assert "tailword" not in text  # nothing after it
        # The upstream request was cancelled: its stream never reached its end.
        request_id = stack.upstream.last_request.request_id
        await asyncio.sleep(0.2 + 0.02 * 25)
        assert request_id not in stack.upstream.completed_streams
        [span] = await stack.spans()
        assert span.status.code == span_pb2.STATUS_CODE_ERROR
        assert span.status.error_type == "stream_stopped"
        [secret] = [f for f in span.findings if f.location == "response.choices[0]"]
        assert secret.type == "secret_leakage"
        assert secret.severity == finding_pb2.SEVERITY_CRITICAL
        assert TOKEN not in secret.excerpt
        stopped = {kv.key: kv.value.string_value for kv in span.attributes}
        assert stopped["llmtrace.streaming_analysis.stopped"] == "secret_leakage"
    assert metric("llmtrace_shim_stream_early_stops_total") == before + 1


async def test_early_stop_ignores_non_critical_findings(tmp_path: Path, make_client: OpenAIFactory) -> None:
    config = FakeUpstreamConfig(chunk_delay_s=0.002)
    streaming = StreamingAnalysisSettings(enabled=True, early_stop_on_critical=True)
    async with running_stack(tmp_path, config, streaming_analysis=streaming) as stack:
        client = make_client(api_key=KEY, base_url=stack.shim.base_url + "/v1")
        prompt = f"card {CARD} then {TAIL}"
        started = time.monotonic()
        stream = await client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": prompt}], stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == f"Echo: {prompt}"
        assert time.monotonic() - started < 10
        assert stack.upstream.last_request.request_id in stack.upstream.completed_streams


def test_stop_events_in_each_api_shape() -> None:
    from llmtrace.capture.model import API_CHAT_COMPLETIONS, API_MESSAGES  # noqa: PLC0415
    from shim.proxy import _stop_event  # noqa: PLC0415

    openai_event = _stop_event(API_CHAT_COMPLETIONS, "stopped")
    assert openai_event.startswith(b"data: ") and openai_event.endswith(b"\n\n")
    error = json.loads(openai_event[len(b"data: ") :])["error"]
    assert error == {
        "message": "stopped",
        "type": "llmtrace_stream_stopped",
        "param": None,
        "code": "stream_stopped",
    }
    anthropic_event = _stop_event(API_MESSAGES, "stopped")
    event, data = anthropic_event.decode().strip().split("\n")
    assert event == "event: error"
    assert json.loads(data.removeprefix("data: ")) == {
        "type": "error",
        "error": {"type": "llmtrace_stream_stopped", "message": "stopped"},
    }


def _chunk(text: str) -> bytes:
    payload = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "model": "gpt-4o",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }
    return b"data: " + json.dumps(payload).encode()


@dataclass
class _Streamed:
    """What one streamed chat through the shim left: the bytes the client got, and the span."""

    received: str
    span: span_pb2.Span


@dataclass
class _Scripted:
    """A shim in front of a scripted SSE upstream, and the core it ships to."""

    base_url: str
    core: Any


@asynccontextmanager
async def _scripted_shim(
    tmp_path: Path,
    writes: list[bytes],
    streaming: StreamingAnalysisSettings,
    headers: dict[str, str] | None = None,
) -> AsyncIterator[_Scripted]:
    """A shim with `streaming` in front of an upstream that answers every POST with `writes` (one
    write each, 10 ms apart) as an SSE stream, with `headers` besides its content type."""

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", **(headers or {})})
        await response.prepare(request)
        for index, data in enumerate(writes):
            if index:
                await asyncio.sleep(0.01)
            await response.write(data)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/{path:.*}", stream)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        settings = shim_settings(tmp_path, f"http://127.0.0.1:{port}", streaming_analysis=streaming)
        async with (
            running_core(core_settings(tmp_path / "db.duckdb")) as core,
            running_shim(settings, core.bound.grpc) as shim,
        ):
            yield _Scripted(shim.base_url, core)
    finally:
        await runner.cleanup()


_CHAT_BODY = {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


async def _stream_through_shim(
    tmp_path: Path,
    writes: list[bytes],
    streaming: StreamingAnalysisSettings,
    path: str = "/v1/chat/completions",
    body: dict[str, Any] | None = None,
) -> _Streamed:
    """Stream `writes` (one write each, 10 ms apart) from a scripted SSE upstream, through a
    shim with `streaming`, to a client posting `body` to `path`; the client's bytes and the span
    the core stored."""
    async with _scripted_shim(tmp_path, writes, streaming) as scripted, aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {KEY}"}
        async with http.post(scripted.base_url + path, json=body or _CHAT_BODY, headers=headers) as reply:
            received = (await reply.read()).decode()
        [span] = await wait_for_spans(scripted.core)
    return _Streamed(received, span)


async def test_a_last_event_without_its_blank_line_is_scanned(tmp_path: Path) -> None:
    # The last event has no trailing newline: the capture parses it only when it finishes, and
    # its findings must still reach the span, its score and the counter.
    before = REGISTRY.get_sample_value("llmtrace_shim_stream_findings_total", {"category": "pii"}) or 0.0
    streamed = await _stream_through_shim(
        tmp_path,
        [
            _chunk("Your order is on its way. ") + b"\n\n",
            _chunk(f"The card on file is {CARD}."),  # no blank line, no [DONE]
        ],
        StreamingAnalysisSettings(enabled=True),
    )
    assert CARD in streamed.received
    ours = [f for f in streamed.span.findings if f.location == "response.choices[0]"]
    assert [f.type for f in ours] == ["pii_detected"]
    assert streamed.span.security_score >= 80
    after = REGISTRY.get_sample_value("llmtrace_shim_stream_findings_total", {"category": "pii"}) or 0.0
    assert after == before + 1


class _GoneClient:
    """A Sanic response whose client has gone away."""

    def __init__(self) -> None:
        self.sent: list[Any] = []

    async def send(self, data: Any = None, end_stream: bool | None = None) -> None:
        self.sent.append((data, end_stream))
        raise ConnectionError("client gone")


class _Upstream:
    def __init__(self) -> None:
        self.headers: dict[str, str] = {}

    def close(self) -> None:
        pass


async def test_stopping_a_stream_to_a_client_already_gone_does_not_raise() -> None:
    from llmtrace.capture.exchange import ExchangeMeta  # noqa: PLC0415
    from llmtrace.capture.model import API_CHAT_COMPLETIONS, ParsedRequest  # noqa: PLC0415
    from shim.proxy import Exchange  # noqa: PLC0415

    exchange = Exchange.__new__(Exchange)
    exchange.meta = ExchangeMeta(
        trace_id=b"",
        span_id=b"",
        parent_span_id=b"",
        tenant="default",
        agent="",
        session_id="",
        method="POST",
        path="/v1/chat/completions",
        query="",
        client_address="",
        user_agent="",
        server_address="",
        api_key_fingerprint="",
    )
    exchange._parsed = ParsedRequest(api=API_CHAT_COMPLETIONS)
    check = StreamCheck()
    feed(check, [f"token {TOKEN} here"])
    assert check.critical is not None
    upstream = _Upstream()
    client = _GoneClient()
    await exchange._stop_stream(upstream, client, check)  # type: ignore[arg-type]
    [(event, _)] = client.sent  # the stop event's send failed; nothing more was tried
    assert b"stream_stopped" in event
    assert exchange.meta.error_type == "stream_stopped"


async def test_a_stopped_compressed_stream_is_cut_not_ended(tmp_path: Path) -> None:
    # No event can be spliced into a gzip stream. Ended cleanly, it read as a whole answer: the
    # SDK raised nothing and the client used an answer cut short as if it were complete.
    compressor = zlib.compressobj(wbits=31)
    events = [_chunk("Here you go: ") + b"\n\n", _chunk(f"the token is {TOKEN}") + b"\n\n"]
    events += [_chunk(TAIL) + b"\n\n"] * 20 + [b"data: [DONE]\n\n"]
    writes = [compressor.compress(e) + compressor.flush(zlib.Z_SYNC_FLUSH) for e in events]
    writes[-1] += compressor.flush()
    streaming = StreamingAnalysisSettings(enabled=True, early_stop_on_critical=True)
    async with (
        _scripted_shim(tmp_path, writes, streaming, {"Content-Encoding": "gzip"}) as scripted,
        aiohttp.ClientSession() as http,
    ):
        headers = {"Authorization": f"Bearer {KEY}"}
        async with http.post(
            scripted.base_url + "/v1/chat/completions", json=_CHAT_BODY, headers=headers
        ) as reply:
            assert reply.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await reply.read()
        [span] = await wait_for_spans(scripted.core)
    assert span.status.error_type == "stream_stopped"


def _core_response_locations(response: Any) -> set[tuple[str, str, str]]:
    """(type, detector, location) of what the core's analysis finds in the answer's PII/secrets."""
    from llmtrace.capture.span import _set_response  # noqa: PLC0415
    from llmtrace.rpc.exchange_convert import exchange_from_parts  # noqa: PLC0415
    from llmtrace.security.tiers import regex_findings  # noqa: PLC0415

    out = span_pb2.LlmResponse()
    _set_response(out, response, "full", 1 << 20)
    exchange = exchange_from_parts(response=out)
    return {(f.type, f.detector, f.location) for item in exchange.texts for f in regex_findings(item)}


@pytest.mark.parametrize(
    ("parts", "where"),
    [
        ([("text", f"card {CARD}")], "response.choices[0]"),
        ([("reasoning", "let me think"), ("text", f"card {CARD}")], "response.choices[0].content[1]"),
        ([("reasoning", f"the card is {CARD}"), ("text", "done")], "response.choices[0].content[0]"),
        ([("reasoning", f"token {TOKEN}")], "response.choices[0]"),
        ([("text", "fine"), ("refusal", f"no, {TOKEN}")], "response.choices[0].content[1]"),
        ([("text", f"card {CARD}"), ("refusal", "no")], "response.choices[0].content[0]"),
    ],
)
def test_stream_findings_take_the_cores_locations(parts: list[tuple[str, str]], where: str) -> None:
    from llmtrace.capture import model  # noqa: PLC0415
    from shim.streaming_checks import core_locations  # noqa: PLC0415

    check = StreamCheck()
    for kind, text in parts:
        if kind == "reasoning":  # the stream readers hand reasoning to the checks apart
            check.on_reasoning(0, text)
            check.scan()
        else:
            feed(check, [text])
    message = model.Message("assistant", [model.Part(kind, text=text) for kind, text in parts])
    response = model.ParsedResponse(choices=[model.Choice(0, message)])
    located = core_locations(check.findings, response)
    assert {f.location for f in located} == {where}
    core = _core_response_locations(response)
    assert {(f.type, f.detector, f.location) for f in located} <= core


async def test_an_early_stop_never_lands_inside_a_half_sent_event(tmp_path: Path) -> None:
    # The upstream sends the event with the secret together with the start of the next one: the
    # client must see whole events, then the stop event, all of them valid JSON.
    following = _chunk(TAIL) + b"\n\n"
    streamed = await _stream_through_shim(
        tmp_path,
        [
            _chunk("Here you go: ") + b"\n\n",
            _chunk(f"the token is {TOKEN}") + b"\n\n" + following[:20],
            following[20:] + b"data: [DONE]\n\n",
        ],
        StreamingAnalysisSettings(enabled=True, early_stop_on_critical=True),
    )
    events = [e for e in streamed.received.split("\n\n") if e.strip()]
    payloads = [json.loads(e.removeprefix("data: ")) for e in events]  # every event is whole JSON
    assert "error" in payloads[-1]
    assert TAIL not in streamed.received


@pytest.mark.parametrize(
    ("path", "body", "writes", "closing"),
    [
        (
            "/v1/chat/completions",
            None,
            [_chunk(f"the token is {TOKEN}") + b"\n\ndata: [DONE]\n\n"],
            "[DONE]",
        ),
        (
            "/v1/messages",
            {
                "model": "claude-x",
                "stream": True,
                "max_tokens": 10,
                "messages": [{"role": "user", "content": "hi"}],
            },
            [
                b'event: message_start\ndata: {"type": "message_start", "message": {"id": "msg_1", '
                b'"type": "message", "role": "assistant", "model": "claude-x", "content": []}}\n\n'
                b'event: content_block_start\ndata: {"type": "content_block_start", "index": 0, '
                b'"content_block": {"type": "text", "text": ""}}\n\n'
                b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0, '
                b'"delta": {"type": "text_delta", "text": "the token is ' + TOKEN.encode() + b'"}}\n\n'
                b'event: message_stop\ndata: {"type": "message_stop"}\n\n'
            ],
            "message_stop",
        ),
        # Lines that end in a bare CR, which SSE allows.
        (
            "/v1/chat/completions",
            None,
            [_chunk(f"the token is {TOKEN}") + b"\r\rdata: [DONE]\r\r"],
            "[DONE]",
        ),
        # A Responses stream without `event:` lines: its events are named by their data's type.
        (
            "/v1/responses",
            {"model": "gpt-4o", "stream": True, "input": "hi"},
            [
                b'data: {"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0, '
                b'"content_index": 0, "delta": "the token is ' + TOKEN.encode() + b'"}\n\n'
                b'data: {"type": "response.completed", "response": {"id": "resp_1", "object": "response", '
                b'"model": "gpt-4o", "status": "completed", "output": []}}\n\n'
            ],
            "response.completed",
        ),
    ],
)
async def test_an_early_stop_comes_before_the_closing_event_that_arrived_with_it(
    tmp_path: Path, path: str, body: dict[str, Any] | None, writes: list[bytes], closing: str
) -> None:
    # A short answer from a fast upstream arrives in one read, its closing event included: the
    # stop event must come before it, or SDKs, which stop reading at the end, never see it.
    streamed = await _stream_through_shim(
        tmp_path, writes, StreamingAnalysisSettings(enabled=True, early_stop_on_critical=True), path, body
    )
    assert "llmtrace_stream_stopped" in streamed.received
    assert closing not in streamed.received
    assert streamed.span.status.error_type == "stream_stopped"


async def test_an_early_stop_after_an_event_whose_cr_line_end_straddles_two_reads_sends_whole_events(
    tmp_path: Path,
) -> None:
    # The event carrying the token ends in a bare CR, its blank line comes in the next read with
    # the start of the next event: that start must not go out before the stop event.
    second = _chunk("after")
    streamed = await _stream_through_shim(
        tmp_path,
        [_chunk(f"the token is {TOKEN}") + b"\r", b"\r" + second[:30], second[30:] + b"\r\r"],
        StreamingAnalysisSettings(enabled=True, early_stop_on_critical=True),
    )
    events = [e for e in streamed.received.replace("\r\r", "\n\n").split("\n\n") if e.strip()]
    payloads = [json.loads(e.removeprefix("data: ")) for e in events]  # every event is whole JSON
    assert "error" in payloads[-1]
    assert "after" not in streamed.received


async def test_a_stopped_stream_records_only_what_the_client_was_sent(tmp_path: Path) -> None:
    # The chunk with the token also holds a whole data line without its blank line: held back,
    # never sent, and so not part of the answer the span records.
    streamed = await _stream_through_shim(
        tmp_path,
        [_chunk("hi ") + b"\n\n", _chunk(f"token {TOKEN}") + b"\n\n" + _chunk(" UNSENT") + b"\n", b"\n"],
        StreamingAnalysisSettings(enabled=True, early_stop_on_critical=True),
    )
    assert "UNSENT" not in streamed.received
    assert streamed.span.status.error_type == "stream_stopped"
    [choice] = streamed.span.response.choices
    assert "UNSENT" not in "".join(part.text for part in choice.message.parts)


def _responses_completed(text: str) -> bytes:
    response = {
        "id": "resp_1",
        "object": "response",
        "model": "gpt-4o",
        "status": "completed",
        "output": [
            {
                "type": "message",
                "id": "msg_1",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ],
    }
    payload = {"type": "response.completed", "response": response}
    return b"event: response.completed\ndata: " + json.dumps(payload).encode() + b"\n\n"


@pytest.mark.parametrize(
    ("path", "body", "writes"),
    [
        # A Responses stream with no deltas: the answer comes whole, in the last event.
        (
            "/v1/responses",
            {"model": "gpt-4o", "stream": True, "input": "hi"},
            [
                b'event: response.created\ndata: {"type": "response.created", "response": '
                b'{"id": "resp_1", "object": "response", "model": "gpt-4o", "status": "in_progress", '
                b'"output": []}}\n\n',
                _responses_completed(f"the token is {TOKEN}"),
            ],
        ),
        # A chat stream whose delta content is a list of parts.
        (
            "/v1/chat/completions",
            None,
            [
                b"data: "
                + json.dumps(
                    {
                        "id": "c1",
                        "object": "chat.completion.chunk",
                        "model": "gpt-4o",
                        "choices": [
                            {
                                "index": 0,
                                "delta": {"content": [{"type": "text", "text": f"the token is {TOKEN}"}]},
                                "finish_reason": None,
                            }
                        ],
                    }
                ).encode()
                + b"\n\n",
                b"data: [DONE]\n\n",
            ],
        ),
    ],
    ids=["responses-whole", "chat-content-parts"],
)
async def test_answers_not_streamed_as_text_deltas_are_checked_too(
    tmp_path: Path, path: str, body: dict[str, Any] | None, writes: list[bytes]
) -> None:
    streamed = await _stream_through_shim(
        tmp_path, writes, StreamingAnalysisSettings(enabled=True, early_stop_on_critical=True), path, body
    )
    assert streamed.span.status.error_type == "stream_stopped"
    assert "secret_leakage" in {f.type for f in streamed.span.findings}


# --- tool-call arguments -------------------------------------------------------------------------

CALL_ARGUMENTS = "response.choices[0].tool_calls[0].arguments"


def feed_arguments(check: StreamCheck, pieces: list[str], call: int = 0, index: int = 0) -> list[Any]:
    found = []
    for piece in pieces:
        check.on_arguments(index, call, piece)
        found.extend(check.scan())
    return found


def test_a_token_split_across_two_argument_deltas_is_found_once_and_is_critical() -> None:
    check = StreamCheck()
    found = feed_arguments(check, ['{"body": "token ', TOKEN[:14], TOKEN[14:] + '", ', '"to": "a@b.c"}'])
    assert [(f.type, f.location) for f in found] == [("secret_leakage", CALL_ARGUMENTS)]
    assert check.critical is not None and check.critical.location == CALL_ARGUMENTS


def test_a_token_written_with_json_escapes_in_argument_deltas_is_critical() -> None:
    # `\u0070` is `p` to the tool that reads the arguments; split across deltas, escape and all.
    escaped = TOKEN.replace("p", "\\u0070", 1)
    check = StreamCheck()
    found = feed_arguments(check, ['{"body": "key ' + escaped[:5], escaped[5:] + '"}'])
    assert [(f.type, f.location) for f in found] == [("secret_leakage", CALL_ARGUMENTS)]
    assert check.critical is not None


def test_a_token_written_with_json_escapes_in_a_tool_call_is_found() -> None:
    escaped = TOKEN.replace("p", "\\u0070", 1)
    call = ToolCall("send", json.dumps({"body": "x"}).replace('"x"', f'"key {escaped}"'), CALL_ARGUMENTS)
    findings = regex_exchange_findings(Exchange(tool_calls=(call,)))
    assert "secret_leakage" in {f.type for f in findings}


def test_arguments_are_never_joined_to_the_text_or_to_other_calls() -> None:
    check = StreamCheck()
    check.on_text(0, f"here: {TOKEN[:14]}")
    check.on_arguments(0, 0, TOKEN[14:])
    check.on_arguments(0, 5, TOKEN[:14])  # the stream's key of a second call
    check.on_arguments(1, 0, TOKEN[14:])  # the first call of another choice
    assert check.scan() == []
    check.on_arguments(0, 5, TOKEN[14:])
    assert [f.location for f in check.scan()] == ["response.choices[0].tool_calls[1].arguments"]


def test_argument_findings_take_the_cores_locations() -> None:
    from llmtrace.capture import model  # noqa: PLC0415
    from shim.streaming_checks import core_locations  # noqa: PLC0415

    check = StreamCheck()
    feed_arguments(check, [f'{{"card": "{CARD}"}}'], call=3)  # the stream's key: an Anthropic block
    assert [f.location for f in check.findings] == [CALL_ARGUMENTS]
    # In the finished answer a call that came whole in the final event precedes it.
    calls = [
        model.ToolCall(name="lookup", arguments='{"q": "x"}'),
        model.ToolCall(arguments=f'{{"card": "{CARD}"}}'),
    ]
    response = model.ParsedResponse(choices=[model.Choice(0, model.Message("assistant", tool_calls=calls))])
    [located] = core_locations(check.findings, response)
    assert located.location == "response.choices[0].tool_calls[1].arguments"


def _chat_tool_chunk(arguments: str, *, call: int = 0, name: str = "") -> bytes:
    item: dict[str, Any] = {"index": call, "function": {"arguments": arguments}}
    if name:  # the first delta of a call names it
        item.update(id=f"call_{call}", type="function")
        item["function"]["name"] = name
    payload = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o",
        "choices": [{"index": 0, "delta": {"tool_calls": [item]}, "finish_reason": None}],
    }
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _chat_finish() -> bytes:
    payload = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}],
    }
    return b"data: " + json.dumps(payload).encode() + b"\n\ndata: [DONE]\n\n"


def _stream_findings(category: str) -> float:
    return REGISTRY.get_sample_value("llmtrace_shim_stream_findings_total", {"category": category}) or 0.0


def _assert_stopped_by_the_arguments(span: span_pb2.Span) -> None:
    assert span.status.code == span_pb2.STATUS_CODE_ERROR
    assert span.status.error_type == "stream_stopped"
    [secret] = [f for f in span.findings if f.location == CALL_ARGUMENTS]
    assert secret.type == "secret_leakage"
    assert secret.severity == finding_pb2.SEVERITY_CRITICAL
    assert TOKEN not in secret.excerpt
    stopped = {kv.key: kv.value.string_value for kv in span.attributes}
    assert stopped["llmtrace.streaming_analysis.stopped"] == "secret_leakage"


EARLY_STOP = StreamingAnalysisSettings(enabled=True, early_stop_on_critical=True)


async def test_a_secret_in_chat_tool_call_arguments_stops_the_stream(
    tmp_path: Path, make_client: OpenAIFactory
) -> None:
    from shim.enforcement import category_of  # noqa: PLC0415

    category = category_of("secret_leakage")
    before = _stream_findings(category)
    writes = [
        _chat_tool_chunk('{"to": "ops@example.com", ', name="send_email"),
        _chat_tool_chunk(f'"body": "the token is {TOKEN}", '),
        _chat_tool_chunk(f'"footer": "{TAIL}"}}'),
        _chat_finish(),
    ]
    async with _scripted_shim(tmp_path, writes, EARLY_STOP) as scripted:
        client = make_client(api_key=KEY, base_url=scripted.base_url + "/v1")
        stream = await client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "mail it"}], stream=True
        )
        received: list[str] = []
        with pytest.raises(openai.APIError) as caught:
            async for chunk in stream:
                for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                    received.append(call.function.arguments or "" if call.function else "")
        assert not isinstance(caught.value, openai.APIConnectionError)  # our error event, not a cut
        assert "secret_leakage" in caught.value.message
        assert CALL_ARGUMENTS in caught.value.message
        arguments = "".join(received)
        assert TOKEN in arguments  # the chunk carrying it had already gone out
        assert "tailword" not in arguments  # nothing after it
        [span] = await wait_for_spans(scripted.core)
    _assert_stopped_by_the_arguments(span)
    assert _stream_findings(category) == before + 1


async def test_a_token_split_across_two_chat_argument_deltas_stops_the_stream(tmp_path: Path) -> None:
    streamed = await _stream_through_shim(
        tmp_path,
        [
            _chat_tool_chunk('{"body": "token ', name="send_email"),
            _chat_tool_chunk(TOKEN[:15]),  # neither half is a token on its own
            _chat_tool_chunk(TOKEN[15:] + '", '),
            _chat_tool_chunk(f'"footer": "{TAIL}"}}'),
            _chat_finish(),
        ],
        EARLY_STOP,
    )
    events = [e for e in streamed.received.split("\n\n") if e.strip()]
    assert events[-1].startswith('data: {"error"')
    assert CALL_ARGUMENTS in json.loads(events[-1].removeprefix("data: "))["error"]["message"]
    assert TAIL not in streamed.received
    _assert_stopped_by_the_arguments(streamed.span)


def _named(kind: str, payload: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: ".encode() + json.dumps({"type": kind, **payload}).encode() + b"\n\n"


async def test_a_secret_in_anthropic_input_json_deltas_stops_the_stream(tmp_path: Path) -> None:
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x", "content": []}
    delta = "content_block_delta"
    streamed = await _stream_through_shim(
        tmp_path,
        [
            _named(
                "message_start", {"message": {**message, "usage": {"input_tokens": 5, "output_tokens": 1}}}
            )
            + _named("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
            + _named(delta, {"index": 0, "delta": {"type": "text_delta", "text": "Sending it."}})
            + _named("content_block_stop", {"index": 0}),
            _named(
                "content_block_start",
                {"index": 1, "content_block": {"type": "tool_use", "id": "t1", "name": "send", "input": {}}},
            ),
            _named(delta, {"index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"body": "'}}),
            _named(delta, {"index": 1, "delta": {"type": "input_json_delta", "partial_json": TOKEN[:20]}}),
            _named(delta, {"index": 1, "delta": {"type": "input_json_delta", "partial_json": TOKEN[20:]}}),
            _named(delta, {"index": 1, "delta": {"type": "input_json_delta", "partial_json": f' {TAIL}"}}'}}),
            _named("content_block_stop", {"index": 1})
            + _named("message_delta", {"delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}})
            + _named("message_stop", {}),
        ],
        EARLY_STOP,
        path="/v1/messages",
        body={
            "model": "claude-x",
            "max_tokens": 64,
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        },
    )
    events = [e for e in streamed.received.split("\n\n") if e.strip()]
    kind, data = events[-1].split("\n")
    assert kind == "event: error"
    error = json.loads(data.removeprefix("data: "))["error"]
    assert error["type"] == "llmtrace_stream_stopped"
    assert CALL_ARGUMENTS in error["message"]  # the text block before it does not shift the call
    assert TAIL not in streamed.received
    _assert_stopped_by_the_arguments(streamed.span)


async def test_a_secret_in_responses_function_call_arguments_stops_the_stream(
    tmp_path: Path, make_client: OpenAIFactory
) -> None:
    response = {
        "id": "resp_1",
        "object": "response",
        "model": "gpt-4o",
        "status": "in_progress",
        "output": [],
    }
    call = {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "send", "arguments": ""}
    arguments = "response.function_call_arguments.delta"
    writes = [
        _named("response.created", {"sequence_number": 0, "response": response})
        + _named("response.output_item.added", {"sequence_number": 1, "output_index": 0, "item": call}),
        _named(
            arguments, {"sequence_number": 2, "output_index": 0, "item_id": "fc_1", "delta": '{"body": "'}
        ),
        _named(arguments, {"sequence_number": 3, "output_index": 0, "item_id": "fc_1", "delta": TOKEN}),
        _named(
            arguments, {"sequence_number": 4, "output_index": 0, "item_id": "fc_1", "delta": f' {TAIL}"}}'}
        ),
        _named("response.completed", {"sequence_number": 5, "response": {**response, "status": "completed"}}),
    ]
    async with _scripted_shim(tmp_path, writes, EARLY_STOP) as scripted:
        client = make_client(api_key=KEY, base_url=scripted.base_url + "/v1")
        stream = await client.responses.create(model="gpt-4o", input="mail it", stream=True)
        received: list[str] = []
        with pytest.raises(openai.APIError) as caught:
            async for event in stream:
                if isinstance(event, ResponseFunctionCallArgumentsDeltaEvent):
                    received.append(event.delta)
        assert not isinstance(caught.value, openai.APIConnectionError)
        assert "secret_leakage" in caught.value.message
        assert TOKEN in "".join(received)
        assert "tailword" not in "".join(received)
        [span] = await wait_for_spans(scripted.core)
    _assert_stopped_by_the_arguments(span)


async def test_a_benign_tool_call_is_not_flagged_and_its_neighbours_are_checked_alone(
    tmp_path: Path, make_client: OpenAIFactory
) -> None:
    # A weather call, then a call carrying a card number (high, not critical: no stop).
    before = _stream_findings("pii")
    writes = [
        _chat_tool_chunk('{"location": "Paris", ', name="get_weather"),
        _chat_tool_chunk('"unit": "celsius"}'),
        _chat_tool_chunk('{"card": "', call=1, name="charge"),
        _chat_tool_chunk(f'{CARD}", "note": "{TAIL}"}}', call=1),
        _chat_finish(),
    ]
    async with _scripted_shim(tmp_path, writes, EARLY_STOP) as scripted:
        client = make_client(api_key=KEY, base_url=scripted.base_url + "/v1")
        stream = await client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "weather?"}], stream=True
        )
        finish = [c.choices[0].finish_reason async for c in stream if c.choices]
        assert finish[-1] == "tool_calls"  # the whole answer arrived
        [span] = await wait_for_spans(scripted.core)
    assert span.status.code == span_pb2.STATUS_CODE_OK
    assert [f for f in span.findings if ".tool_calls[0]" in f.location] == []
    [card] = [f for f in span.findings if f.location == "response.choices[0].tool_calls[1].arguments"]
    assert card.type == "pii_detected"
    assert _stream_findings("pii") == before + 1  # found by the streaming check, not only later


# --- reasoning ------------------------------------------------------------------------------------


def test_reasoning_and_answer_findings_take_their_own_parts() -> None:
    from llmtrace.capture import model  # noqa: PLC0415
    from shim.streaming_checks import core_locations  # noqa: PLC0415

    other_card = "4111 1111 1111 1111"
    check = StreamCheck()
    check.on_reasoning(0, f"the card on file is {CARD}")
    check.on_text(0, f"use {other_card}")
    check.scan()
    parts = [
        model.Part("reasoning", text=f"the card on file is {CARD}"),
        model.Part("text", text=f"use {other_card}"),
    ]
    response = model.ParsedResponse(choices=[model.Choice(0, model.Message("assistant", parts))])
    located = core_locations(check.findings, response)
    assert sorted(f.location for f in located) == [
        "response.choices[0].content[0]",
        "response.choices[0].content[1]",
    ]
    assert {(f.type, f.detector, f.location) for f in located} <= _core_response_locations(response)
    # A choice the finished answer lacks keeps the plain choice location.
    assert [f.location for f in core_locations(check.findings[:1], model.ParsedResponse())] == [
        "response.choices[0]"
    ]


def test_reasoning_is_checked_apart_from_the_answer() -> None:
    check = StreamCheck()
    check.on_reasoning(0, f"the user's token is {TOKEN[:20]}")
    assert [f.detector for f in check.scan()] == []
    check.on_reasoning(0, TOKEN[20:] + ", keep it secret")
    assert [f.severity for f in check.scan()] == [Severity.CRITICAL]  # split across two pieces
    # Reasoning's end and the answer's start never make one value.
    check.on_reasoning(0, "and the other one is " + TOKEN[:20])
    check.on_text(0, TOKEN[20:] + " is what I will not say")
    assert check.scan() == []


def _reasoning_chunk(reasoning: str) -> bytes:
    payload = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "deepseek-reasoner",
        "choices": [{"index": 0, "delta": {"reasoning_content": reasoning}, "finish_reason": None}],
    }
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


async def test_a_secret_in_streamed_reasoning_stops_the_stream(tmp_path: Path) -> None:
    streamed = await _stream_through_shim(
        tmp_path,
        [
            _reasoning_chunk("The config holds "),
            _reasoning_chunk(TOKEN[:18]),
            _reasoning_chunk(TOKEN[18:] + ", which I should not repeat."),
            _reasoning_chunk(TAIL),
            _chat_finish(),
        ],
        EARLY_STOP,
    )
    events = [e for e in streamed.received.split("\n\n") if e.strip()]
    assert events[-1].startswith('data: {"error"')
    assert "secret_leakage" in json.loads(events[-1].removeprefix("data: "))["error"]["message"]
    assert TAIL not in streamed.received
    span = streamed.span
    assert span.status.error_type == "stream_stopped"
    [secret] = [f for f in span.findings if f.type == "secret_leakage"]
    assert secret.severity == finding_pb2.SEVERITY_CRITICAL
    assert secret.location == "response.choices[0]"  # the choice's one part: its reasoning
    assert TOKEN not in secret.excerpt


@pytest.mark.parametrize("api", ["responses", "anthropic"])
def test_every_reader_hands_reasoning_to_the_checks(api: str) -> None:
    from llmtrace.capture.request_parse import parse_request  # noqa: PLC0415
    from llmtrace.capture.response_parse import ResponseCapture  # noqa: PLC0415

    if api == "responses":
        path = "/v1/responses"
        events = [
            _named(
                "response.reasoning_summary_text.delta", {"output_index": 0, "summary_index": 0, "delta": "a"}
            ),
            _named("response.reasoning_text.delta", {"output_index": 0, "content_index": 0, "delta": "b"}),
            _named("response.output_text.delta", {"output_index": 1, "content_index": 0, "delta": "answer"}),
        ]
    else:
        path = "/v1/messages"
        events = [
            _named(
                "content_block_start", {"index": 0, "content_block": {"type": "thinking", "thinking": "a"}}
            ),
            _named("content_block_delta", {"index": 0, "delta": {"type": "thinking_delta", "thinking": "b"}}),
            _named("content_block_start", {"index": 1, "content_block": {"type": "text", "text": ""}}),
            _named("content_block_delta", {"index": 1, "delta": {"type": "text_delta", "text": "answer"}}),
        ]
    request = parse_request(
        path, b'{"model": "m", "stream": true}', "application/json", max_body_bytes=1 << 20
    )
    capture = ResponseCapture(
        request, status=200, content_type="text/event-stream", content_encoding="", max_body_bytes=1 << 20
    )
    heard: list[tuple[str, str]] = []
    assert capture.listen(
        lambda _, piece: heard.append(("text", piece)),
        None,
        lambda _, piece: heard.append(("reasoning", piece)),
    )
    for event in events:
        capture.feed(event)
    assert heard == [("reasoning", "a"), ("reasoning", "b"), ("text", "answer")]


@pytest.mark.parametrize("checks", [True, False])
async def test_with_streaming_checks_the_upstream_is_asked_only_for_codings_they_read(
    tmp_path: Path, checks: bool
) -> None:
    # An answer in zstd would pass the checks unread; without checks the header goes as it came.
    async with (
        running_stack(tmp_path, streaming_analysis=StreamingAnalysisSettings(enabled=checks)) as stack,
        aiohttp.ClientSession() as http,
    ):
        for accept in ("gzip, zstd;q=0.9, br", "zstd"):
            headers = {"Authorization": f"Bearer {KEY}", "Accept-Encoding": accept}
            async with http.post(
                stack.shim.base_url + "/v1/chat/completions", json=_CHAT_BODY, headers=headers
            ):
                pass
        sent = [request.headers.get("accept-encoding") for request in stack.upstream.requests]
    if checks:
        assert all(value is None or "zstd" not in value for value in sent)
        assert sent[0] is not None and sent[0].startswith("gzip") and sent[1] is None
    else:
        assert sent == ["gzip, zstd;q=0.9, br", "zstd"]
