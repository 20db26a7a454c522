"""Property: a data target's answers table has exactly one row per data row, in data order,
whatever subset of its requests has an answer, a failure or an invalid answer."""

from __future__ import annotations

import csv
import json
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gptbatch.config.spec import load_spec
from gptbatch.engine.sync import sync_inputs
from gptbatch.engine.tables import write_tables
from gptbatch.report import NullReporter
from gptbatch.state.store import Store, state_dir

SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["label"],
    "properties": {"label": {"enum": ["a", "b"]}},
}
REQUEST = {
    "url": "/v1/chat/completions",
    "body": {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "{{ text }}"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": SCHEMA}},
    },
}
# what each row's request got: nothing yet, a valid answer, an invalid one, a failure
OUTCOMES = st.sampled_from(["none", "valid", "invalid", "failed"])


def reply(custom_id: str, content: str) -> str:
    body = {"choices": [{"message": {"role": "assistant", "content": content}}]}
    return json.dumps({"custom_id": custom_id, "response": {"status_code": 200, "body": body}})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.text("xyz ,\"\n'", max_size=6), OUTCOMES), min_size=1, max_size=12),
    st.booleans(),
)
def test_one_row_per_data_row_in_order(rows: list[tuple[str, str]], jsonl: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ids = [f"id{i}" for i in range(len(rows))]
        if jsonl:
            data = root / "t.jsonl"
            data.write_text(
                "".join(
                    json.dumps({"k": i, "text": t}) + "\n"
                    for i, (t, _) in zip(ids, rows, strict=True)
                )
            )
        else:
            data = root / "t.csv"
            with open(data, "w", newline="", encoding="utf-8") as f:
                csv.writer(f).writerows(
                    [("k", "text"), *((i, t) for i, (t, _) in zip(ids, rows, strict=True))]
                )
        target = {"name": "t", "data": data.name, "id": "k", "request": REQUEST}
        (root / "batch.yaml").write_text(yaml.safe_dump({"inputs": [target], "output_dir": "out"}))
        spec = load_spec(root / "batch.yaml")
        store = Store(state_dir(spec.output_dir))
        try:
            sync_inputs(spec, store, NullReporter())
            results: list[Any] = []
            for request, (_, outcome) in zip(
                store.requests_of(str(spec.targets["t"])), rows, strict=True
            ):
                if outcome == "valid":
                    line = reply(request.custom_id, '{"label": "a"}')
                    results.append((request.key, "ok", 1, line, None, "b1"))
                elif outcome == "invalid":
                    line = reply(request.custom_id, '{"label": "c"}')
                    results.append((request.key, "ok", 1, line, None, "b1"))
                elif outcome == "failed":
                    results.append((request.key, "failed", 1, None, "HTTP 400: no", "b1"))
            with store.transaction():
                store.write_results(results)
            [summary] = write_tables(spec, store)
        finally:
            store.close()
        with open(spec.output_dir / "t.csv", newline="", encoding="utf-8") as f:
            table = list(csv.DictReader(f))
        assert [r["k"] for r in table] == ids
        assert [r["text"] for r in table] == [t for t, _ in rows]
        assert [r["label"] for r in table] == ["a" if o == "valid" else "" for _, o in rows]
        errors_path = spec.output_dir / "t.errors.jsonl"
        errors = (
            [json.loads(x) for x in errors_path.read_text().splitlines()]
            if errors_path.exists()
            else []
        )
        bad = [i for i, (_, o) in zip(ids, rows, strict=True) if o in ("invalid", "failed")]
        assert [e["custom_id"] for e in errors] == bad
        assert summary.rows == len(rows)
        assert summary.invalid == sum(o == "invalid" for _, o in rows)
