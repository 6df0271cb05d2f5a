"""configure_logging: stderr only, JSON or text, context variables, stdlib routed through."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from llmtrace.logs import configure_logging


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    root.handlers[:] = handlers
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_context_level_and_iso_timestamp() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    structlog.contextvars.bind_contextvars(request_id="req-1")
    log = structlog.get_logger("test")
    log.info("span ingested", spans=3)
    log.debug("not shown")
    [entry] = lines(stream)
    assert entry["event"] == "span ingested"
    assert entry["spans"] == 3
    assert entry["request_id"] == "req-1"
    assert entry["level"] == "info"
    assert isinstance(entry["timestamp"], str) and entry["timestamp"].endswith("Z")


def test_stdlib_logging_goes_through_the_same_renderer() -> None:
    stream = io.StringIO()
    configure_logging("warning", "json", stream)
    structlog.contextvars.bind_contextvars(request_id="req-2")
    logging.getLogger("some.library").warning("disk %s", "slow", extra={"device": "sda"})
    logging.getLogger("some.library").info("below the level")
    [entry] = lines(stream)
    assert entry == entry | {
        "event": "disk slow",
        "logger": "some.library",
        "device": "sda",
        "request_id": "req-2",
    }


def test_json_exceptions_are_structured_without_locals() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    secret = "sk-do-not-log"
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        structlog.get_logger().exception("failed")
    assert secret not in stream.getvalue()
    [entry] = lines(stream)
    assert isinstance(entry["exception"], list)


def test_text_has_no_colours_off_a_terminal() -> None:
    stream = io.StringIO()
    configure_logging("debug", "text", stream)
    structlog.get_logger().debug("hello", key="value")
    out = stream.getvalue()
    assert "hello" in out and "key=value" in out
    assert "\x1b[" not in out


def test_calling_twice_replaces_instead_of_duplicating() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("info", "json", first)
    configure_logging("info", "json", second)
    logging.getLogger("lib").warning("once")
    structlog.get_logger().warning("also once")
    assert first.getvalue() == ""
    assert [e["event"] for e in lines(second)] == ["once", "also once"]


def test_defaults_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    structlog.get_logger().info("to stderr")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "to stderr" in captured.err


@pytest.mark.parametrize(("level", "fmt"), [("loud", "json"), ("info", "xml")])
def test_rejects_unknown_level_or_format(level: str, fmt: str) -> None:
    with pytest.raises(ValueError, match="unknown log"):
        configure_logging(level, fmt, io.StringIO())
