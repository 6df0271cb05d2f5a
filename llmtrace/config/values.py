"""Turning raw values (YAML scalars, environment strings, flag values) into typed settings."""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from llmtrace.config.paths import Leaf
from llmtrace.config.schema import (
    CAPTURE_BODIES,
    CATEGORY_ACTIONS,
    CORE_PRIORITIES,
    ENFORCEMENT_DEPTHS,
    ENFORCEMENT_MODES,
    LOG_FORMATS,
    LOG_LEVELS,
    OPERATING_POINTS,
    SEVERITIES,
)
from llmtrace.limits import MAX_BODY_CHARS, MAX_SPANS_PER_BATCH

_TYPE_NAMES: Final[dict[type, str]] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    tuple: "a list of strings",
}
_TRUE: Final = frozenset({"true", "1", "yes"})
_FALSE: Final = frozenset({"false", "0", "no"})
# Used with fullmatch, and `\Z` in the length check: `$` also matches before a final newline, so
# "127.0.0.1\n" passed as a host name and the server then failed to listen.
_HOSTNAME: Final = re.compile(r"(?=.{1,253}\Z)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_-]{1,63})*\.?")
_MAX_PORT: Final = 65535
#: gRPC message sizes are signed 32-bit integers.
_MAX_GRPC_MESSAGE_BYTES: Final = 2**31 - 1


Rule = Callable[[object], None]


class InvalidValueError(ValueError):
    """A value that cannot be used; the message says what was expected."""


def describe(value: object) -> str:
    """Show a value in an error message the way a user wrote it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return f"{value:g}"  # `-1`, as written, even after conversion to float
    if isinstance(value, str):
        # Error messages are printed and logged: a URL's password or key= parameter is not.
        from llmtrace.config.redact import redact_text  # noqa: PLC0415 - redact imports schema

        return repr(redact_text(value))
    if isinstance(value, int | float):
        return repr(value)
    return f"a {type(value).__name__}"


Value = str | int | float | bool | tuple[str, ...]


def check_type(value: object, leaf: Leaf) -> Value:
    """Accept a value already typed (from YAML or a flag) if it fits `leaf`."""
    # bool is a subclass of int: `max_rows: true` must not become 1.
    if leaf is bool and isinstance(value, bool):
        return value
    if leaf is int and isinstance(value, int) and not isinstance(value, bool):
        return _in_range(value)
    if leaf is float and isinstance(value, int | float) and not isinstance(value, bool):
        return _in_range(float(value))
    if leaf is str and isinstance(value, str):
        return _utf8(value)
    if leaf is tuple and isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
        return tuple(_utf8(item) for item in value)
    raise InvalidValueError(f"expected {_TYPE_NAMES[leaf]}, got {describe(value)}")


def _utf8(text: str) -> str:
    # A lone surrogate (YAML's "\udcff" escape, or an environment variable or flag whose bytes are
    # not UTF-8, which Python decodes with surrogateescape) cannot be encoded: DuckDB, gRPC and
    # file names then fail with a traceback far from the setting.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidValueError(f"must be valid UTF-8 text, got {describe(text)}") from None
    return text


def parse_text(text: str, leaf: Leaf) -> Value:
    """Convert an environment variable (or a string flag) to `leaf`'s type."""
    if leaf is str:
        return text
    if leaf is tuple:  # `tool,function`
        return tuple(item.strip() for item in text.split(",") if item.strip())
    stripped = text.strip()
    if leaf is bool:
        if stripped.lower() in _TRUE:
            return True
        if stripped.lower() in _FALSE:
            return False
        raise InvalidValueError(f"expected one of true/false/1/0/yes/no, got {describe(text)}")
    if not stripped.isascii():  # int() takes "²" and "٨٠" as digits
        raise InvalidValueError(f"expected {_TYPE_NAMES[leaf]}, got {describe(text)}")
    try:
        number = int(stripped) if leaf is int else float(stripped)
    except ValueError:
        raise InvalidValueError(f"expected {_TYPE_NAMES[leaf]}, got {describe(text)}") from None
    return _in_range(number)


#: Beyond these, numbers overflow what they are handed to (a C long, a gRPC deadline) and fail
#: with a traceback far from the setting; no setting needs more (1e9 s is 31 years).
MAX_INT = 2**62
MAX_FLOAT = 1e9


def _in_range(number: int | float) -> int | float:
    limit = MAX_INT if isinstance(number, int) else MAX_FLOAT
    if not -limit <= number <= limit:  # NaN fails both comparisons
        raise InvalidValueError(f"expected a number from {-limit:g} to {limit:g}, got {describe(number)}")
    return number


def parse_host_port(value: str) -> tuple[str, int]:
    """Split `host:port` (`[v6addr]:port` for IPv6); port 0 means "pick a free port".

    Raises ValueError with a message fit for a user when the address is malformed.
    """
    expected = f"expected host:port, got {describe(value)}"
    if value.startswith("["):
        host, sep, port_text = value[1:].partition("]:")
        if not sep:
            raise ValueError(expected)
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{expected}: {host!r} is not an IPv6 address") from None
        # IPv6Address takes any characters in a scope (`::1%eth0\n`); no interface has those.
        if not host.isprintable() or any(c.isspace() for c in host):
            raise ValueError(f"{expected}: {host!r} is not an IPv6 address")
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep or not host:
            raise ValueError(expected)
        if ":" in host:
            raise ValueError(f"{expected}: put IPv6 addresses in brackets, e.g. [::1]:{port_text}")
        if not _HOSTNAME.fullmatch(host):
            raise ValueError(f"{expected}: {host!r} is not a host name or IP address")
    if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > _MAX_PORT:
        raise ValueError(f"{expected}: port must be a number from 0 to {_MAX_PORT}")
    return host, int(port_text)


def _host_port(value: object) -> None:
    assert isinstance(value, str)
    try:
        parse_host_port(value)
    except ValueError as exc:
        raise InvalidValueError(str(exc)) from None


def _http_url(value: object) -> None:
    assert isinstance(value, str)
    expected = f"expected an http:// or https:// URL, got {describe(value)}"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise InvalidValueError(expected) from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname or value != value.strip():
        raise InvalidValueError(expected)


def _upstream_url(value: object) -> None:
    _http_url(value)
    assert isinstance(value, str)
    parts = urlsplit(value)
    if "@" in parts.netloc:
        # aiohttp refuses a request with both URL credentials and an Authorization header, which
        # every SDK call carries: every call would fail.
        raise InvalidValueError(
            "must not hold credentials (user:password@): calls carry their own Authorization header"
        )
    if parts.query or parts.fragment or value.rstrip("/").endswith(("?", "#")):
        raise InvalidValueError(
            "must not hold a query or fragment: each request's path and query are appended to it"
        )


#: Most a millisecond setting may be (31 years, as `MAX_FLOAT` seconds): gRPC takes a deadline
#: of 1e10 seconds or more as already passed.
MAX_MILLISECONDS: Final = 10**12


def _milliseconds(value: object) -> None:
    _positive(value)
    assert isinstance(value, int | float)
    if value > MAX_MILLISECONDS:
        raise InvalidValueError(f"must be at most {MAX_MILLISECONDS} (31 years), got {value}")


def _positive(value: object) -> None:
    assert isinstance(value, int | float)
    if not value > 0 or not math.isfinite(value):
        raise InvalidValueError(f"must be greater than 0, got {describe(value)}")


def _grpc_message_bytes(value: object) -> None:
    _positive(value)
    assert isinstance(value, int)
    if value > _MAX_GRPC_MESSAGE_BYTES:
        raise InvalidValueError(f"must be at most {_MAX_GRPC_MESSAGE_BYTES}, got {value}")


def _non_empty(value: object) -> None:
    if value == "":
        raise InvalidValueError("must not be empty")


def _optional_host_port(value: object) -> None:
    if value != "":
        _host_port(value)


def _at_most(limit: int) -> Rule:
    def rule(value: object) -> None:
        _positive(value)
        assert isinstance(value, int)
        if value > limit:
            raise InvalidValueError(f"must be at most {limit}, got {value}")

    return rule


def _body_bytes(value: object) -> None:
    _at_most(MAX_BODY_CHARS)(value)


@dataclass(frozen=True, slots=True)
class _OneOf:
    """A rule for a key whose value is one of fixed, public words (see `public_choices`)."""

    choices: tuple[str, ...]

    def __call__(self, value: object) -> None:
        if value not in self.choices:
            raise InvalidValueError(f"expected one of {', '.join(self.choices)}, got {describe(value)}")


def _one_of(choices: tuple[str, ...]) -> Rule:
    return _OneOf(choices)


def _unit_interval(value: object) -> None:
    assert isinstance(value, float)
    if not 0.0 <= value <= 1.0:
        raise InvalidValueError(f"must be from 0 to 1, got {describe(value)}")


def _roles(value: object) -> None:
    assert isinstance(value, tuple)
    unknown = [role for role in value if role not in MESSAGE_ROLES]
    if unknown:
        raise InvalidValueError(f"unknown role {unknown[0]!r}; expected some of {', '.join(MESSAGE_ROLES)}")


#: Processes `security_analysis.analyze_processes` may ask for (each holds a classifier).
MAX_ANALYZE_PROCESSES: Final = 64
#: Shim workers `workers` / `--workers` may ask for: each is a process of about 70 MiB, and a
#: typo (`--workers 1000`) would otherwise fork until memory runs out.
MAX_WORKERS: Final = 256

#: Roles a chat message can have (boundary_defense.wrap_roles picks among them).
MESSAGE_ROLES: Final = ("system", "developer", "user", "assistant", "tool", "function")


#: What each key must satisfy beyond its type. Keys not listed accept any value of their type.
RULES: Final[dict[str, Rule]] = {
    "listen_addr": _host_port,
    "upstream_url": _upstream_url,
    "grpc.listen_addr": _host_port,
    "grpc.max_message_bytes": _grpc_message_bytes,
    "metrics.listen_addr": _host_port,
    "storage.database_path": _non_empty,
    "logging.level": _one_of(LOG_LEVELS),
    "logging.format": _one_of(LOG_FORMATS),
    "shutdown.timeout_seconds": _positive,
    "sql.max_rows": _positive,
    "sql.timeout_seconds": _positive,
    "query.max_page_size": _positive,
    "query.default_page_size": _positive,
    "core_addr": _optional_host_port,
    "workers": _at_most(MAX_WORKERS),
    "core_priority": _one_of(CORE_PRIORITIES),
    "timeout_ms": _milliseconds,
    "connection_timeout_ms": _milliseconds,
    "max_request_size_bytes": _positive,
    "capture.bodies": _one_of(CAPTURE_BODIES),
    "capture.max_body_bytes": _body_bytes,
    "shipper.batch_max_spans": _at_most(MAX_SPANS_PER_BATCH),
    "shipper.batch_max_bytes": _positive,
    "shipper.flush_interval_ms": _milliseconds,
    "shipper.queue_max_spans": _positive,
    "shipper.queue_max_bytes": _positive,
    "shipper.spool_dir": _non_empty,
    "shipper.spool_max_bytes": _positive,
    "shipper.dead_letter_path": _non_empty,
    "shipper.retry_initial_ms": _milliseconds,
    "shipper.retry_max_ms": _milliseconds,
    "shipper.rpc_timeout_ms": _milliseconds,
    "security_analysis.operating_point": _one_of(OPERATING_POINTS),
    "security_analysis.queue_max_spans": _positive,
    "security_analysis.queue_max_bytes": _positive,
    "security_analysis.batch_max_spans": _positive,
    "security_analysis.timeout_ms": _milliseconds,
    "security_analysis.analyze_processes": _at_most(MAX_ANALYZE_PROCESSES),
    "enforcement.mode": _one_of(ENFORCEMENT_MODES),
    "enforcement.depth": _one_of(ENFORCEMENT_DEPTHS),
    "enforcement.min_severity": _one_of(SEVERITIES),
    "enforcement.min_confidence": _unit_interval,
    "enforcement.full_timeout_ms": _milliseconds,
    "enforcement.injection": _one_of(CATEGORY_ACTIONS),
    "enforcement.jailbreak": _one_of(CATEGORY_ACTIONS),
    "enforcement.pii": _one_of(CATEGORY_ACTIONS),
    "enforcement.secrets": _one_of(CATEGORY_ACTIONS),
    "enforcement.tool_use": _one_of(CATEGORY_ACTIONS),
    "boundary_defense.wrap_roles": _roles,
}

#: Spellings accepted for logging.level; LLMTrace 0.2 used Rust's `warn` and `trace`.
_LEVEL_ALIASES: Final = {"warn": "warning", "trace": "debug"}


#: Enum keys whose spelling is case-insensitive (the predecessor wrote `Critical`, `Block`).
_CASE_INSENSITIVE: Final = frozenset(
    {
        "logging.level",
        "logging.format",
        "enforcement.mode",
        "enforcement.depth",
        "enforcement.min_severity",
        "enforcement.injection",
        "enforcement.jailbreak",
        "enforcement.pii",
        "enforcement.secrets",
        "enforcement.tool_use",
        "security_analysis.operating_point",
    }
)


def normalize(path: str, value: Value) -> tuple[Value, str | None]:
    """Canonicalise case-insensitive enums; returns the value and a warning, if any."""
    if path not in _CASE_INSENSITIVE or not isinstance(value, str):
        return value, None
    lowered = value.strip().lower()
    if path == "logging.level" and lowered in _LEVEL_ALIASES:
        canonical = _LEVEL_ALIASES[lowered]
        warning = None if lowered == "warn" else f"{value!r} is not a level here; using {canonical!r}"
        return canonical, warning
    return lowered, None


def public_choices(path: str) -> tuple[str, ...]:
    """The fixed words the value at `path` (e.g. `enforcement.secrets`) must be one of; empty
    for keys that take free values. Such a value says nothing secret, whatever the key's name."""
    rule = RULES.get(path)
    return rule.choices if isinstance(rule, _OneOf) else ()
