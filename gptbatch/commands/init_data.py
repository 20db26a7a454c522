"""`gptbatch init --data FILE`: a data target scaffolded from a table's header.

Writes the config's `inputs:` entry (name, data, id, request) and a request template file
whose user message names every column, for the user to edit into their prompt.
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from gptbatch.errors import InputError, Problem, UsageError
from gptbatch.inputs.parquet import is_parquet, parquet_columns
from gptbatch.inputs.render import SNIFFED

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NAME = re.compile(r"[^A-Za-z0-9_-]+")
HEADER_BYTES = 1 << 20  # a header (or first record) longer than this is not a table's

TEMPLATE = """\
# The request template for the `{name}` target: every string is a Jinja2 template over
# one row of {data} ({{{{ column }}}}). Edit it into your prompt; editing this file later
# sends every request it renders again, and nothing else.
url: /v1/chat/completions
body:
  model: gpt-4o-mini
  messages:
    - role: system
      content: "Describe what the model should do with each row."
    - role: user
      content: "{user}"
{skipped}"""


@dataclass(frozen=True)
class DataScaffold:
    """What `init --data` derived from the table: the target and its template file."""

    name: str
    data: str  # relative to the config's directory
    id: str
    columns: tuple[str, ...]
    template: str  # relative to the config's directory
    template_text: str


def table_columns(path: Path) -> list[str]:
    """The columns of a CSV (its header row), JSONL table (its first record's keys) or
    Parquet file (its schema)."""
    if is_parquet(path):
        return parquet_columns(path, str(path))
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER_BYTES)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror or exc}") from None
    text = head.decode("utf-8-sig", errors="replace")
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    record = json.loads(line)
                except ValueError as exc:
                    raise InputError(
                        Problem(str(path), number, f"not JSON: {exc}", "one object a line")
                    ) from None
                if not isinstance(record, dict) or not record:
                    raise InputError(
                        Problem(str(path), number, "not a JSON object with fields", "")
                    )
                return [str(k) for k in record]
        raise InputError(Problem(str(path), None, "no records", "one JSON object a line"))
    # The separator that splits the header into the most columns (commas on a tie): the
    # build then finds the id column with it (render's sniffing, when csv: is unset).
    first = text.splitlines()[:1]
    header = max(
        (next(csv.reader(first, delimiter=d), None) or [] for d in (",", *SNIFFED)), key=len
    )
    if not header or not any(c.strip() for c in header):
        raise InputError(Problem(str(path), 1, "no header row", "the first row names the columns"))
    return [c.strip() for c in header]


def pick_id(columns: list[str], wanted: str | None, path: Path) -> str:
    """The id column: the one asked for, else `id` or the first `*_id`/`*id` column."""
    if wanted is not None:
        if wanted not in columns:
            raise UsageError(
                f"--id {wanted}: {path.name} has no such column (columns: {', '.join(columns)})"
            )
        return wanted
    lowered = [c.lower() for c in columns]
    for i, c in enumerate(lowered):
        if c == "id":
            return columns[i]
    for i, c in enumerate(lowered):
        if c.endswith(("_id", "-id", " id")) or (c.endswith("id") and len(c) > 2):
            return columns[i]
    raise UsageError(
        f"{path.name}: no column looks like a row id (columns: {', '.join(columns)}); "
        "pass --id COLUMN naming a column whose values are unique and non-empty"
    )


def scaffold_data_target(
    directory: Path, data: Path, *, id_column: str | None = None
) -> DataScaffold:
    """The data target for a table: its name, id column and a template naming its columns."""
    if not data.is_file():
        raise UsageError(
            f"{data}: no such file (a CSV with a header row, JSONL records or Parquet)"
        )
    columns = table_columns(data)
    ident = pick_id(columns, id_column, data)
    name = _NAME.sub("-", data.stem).strip("-") or "target"
    try:  # relative, so a committed config works in any checkout
        shown = os.path.relpath(data.resolve(), directory.resolve())
    except ValueError:  # another drive (Windows)
        shown = str(data.resolve())
    usable = [c for c in columns if c != ident and _IDENTIFIER.fullmatch(c)]
    skipped = [c for c in columns if c != ident and not _IDENTIFIER.fullmatch(c)]
    fallback = f"{{{{ {ident} }}}}" if _IDENTIFIER.fullmatch(ident) else "Write the prompt here."
    user = "\\n".join(f"{c}: {{{{ {c} }}}}" for c in usable) or fallback
    note = (
        "# Columns whose names are not identifiers cannot be placeholders: "
        + ", ".join(skipped)
        + "\n"
        if skipped
        else ""
    )
    template = f"prompts/{name}.yaml"
    text = TEMPLATE.format(name=name, data=shown, user=user, skipped=note)
    return DataScaffold(name, shown, ident, tuple(columns), template, text)


def inputs_block(target: DataScaffold) -> str:
    """The `inputs:` entries of a config whose one input is this data target."""
    return (
        f"  - name: {json.dumps(target.name)}\n"
        f"    data: {json.dumps(target.data)}   # columns: {', '.join(target.columns)}\n"
        f"    id: {json.dumps(target.id)}   # names each row (its custom_id): unique, non-empty\n"
        f"    request: {json.dumps(target.template)}   # the request template, a Jinja2 "
        "template per string\n"
    )
