"""Jinja2 for data targets: the sandboxed environment templates render in, and `where:`,
a row filter evaluated in the same environment."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gptbatch.canonical import canonical_json
from gptbatch.errors import InputError, Problem

if TYPE_CHECKING:
    from gptbatch.inputs.render import Target

UNDEFINED = re.compile(r"'([^']+)' is undefined")


def environment(legacy: bool = False) -> Any:
    """The Jinja2 environment of templates and `where`: sandboxed, strict undefined; a
    nested value (an object or a list) placed in a string is written as canonical JSON
    (legacy: as Python's repr, as before RENDER_FORMAT 3)."""
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    return SandboxedEnvironment(
        undefined=StrictUndefined, autoescape=False, finalize=None if legacy else _as_json
    )


def _as_json(value: Any) -> Any:
    """A nested value as canonical JSON (what a JSONL record holds), anything else as is."""
    if isinstance(value, (dict, list)):
        try:
            return canonical_json(value).decode()
        except TypeError:  # a value JSON cannot hold (made by the template): as Jinja2 would
            return value
    return value


def where_syntax_error(expression: str) -> tuple[str, int] | None:
    """What is wrong with a `where` expression's syntax, and its line in it; None if fine."""
    from jinja2 import TemplateSyntaxError

    try:
        environment().compile_expression(expression, undefined_to_none=False)
    except TemplateSyntaxError as exc:
        return exc.message or "invalid expression", exc.lineno or 1
    return None


def row_filter(target: Target) -> Any:
    """A function (row, line, custom_id) -> does the row pass the target's `where`; None
    without one. InputError, naming the data file, row and line, when it cannot be told."""
    if target.where is None:
        return None
    from jinja2.exceptions import SecurityError, UndefinedError

    expression = environment().compile_expression(target.where, undefined_to_none=False)
    shown = f"where {target.where!r}"

    def passes(row: Mapping[str, Any], line: int, custom_id: str) -> bool:
        try:
            return bool(expression(row))
        except UndefinedError as exc:
            name = UNDEFINED.fullmatch(exc.message or "")
            what = f"{name.group(1)!r} names no column" if name else exc.message
            hint = f"the columns are {', '.join(row) or 'none'}; fix the filter or add the column"
        except SecurityError as exc:
            what = f"the sandbox refused: {exc}"
            hint = "a filter may only compare columns and use filters; no attribute access"
        except Exception as exc:  # a comparison or filter failing on this row's values
            what = f"failed: {exc}"
            hint = "CSV values are strings: compare with strings, or convert (x|int > 3)"
        raise InputError(
            Problem(
                target.data_display,
                line,
                f"target {target.name}, row {custom_id!r}: {shown}: {what}",
                hint,
            )
        )

    return passes


def filtered_out(targets: Mapping[str, Path]) -> dict[str, int]:
    """How many rows each target's `where` left out when it was last rendered, by target
    name (targets: each target's rendered file; a target without `where` is not listed)."""
    counts = {}
    for name, path in targets.items():
        with contextlib.suppress(OSError, ValueError):
            counts[name] = int(path.with_suffix(".filtered").read_text("utf-8"))
    return counts
