"""Logging setup: structlog to stderr, with the standard library's loggers routed through it.

stdout belongs to command results (`llmtrace sql --format csv`), so every log line, including
those of libraries that use `logging`, goes to stderr in the same format.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import orjson
import structlog
from structlog.tracebacks import ExceptionDictTransformer
from structlog.typing import Processor

# Marks the handler this module installs, so a second call replaces it instead of adding another.
_HANDLER_NAME = "llmtrace.logs"


def configure_logging(level: str, fmt: str, stream: TextIO | None = None) -> None:
    """Send structlog and stdlib logs at `level` and above to `stream` (default stderr).

    `fmt` is "text" (console renderer, colours only on a terminal) or "json" (one object per
    line, ISO-8601 UTC timestamps). Context bound with structlog.contextvars (request ids)
    appears in every line. Safe to call again: the latest call wins.
    """
    out = sys.stderr if stream is None else stream
    numeric_level = logging.getLevelNamesMapping().get(level.upper())
    if numeric_level is None:
        raise ValueError(f"unknown log level {level!r}")
    renderer = _renderer(fmt, out)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # JSON needs exceptions turned into data (without local variables, which may hold prompts
    # or keys); the console renderer prints them itself.
    exceptions: list[Processor] = (
        [structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False))]
        if fmt == "json"
        else []
    )
    structlog.configure(
        processors=[*shared, structlog.processors.StackInfoRenderer(), *exceptions, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        # Not cached, so a later call (tests, or the CLI after reading the config) also
        # reconfigures module-level loggers that have already logged.
        cache_logger_on_first_use=False,
    )
    _route_stdlib(numeric_level, out, shared, exceptions, renderer)


def _renderer(fmt: str, out: TextIO) -> Processor:
    if fmt == "json":
        # orjson: the shim writes an access log line per request, so rendering is hot.
        return structlog.processors.JSONRenderer(serializer=_orjson_dumps)
    if fmt == "text":
        isatty = getattr(out, "isatty", None)
        # Plain tracebacks whether or not `rich` happens to be installed: rich shows locals.
        return structlog.dev.ConsoleRenderer(
            colors=bool(isatty and isatty()),
            exception_formatter=structlog.dev.plain_traceback,
        )
    raise ValueError(f"unknown log format {fmt!r}")


def _orjson_dumps(obj: object, **_: object) -> str:
    # default=str: structlog event dicts may carry arbitrary objects (exceptions, paths).
    return orjson.dumps(obj, default=str).decode()


def _route_stdlib(
    level: int,
    out: TextIO,
    shared: list[Processor],
    exceptions: list[Processor],
    renderer: Processor,
) -> None:
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name, structlog.stdlib.ExtraAdder()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *exceptions, renderer],
    )
    handler = logging.StreamHandler(out)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
