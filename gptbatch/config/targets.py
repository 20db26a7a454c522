"""batch.yaml's data targets: `inputs:` mappings (name, data, id, request) checked and located."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from gptbatch.config.input_files import excluded_by, excluded_dirs
from gptbatch.config.yaml_source import line_of, parse_yaml
from gptbatch.errors import ConfigError, Problem
from gptbatch.inputs.answers import answer_properties
from gptbatch.inputs.parquet import INSTALL, is_parquet, missing_pyarrow
from gptbatch.inputs.render import Target
from gptbatch.inputs.where import where_syntax_error


def load_targets(
    entries: Sequence[Any],
    root: Path,
    node: yaml.Node,
    display: str,
    tables: Path,
    output_dir: Path | None = None,
    provider: str = "openai",
) -> tuple[dict[int, Target], list[Problem]]:
    """The targets among inputs, by their index, and what is wrong with them (located).

    provider: api.provider; an anthropic target renders Anthropic's lines ({custom_id, params}).
    A target whose `data:` names another target is a step: its data is that target's answers
    table, <tables>/<name>.csv (tables: the output directory this build writes to). A data
    or template file under output_dir (or the rehearsal's, or the state's) is refused as a
    request file there is: tables and results are written there, over it.
    """
    excluded = excluded_dirs(root, output_dir if output_dir is not None else tables)
    targets: dict[int, Target] = {}
    problems: list[Problem] = []
    names: dict[str, int] = {}
    declared = {
        str(e["name"]): i for i, e in enumerate(entries) if isinstance(e, Mapping) and "name" in e
    }
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            continue
        where = ["inputs", index]
        name = str(entry["name"])
        if name in names:
            problems.append(
                Problem(
                    display,
                    line_of(node, [*where, "name"]),
                    f"inputs[{index}]: target name {name!r} is also inputs[{names[name]}]'s",
                    "give each target its own name (it names the output file)",
                )
            )
        names.setdefault(name, index)
        upstream = str(entry["data"]) if str(entry["data"]) in declared else None
        data = Path(os.path.abspath(root / os.path.expanduser(str(entry["data"]))))
        if upstream is not None:
            data = tables / f"{upstream}.csv"
        elif not data.is_file():
            problems.append(
                Problem(
                    display,
                    line_of(node, [*where, "data"]),
                    f"inputs[{index}]: target {name}: no data file {entry['data']!r}",
                    f"paths are relative to the config's directory, {root}; the data is a CSV "
                    "with a header row or JSONL records, or the name of another target (a "
                    f"step over its answers: {', '.join(sorted(declared)) or 'none here'})",
                )
            )
        elif data.suffix.lower() in (".xlsx", ".xls"):
            problems.append(
                Problem(
                    display,
                    line_of(node, [*where, "data"]),
                    f"inputs[{index}]: target {name}: {entry['data']!r}: data targets do not "
                    "read spreadsheets",
                    "data targets read CSV with a header row, JSONL records (.jsonl) or "
                    "Parquet (.parquet); save the sheet as one of them",
                )
            )
        elif is_parquet(data) and (why := missing_pyarrow()) is not None:
            problems.append(
                Problem(
                    display,
                    line_of(node, [*where, "data"]),
                    f"inputs[{index}]: target {name}: {entry['data']!r}: {why}",
                    f"{INSTALL} (or convert the table to CSV or JSONL records)",
                )
            )
        elif (label := excluded_by(data, excluded)) is not None:
            problems.append(
                _under_outputs(
                    display,
                    line_of(node, [*where, "data"]),
                    index,
                    name,
                    f"data file {entry['data']!r}",
                    label,
                )
            )
        request = request_file = entry["request"]
        if isinstance(request, str):
            try:
                loaded = _template_file(root, request, node, [*where, "request"], display)
            except ConfigError as exc:
                problems += exc.problems
                continue
            request, template_display, template_node, template_path, text = loaded
            label = excluded_by(
                Path(os.path.abspath(root / os.path.expanduser(request_file))), excluded
            )
            if label is not None:
                problems.append(
                    _under_outputs(
                        display,
                        line_of(node, [*where, "request"]),
                        index,
                        name,
                        f"request template {request_file!r}",
                        label,
                    )
                )
        else:
            template_display, template_node = display, node
            template_path, text = (*where, "request"), None
        wrong = _template_problem(request, provider)
        if wrong:
            problems.append(
                Problem(
                    template_display,
                    line_of(template_node, list(template_path)),
                    f"inputs[{index}]: target {name}: {wrong}",
                    "the request template is a mapping with url and body, e.g. "
                    "{url: /v1/chat/completions, body: {model: ..., messages: [...]}}",
                )
            )
            continue
        where_text = entry.get("where")
        if where_text is not None:
            wrong_where = where_syntax_error(str(where_text))
            if wrong_where is not None:
                problems.append(
                    Problem(
                        display,
                        line_of(node, [*where, "where"]) + wrong_where[1] - 1,
                        f"inputs[{index}]: target {name}: where: Jinja2 syntax error: "
                        f"{wrong_where[0]}",
                        "where is an expression over the row's columns, e.g. "
                        "\"sentiment == 'negative'\" (no {{ }})",
                    )
                )
                continue
        dialect = _dialect(entry, data, upstream is not None)
        if isinstance(dialect, str):
            problems.append(
                Problem(
                    display,
                    line_of(node, [*where, "csv"]),
                    f"inputs[{index}]: target {name}: csv: {dialect}",
                    'csv: {delimiter: ";", quotechar: \'"\'} takes one character each, '
                    "for a CSV data file",
                )
            )
            continue
        targets[index] = Target(
            name=name,
            data=data,
            data_display=str(entry["data"]) if upstream is None else os.path.relpath(data, root),
            id=str(entry["id"]),
            request=request,
            template_display=template_display,
            template_node=template_node,
            template_path=tuple(template_path),
            template_text=text,
            retry_invalid=bool(entry.get("retry_invalid", False)),
            upstream=upstream,
            shape="anthropic" if provider == "anthropic" else "openai",
            where=None if where_text is None else str(where_text),
            delimiter=dialect[0],
            quotechar=dialect[1],
            sniff=upstream is None and entry.get("csv") is None,
        )
    problems += _cycles(targets, node, display)
    by_name = {t.name: t for t in targets.values()}
    for index, target in targets.items():
        upstream = by_name.get(target.upstream) if target.upstream is not None else None
        if upstream is not None:
            targets[index] = dataclasses.replace(
                target, upstream_answers=1 + len(answer_properties(upstream.request))
            )
    return targets, problems


def _dialect(entry: Mapping[str, Any], data: Path, step: bool) -> tuple[str, str] | str:
    """The target's CSV (delimiter, quotechar), or what is wrong with its `csv:`. A .tsv
    file's delimiter is a tab unless csv: says otherwise."""
    given = entry.get("csv")
    default = "\t" if data.suffix.lower() == ".tsv" and not step else ","
    if given is None:
        return default, '"'
    if step:
        return "applies to a data file; a step's data is its upstream's table (plain CSV)"
    if data.suffix.lower() in (".jsonl", ".ndjson", ".parquet", ".pq"):
        return f"applies to CSV data, not {data.suffix} files"
    if not isinstance(given, Mapping):
        return "is not a mapping"
    delimiter = str(given.get("delimiter", default))
    quotechar = str(given.get("quotechar", '"'))
    for what, value in (("delimiter", delimiter), ("quotechar", quotechar)):
        if len(value) != 1 or value in "\r\n":
            return f"{what} {value!r} is not one character (other than a line break)"
    if delimiter == quotechar:
        return f"delimiter and quotechar are both {delimiter!r}"
    return delimiter, quotechar


def _under_outputs(
    display: str, line: int | None, index: int, name: str, what: str, label: str
) -> Problem:
    """A data target's file under a directory results are written to."""
    return Problem(
        display,
        line,
        f"inputs[{index}]: target {name}: {what} is under {label}, which holds results "
        "and build state, not inputs (a build writes its tables there, over the data)",
        "move the file elsewhere, or give output_dir a directory of its own",
    )


def _cycles(targets: Mapping[int, Target], node: yaml.Node, display: str) -> list[Problem]:
    """A problem for each cycle of steps (a target whose own answers its data depends on),
    located at the `data:` of the cycle's first target in config order."""
    by_name = {t.name: t for t in targets.values()}
    problems: list[Problem] = []
    reported: set[str] = set()
    for index, target in sorted(targets.items()):
        chain = [target.name]
        current = target
        while current.upstream is not None and current.upstream in by_name:
            current = by_name[current.upstream]
            if current.name in chain:
                if current.name == target.name and target.name not in reported:
                    reported.update(chain)
                    problems.append(
                        Problem(
                            display,
                            line_of(node, ["inputs", index, "data"]),
                            f"inputs[{index}]: target {target.name}: its steps form a cycle: "
                            + " -> ".join([*chain, target.name]),
                            "a step's data: names the target whose answers it takes; "
                            "one of these must read a file instead",
                        )
                    )
                break
            chain.append(current.name)
    return problems


def _template_file(
    root: Path, written: str, node: yaml.Node, where: list[Any], display: str
) -> tuple[Any, str, yaml.Node, tuple[Any, ...], str]:
    """A template file's request, its name for messages, node, path in it, and text."""
    path = Path(os.path.abspath(root / os.path.expanduser(written)))
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        why = "not UTF-8" if isinstance(exc, UnicodeDecodeError) else "cannot be read"
        if isinstance(exc, FileNotFoundError):
            why = "does not exist"
        raise ConfigError(
            Problem(
                display,
                line_of(node, where),
                f"{where[0]}[{where[1]}]: request template {written!r} {why}",
                f"paths are relative to the config's directory, {root}",
            )
        ) from None
    data, template_node = parse_yaml(text, written)
    return data, written, template_node, (), text


def _template_problem(request: Any, provider: str = "openai") -> str | None:
    """What makes a template unusable as a request, or None."""
    if not isinstance(request, Mapping):
        return "the request template is not a mapping"
    if "custom_id" in request:
        return "the request template sets custom_id, which comes from id:"
    extra = set(request) - {"url", "body", "method"}
    if extra:
        return f"the request template has {', '.join(sorted(map(str, extra)))}"
    if not isinstance(request.get("body"), Mapping):
        return "the request template has no body mapping"
    if provider == "anthropic" and request.get("url", "/v1/messages") != "/v1/messages":
        return (
            f"the request template's url is {request.get('url')}; api.provider anthropic sends "
            "Messages requests: url /v1/messages (or none), the Messages parameters as body"
        )
    return None
