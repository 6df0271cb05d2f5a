"""Streaming output checks: PII and secrets found in streamed answers as chunks arrive.

Unit tests drive `shim.streaming_checks.StreamCheck` directly (split values found once, bounded
rescans, severity upgrades); end-to-end tests stream through the shim with the real openai SDK and
check the span and the early stop on a critical finding.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import openai
import pytest
from prometheus_client import REGISTRY

from llmtrace.api.v1 import finding_pb2, span_pb2
from llmtrace.config.schema import StreamingAnalysisSettings
from llmtrace.security.findings import Severity
from shim import streaming_checks
from shim.streaming_checks import OVERLAP, StreamCheck
from tests.conftest import OpenAIFactory, running_stack
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


def test_each_scan_reads_the_new_text_and_the_overlap_only(monkeypatch: pytest.MonkeyPatch) -> None:
    scanned: list[int] = []
    real = streaming_checks._find

    def spy(text: str, location: str) -> Any:
        scanned.append(len(text))
        return real(text, location)

    monkeypatch.setattr(streaming_checks, "_find", spy)
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
    from shim.capture.model import API_CHAT_COMPLETIONS, API_MESSAGES  # noqa: PLC0415
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
