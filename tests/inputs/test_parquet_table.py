"""The answers table as Parquet: answer columns typed by the schema's property types."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from gptbatch.inputs.parquet import write_table


def test_answer_columns_take_their_schema_types_and_empty_cells_are_null(tmp_path: Path) -> None:
    source = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "c"]}), source)
    names = ["answer", "n", "ok", "x", "tags", "free"]
    kinds = [None, "integer", "boolean", "number", "array", None]
    cells = [
        ['{"n": 1}', "1", "true", "2", '["t"]', "s"],
        ["", "", "", "", "", ""],  # no answer (yet, or invalid)
        ['{"n": 1}', str(2**70), "false", "0.5", "[]", "7"],  # too big for int64
    ]
    out = io.BytesIO()
    write_table(source, "rows.parquet", out, lambda line, row: True, names, iter(cells), kinds)
    table = pq.read_table(io.BytesIO(out.getvalue()))
    types = [table.schema.field(n).type for n in names]
    assert types == [pa.string(), pa.int64(), pa.bool_(), pa.float64(), pa.string(), pa.string()]
    assert table.column("n").to_pylist() == [1, None, None]
    assert table.column("ok").to_pylist() == [True, None, False]
    assert table.column("x").to_pylist() == [2.0, None, 0.5]
    assert table.column("tags").to_pylist() == ['["t"]', None, "[]"]
    assert table.column("id").to_pylist() == ["a", "b", "c"]
