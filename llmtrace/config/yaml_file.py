"""Reading the YAML config file, with problems reported as ConfigIssues instead of tracebacks."""

from __future__ import annotations

from pathlib import Path

import yaml

from llmtrace.config.schema import ConfigIssue

_MERGE_TAG = "tag:yaml.org,2002:merge"
#: Deepest nesting of lists and mappings accepted. Aliases build depth the parser never sees
#: (`l1: &l1 [*l0]`, `l2: &l2 [*l1]`, ...), and whatever walks the settings recursively (redaction,
#: printing, pickling to workers) would fail with a RecursionError on thousands of levels.
MAX_NESTING = 64
_TOO_DEEP = "invalid YAML: nested too deeply"


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys, which PyYAML would otherwise let the last one win."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[object, object]:
    seen: set[object] = set()
    for key_node, _ in node.value:
        if key_node.tag == _MERGE_TAG:
            continue  # `<<: *anchor` merges are meant to be overridden by explicit keys
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
        except TypeError:
            continue  # unhashable key: construct_mapping reports it with a position
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {key!r}",
                key_node.start_mark,
            )
        seen.add(key)
    loader.flatten_mapping(node)
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml_file(path: str) -> tuple[object, ConfigIssue | None]:
    """Parse the file at `path`; returns (document, None) or (None, the problem)."""
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, ConfigIssue(path, "config file not found")
    except IsADirectoryError:
        return None, ConfigIssue(path, "is a directory, not a config file")
    except UnicodeDecodeError:
        return None, ConfigIssue(path, "config file is not UTF-8 text")
    except OSError as exc:
        return None, ConfigIssue(path, f"cannot read config file: {exc.strerror or exc}")
    try:
        document = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        return None, ConfigIssue(path, f"invalid YAML{where}: {exc.problem}")
    except yaml.YAMLError as exc:
        return None, ConfigIssue(path, f"invalid YAML: {exc}")
    except RecursionError:  # the parser recurses per level of nesting
        return None, ConfigIssue(path, _TOO_DEEP)
    if _nesting(document) > MAX_NESTING:
        return None, ConfigIssue(path, _TOO_DEEP)
    return document, None


def _nesting(document: object) -> int:
    """How deeply lists and mappings nest in `document`, without recursion.

    A node that aliases share is measured once, so a "billion laughs" file (ten aliases of a list
    of ten aliases of ...) costs its size in the file, not the billions of items it stands for.
    """
    heights: dict[int, int] = {}
    stack: list[tuple[object, bool]] = [(document, False)]
    while stack:
        node, children_done = stack.pop()
        if not isinstance(node, dict | list):
            continue
        children = [
            c for c in (node.values() if isinstance(node, dict) else node) if isinstance(c, dict | list)
        ]
        if children_done:
            heights[id(node)] = 1 + max((heights[id(c)] for c in children), default=0)
        elif id(node) not in heights:
            heights[id(node)] = 0  # entered; PyYAML refuses recursive nodes, so no cycle comes back here
            stack.append((node, True))
            stack.extend((c, False) for c in children)
    return heights.get(id(document), 0)
