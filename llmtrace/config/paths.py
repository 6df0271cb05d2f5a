"""Key paths, leaf types and environment variable names, all derived from `schema.py`."""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Final

from llmtrace.config.schema import Settings

#: The predecessor's names, kept so that LLMTrace 0.2 deployments keep their log settings.
ENV_ALIASES: Final = {
    "LLMTRACE_LOG_LEVEL": "logging.level",
    "LLMTRACE_LOG_FORMAT": "logging.format",
}
ENV_PREFIX: Final = "LLMTRACE_"
#: Settings fields that are not configuration keys.
_INTERNAL_FIELDS: Final = frozenset({"not_built"})

Leaf = type[str] | type[int] | type[float] | type[bool] | type[tuple[str, ...]]
#: The one container leaf: a list of strings, `tuple` in the settings.
STR_LIST: Final = tuple[str, ...]


@functools.cache
def leaf_types() -> dict[str, Leaf]:
    """Every configurable key path (`grpc.listen_addr`) and its type, in schema order."""
    leaves: dict[str, Leaf] = {}
    _collect(Settings, "", leaves)
    return leaves


@functools.cache
def section_names() -> frozenset[str]:
    """Top-level keys that hold a section (`grpc`, `storage`, ...)."""
    return frozenset(path.split(".", 1)[0] for path in leaf_types() if "." in path)


def env_name(path: str) -> str:
    """The environment variable for a key path: `grpc.listen_addr` -> `LLMTRACE_GRPC_LISTEN_ADDR`."""
    return ENV_PREFIX + path.replace(".", "_").upper()


@functools.cache
def env_names() -> dict[str, str]:
    """Environment variable name -> key path, canonical names first, then the aliases."""
    names = {env_name(path): path for path in leaf_types()}
    names.update(ENV_ALIASES)
    return names


def _collect(cls: type, prefix: str, leaves: dict[str, Leaf]) -> None:
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in _INTERNAL_FIELDS:
            continue
        hint = hints[field.name]
        path = prefix + field.name
        if dataclasses.is_dataclass(hint) and isinstance(hint, type):
            _collect(hint, path + ".", leaves)
        elif hint in (str, int, float, bool):
            leaves[path] = hint
        elif hint == STR_LIST:
            leaves[path] = tuple
        else:  # a schema edit, not user input
            raise TypeError(f"unsupported settings type for {path}: {hint!r}")
