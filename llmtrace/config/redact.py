"""A printable view of the settings with secrets hidden (`llmtrace validate`, startup logs)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from llmtrace.config.schema import Settings
from llmtrace.config.values import public_choices
from llmtrace.credential_params import is_credential_param

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

REDACTED: Final = "***redacted***"

# Judged word by word, not by substring: `max_tokens`, `token_interval` and `default_token_cap`
# are limits, not secrets, while `admin_key`, `routing_key` and `auth_token` are.
_SECRET_ANYWHERE: Final = frozenset(
    {"secret", "secrets", "password", "passwords", "passwd", "passphrase", "credential", "credentials"}
    | {"webhook"}  # a Slack or PagerDuty webhook URL is itself the credential
    | {"authorization", "bearer"}
)
_SECRET_LAST: Final = frozenset({"key", "keys", "apikey", "token", "tokens", "dsn", "pass", "pem"})
# A last word that only says "the value of": `access_token_value` is judged by `token`.
_VALUE_WORDS: Final = frozenset({"value", "values", "val"})
# Words that make "tokens" a count of model tokens rather than credentials.
_COUNT_WORDS: Final = frozenset(
    {
        "max",
        "min",
        "num",
        "total",
        "input",
        "output",
        "prompt",
        "completion",
        "reasoning",
        "cached",
        "context",
    }
)
_BEARER: Final = re.compile(r"(?i)\b(?P<head>bearer\s+)\S+")
_CAMEL_BOUNDARY: Final = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_URL_PASSWORD: Final = re.compile(
    r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/?#@\s]*):(?P<password>[^@/?#\s]+)@"
)
# URLs that are themselves the credential, whatever key holds them: the path is the secret.
_WEBHOOK_URL: Final = re.compile(
    r"(?i)(?P<head>https?://(?:hooks\.slack\.com|(?:[\w-]+\.)?discord(?:app)?\.com/api/webhooks"
    r"|[\w-]+\.webhook\.office\.com|outlook\.office\.com/webhook)/?)[^\s\"'<>]+"
)
_QUERY_PARAM: Final = re.compile(r"(?P<head>[?&;](?P<name>[^=&;#\s]+)=)(?P<value>[^&;#\s]*)")


def redacted_dict(settings: Settings) -> dict[str, object]:
    """The settings as a nested dict, with recognised not-built keys merged back in place.

    Values under secret-looking keys become "***redacted***", as do passwords in URLs
    (`postgres://user:***redacted***@host/db`) and secret-looking URL query parameters.
    """
    tree = _as_dict(settings)
    for path, value in settings.not_built.items():
        section, dot, name = path.partition(".")
        if dot:
            branch = tree.setdefault(section, {})
            assert isinstance(branch, dict)
            branch[name] = value
        else:
            tree[path] = value
    redacted = _redact(tree)
    assert isinstance(redacted, dict)
    return redacted


def looks_secret(key: str) -> bool:
    """Whether a key's name suggests its value is a secret."""
    words = [w for w in re.split(r"[_\-.\s]+", _CAMEL_BOUNDARY.sub("_", key).lower()) if w]
    while len(words) > 1 and words[-1] in _VALUE_WORDS:
        words.pop()
    if not words:
        return False
    if words[-1] == "tokens" and any(w in _COUNT_WORDS for w in words):
        return False  # `max_tokens`: a count of model tokens
    return words[-1] in _SECRET_LAST or any(w in _SECRET_ANYWHERE for w in words)


def redact_text(text: str) -> str:
    """Hide URL passwords, webhook URLs, secret-looking query parameters and bearer tokens
    inside a string."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}:{REDACTED}@", text)
    text = _WEBHOOK_URL.sub(lambda m: m["head"] + REDACTED, text)
    text = _BEARER.sub(lambda m: m["head"] + REDACTED, text)
    return _QUERY_PARAM.sub(
        lambda m: (
            m["head"] + REDACTED
            if m["value"] and (looks_secret(m["name"]) or is_credential_param(m["name"]))
            else m[0]
        ),
        text,
    )


def _as_dict(obj: DataclassInstance) -> dict[str, object]:
    out: dict[str, object] = {}
    for field in dataclasses.fields(obj):
        if field.name == "not_built":
            continue
        value = getattr(obj, field.name)
        is_section = dataclasses.is_dataclass(value) and not isinstance(value, type)
        out[field.name] = _as_dict(value) if is_section else value
    return out


def _redact(value: object, key: object = None, path: str = "") -> object:
    if (
        isinstance(key, str)
        and looks_secret(key)
        and value not in (None, "")
        and value not in public_choices(path)  # `enforcement.secrets: block` is a policy
    ):
        return REDACTED
    if isinstance(value, Mapping):
        return {k: _redact(v, k, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(item, path=path) for item in value]
    if isinstance(value, str):
        return redact_text(value)
    return value
