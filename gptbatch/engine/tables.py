"""Answers back to data: <output_dir>/<name>.csv, each data row with its answer columns.

A data target's table holds, in data order, the row's own columns, `answer` (the response's
text) and, when the request template asks for a JSON schema, one column per top-level
property of the schema, from the answer parsed and checked against it. An answer that does
not parse or match is recorded in <name>.errors.jsonl (beside the failures) and its columns
are left empty. The table and that errors file are written atomically, streaming (a data row
and its result at a time), and skipped when neither the results nor the data changed since.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptbatch.canonical import atomic_writer
from gptbatch.config.spec import Spec
from gptbatch.engine.outputs import ErrorFile, error_record, write_index, written_as_indexed
from gptbatch.errors import LocalIOError
from gptbatch.fastjson import loads_reply
from gptbatch.inputs.answers import AnswerCheck, answer_schema, answer_text, embedding_of
from gptbatch.inputs.parquet import is_parquet
from gptbatch.inputs.parquet import write_table as write_parquet_table
from gptbatch.inputs.render import Target, as_rendered, data_rows, request_id
from gptbatch.inputs.where import row_filter
from gptbatch.state.rows import RequestRow, ResultRow
from gptbatch.state.store import Store

EMBEDDINGS_URL = "/v1/embeddings"
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
    # rendered again by another command since this build read its requests: not written
    # (the last table stays; the next build writes it)
    skipped: bool = False


def table_inputs(spec: Spec) -> dict[Path, Target]:
    """The rendered request file of each data target this spec builds, with its target."""
    chosen = set(spec.inputs)
    return {spec.targets[t.name]: t for t in spec.data_targets if spec.targets[t.name] in chosen}


def stale_steps(spec: Spec, sample: int | None, only: Sequence[Path] | None) -> list[str]:
    """The steps (among the inputs built) whose upstream table is not what they rendered."""
    from gptbatch.inputs.render import is_rendered

    built = set(only if only is not None else spec.inputs)
    return [
        t.name
        for t in spec.data_targets
        if t.upstream is not None
        and spec.targets[t.name] in built
        # <state>/rendered/<name>.jsonl: a rehearsal's state, or the build's own
        and not is_rendered(t, spec.targets[t.name].parent.parent, sample)
    ]


def step_depths(spec: Spec, only: Sequence[Path] | None) -> list[tuple[Path, ...]]:
    """The inputs built, by depth: plain inputs and targets whose data is no target built
    here first, then the steps over them, then the steps over those...

    A forced build (-B, --retry-failed) forces one depth a round, each once its upstream's
    round is done: forcing a step with its upstream would pay for requests rendered from the
    answers the same build is about to replace, and then again for the new ones.
    """
    built = tuple(only if only is not None else spec.inputs)
    by_path = {spec.targets[t.name]: t for t in spec.data_targets}
    by_name = {t.name: t for t in spec.data_targets}

    def depth(path: Path) -> int:
        target, level = by_path.get(path), 0
        while target is not None and target.upstream is not None and level <= len(by_name):
            upstream = by_name.get(target.upstream)
            if upstream is None or spec.targets[upstream.name] not in built:
                break
            target, level = upstream, level + 1
        return level

    levels = [depth(p) for p in built]
    return [
        tuple(p for p, level in zip(built, levels, strict=True) if level == d)
        for d in range(max(levels, default=-1) + 1)
    ]


def write_tables(spec: Spec, store: Store) -> list[TableSummary]:
    """Write each data target's table and errors file unless both are as last written and
    nothing they are made of changed."""
    summaries = []
    results = store.outputs_fingerprint()  # changes whenever a result or an input does
    for rendered, target in table_inputs(spec).items():
        csv_path = spec.output_dir / f"{target.name}.csv"
        err_path = spec.output_dir / f"{target.name}.errors.jsonl"
        # a Parquet target's table is also written as Parquet, from the CSV table
        pq_path = spec.output_dir / f"{target.name}.parquet" if is_parquet(target.data) else None
        stamp = json.dumps([TABLE_FORMAT, results, _rendered_stamp(rendered)])
        meta = f"table:{target.name}"
        last = json.loads(store.get_meta(meta) or "null")
        if (
            last is not None
            and last["stamp"] == stamp
            and written_as_indexed(store, csv_path, fix=True) is None
            and written_as_indexed(store, err_path, fix=True) is None
            and (pq_path is None or written_as_indexed(store, pq_path, fix=True) is None)
        ):
            summaries.append(TableSummary(target.name, str(csv_path), *last["counts"]))
            continue
        try:
            counts = _write_table(store, target, rendered, csv_path, err_path)
        except _RenderedAgain:
            counts = last["counts"] if last is not None else [0, 0, 0]
            summaries.append(TableSummary(target.name, str(csv_path), *counts, skipped=True))
            continue
        write_index(store, err_path, b"")
        if pq_path is not None:
            target_as_rendered = as_rendered(target, rendered.parent.parent)
            _write_parquet(store, rendered, target_as_rendered, csv_path, pq_path)
            write_index(store, pq_path, b"")
        with store.transaction():
            store.set_meta(meta, json.dumps({"stamp": stamp, "counts": counts}))
        summaries.append(TableSummary(target.name, str(csv_path), *counts))
    return summaries


class _RenderedAgain(Exception):
    """The rendered requests (and the data copy) are not those this build read."""


def _as_synced(store: Store, rendered: Path) -> bool:
    """Is the rendered file the one the build read (size and mtime as recorded at sync)?

    validate, plan or status re-render a stale target into the state; run during a build,
    they replace the rendered file, then the data copy the table is written from. Checked
    after the table was read: the file still as synced means the copy was too (it is
    replaced after the file), so no row is paired with the answer to other content.
    """
    record = store.input_record(str(rendered))
    try:
        st = rendered.stat()
    except OSError:
        return False
    return record is not None and (record[0], record[1]) == (st.st_size, st.st_mtime_ns)


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
    """`answer` and the schema's properties, each named answer.NAME if the data has it (or
    answer.answer.NAME...: every column name is unique, a property `answer` included)."""
    taken = set(columns)
    names = []
    for name in ["answer", *properties]:
        while name in taken:
            name = f"answer.{name}"
        taken.add(name)
        names.append(name)
    return names


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


# One entry of a table's row index: a digest of what the row is made of (the header, its
# cells, its request's key and result version), its line's length, and flags (_ANSWERED,
# _INVALID). The header line is entry 0.
_ENTRY = struct.Struct("<12sIB")
_ANSWERED, _INVALID = 1, 2


def _write_table(
    store: Store, target: Target, rendered: Path, csv_path: Path, err_path: Path
) -> list[int]:
    """Write one target's table and errors file, and its row index; [rows, answered, invalid].

    A row made of what it was made of last time is copied from the last table (if that is as
    written), so an edit of one row reads, parses and checks one answer, not every one.
    """
    # The rows as rendered (the copy of the data made then), not the data as it is now: an
    # edit since would pair a row's new cells with the answer to its old request.
    target = as_rendered(target, rendered.parent.parent)
    schema = answer_schema(target.request)
    check = AnswerCheck(schema) if schema is not None else None
    properties = check.properties if check is not None else []
    embedded = _embedded(target)
    columns = _columns(target)
    path = str(rendered)
    rows = answered = invalid = 0
    requests = store.table_rows(path)
    entries = bytearray()
    line_of = _CsvLine()
    with (
        _LastTable.open(store, csv_path) as last,
        atomic_writer(csv_path, "wb") as out,
        ErrorFile(err_path) as err,
    ):
        header = line_of([*columns, *_answer_columns(columns, properties)])
        out.write(header)
        entries += _ENTRY.pack(_digest(header), len(header), 0)
        upcoming = next(requests, None)
        passes = row_filter(target)
        for line, row in data_rows(target):
            if passes is not None and not passes(row, line, _row_id(row.get(target.id))):
                continue  # left out by `where`: no request, no line
            rows += 1
            cells = [_cell(row.get(c)) for c in columns]
            # The requests are the rows' in data order, or some of them (build --sample):
            # a row whose request is not next has none (or the data changed since).
            request = None
            if upcoming is not None and upcoming[1] == request_id(
                target, _row_id(row.get(target.id))
            ):
                request, upcoming = upcoming, next(requests, None)
            ordinal, _, key, done, version = request or (0, "", None, 0, None)
            digest = _digest(header, cells, key, done, version)
            span = last.get(digest) if last is not None else None
            if span is not None and not span[2] & _INVALID and done != 2:
                data, flags = last.read(span), span[2]  # type: ignore[union-attr]
            else:
                answer: list[str] = [""] * (1 + len(properties))
                flags = 0
                if done == 2:
                    err.write(
                        error_record(
                            *store.request_result(path, ordinal), f"{target.data_display}:{line}"
                        )
                    )
                elif done == 1 and key is not None:
                    result_line = store.result_line(key)
                    text = answer_text(loads_reply(result_line)) if result_line else None
                    if check is None:
                        answer[0] = text or ""
                        # an embedding is answered though its vector is not CSV text (the
                        # Parquet table holds it)
                        flags = _ANSWERED if text is not None or embedded else 0
                    else:
                        value, why = check(text)
                        if why is None:
                            answer = [text or ""] + [
                                _cell(value.get(p)) if isinstance(value, dict) else ""
                                for p in properties
                            ]
                            flags = _ANSWERED
                        else:
                            flags = _INVALID
                            req, res = store.request_result(path, ordinal)
                            assert res is not None
                            err.write(_invalid_record(target, line, req, res, text, why))
                data = line_of(cells + answer)
            answered += bool(flags & _ANSWERED)
            invalid += bool(flags & _INVALID)
            out.write(data)
            entries += _ENTRY.pack(digest, len(data), flags)
        if not _as_synced(store, rendered):
            raise _RenderedAgain  # inside the writers: neither file is replaced
    write_index(store, csv_path, bytes(entries))
    return [rows, answered, invalid]


def _write_parquet(
    store: Store, rendered: Path, target: Target, csv_path: Path, pq_path: Path
) -> None:
    """The table as Parquet: the data's rows (those `where` passes) with their columns as
    typed in the data (the copy rendered from), and the CSV table's answer columns (an
    embeddings target's answer: its vector, read from its result)."""
    passes = row_filter(target)
    embedded = _embedded(target)
    with open(csv_path, newline="", encoding="utf-8") as f, atomic_writer(pq_path, "wb") as out:
        reader = csv.reader(f)
        header = next(reader)
        columns = len(_columns(target))

        def keep(line: int, row: dict[str, str]) -> bool:
            return passes is None or passes(row, line, _row_id(row.get(target.id)))

        rows: Iterator[list[Any]] = (fields[columns:] for fields in reader)
        if embedded:
            vector = _vector_lookup(store, rendered, target)
            ident = header.index(target.id)
            rows = ([vector(f[ident]), *f[columns + 1 :]] for f in reader)
        write_parquet_table(
            target.data,
            target.data_display,
            out,
            keep,
            header[columns:],
            rows,
            # `answer` (text, or an embedding's vector), then the schema's properties
            ["vector" if embedded else None, *_property_kinds(target)],
        )


def _embedded(target: Target) -> bool:
    """Does the target make embeddings requests (whose answer is a vector)?"""
    request = target.request
    return isinstance(request, dict) and request.get("url") == EMBEDDINGS_URL


def _vector_lookup(
    store: Store, rendered: Path, target: Target
) -> Callable[[str], list[float] | None]:
    """A function of each table row's id cell, called for the rows in order: the embedding
    of its request's result, if the row has a request with one (--sample: some have none)."""
    requests = store.table_rows(str(rendered))
    upcoming = [next(requests, None)]

    def vector(cell: str) -> list[float] | None:
        row = upcoming[0]
        if row is None or row[1] != request_id(target, cell):
            return None
        upcoming[0] = next(requests, None)
        line = store.result_line(row[2]) if row[3] == 1 else None
        return embedding_of(loads_reply(line)) if line else None

    return vector


def _property_kinds(target: Target) -> list[str | None]:
    """Each top-level answer property's JSON type, if the schema gives it one type."""
    schema = answer_schema(target.request) or {}
    properties = schema.get("properties") or {}
    return [
        kind if isinstance(kind := (spec or {}).get("type"), str) else None
        for spec in properties.values()
    ]


def _digest(*parts: Any) -> bytes:
    """What a table line is made of, in 12 bytes."""
    return hashlib.blake2b(repr(parts).encode("utf-8"), digest_size=12).digest()


class _CsvLine:
    """One CSV line as UTF-8 bytes (the table's dialect: minimal quoting, \\n)."""

    def __init__(self) -> None:
        self.buffer = io.StringIO()
        self.writer = csv.writer(self.buffer, lineterminator="\n")

    def __call__(self, fields: list[str]) -> bytes:
        self.buffer.seek(0)
        self.buffer.truncate()
        self.writer.writerow(fields)
        return self.buffer.getvalue().encode("utf-8")


class _LastTable:
    """The table as the last build wrote it, and where each row's line is in it: trusted
    only if the file has the inode, size and mtime its index recorded."""

    def __init__(self, fd: int, spans: dict[bytes, tuple[int, int, int]]) -> None:
        self.fd = fd
        self.spans = spans

    def get(self, digest: bytes) -> tuple[int, int, int] | None:
        return self.spans.get(digest)

    def read(self, span: tuple[int, int, int]) -> bytes:
        data = os.pread(self.fd, span[1], span[0])
        if len(data) != span[1]:
            raise LocalIOError(f"the last table ended early while copying from it ({span[0]})")
        return data

    @staticmethod
    @contextlib.contextmanager
    def open(store: Store, path: Path) -> Iterator[_LastTable | None]:
        index = store.output_index(path.name)
        try:
            fd = os.open(path, os.O_RDONLY) if index is not None and index[0] != "[]" else None
        except OSError:
            fd = None
        if fd is None or index is None:
            yield None
            return
        try:
            st = os.fstat(fd)
            spans: dict[bytes, tuple[int, int, int]] = {}
            offset = 0
            entries = index[1]
            if json.loads(index[0])[1:4] == [st.st_ino, st.st_size, st.st_mtime_ns] and not (
                len(entries) % _ENTRY.size
            ):
                for digest, length, flags in _ENTRY.iter_unpack(entries):
                    spans[digest] = (offset, length, flags)
                    offset += length
            yield _LastTable(fd, spans) if spans and offset == st.st_size else None
        finally:
            os.close(fd)


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
