"""Parquet data for data targets, through pyarrow (the optional extra `gptbatch[parquet]`).

Rows are read a record batch at a time, never the whole table. Each value is given to the
template as the text a CSV export would hold, so a Parquet target renders as the same table
saved as CSV would: null is the empty string (as an empty CSV field), booleans true/false,
numbers as Python writes them, dates and times ISO 8601, nested values canonical JSON
(sorted keys, no spaces).
"""

from __future__ import annotations

import base64
import datetime
import decimal
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from gptbatch.errors import InputError, Problem

SUFFIXES = (".parquet", ".pq")
INSTALL = "pip install 'gptbatch[parquet]'"
BATCH_ROWS = 4096


def is_parquet(path: Path) -> bool:
    """Is path a Parquet file, by its name?"""
    return path.suffix.lower() in SUFFIXES


def missing_pyarrow() -> str | None:
    """Why Parquet cannot be read here (pyarrow not installed), or None."""
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        return "reading Parquet needs pyarrow, which is not installed"
    return None


def _parquet(display: str) -> Any:
    """pyarrow.parquet; InputError naming the install when it is missing."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(
            Problem(display, None, "reading Parquet needs pyarrow, not installed", INSTALL)
        ) from None
    return pq


def parquet_columns(path: Path, display: str) -> list[str]:
    """A Parquet file's column names, from its footer (no row is read)."""
    pq = _parquet(display)
    try:
        return [str(name) for name in pq.ParquetFile(path).schema_arrow.names]
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise InputError(
            Problem(display, None, f"not a readable Parquet file: {exc}", "check the file")
        ) from None


def parquet_rows(path: Path, display: str) -> Iterator[tuple[int, dict[str, str]]]:
    """(row number from 1, the row's values as CSV text) of each row, a batch at a time."""
    pq = _parquet(display)
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed below, whichever pyarrow version reads it)
    except OSError as exc:
        raise InputError(Problem(display, None, f"cannot read: {exc.strerror}", "")) from None
    with f:
        try:
            source = pq.ParquetFile(f)
        except Exception as exc:  # pyarrow's ArrowInvalid: not a readable Parquet file
            raise InputError(
                Problem(display, None, f"not a readable Parquet file: {exc}", "")
            ) from None
        number = 0
        for batch in source.iter_batches(batch_size=BATCH_ROWS):
            for record in batch.to_pylist():
                number += 1
                yield number, {str(k): as_text(v) for k, v in record.items()}


def as_text(value: Any) -> str:
    """A value as a CSV export would write it (see the module's doc)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, decimal.Decimal)):
        return str(value)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(value).decode("ascii")
    # canonical JSON, as a nested JSONL value is placed in a template
    return json.dumps(
        value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=as_text
    )


# A schema property's JSON type -> its Parquet column's type and how a CSV cell becomes a
# value of it (the CSV table holds strings as they are, everything else as JSON). Objects,
# arrays and properties of no single type stay strings (their JSON).
_INT64 = range(-(2**63), 2**63)
_TYPED: dict[str, tuple[str, Callable[[str], Any]]] = {
    "string": ("string", str),
    # an integer beyond 64 bits (valid JSON Schema, rare) is null here; the CSV table has it
    "integer": ("int64", lambda cell: v if (v := int(json.loads(cell))) in _INT64 else None),
    "number": ("float64", lambda cell: float(json.loads(cell))),
    "boolean": ("bool_", lambda cell: bool(json.loads(cell))),
    # an embeddings target's answer: the vector itself (the CSV table cannot hold it)
    "vector": ("vector", list),
}


def _arrow_type(pa: Any, name: str) -> Any:
    return pa.list_(pa.float64()) if name == "vector" else getattr(pa, name)()


def write_table(
    source: Path,
    display: str,
    out: IO[bytes],
    keep: Callable[[int, dict[str, str]], bool],
    answers: Sequence[str],
    rows: Iterator[Sequence[Any]],
    kinds: Sequence[str | None] = (),
) -> None:
    """Write the answers table as Parquet to out: the source's rows that keep() passes, with
    their columns as typed in the source, then one column per answer column (null where the
    CSV table's cell is empty): typed by kinds (a schema property's JSON type, or None) where
    it names a type of _TYPED, else strings. rows: the CSV table's answer cells, row by row."""
    import pyarrow as pa

    typed = [_TYPED.get(kind or "", ("string", str)) for kind in kinds]
    typed += [("string", str)] * (len(answers) - len(typed))

    pq = _parquet(display)
    number = 0
    with open(source, "rb") as f:
        reader = pq.ParquetFile(f)
        schema = reader.schema_arrow
        for name, (kind, _) in zip(answers, typed, strict=True):
            schema = schema.append(pa.field(name, _arrow_type(pa, kind)))
        with pq.ParquetWriter(out, schema) as writer:
            for batch in reader.iter_batches(batch_size=BATCH_ROWS):
                chosen = []
                for i, record in enumerate(batch.to_pylist()):
                    number += 1
                    if keep(number, {str(k): as_text(v) for k, v in record.items()}):
                        chosen.append(i)
                kept = batch.take(pa.array(chosen, type=pa.int64()))
                cells: list[list[Any]] = [[] for _ in answers]
                for _ in chosen:
                    for column, cell, (_, convert) in zip(cells, next(rows), typed, strict=True):
                        column.append(convert(cell) if cell else None)
                arrays = [
                    *kept.columns,
                    *(
                        pa.array(c, type=_arrow_type(pa, kind))
                        for c, (kind, _) in zip(cells, typed, strict=True)
                    ),
                ]
                writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=schema))
