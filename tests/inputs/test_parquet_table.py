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


def test_an_embedding_is_read_from_floats_or_base64_and_only_for_one_input() -> None:
    import array
    import base64

    from gptbatch.inputs.answers import embedding_of

    def result(*vectors: object) -> dict[str, object]:
        data = [{"embedding": v, "index": i} for i, v in enumerate(vectors)]
        return {"response": {"status_code": 200, "body": {"object": "list", "data": data}}}

    assert embedding_of(result([0.5, -1, 2.25])) == [0.5, -1.0, 2.25]
    packed = base64.b64encode(array.array("f", [0.5, -1.0, 2.25]).tobytes()).decode()
    assert embedding_of(result(packed)) == [0.5, -1.0, 2.25]
    assert embedding_of(result([1.0], [2.0])) is None  # several inputs: no one vector
    assert embedding_of(result("not base64!")) is None
    assert embedding_of({"response": {"body": {"choices": []}}}) is None
