"""Answers back to data: <output_dir>/<name>.csv, each data row with its answer columns.

A data target's table holds, in data order, the row's own columns, `answer` (the response's
text) and, when the request template asks for a JSON schema, one column per top-level
property of the schema, from the answer parsed and checked against it. An answer that does
not parse or match is recorded in <name>.errors.jsonl (beside the failures) and its columns
are left empty. The table and that errors file are written atomically, streaming (a data row
and its result at a time), and skipped when neither the results nor the data changed since.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptbatch.canonical import atomic_writer
from gptbatch.config.spec import Spec
from gptbatch.engine.outputs import ErrorFile, error_record, write_index, written_as_indexed
from gptbatch.fastjson import loads_reply
from gptbatch.inputs.answers import AnswerCheck, answer_schema, answer_text
from gptbatch.inputs.render import Target, data_rows, request_id
from gptbatch.state.rows import RequestRow, ResultRow
from gptbatch.state.store import Store

TABLE_FORMAT = 1  # bump when the table's layout changes, so every table is written again
INVALID = "invalid answer"


@dataclass(frozen=True)
class TableSummary:
    """What was written for one data target's table."""

    name: str
    path: str
    rows: int
    answered: int
    invalid: int


def table_inputs(spec: Spec) -> dict[Path, Target]:
    """The rendered request file of each data target this spec builds, with its target."""
    chosen = set(spec.inputs)
    return {spec.targets[t.name]: t for t in spec.data_targets if spec.targets[t.name] in chosen}


def write_tables(spec: Spec, store: Store) -> list[TableSummary]:
    """Write each data target's table and errors file unless both are as last written and
    nothing they are made of changed."""
    summaries = []
    results = store.outputs_fingerprint()  # changes whenever a result or an input does
    for rendered, target in table_inputs(spec).items():
        csv_path = spec.output_dir / f"{target.name}.csv"
        err_path = spec.output_dir / f"{target.name}.errors.jsonl"
        stamp = json.dumps([TABLE_FORMAT, results, _rendered_stamp(rendered)])
        meta = f"table:{target.name}"
        last = json.loads(store.get_meta(meta) or "null")
        if (
            last is not None
            and last["stamp"] == stamp
            and written_as_indexed(store, csv_path, fix=True) is None
            and written_as_indexed(store, err_path, fix=True) is None
        ):
            summaries.append(TableSummary(target.name, str(csv_path), *last["counts"]))
            continue
        counts = _write_table(store, target, rendered, csv_path, err_path)
        write_index(store, csv_path, b"")
        write_index(store, err_path, b"")
        with store.transaction():
            store.set_meta(meta, json.dumps({"stamp": stamp, "counts": counts}))
        summaries.append(TableSummary(target.name, str(csv_path), *counts))
    return summaries


def _rendered_stamp(rendered: Path) -> str:
    """What the rendered requests were made from (data and template): render's fingerprint."""
    try:
        return rendered.with_suffix(".fingerprint").read_text("utf-8")
    except OSError:
        return ""


def _columns(target: Target) -> list[str]:
    """The data's columns: a CSV's header, or every key of the JSONL records in first-seen
    order (one pass over the data, holding only the names)."""
    seen: dict[str, None] = {}
    for _, row in data_rows(target):
        seen.update(dict.fromkeys(row))
        if target.data.suffix.lower() not in (".jsonl", ".ndjson"):
            break  # a CSV's rows all have the header's columns
    return list(seen)


def _answer_columns(columns: Sequence[str], properties: Sequence[str]) -> list[str]:
    """`answer` and the schema's properties, each named answer.NAME if the data has it."""
    taken = set(columns)
    return [f"answer.{c}" if c in taken else c for c in ["answer", *properties]]


def _row_id(value: Any) -> str:
    """A row's id as its custom_id (as render makes it)."""
    return value if isinstance(value, str) else json.dumps(value)


def _cell(value: Any) -> str:
    """A value as a CSV field: strings as they are, null empty, anything else as JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _write_table(
    store: Store, target: Target, rendered: Path, csv_path: Path, err_path: Path
) -> list[int]:
    """Write one target's table and errors file; [rows, answered, invalid]."""
    schema = answer_schema(target.request)
    check = AnswerCheck(schema) if schema is not None else None
    properties = check.properties if check is not None else []
    columns = _columns(target)
    rows = answered = invalid = 0
    results: Iterator[tuple[RequestRow, ResultRow | None]] = store.request_results(str(rendered))
    with atomic_writer(csv_path, "w") as out, ErrorFile(err_path) as err:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([*columns, *_answer_columns(columns, properties)])
        upcoming = next(results, None)
        for line, row in data_rows(target):
            rows += 1
            cells = [_cell(row.get(c)) for c in columns]
            answer: list[str] = [""] * (1 + len(properties))
            # The requests are the rows' in data order, or some of them (build --sample):
            # a row whose request is not next has none (or the data changed since).
            if upcoming is None or upcoming[0].custom_id != request_id(
                target, _row_id(row.get(target.id))
            ):
                writer.writerow(cells + answer)
                continue
            request, result = upcoming
            upcoming = next(results, None)
            if result is not None and result.state == "failed":
                err.write(error_record(request, result, f"{target.data_display}:{line}"))
            elif result is not None and result.state == "ok" and result.line:
                text = answer_text(loads_reply(result.line))
                if check is None:
                    answer[0] = text or ""
                    answered += 1 if text is not None else 0
                else:
                    value, why = check(text)
                    if why is None:
                        answer = [text or ""] + [
                            _cell(value.get(p)) if isinstance(value, dict) else ""
                            for p in properties
                        ]
                        answered += 1
                    else:
                        invalid += 1
                        err.write(_invalid_record(target, line, request, result, text, why))
            writer.writerow(cells + answer)
    return [rows, answered, invalid]


def _invalid_record(
    target: Target, line: int, request: RequestRow, result: ResultRow, text: str | None, why: str
) -> str:
    """The errors file's line for an answer that is not JSON matching the schema."""
    record = {
        "custom_id": request.custom_id,
        "input": f"{target.data_display}:{line}",
        "error": f"{INVALID}: {why}",
        "attempts": result.attempts,
        "batch_id": result.batch_id,
        "answer": text,
    }
    return json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n"
