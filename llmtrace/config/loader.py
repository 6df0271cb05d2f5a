"""Load settings: defaults < YAML file < environment < overrides (CLI flags).

Every problem is collected with its key path before anything is raised, so one run of
`llmtrace validate` shows all of them. Only the value that wins is validated: a bad file value
that an environment variable replaces is not an error.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from llmtrace.config.known_keys import (
    NOT_BUILT_ENV,
    NOT_BUILT_MESSAGE,
    NOT_BUILT_NESTED,
    NOT_BUILT_TOP_LEVEL,
    PREDECESSOR_SECTIONS,
)
from llmtrace.config.paths import ENV_ALIASES, env_name, env_names, leaf_types, section_names
from llmtrace.config.schema import ConfigError, ConfigIssue, LoadedConfig, Settings
from llmtrace.config.values import (
    RULES,
    InvalidValueError,
    check_type,
    describe,
    normalize,
    parse_text,
)
from llmtrace.config.yaml_file import read_yaml_file

CONFIG_ENV = "LLMTRACE_CONFIG"
OVERRIDE_ORIGIN = "command line"  # overrides are how CLI flags arrive


@dataclass(frozen=True, slots=True)
class _Rejected:
    """A layer's value that could not be converted; an error only if no later layer replaces it."""

    message: str


@dataclass
class _Layers:
    values: dict[str, object] = dataclasses.field(default_factory=dict)
    origins: dict[str, str] = dataclasses.field(default_factory=dict)
    not_built: dict[str, object] = dataclasses.field(default_factory=dict)
    errors: list[ConfigIssue] = dataclasses.field(default_factory=list)
    warnings: list[ConfigIssue] = dataclasses.field(default_factory=list)

    def set(self, path: str, value: object, origin: str | None) -> None:
        self.values[path] = value
        if origin is None:
            self.origins.pop(path, None)
        else:
            self.origins[path] = origin


def load_config(
    config_path: str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> LoadedConfig:
    """Resolve the settings of this process.

    `config_path` falls back to `$LLMTRACE_CONFIG`; with neither, only defaults, environment
    and overrides apply. `env` defaults to `os.environ`. `overrides` maps dotted key paths to
    values (typed, or strings converted like environment variables); None values are skipped.
    Raises ConfigError listing every problem; returns warnings for recognised keys of features
    not built yet.
    """
    environ = os.environ if env is None else env
    layers = _Layers()
    path = config_path if config_path is not None else (environ.get(CONFIG_ENV) or None)
    if path is not None:
        tree, file_issue = read_yaml_file(path)
        if file_issue is not None:
            layers.errors.append(file_issue)
        _read_tree(tree, layers)
    _read_env(environ, layers)
    _read_overrides(overrides or {}, layers)
    settings = _build(layers)
    if layers.errors:
        raise ConfigError(layers.errors)
    return LoadedConfig(settings=settings, warnings=layers.warnings, source=path)


def _read_tree(tree: object, layers: _Layers) -> None:
    if tree is None:  # an empty file
        return
    if not isinstance(tree, dict):
        layers.errors.append(ConfigIssue("<root>", f"expected a mapping of keys, got {describe(tree)}"))
        return
    leaves = leaf_types()
    top_level = sorted({*section_names(), *(p for p in leaves if "." not in p), *NOT_BUILT_TOP_LEVEL})
    for key, value in tree.items():
        if not isinstance(key, str):
            layers.errors.append(_non_string_key(key, ""))
        elif key in section_names():
            _read_section(key, value, layers)
        elif key in leaves and "." not in key:
            layers.set(key, value, None)
        elif key in NOT_BUILT_TOP_LEVEL:
            layers.warnings.append(ConfigIssue(key, NOT_BUILT_MESSAGE))
            layers.not_built[key] = value
        elif key in leaves:
            section, name = key.split(".", 1)
            message = f"unknown key; write it nested: `{section}:` then `{name}:`"
            layers.errors.append(ConfigIssue(key, message))
        else:
            layers.errors.append(ConfigIssue(key, _unknown_message(key, top_level, "")))


def _read_section(section: str, value: object, layers: _Layers) -> None:
    if value is None:  # `grpc:` with nothing under it
        return
    if not isinstance(value, dict):
        layers.errors.append(ConfigIssue(section, f"expected a section of keys, got {describe(value)}"))
        return
    prefix = section + "."
    known = [p for p in (*leaf_types(), *NOT_BUILT_NESTED) if p.startswith(prefix)]
    for key, item in value.items():
        if not isinstance(key, str):
            layers.errors.append(_non_string_key(key, prefix))
            continue
        path = prefix + key
        if path in leaf_types():
            layers.set(path, item, None)
        elif path in NOT_BUILT_NESTED:
            layers.warnings.append(ConfigIssue(path, NOT_BUILT_MESSAGE))
            layers.not_built[path] = item
        elif section in PREDECESSOR_SECTIONS:
            message = _unknown_message(path, known, prefix) + "; ignored (a LLMTrace 0.2 key?)"
            layers.warnings.append(ConfigIssue(path, message))
            layers.not_built[path] = item
        else:
            layers.errors.append(ConfigIssue(path, _unknown_message(path, known, prefix)))


def _read_env(environ: Mapping[str, str], layers: _Layers) -> None:
    leaves = leaf_types()
    for name, path in env_names().items():
        text = environ.get(name)
        # Empty counts as unset, as in `LLMTRACE_X=` lines of compose files and .env templates.
        if not text:
            continue
        if name in ENV_ALIASES and environ.get(env_name(path)):
            continue  # the canonical name wins over the predecessor's alias
        try:
            layers.set(path, parse_text(text, leaves[path]), name)
        except InvalidValueError as exc:
            layers.set(path, _Rejected(str(exc)), name)
    for name, path in NOT_BUILT_ENV.items():
        if environ.get(name):
            layers.warnings.append(ConfigIssue(path, f"{NOT_BUILT_MESSAGE} (from {name})"))


def _read_overrides(overrides: Mapping[str, object], layers: _Layers) -> None:
    leaves = leaf_types()
    for path, value in overrides.items():
        if value is None:
            continue
        if path not in leaves:
            layers.errors.append(
                ConfigIssue(path, _unknown_message(path, leaves, "") + f" (from {OVERRIDE_ORIGIN})")
            )
            continue
        try:
            leaf = leaves[path]
            typed = parse_text(value, leaf) if isinstance(value, str) else check_type(value, leaf)
            layers.set(path, typed, OVERRIDE_ORIGIN)
        except InvalidValueError as exc:
            layers.set(path, _Rejected(str(exc)), OVERRIDE_ORIGIN)


def _build(layers: _Layers) -> Settings:
    typed: dict[str, object] = {}
    for path, leaf in leaf_types().items():
        if path not in layers.values:
            continue
        origin = layers.origins.get(path)
        suffix = f" (from {origin})" if origin else ""
        raw = layers.values[path]
        try:
            if isinstance(raw, _Rejected):
                raise InvalidValueError(raw.message)
            value, warning = normalize(path, check_type(raw, leaf))
            if warning:
                layers.warnings.append(ConfigIssue(path, warning + suffix))
            rule = RULES.get(path)
            if rule is not None:
                rule(value)
        except InvalidValueError as exc:
            layers.errors.append(ConfigIssue(path, f"{exc}{suffix}"))
            continue
        typed[path] = value
    settings = _assemble(typed, layers.not_built)
    _check_page_sizes(settings, typed, layers.errors)
    return settings


def _assemble(typed: Mapping[str, object], not_built: Mapping[str, object]) -> Settings:
    base = Settings()
    top: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {}
    for path, value in typed.items():
        section, dot, name = path.partition(".")
        if dot:
            sections.setdefault(section, {})[name] = value
        else:
            top[path] = value
    for section, values in sections.items():
        top[section] = dataclasses.replace(getattr(base, section), **values)
    return dataclasses.replace(base, **top, not_built=dict(not_built))


def _check_page_sizes(settings: Settings, typed: Mapping[str, object], errors: list[ConfigIssue]) -> None:
    query = settings.query
    paths = ("query.default_page_size", "query.max_page_size")
    if any(p in typed for p in paths) and query.default_page_size > query.max_page_size:
        errors.append(
            ConfigIssue(
                "query.default_page_size",
                f"must not exceed query.max_page_size ({query.max_page_size}), got {query.default_page_size}",
            )
        )


def _unknown_message(path: str, candidates: Iterable[str], prefix: str) -> str:
    names = {c[len(prefix) :]: c for c in candidates if c.startswith(prefix)}
    name = path[len(prefix) :]
    lowered = {n.lower(): n for n in names}
    close = [lowered[name.lower()]] if name.lower() in lowered else []
    close = close or difflib.get_close_matches(name, list(names), n=1, cutoff=0.6)
    if close:
        return f"unknown key; did you mean '{names[close[0]]}'?"
    return "unknown key"


def _non_string_key(key: object, prefix: str) -> ConfigIssue:
    return ConfigIssue(
        prefix + describe(key).strip("'"),
        "keys must be strings (YAML reads unquoted on/off/yes/no as booleans; quote the key)",
    )
