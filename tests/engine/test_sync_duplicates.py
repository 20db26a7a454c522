"""A custom_id used in two inputs: sync names the two lines as validate does, the later one
in the config's order as the duplicate, whatever the files are called."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from gptbatch.config.spec import load_spec
from gptbatch.engine.sync import sync_inputs
from gptbatch.errors import InputError
from gptbatch.inputs.requests import read_requests
from gptbatch.report import NullReporter
from gptbatch.state.store import Store


def _chat(cid: str) -> str:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": cid}]}
    return json.dumps(
        {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": body}
    )


@pytest.mark.parametrize("names", [("z.jsonl", "a.jsonl"), ("a.jsonl", "z.jsonl")])
def test_a_duplicate_across_inputs_is_told_as_validate_tells_it(
    tmp_path: Path, names: tuple[str, str]
) -> None:
    first, second = names
    (tmp_path / first).write_text("\n".join(_chat(c) for c in ["x", "dup", "y"]) + "\n")
    (tmp_path / second).write_text("\n".join(_chat(c) for c in ["p", "q", "dup"]) + "\n")
    (tmp_path / "batch.yaml").write_text(
        yaml.safe_dump({"inputs": [first, second], "output_dir": "out"})
    )
    spec = load_spec(tmp_path / "batch.yaml")
    with pytest.raises(InputError) as validated:
        list(read_requests(spec.inputs, model=spec.model, endpoint=spec.endpoint))
    store = Store(tmp_path / "state")
    try:
        with pytest.raises(InputError) as synced:
            sync_inputs(spec, store, NullReporter())
    finally:
        store.close()
    told = [(p.path, p.line, p.message) for p in synced.value.problems]
    assert told == [(p.path, p.line, p.message) for p in validated.value.problems]
    assert told == [
        (
            str(tmp_path / second),
            3,
            f"duplicate custom_id 'dup' (first seen at {tmp_path / first}:2)",
        )
    ]
