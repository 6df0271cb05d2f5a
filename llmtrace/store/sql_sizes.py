"""Functions whose result is as large as a number in the query says: bounded before they run.

`repeat('x', 2000000000)`, `range(1000000000)` or `printf('%999999999d', 1)` each build one
value of gigabytes in a single call. DuckDB makes such a value outside its memory limit and
checks for interruption only between calls, so the query's time limit cannot stop it: a tenant
could take the core's whole memory with one short query (measured with DuckDB 2.0: a 1 s
interrupt stopped `range(60000000)` after 11 s and 3.6 GB). These checks run on the parsed
query (`sql_sandbox`), before anything runs: the size must be written as an integer literal and
stay within `MAX_BUILT_SIZE`.

Functions whose results grow with their input (`replace`, `regexp_replace`, `string_agg`) are
not bounded here; docs/sql.md says what that leaves.
"""

from __future__ import annotations

import math
import re
from typing import Final

#: Most characters or elements all such calls of a query may build together, per row.
MAX_BUILT_SIZE: Final = 10_000
#: Widest field or longest precision a format string may ask for.
MAX_FORMAT_WIDTH: Final = 1_000

#: Functions that build a value whose size is one of their arguments (0-based position).
_SIZE_ARGUMENT: Final[dict[str, int]] = {
    "repeat": 1,
    "lpad": 1,
    "rpad": 1,
    "list_resize": 1,
    "array_resize": 1,
    "bitstring": 1,
    "equi_width_bins": 2,
}
#: Scalar ranges (`range(10)` returns a list); `generate_series` includes its stop value.
_RANGES: Final = frozenset({"range", "generate_series"})
_FORMATS: Final = frozenset({"printf", "format"})
_TOTAL_MESSAGE: Final = (
    f"the query may build at most {MAX_BUILT_SIZE} characters or list elements per row with "
    "repeat, lpad, rpad, list_resize, array_resize, bitstring, equi_width_bins, range, "
    "generate_series and printf/format widths together"
)
_SIZED: Final = frozenset(_SIZE_ARGUMENT) | _RANGES | _FORMATS

# printf: an optional argument index, flags, then width and precision, each a number or `*`.
_PRINTF_SPEC: Final = re.compile(r"%(?:\d+\$)?[-+ #0']*(\*|\d+)?(?:\.(\*|\d+))?")
# fmt (`format`): `{` field `}`, after `{{` and `}}` escapes are taken out.
_FMT_FIELD: Final = re.compile(r"\{([^{}]*)\}")


def built_size_problem(statement: object) -> str | None:
    """Why the parsed `statement` may build too large a value; None when it may run.

    Each sized call counts what it builds; together they may build `MAX_BUILT_SIZE` per row.
    Inside a lambda a call runs once per list element, so sized calls are refused there, and
    `repeat` must repeat a literal, so that no sized call multiplies another.
    """
    total = 0
    stack: list[tuple[object, bool]] = [(statement, False)]
    while stack:
        node, in_lambda = stack.pop()
        if isinstance(node, list):
            stack.extend((item, in_lambda) for item in node)
            continue
        if not isinstance(node, dict):
            continue
        if node.get("class") == "LAMBDA":
            in_lambda = True
        elif node.get("class") == "FUNCTION" and isinstance(raw := node.get("function_name"), str):
            name = raw.lower()
            if name in _SIZED:
                if in_lambda:
                    return f"{name}() is not allowed inside a lambda or list comprehension"
                arguments = _arguments(node)
                if arguments is None:
                    return f"{name}() does not take named arguments here"
                if name in _FORMATS:
                    width = _format_width(name, arguments[0]) if arguments else 0
                    if isinstance(width, str):
                        return width
                    total += width
                    if total > MAX_BUILT_SIZE:
                        return f"{name}(): {_TOTAL_MESSAGE}"
                    continue
                size = _built_size(name, arguments)
                if size is None:
                    return (
                        f"{name}() needs the size it builds written as integer literals "
                        f"(and repeat() a literal to repeat), at most {MAX_BUILT_SIZE}"
                    )
                total += size
                if total > MAX_BUILT_SIZE:
                    return f"{name}(): {_TOTAL_MESSAGE}"
        stack.extend((value, in_lambda) for value in node.values())
    return None


def _arguments(node: dict[str, object]) -> list[object] | None:
    """A function call's argument expressions, in order; None when any is named
    (`range(stop := 10, start := 0)`), whose order the positions here would misread."""
    arguments = node.get("arguments")
    if isinstance(arguments, list):  # DuckDB 1.4+: [{"name": ..., "expression": ...}]
        if any(not isinstance(a, dict) or a.get("name") for a in arguments):
            return None
        return [a.get("expression") for a in arguments]
    children = node.get("children")
    return list(children) if isinstance(children, list) else []


def _built_size(name: str, arguments: list[object]) -> int | None:
    """Characters or elements the call builds; None when the query does not say in literals."""
    if name in _RANGES:
        return _range_length(name, arguments)
    position = _SIZE_ARGUMENT[name]
    if position >= len(arguments):
        return 0  # DuckDB's binder refuses the call
    count = integer_literal(arguments[position])
    if count is None:
        return None
    if name == "repeat":
        unit = _literal_length(arguments[0])
        return None if unit is None else max(count, 0) * unit
    return max(count, 0)


def _literal_length(expression: object) -> int | None:
    """Characters of a string literal, elements of a list literal (`[1, 2]`); None otherwise."""
    if isinstance(expression, dict) and expression.get("class") == "CONSTANT":
        literal = expression.get("literal")
        if isinstance(literal, dict) and literal.get("kind") == "STRING":
            return len(str(literal.get("text", "")))
    if isinstance(expression, dict) and expression.get("function_name") == "list_value":
        values = _arguments(expression)
        if values is not None and all(isinstance(v, dict) and v.get("class") == "CONSTANT" for v in values):
            return len(values)
    return None


def integer_literal(expression: object) -> int | None:
    """The value of an integer literal (also cast, e.g. `10::BIGINT`); None for anything else."""
    while isinstance(expression, dict) and expression.get("class") == "CAST":
        expression = expression.get("child")
    if not isinstance(expression, dict) or expression.get("class") != "CONSTANT":
        return None
    literal = expression.get("literal")
    if not isinstance(literal, dict) or literal.get("kind") != "INTEGER":
        return None
    try:
        return int(str(literal.get("text")))
    except ValueError:
        return None


def _range_length(name: str, arguments: list[object]) -> int | None:
    if not 1 <= len(arguments) <= 3:
        return 0  # DuckDB's binder refuses the call
    values = [integer_literal(argument) for argument in arguments]
    ints = [value for value in values if value is not None]
    if len(ints) != len(values):
        return None
    start, stop, step = (0, ints[0], 1) if len(ints) == 1 else (ints[0], ints[1], 1)
    if len(ints) == 3:
        step = ints[2]
    if step == 0:
        return 0  # DuckDB refuses a zero step itself
    return max(0, math.ceil((stop - start) / step)) + (1 if name == "generate_series" else 0)


def _format_width(name: str, template: object) -> int | str:
    """Characters the format string's widths and precisions ask for in all; a str says why
    the call may not run."""
    if not (
        isinstance(template, dict)
        and template.get("class") == "CONSTANT"
        and isinstance(literal := template.get("literal"), dict)
        and literal.get("kind") == "STRING"
        and isinstance(text := literal.get("text"), str)
    ):
        return f"{name}() needs its format string written as a string literal"
    if name == "printf":
        numbers = [n for spec in _PRINTF_SPEC.finditer(text.replace("%%", "")) for n in spec.groups() if n]
    else:
        unescaped = text.replace("{{", "").replace("}}", "")
        if "{" in _FMT_FIELD.sub("", unescaped):
            numbers = ["*"]  # a field inside a field: a width taken from an argument
        else:
            fields = _FMT_FIELD.findall(unescaped)
            numbers = [n for field in fields for n in re.findall(r"\d+", field.partition(":")[2])]
    if any(n == "*" or int(n) > MAX_FORMAT_WIDTH for n in numbers):
        return (
            f"{name}() field widths and precisions must be written in the format string "
            f"and be at most {MAX_FORMAT_WIDTH}"
        )
    return sum(int(n) for n in numbers)
