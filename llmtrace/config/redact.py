"""A printable view of the settings with secrets hidden (`llmtrace validate`, startup logs)."""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final
from urllib.parse import unquote_plus

from llmtrace.config.schema import Settings
from llmtrace.config.values import RULES, public_choices
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
_SECRET_LAST: Final = frozenset({"key", "keys", "apikey", "token", "tokens", "dsn", "pass", "pwd", "pem"})
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
# A token never holds a quote: `-H "Authorization: Bearer sk-1"` keeps its closing one.
_BEARER: Final = re.compile(r"(?i)\b(?P<head>bearer\s+)[^\s'\"]+")
# Words of a camel-case key, acronyms included: `apiKey`, `APIToken` (API + Token).
_CAMEL_BOUNDARY: Final = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
# Found from its `://` (the scheme before it stays as written): matched from the scheme's first
# letter, every letter of a long run like "a-a-a-..." started a scan to its end, quadratic time.
# Passwords hold `@`, `/`, `#` and `?` unencoded (`p@ss`), so the userinfo runs to the last `@`
# before whitespace or the next URL; ending at the first showed the rest of the password. A path
# with an `@` after a port (`https://host:8080/a@b`) is hidden too, which is harmless.
_URL_PASSWORD: Final = re.compile(
    r"(?P<head>(?<=[a-zA-Z0-9+.-])://[^:/?#@\s]*):(?P<password>(?:(?!://)\S)+)@"
)
# A token as a URL's whole userinfo (`https://ghp_...@github.com/org/repo`, how Git and many
# registries take one): 20 or more token characters and no password. A user name is short.
_URL_TOKEN_USER: Final = re.compile(r"(?P<head>(?<=[a-zA-Z0-9+.-])://)[A-Za-z0-9_\-]{20,}@")
# URLs that are themselves the credential, whatever key holds them: the path is the secret.
_WEBHOOK_URL: Final = re.compile(
    r"(?i)(?P<head>https?://(?:hooks\.slack\.com|(?:[\w-]+\.)?discord(?:app)?\.com/api/webhooks"
    r"|[\w-]+\.webhook\.office\.com|outlook\.office\.com/webhook)/?)[^\s\"'<>]+"
)
# After `#` as well: OAuth's implicit flow puts `#access_token=...` in the fragment. A name never
# holds `?`, or each `?` of "????..." would start a scan to the end (quadratic time).
# A value may be braced, as ODBC quotes one holding `;` (`Pwd={a;b}`): at most 256 characters, so
# that many `={` never each scan to the end.
_QUERY_PARAM: Final = re.compile(
    r"(?P<head>[?&;#](?P<name>[^=&;?#\s]+)=)(?P<value>\{[^}]{0,256}\}?|[^&;#\s]*)"
)
# `Authorization: Basic dXNlcjpw`, `x-api-key: sk-...`: headers copied into a list or a value (from
# curl's `-H '...'`), where the name says the next word is a credential. An auth scheme stays shown,
# as `Bearer` does, and so does the host after a URL's `user:password@`. The name starts a word and
# is at most 64 characters, keeping the scan linear.
_HEADER: Final = re.compile(
    r"(?<![\w.-])(?P<name>[A-Za-z][\w.-]{0,63})[ \t]*:[ \t]*"
    r"(?:(?i:basic|bearer|digest|token|negotiate|ntlm)[ \t]+)?(?=[^\s'\"@])"
)
# Matched apart, only after a secret name: the value of every harmless `name:` ("https:" in a URL)
# scanned to the end of a long word would be quadratic again.
_HEADER_VALUE: Final = re.compile(r"[^\s'\"@]+")
# `name=value` outside a URL's query: libpq and ODBC connection strings (`host=db password=pw`,
# `Server=db;Pwd=pw`), `.env` lines (`OPENAI_API_KEY=sk-...`) and command-line flags
# (`--api-key=sk-1`). The name starts a word and is at most 64 characters (linear scan); a name
# after `?`, `&`, `;` or `#` is a query parameter, judged by `_QUERY_PARAM`.
_ASSIGNMENT: Final = re.compile(r"(?<![\w.?&;#=])(?P<name>[A-Za-z_][\w.-]{0,63})[ \t]*=[ \t]*(?=[^\s=])")
# A value as libpq reads one: quoted with `'` (backslash escapes), or up to whitespace: a
# separator (`;`, `&`, `,`) may be part of a password, and hiding a following `;Uid=sa` costs
# nothing. An unterminated quote runs to the end of the text.
_ASSIGNMENT_VALUE: Final = re.compile(r"'(?:[^'\\]|\\.)*'?|\"(?:[^\"\\]|\\.)*\"?|\S+")
# Connection-string names for a password that `looks_secret` reads as one word (`sslpassword`).
_PASSWORD_SUFFIXES: Final = ("password", "passwd", "pwd")
#: Containers nested deeper than this are not shown. The YAML reader refuses such files
#: (yaml_file.MAX_NESTING) first; this keeps `_redact`'s recursion bounded whatever it is given.
_MAX_DEPTH: Final = 100
_TOO_DEEP: Final = "***nested too deeply to show***"


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


# Cached: hostile text repeats one name thousands of times, and each call splits it anew.
@functools.lru_cache(maxsize=1024)
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
    """Hide URL passwords and tokens, webhook URLs, secret-looking query parameters, bearer tokens and the
    values of secret-looking headers (`x-api-key: ...`) inside a string."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}:{REDACTED}@", text)
    text = _URL_TOKEN_USER.sub(lambda m: f"{m['head']}{REDACTED}@", text)
    text = _WEBHOOK_URL.sub(lambda m: m["head"] + REDACTED, text)
    text = _BEARER.sub(lambda m: m["head"] + REDACTED, text)
    text = _redact_headers(text)
    text = _redact_assignments(text)
    return _QUERY_PARAM.sub(
        lambda m: (
            m["head"] + REDACTED
            if m["value"] and (looks_secret(name := unquote_plus(m["name"])) or is_credential_param(name))
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


def _redact_headers(text: str) -> str:
    parts: list[str] = []
    pos = 0
    while (match := _HEADER.search(text, pos)) is not None:
        if looks_secret(match["name"]):
            value = _HEADER_VALUE.match(text, match.end())
            assert value is not None  # the lookahead saw its first character
            parts += (text[pos : match.end()], REDACTED)
            pos = value.end()
        else:
            # Go on from the name's end, not the match's: in `headers: x-api-key: sk-1` the
            # value `x-api-key:` of a harmless name is itself the next header's name.
            parts.append(text[pos : match.end("name")])
            pos = match.end("name")
    parts.append(text[pos:])
    return "".join(parts)


def _redact_assignments(text: str) -> str:
    if "=" not in text:
        return text
    parts: list[str] = []
    pos = 0
    while (match := _ASSIGNMENT.search(text, pos)) is not None:
        name = match["name"]
        if looks_secret(name) or name.lower().endswith(_PASSWORD_SUFFIXES):
            value = _ASSIGNMENT_VALUE.match(text, match.end())
            if value is not None and value.end() > match.end():
                parts += (text[pos : match.end()], REDACTED)
                pos = value.end()
                continue
        # Go on from the name's end, as `_redact_headers` does: its value may name the next one.
        parts.append(text[pos : match.end("name")])
        pos = match.end("name")
    parts.append(text[pos:])
    return "".join(parts)


def _child_path(path: str | None, key: object) -> str | None:
    """The key path of `key` under `path`, or None once no rule's path starts with it.

    Only a rule can make a secret-looking key's value public (`public_choices`), and no rule lies
    under a key that is not built: giving all of those the one path None lets `_redact` reuse its
    answer for a node shared by YAML aliases wherever it appears.
    """
    if path is None:
        return None
    child = f"{path}.{key}" if path else str(key)
    return child if child in _RULE_PATH_PREFIXES else None


_RULE_PATH_PREFIXES: Final = frozenset(
    ".".join(parts[:n]) for parts in (path.split(".") for path in RULES) for n in range(1, len(parts) + 1)
)


def _redact(
    value: object,
    key: object = None,
    path: str | None = "",
    memo: dict[tuple[int, str | None], object] | None = None,
    depth: int = 0,
) -> object:
    if (
        isinstance(key, str)
        and looks_secret(key)
        and value not in (None, "")
        and (path is None or value not in public_choices(path))  # `enforcement.secrets: block`
    ):
        return REDACTED
    if not isinstance(value, Mapping | list | tuple | str):
        return value
    # YAML aliases share one node many times over: ten lists of ten aliases of the one below, a
    # few levels deep, are billions of items if each is walked ("billion laughs"). Each node is
    # redacted once and its copy shared likewise, which yaml.safe_dump then prints as aliases.
    if memo is None:
        memo = {}
    seen = (id(value), path)  # every node lives in the tree being redacted: ids are not reused
    if seen in memo:
        return memo[seen]
    redacted: object
    if isinstance(value, str):
        redacted = redact_text(value)
    elif depth >= _MAX_DEPTH:
        redacted = _TOO_DEEP
    elif isinstance(value, Mapping):
        redacted = {k: _redact(v, k, _child_path(path, k), memo, depth + 1) for k, v in value.items()}
    else:
        redacted = [_redact(item, path=path, memo=memo, depth=depth + 1) for item in value]
    memo[seen] = redacted
    return redacted
