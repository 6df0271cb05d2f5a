"""Conversion of filter literal tokens to typed bind parameters, one rule per field kind."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

from llmtrace.query.errors import QueryError
from llmtrace.query.fields import FieldKind, FieldSpec
from llmtrace.query.lexer import Token, TokenKind, filter_error

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)
_TIMESTAMP_EXAMPLE = '"2026-11-27T00:00:00Z"'


def literal_param(spec: FieldSpec, token: Token) -> object:
    """The bind parameter for comparing ``spec`` to the literal ``token``; QueryError if it does not fit."""
    if spec.kind is FieldKind.STRING:
        return _string(spec, token)
    if spec.kind is FieldKind.INT:
        return _int(spec, token)
    if spec.kind is FieldKind.FLOAT:
        return _float(spec, token)
    if spec.kind is FieldKind.BOOL:
        return _bool(spec, token)
    if spec.kind is FieldKind.TIMESTAMP:
        return _timestamp(spec, token)
    if spec.kind is FieldKind.ENUM:
        return _enum(spec, token)
    return _bytes(spec, token)


def parse_rfc3339(text: str) -> datetime:
    """Parse an RFC 3339 timestamp to an aware UTC datetime; ValueError if invalid or sub-microsecond."""
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ValueError("not an RFC 3339 timestamp")
    year, month, day, hour, minute, second = (int(g) for g in match.group(1, 2, 3, 4, 5, 6))
    fraction = (match.group(7) or "").ljust(9, "0")
    # TIMESTAMPTZ holds microseconds; silently dropping nanoseconds would shift `>=` bounds.
    if fraction[6:] != "000":
        raise ValueError("timestamps have microsecond precision")
    if match.group(8):
        zone = UTC
    else:
        sign, zone_hour, zone_minute = match.group(9), int(match.group(10)), int(match.group(11))
        # timedelta would carry +05:99 over to +06:39; RFC 3339 allows hours 00-23, minutes 00-59.
        if zone_hour > 23 or zone_minute > 59:
            raise ValueError(
                f"zone offset {sign}{match.group(10)}:{match.group(11)} needs hours 00-23 and minutes 00-59"
            )
        offset = timedelta(hours=zone_hour, minutes=zone_minute)
        zone = timezone(-offset if sign == "-" else offset)
    # datetime() checks these too, but its messages do not say which part of the literal is wrong.
    # A leap second (:60) has no TIMESTAMPTZ value, so it is rejected rather than moved on.
    for name, value, text_value, low, high in (
        ("year", year, match.group(1), "0001", "9999"),
        ("month", month, match.group(2), "01", "12"),
        ("hour", hour, match.group(4), "00", "23"),
        ("minute", minute, match.group(5), "00", "59"),
        ("second", second, match.group(6), "00", "59"),
    ):
        if not int(low) <= value <= int(high):
            raise ValueError(f"{name} {text_value} is out of range {low}-{high}")
    try:
        local = datetime(year, month, day, hour, minute, second, int(fraction[:6]), tzinfo=zone)
    except ValueError:
        # Every other part is in range, so only the day can be wrong (00, or past the month's end).
        raise ValueError(f"{match.group(1)}-{match.group(2)} has no day {match.group(3)}") from None
    try:
        return local.astimezone(UTC)
    except OverflowError:
        raise ValueError("the zone offset moves it outside years 0001-9999 in UTC") from None


def _mismatch(spec: FieldSpec, token: Token, expected: str) -> QueryError:
    return filter_error(f"field {spec.name!r} needs {expected}, found {token.describe()}", token.column)


def _string(spec: FieldSpec, token: Token) -> str:
    if token.kind is TokenKind.STRING:
        return token.value
    if token.kind is TokenKind.TEXT:
        return token.text
    raise _mismatch(spec, token, "a quoted string")


def _int(spec: FieldSpec, token: Token) -> int:
    if token.kind is not TokenKind.NUMBER or any(c in token.text for c in ".eE"):
        raise _mismatch(spec, token, "an integer")
    value = int(token.text)
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise filter_error(f"integer {token.text} is out of range", token.column)
    return value


def _float(spec: FieldSpec, token: Token) -> float:
    if token.kind is not TokenKind.NUMBER:
        raise _mismatch(spec, token, "a number")
    value = float(token.text)
    if value in (float("inf"), float("-inf")):
        raise filter_error(f"number {token.text} is out of range", token.column)
    return value


def _bool(spec: FieldSpec, token: Token) -> bool:
    if token.kind is TokenKind.TEXT and token.text.lower() in ("true", "false"):
        return token.text.lower() == "true"
    raise _mismatch(spec, token, "true or false")


def _timestamp(spec: FieldSpec, token: Token) -> datetime:
    if token.kind is not TokenKind.STRING:
        raise _mismatch(spec, token, f"a quoted RFC 3339 timestamp such as {_TIMESTAMP_EXAMPLE}")
    try:
        return parse_rfc3339(token.value)
    except ValueError as exc:
        raise filter_error(
            f"invalid timestamp {token.text} for field {spec.name!r} ({exc}); "
            f"use RFC 3339 with a zone, such as {_TIMESTAMP_EXAMPLE}",
            token.column,
        ) from None


def _enum(spec: FieldSpec, token: Token) -> int:
    if token.kind not in (TokenKind.TEXT, TokenKind.STRING):
        raise _mismatch(spec, token, "an enum value name")
    values = spec.enum_values or {}
    name = token.value if token.kind is TokenKind.STRING else token.text
    if name in values:
        return values[name]
    folded = {key.casefold(): rank for key, rank in values.items()}
    if name.casefold() in folded:
        return folded[name.casefold()]
    allowed = ", ".join(sorted(values, key=values.__getitem__))
    raise filter_error(
        f"unknown value {name!r} for enum field {spec.name!r} (allowed: {allowed})", token.column
    )


def _bytes(spec: FieldSpec, token: Token) -> bytes:
    if token.kind not in (TokenKind.TEXT, TokenKind.STRING):
        raise _mismatch(spec, token, "a quoted hex string")
    text = token.value if token.kind is TokenKind.STRING else token.text
    try:
        # bytes.fromhex skips spaces; ids never contain them, so reject them too.
        if any(c.isspace() for c in text):
            raise ValueError
        return bytes.fromhex(text)
    except ValueError:
        raise filter_error(f"invalid hex {token.text} for field {spec.name!r}", token.column) from None
