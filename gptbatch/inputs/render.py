"""Data targets: a table (CSV or JSONL records) and a Jinja2 request template rendered to JSONL.

A target renders to an ordinary request file under the state directory, which the build then
takes as an input like any other: content keys, shards, the queue and crash safety are the
build's. Rendering is deterministic (canonical JSON, rows in data order), so identical data and
template give a byte-identical file; a fingerprint of both skips rendering when nothing changed.
"""

from __future__ import annotations

import atexit
import bisect
import contextlib
import csv
import dataclasses
import hashlib
import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import yaml

from gptbatch.canonical import atomic_write_bytes, atomic_writer, canonical_json, file_sha256
from gptbatch.errors import InputError, Problem
from gptbatch.inputs.where import UNDEFINED, environment, row_filter

# bump when rendering changes, so every target renders again (3: nested values as JSON)
RENDER_FORMAT = 3
MAX_PROBLEMS = 20


@dataclass(frozen=True)
class Target:
    """One `inputs:` entry that is a mapping: a table rendered through a request template."""

    name: str
    data: Path  # absolute
    data_display: str  # as written in batch.yaml
    id: str
    request: Any  # the template: a mapping of strings to render
    template_display: str  # batch.yaml or the template file, as shown in messages
    template_node: yaml.Node  # the template's YAML node, for the line of each string
    template_path: tuple[Any, ...]  # where the template sits inside template_node
    template_text: str | None  # a template file's text (part of the fingerprint)
    retry_invalid: bool = False  # send again an answer that is not JSON matching its schema
    upstream: str | None = None  # a step: the target whose answers table is its data
    # a step: how many columns its upstream's table ends with that are answer columns
    # (`answer` and one per schema property): the first of them is the answer, whatever
    # it is named (answer.answer when the upstream data has its own `answer` column)
    upstream_answers: int = 1
    # the request lines' shape: "openai" ({custom_id, method, url, body}) or "anthropic"
    # ({custom_id, params}: the template's body as Messages parameters), by api.provider
    shape: str = "openai"
    # a row filter: a Jinja2 expression over the row's columns; a row for which it is false
    # sends nothing and has no line in the table
    where: str | None = None
    # the CSV data's dialect (csv: on the target; a .tsv file's delimiter is a tab)
    delimiter: str = ","
    quotechar: str = '"'
    sniff: bool = False  # no csv: given: the header may show another delimiter (_sniffed)


def rendered_path(state: Path, name: str) -> Path:
    """Where a target's requests are rendered: <state>/rendered/<name>.jsonl."""
    return state / "rendered" / f"{name}.jsonl"


def source_path(state: Path, target: Target) -> Path:
    """The copy of a target's data its requests were rendered from (<state>/rendered/sources/):
    its table is written from the same rows, whatever happens to the data meanwhile."""
    suffix = target.data.suffix.lower() if target.upstream is None else ".csv"
    if suffix == ".ndjson":
        suffix = ".jsonl"
    elif suffix not in (".jsonl", ".parquet", ".pq"):
        suffix = ".csv"
    return state / "rendered" / "sources" / (target.name + suffix)


def as_rendered(target: Target, state: Path) -> Target:
    """The target reading the copy of its data that it was rendered from (absent: no rows)."""
    return dataclasses.replace(target, data=source_path(state, target))


def fingerprint(target: Target, sample: int | None = None) -> str:
    """What a target's rendered file depends on: data bytes, template and settings."""
    facts = {
        "format": RENDER_FORMAT,
        # a step's upstream table does not exist until its upstream target is built
        "data": file_sha256(target.data) if target.data.exists() else None,
        "id": target.id,
        "name": target.name,
        "request": target.request,
        **({"shape": target.shape} if target.shape != "openai" else {}),
        **({"where": target.where} if target.where is not None else {}),
        **(
            {"csv": [target.delimiter, target.quotechar]}
            if (target.delimiter, target.quotechar) != (",", '"')
            else {}
        ),
    }
    if sample is not None:
        facts["sample"] = sample
    return canonical_json(facts).decode()


def is_rendered(target: Target, state: Path, sample: int | None = None) -> bool:
    """Is the target's rendered file the one its data and template make now?"""
    return _rendered_as(rendered_path(state, target.name), fingerprint(target, sample))


def _rendered_as(path: Path, stamp: str) -> bool:
    """Is the rendered file at path there, and was it rendered from what stamp says?"""
    marker = path.with_suffix(".fingerprint")
    return path.is_file() and marker.is_file() and marker.read_text("utf-8") == stamp


def render_directory(state: Path, *, build: bool) -> Path:
    """Where a command renders data targets: the build state, or a scratch directory.

    A build renders into its state directory, where later builds find the rendered files
    current. Other commands (validate, plan, status...) never create an output or state
    directory: before the first build they render into a scratch directory removed at exit.
    """
    if build or state.is_dir():
        return state
    scratch = Path(tempfile.mkdtemp(prefix="gptbatch-rendered-"))
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    return scratch


def render_targets(targets: list[Target], state: Path, *, sample: int | None = None) -> None:
    """Render every target whose fingerprint changed; InputError, writing nothing, if any fails.

    Each target streams into its own temp file beside its rendered file; they are renamed
    into place only once every target rendered, so a bad row anywhere leaves every rendered
    file (and the directories, if this made them) as it was. sample: render only that many
    rows of each target (`sampled_ids`).
    """
    todo: list[tuple[Target, Path]] = []
    for target in targets:
        path = rendered_path(state, target.name)
        if not _rendered_as(path, fingerprint(target, sample)):
            todo.append((target, path))
    if not todo:
        return
    made = _missing_dirs(source_path(state, todo[0][0]).parent)
    problems: list[Problem] = []
    stamps: list[str] = []
    filtered: list[int] = []
    try:
        with contextlib.ExitStack() as stack:
            for target, path in todo:
                # Rendered from a copy of the data, which the table is written from too: an
                # edit of the data during the build cannot pair a row with another's answer.
                try:
                    copy = stack.enter_context(_copied(target, source_path(state, target)))
                except InputError as exc:
                    problems += exc.problems
                    continue
                used = dataclasses.replace(target, data=copy) if copy else target
                stamps.append(fingerprint(used, sample))  # the copy's bytes: what was rendered
                out = stack.enter_context(atomic_writer(path, "wb"))
                try:
                    filtered.append(render(used, out, sample))
                except InputError as exc:
                    problems += exc.problems
            if problems:  # raised inside the stack: every temp file is removed
                raise InputError(
                    problems[:MAX_PROBLEMS], truncated=max(0, len(problems) - MAX_PROBLEMS)
                )
    except BaseException:
        for directory in made:
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise
    for (target, path), stamp, count in zip(todo, stamps, filtered, strict=True):
        counted = path.with_suffix(".filtered")
        if target.where is not None:
            atomic_write_bytes(counted, str(count).encode())
        else:
            with contextlib.suppress(FileNotFoundError):
                counted.unlink()
        # The fingerprint goes last: a kill in between leaves a stale one, so it renders again.
        atomic_write_bytes(path.with_suffix(".fingerprint"), stamp.encode())


@contextlib.contextmanager
def _copied(target: Target, copy: Path) -> Iterator[Path | None]:
    """A temp copy of the target's data, renamed to copy on success (None, and copy removed,
    for a step whose upstream table is not written yet); InputError if it cannot be read."""
    if not target.data.exists():
        yield None
        with contextlib.suppress(FileNotFoundError):
            copy.unlink()
        return
    copy.parent.mkdir(parents=True, exist_ok=True)
    # the copy keeps the data's suffix, by which its rows are read (CSV or JSONL records)
    fd, tmp = tempfile.mkstemp(dir=copy.parent, prefix=f".{copy.name}.", suffix=copy.suffix)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with open(target.data, "rb") as source:
                    shutil.copyfileobj(source, out, 1 << 20)
            except OSError as exc:
                raise InputError(
                    Problem(target.data_display, None, f"cannot read: {exc.strerror}", "")
                ) from None
            out.flush()
            os.fsync(out.fileno())
        yield Path(tmp)
        os.replace(tmp, copy)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _missing_dirs(directory: Path) -> list[Path]:
    """directory and its parents that do not exist yet, deepest first."""
    missing = []
    while not directory.exists() and directory.parent != directory:
        missing.append(directory)
        directory = directory.parent
    return missing


def render(
    target: Target, out: IO[bytes], sample: int | None = None, *, legacy: bool = False
) -> int:
    """Write the target's request lines to out, one per data row in data order, as rows are
    read; InputError if any is wrong. sample: only the rows `sampled_ids` picks. Returns how
    many rows `where` left out. legacy: nested values as Python's repr (see _environment)."""
    from jinja2 import TemplateSyntaxError

    env = environment(legacy)
    strings: list[tuple[tuple[Any, ...], str]] = list(_strings(target.request, ()))
    compiled: dict[tuple[Any, ...], Any] = {}
    problems: list[Problem] = []
    for where, text in strings:
        if "{" not in text:
            continue  # nothing to render: the string is itself
        try:
            compiled[where] = env.from_string(text)
        except TemplateSyntaxError as exc:
            line = _template_line(target, where) + (exc.lineno or 1) - 1
            problems.append(
                Problem(
                    target.template_display,
                    line,
                    f"target {target.name}: Jinja2 syntax error: {exc.message}",
                    "fix the template; placeholders look like {{ column }}",
                )
            )
    if problems:
        raise InputError(problems)
    # Where a template is, and the mappings and lists holding one: everything else is the
    # same in every request and is shared, not walked (a large JSON schema, say).
    live = frozenset(where[:i] for where in compiled for i in range(len(where) + 1))
    chosen = sampled_ids(target, sample) if sample is not None else None
    passes = row_filter(target)
    seen: dict[str, int] = {}
    filtered = 0
    for line, row in data_rows(target):
        custom_id = _row_id(target, line, row, seen)
        if passes is not None and not passes(row, line, custom_id):
            filtered += 1
            continue
        if chosen is not None and custom_id not in chosen:
            continue
        body = _render_value(target, target.request, (), compiled, live, row, line, custom_id)
        if target.shape == "anthropic":
            request = {"custom_id": request_id(target, custom_id), "params": body["body"]}
        else:
            request = {"custom_id": request_id(target, custom_id), "method": "POST", **body}
        out.write(canonical_json(request) + b"\n")
    if not seen and target.upstream is None:  # a step may have no answered rows yet
        raise InputError(
            Problem(target.data_display, None, f"target {target.name}: no data rows", "")
        )
    return filtered


def sampled_ids(target: Target, count: int) -> set[str]:
    """The ids of `count` rows of a target: those whose ids hash lowest (sha256 of target name
    and id). The same rows every time, spread over the table whatever its order, and stable
    as rows are added (a new row joins only if it hashes lower than one picked). One pass,
    holding only the picks; every id is checked as rendering checks it. Only rows passing
    `where` are picked."""
    picked: list[tuple[bytes, str]] = []  # sorted by hash, at most count long
    seen: dict[str, int] = {}
    prefix = target.name.encode() + b"\0"
    passes = row_filter(target)
    for line, row in data_rows(target):
        custom_id = _row_id(target, line, row, seen)
        if passes is not None and not passes(row, line, custom_id):
            continue
        digest = hashlib.sha256(prefix + custom_id.encode()).digest()
        if len(picked) < count:
            bisect.insort(picked, (digest, custom_id))
        elif count and digest < picked[-1][0]:
            bisect.insort(picked, (digest, custom_id))
            picked.pop()
    return {custom_id for _, custom_id in picked}


def _strings(value: Any, where: tuple[Any, ...]) -> Iterator[tuple[tuple[Any, ...], str]]:
    """Every string in a template, with where it sits."""
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _strings(v, (*where, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, (*where, i))


def _template_line(target: Target, where: tuple[Any, ...]) -> int:
    from gptbatch.config.yaml_source import line_of

    return line_of(target.template_node, [*target.template_path, *where])


def _render_value(
    target: Target,
    value: Any,
    where: tuple[Any, ...],
    compiled: Mapping[tuple[Any, ...], Any],
    live: frozenset[tuple[Any, ...]],
    row: Mapping[str, Any],
    line: int,
    custom_id: str,
) -> Any:
    """value with every string rendered against row; other values as they are (shared)."""
    if where not in live:
        return value
    if isinstance(value, Mapping):
        return {
            k: _render_value(target, v, (*where, k), compiled, live, row, line, custom_id)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [
            _render_value(target, v, (*where, i), compiled, live, row, line, custom_id)
            for i, v in enumerate(value)
        ]
    template = compiled.get(where) if isinstance(value, str) else None
    if template is None:
        return value
    from jinja2.exceptions import SecurityError, UndefinedError

    try:
        return template.render(row)
    except UndefinedError as exc:
        columns = ", ".join(row) or "none"
        name = UNDEFINED.fullmatch(exc.message or "")
        what = f"placeholder {{{{ {name.group(1)} }}}} names no column" if name else exc.message
        raise InputError(
            Problem(
                target.data_display,
                line,
                f"row {custom_id!r}: template {target.template_display}:"
                f"{_template_line(target, where)}: {what}",
                f"the columns are {columns}; fix the placeholder or add the column",
            )
        ) from None
    except SecurityError as exc:
        raise InputError(
            Problem(
                target.template_display,
                _template_line(target, where),
                f"target {target.name}, row {custom_id!r}: the sandbox refused: {exc}",
                "templates may only insert columns ({{ column }}) and use filters; "
                "no attribute access or code",
            )
        ) from None
    except Exception as exc:  # a filter or test failing on this row's value
        raise InputError(
            Problem(
                target.data_display,
                line,
                f"row {custom_id!r}: template {target.template_display}:"
                f"{_template_line(target, where)} failed: {exc}",
                "fix the template or this row",
            )
        ) from None


def _row_id(target: Target, line: int, row: Mapping[str, Any], seen: dict[str, int]) -> str:
    """The row's custom_id from its id column; InputError if missing, empty or repeated."""
    if target.id not in row:
        hint = f"the columns are {', '.join(row) or 'none'}; set id: to one of them"
        header = ", ".join(row)
        mark = next((m for m in (";", "\t", "|") if m in header), None)
        csv_data = target.data.suffix.lower() not in (".jsonl", ".ndjson", ".parquet", ".pq")
        split = [c.strip() for c in header.split(mark)] if mark is not None else []
        if len(row) == 1 and target.delimiter != mark and csv_data and target.id in split:
            # a whole header read as one column: the file is delimited by something else
            written = "\\t" if mark == "\t" else mark
            hint = (
                f"the header is one column, {header!r}: if {mark!r} separates the columns, "
                f'set csv: {{delimiter: "{written}"}} on the target'
            )
        raise InputError(
            Problem(
                target.data_display,
                line,
                f"target {target.name}: no id column {target.id!r}",
                hint,
            )
        )
    value = row[target.id]
    custom_id = value if isinstance(value, str) else json.dumps(value)
    if value is None or custom_id.strip() == "":
        raise InputError(
            Problem(
                target.data_display,
                line,
                f"target {target.name}: empty id (column {target.id!r})",
                "every row needs a unique, non-empty id",
            )
        )
    if custom_id in seen:
        raise InputError(
            Problem(
                target.data_display,
                line,
                f"target {target.name}: duplicate id {custom_id!r} (first on line "
                f"{seen[custom_id]})",
                "ids must be unique within a target",
            )
        )
    seen[custom_id] = line
    return custom_id


def _lines(target: Target) -> Iterator[str]:
    """The data file's lines, decoded as read (a BOM dropped); InputError at the first byte
    that is not UTF-8, with its line."""
    with contextlib.ExitStack() as stack:
        try:
            f = stack.enter_context(open(target.data, "rb"))
        except OSError as exc:
            raise InputError(
                Problem(target.data_display, None, f"cannot read: {exc.strerror}", "")
            ) from None
        offset = 0
        for number, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                bom = 3 if number == 1 and raw.startswith(b"\xef\xbb\xbf") else 0
                raise InputError(
                    Problem(
                        target.data_display,
                        number,
                        f"not UTF-8 (byte {offset + exc.start + bom + 1})",
                        "save the data as UTF-8 (with or without a BOM)",
                    )
                ) from None
            offset += len(raw)
            yield text


def request_id(target: Target, row_id: str) -> str:
    """The custom_id a row's request is sent with: its id; a step's is `<step>:<id>`, so
    that the rows it shares with its upstream target are told apart."""
    return f"{target.name}:{row_id}" if target.upstream is not None else row_id


def data_rows(target: Target) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line, record) of each data row, as read: JSONL records for .jsonl/.ndjson, Parquet
    rows for .parquet/.pq (line: the row's number, from 1), else CSV.

    A step's rows are those of its upstream target's table that have an answer (none while
    that table is not written yet)."""
    if target.upstream is not None:
        if target.data.exists():
            for line, row in _csv_rows(target, _lines(target)):
                columns = list(row)
                if (
                    len(columns) >= target.upstream_answers
                    and row[columns[-target.upstream_answers]]
                ):
                    yield line, row
        return
    if target.data.suffix.lower() in (".jsonl", ".ndjson"):
        yield from _jsonl_rows(target, _lines(target))
    elif target.data.suffix.lower() in (".parquet", ".pq"):
        from gptbatch.inputs.parquet import parquet_rows

        yield from parquet_rows(target.data, target.data_display)
    else:
        yield from _csv_rows(target, _lines(target))


def _jsonl_rows(target: Target, lines: Iterator[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise InputError(
                Problem(target.data_display, number, f"not JSON: {exc}", "one object a line")
            ) from None
        if not isinstance(record, dict):
            raise InputError(
                Problem(target.data_display, number, "not a JSON object", "one object a line")
            )
        yield number, record


SNIFFED = (";", "\t", "|")  # delimiters a header can show where csv: names none


def _sniffed(target: Target, header: str) -> str:
    """The delimiter of a CSV whose target gives none: the default, unless the header read
    with it lacks the id column and read with one of SNIFFED has it (a ;-separated export).

    Decided by the id column, not by a guess over the text: a file that reads with the
    default reads so forever, and its requests keep their keys.
    """

    def columns(delimiter: str) -> list[str]:
        fields = next(csv.reader([header], delimiter=delimiter, quotechar=target.quotechar), [])
        return [c.strip() for c in fields]

    if not target.sniff or target.id in columns(target.delimiter):
        return target.delimiter
    return next((d for d in SNIFFED if target.id in columns(d)), target.delimiter)


def _csv_rows(target: Target, lines: Iterator[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    first = next(lines, None)
    if first is None:
        raise InputError(Problem(target.data_display, 1, "empty CSV", "add a header row"))
    delimiter = _sniffed(target, first.rstrip("\r\n"))
    lines = itertools.chain([first], lines)
    # strict: an unclosed quote is an error; the lenient reader took every line after it, to
    # the end of the file, into that one field, and those rows were silently never sent
    reader = csv.reader(lines, strict=True, delimiter=delimiter, quotechar=target.quotechar)
    start = 1
    try:
        header = next(reader, None)
        if header is None:
            raise InputError(Problem(target.data_display, 1, "empty CSV", "add a header row"))
        columns = [c.strip() for c in header]
        repeated = sorted({c for c in columns if columns.count(c) > 1})
        if repeated or "" in columns:
            raise InputError(
                Problem(
                    target.data_display,
                    1,
                    f"header has {'repeated' if repeated else 'empty'} column names"
                    + (f" ({', '.join(repeated)})" if repeated else ""),
                    "give every column a unique name",
                )
            )
        start = reader.line_num + 1
        for fields in reader:
            line, start = start, reader.line_num + 1
            if not fields:
                continue  # a blank line
            if len(fields) != len(columns):
                raise InputError(
                    Problem(
                        target.data_display,
                        line,
                        f"row has {len(fields)} fields, the header {len(columns)}"
                        + (f" (columns separated by {delimiter!r})" if delimiter != "," else ""),
                        "quote fields holding the separator; every row needs one field per column",
                    )
                )
            yield line, dict(zip(columns, fields, strict=True))
    except csv.Error as exc:
        raise InputError(
            Problem(
                target.data_display,
                start,
                f"bad CSV in the row starting here: {exc}",
                'close each quoted field\'s quote, and double a quote inside one ("")',
            )
        ) from None
