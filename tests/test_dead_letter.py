"""The dead-letter file: one parseable JSON line per rejected span, nothing more, owner-only."""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from llmtrace.api.v1 import span_pb2
from shim.dead_letter import DeadLetter, DeadLetterFile
from tests.factories import make_span


def letter(span: span_pb2.Span, violations: list[tuple[str, str]]) -> DeadLetter:
    return DeadLetter(
        tenant=span.tenant,
        trace_id=span.trace_id,
        span_id=span.span_id,
        violations=violations,
        span_bytes=span.SerializeToString(),
    )


def read_lines(path: Path) -> list[dict[str, Any]]:
    lines = path.read_bytes().splitlines()
    return [orjson.loads(line) for line in lines]


def test_lines_parse_back_with_exactly_the_specified_fields(tmp_path: Path) -> None:
    spans = [make_span(tenant="acme"), make_span(tenant="globex")]
    path = tmp_path / "dead.jsonl"
    dead = DeadLetterFile(path)
    before = datetime.now(UTC)
    dead.append(
        [
            letter(spans[0], [("model", "must not be empty"), ("start_time", "in the future")]),
            letter(spans[1], []),
        ]
    )
    lines = read_lines(path)
    assert dead.count == 2
    assert len(lines) == 2
    for line, span in zip(lines, spans, strict=True):
        assert set(line) == {"time", "tenant", "trace_id", "span_id", "violations", "span"}
        assert line["time"].endswith("Z")
        written = datetime.fromisoformat(line["time"])
        assert written.tzinfo is not None
        assert before - timedelta(seconds=1) <= written <= datetime.now(UTC)
        assert line["tenant"] == span.tenant
        assert bytes.fromhex(line["trace_id"]) == span.trace_id
        assert bytes.fromhex(line["span_id"]) == span.span_id
        # The span can be recovered intact for repair and resending.
        assert span_pb2.Span.FromString(base64.b64decode(line["span"])) == span
    assert lines[0]["violations"] == [
        {"field": "model", "description": "must not be empty"},
        {"field": "start_time", "description": "in the future"},
    ]
    assert lines[1]["violations"] == []


def test_appends_accumulate_across_instances(tmp_path: Path) -> None:
    path = tmp_path / "dead.jsonl"
    DeadLetterFile(path).append([letter(make_span(), [("a", "b")])])
    second = DeadLetterFile(path)
    second.append([letter(make_span(), [("c", "d")]), letter(make_span(), [("e", "f")])])
    second.append([])
    assert second.count == 2
    assert [line["violations"][0]["field"] for line in read_lines(path)] == ["a", "c", "e"]


def test_concurrent_appends_keep_lines_whole(tmp_path: Path) -> None:
    path = tmp_path / "dead.jsonl"
    dead = DeadLetterFile(path)
    # Large spans make interleaved partial writes visible if they happened.
    span = make_span(prompt="x" * 50_000)

    def write() -> None:
        for _ in range(20):
            dead.append([letter(span, [("prompt", "too long")])] * 3)

    threads = [threading.Thread(target=write) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = read_lines(path)
    assert dead.count == len(lines) == 8 * 20 * 3
    assert all(span_pb2.Span.FromString(base64.b64decode(line["span"])) == span for line in lines)


@pytest.fixture(params=[0o022, 0o277], ids=["umask022", "umask277"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    mask: int = request.param
    previous = os.umask(mask)
    yield mask
    os.umask(previous)


def test_file_and_new_directories_are_owner_only(tmp_path: Path, umask: int) -> None:
    path = tmp_path / "state" / "shim" / "dead.jsonl"
    dead = DeadLetterFile(path)
    dead.append([letter(make_span(), [])])
    dead.append([letter(make_span(), [])])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o700
    assert len(read_lines(path)) == 2


_CUT_SHORT = """
import resource, signal, sys
from pathlib import Path
from shim.dead_letter import DeadLetterFile
from tests.factories import make_span
from tests.test_dead_letter import letter

path = Path(sys.argv[1])
dead = DeadLetterFile(path)
dead.append([letter(make_span(tenant="acme"), [("f", "first")])])
# A disk that fills up in the middle of the next record: the write stops 100 bytes in.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (path.stat().st_size + 100, hard))
try:
    dead.append([letter(make_span(tenant="acme"), [("f", "second")])])
except OSError:
    print("refused")
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
dead.append([letter(make_span(tenant="acme"), [("f", "third")])])
"""


def test_a_write_cut_short_leaves_no_fragment_for_the_next_record_to_stick_to(tmp_path: Path) -> None:
    path = tmp_path / "dead.jsonl"
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", _CUT_SHORT, str(path)],
        check=False,
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "refused"
    lines = read_lines(path)  # every line parses
    assert [line["violations"][0]["description"] for line in lines] == ["first", "third"]
