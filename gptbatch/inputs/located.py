"""A data target's rendered request, located in its data: the data file and the row's line.

A target's requests are checked (duplicate custom_ids across inputs, say) and exported as
lines of the rendered file in the state, which the user never wrote. These name instead the
data file as batch.yaml gives it and the line of the row the request was rendered from, found
in the copy of the data it was rendered from, by the row's id: one pass over the rendered
file and one over that copy, holding only the lines asked for.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from gptbatch.errors import InputError, Problem
from gptbatch.inputs.render import Target, as_rendered, data_rows, request_id

_FIRST_SEEN = re.compile(r"\(first seen at (.+):(\d+)\)")


def _rendered_targets(
    targets: Mapping[str, Path], data_targets: Iterable[Target]
) -> dict[str, Target]:
    """Each data target by the absolute path of its rendered file."""
    by_name = {t.name: t for t in data_targets}
    return {os.path.abspath(p): by_name[n] for n, p in targets.items() if n in by_name}


def data_lines(target: Target, rendered: Path, lines: Iterable[int]) -> dict[int, int]:
    """The data line of the row each of lines of the rendered file was rendered from (a line
    whose row is not found, or that cannot be read, is left out)."""
    wanted = set(lines)
    ids: dict[str, int] = {}  # the request's custom_id: its rendered line
    try:
        with open(rendered, "rb") as f:
            for number, raw in enumerate(f, 1):
                if number in wanted:
                    ids[str(json.loads(raw).get("custom_id"))] = number
                    if len(ids) == len(wanted):
                        break
    except (OSError, ValueError, AttributeError):
        return {}
    return _find_rows(as_rendered(target, rendered.parent.parent), ids)


def _find_rows(target: Target, ids: Mapping[str, int]) -> dict[int, int]:
    """{rendered line: data line} for the rows of target whose request ids are in ids."""
    found: dict[int, int] = {}
    if not ids:
        return found
    try:
        for line, row in data_rows(target):
            value = row.get(target.id)
            row_id = value if isinstance(value, str) else json.dumps(value)
            at = ids.get(request_id(target, row_id))
            if at is not None:
                found[at] = line
                if len(found) == len(ids):
                    break
    except InputError:
        pass  # the copy no longer reads: leave those lines as they are
    return found


def relocate(
    problems: Sequence[Problem], targets: Mapping[str, Path], data_targets: Iterable[Target]
) -> list[Problem]:
    """problems, each one located in a data target's rendered file (and a "first seen at"
    naming one) located at the data file and row instead. targets: Spec.targets."""
    rendered = _rendered_targets(targets, data_targets)
    if not rendered:
        return list(problems)
    asked: dict[str, set[int]] = {}
    for p in problems:
        if os.path.abspath(p.path) in rendered and p.line is not None:
            asked.setdefault(os.path.abspath(p.path), set()).add(p.line)
        seen = _FIRST_SEEN.search(p.message)
        if seen and os.path.abspath(seen.group(1)) in rendered:
            asked.setdefault(os.path.abspath(seen.group(1)), set()).add(int(seen.group(2)))
    if not asked:
        return list(problems)
    lines = {path: data_lines(rendered[path], Path(path), wanted) for path, wanted in asked.items()}

    def at(path: str, line: int | None) -> tuple[str, int | None] | None:
        full = os.path.abspath(path)
        if full not in rendered or line is None or line not in lines.get(full, {}):
            return None
        return rendered[full].data_display, lines[full][line]

    out = []
    for p in problems:
        path, line = at(p.path, p.line) or (p.path, p.line)
        message = p.message
        seen = _FIRST_SEEN.search(message)
        first = at(seen.group(1), int(seen.group(2))) if seen else None
        if seen and first is not None:
            message = message.replace(seen.group(0), f"(first seen at {first[0]}:{first[1]})")
        out.append(Problem(path, line, message, p.hint))
    return out


def relocated(
    exc: InputError, targets: Mapping[str, Path], data_targets: Iterable[Target]
) -> InputError:
    """exc with its problems relocated (see relocate), or exc itself if none moved."""
    moved = relocate(exc.problems, targets, data_targets)
    return exc if moved == exc.problems else InputError(moved, truncated=exc.truncated)


class RowLines:
    """The data line of each of a target's requests, asked in rendered order (its requests
    as the state holds them: right only if the rendered file is the one last synced): a walk
    along the data copy, a row after another; None once a request's row is not found."""

    def __init__(self, target: Target, rendered: Path) -> None:
        self.target = target
        self.rows: Iterator[tuple[int, dict[str, object]]] | None = data_rows(
            as_rendered(target, rendered.parent.parent)
        )

    def __call__(self, custom_id: str) -> int | None:
        if self.rows is None:
            return None
        try:
            for number, row in self.rows:
                value = row.get(self.target.id)
                row_id = value if isinstance(value, str) else json.dumps(value)
                if request_id(self.target, row_id) == custom_id:
                    return number
        except InputError:
            pass
        self.rows = None  # not found: the copy is not what the state's requests came from
        return None
