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
        spec = load_spec(root / "batch.yaml", build=True)  # renders into the state, as build
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


def write_data(root: Path, rows: list[tuple[str, str]], jsonl: bool) -> Path:
    ids = [f"id{i}" for i in range(len(rows))]
    data = root / ("t.jsonl" if jsonl else "t.csv")
    with open(data, "w", newline="", encoding="utf-8") as f:
        if jsonl:
            f.writelines(
                json.dumps({"k": i, "text": t}) + "\n" for i, (t, _) in zip(ids, rows, strict=True)
            )
        else:
            csv.writer(f).writerows(
                [("k", "text"), *((i, t) for i, (t, _) in zip(ids, rows, strict=True))]
            )
    return data


def give_results(store: Store, path: str, outcomes: list[str]) -> None:
    """Record each outcome for its row's request, where the request has no result yet."""
    requests = list(store.requests_of(path))
    known = store.result_states(r.key for r in requests)
    results: list[Any] = []
    for request, outcome in zip(requests, outcomes, strict=True):
        if request.key in known or outcome == "none":
            continue
        if outcome == "failed":
            results.append((request.key, "failed", 1, None, "HTTP 400: no", "b2"))
        else:
            label = '{"label": "b"}' if outcome == "valid" else "not json"
            results.append((request.key, "ok", 1, reply(request.custom_id, label), None, "b2"))
    with store.transaction():
        store.write_results(results)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.text("xy ,\n", max_size=4), OUTCOMES, st.booleans(), OUTCOMES),
        min_size=1,
        max_size=10,
    ),
    st.booleans(),
)
def test_a_table_written_again_equals_one_written_afresh(
    rows: list[tuple[str, str, bool, str]], jsonl: bool
) -> None:
    """Rows edited (a new request) and answers arriving between two writes: the table and
    errors file that copy unchanged rows from the last ones are those written from scratch."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = write_data(root, [(t, o) for t, o, _, _ in rows], jsonl)
        target = {"name": "t", "data": data.name, "id": "k", "request": REQUEST}
        (root / "batch.yaml").write_text(yaml.safe_dump({"inputs": [target], "output_dir": "out"}))
        spec = load_spec(root / "batch.yaml", build=True)  # renders into the state, as build
        path = str(spec.targets["t"])
        store = Store(state_dir(spec.output_dir))
        try:
            sync_inputs(spec, store, NullReporter())
            give_results(store, path, [o for _, o, _, _ in rows])
            write_tables(spec, store)
            edited = [(t + "!" if edit else t, later) for t, _, edit, later in rows]
            write_data(root, edited, jsonl)
            spec = load_spec(root / "batch.yaml", build=True)  # renders into the state, as build
            sync_inputs(spec, store, NullReporter())
            give_results(store, path, [later for _, later in edited])
            [again] = write_tables(spec, store)
            table = (spec.output_dir / "t.csv").read_bytes()
            errors_path = spec.output_dir / "t.errors.jsonl"
            errors = errors_path.read_bytes() if errors_path.exists() else b""
            (spec.output_dir / "t.csv").unlink()  # written from scratch now
            [fresh] = write_tables(spec, store)
        finally:
            store.close()
        assert (spec.output_dir / "t.csv").read_bytes() == table
        assert (errors_path.read_bytes() if errors_path.exists() else b"") == errors
        assert again == fresh
        assert table.count(b"\n") >= len(rows) + 1
