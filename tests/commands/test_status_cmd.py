"""gptbatch.commands.status: why requests are pending, read from the open rows only."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from gptbatch.commands.status import _reason, pending_reasons
from gptbatch.config.spec import load_spec
from gptbatch.engine.sync import sync_inputs
from gptbatch.report import NullReporter
from gptbatch.state.store import Store


def _chat(cid: str, text: str) -> str:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}
    return json.dumps(
        {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": body}
    )


def test_the_reasons_are_those_of_a_walk_over_every_request(tmp_path: Path) -> None:
    """ok and failed for good: up to date; a retry, no result, or a shard at the API:
    pending, with why. Read through the open rows' index, the same as over every row."""
    lines = [_chat(f"c{i}", f"t{i}") for i in range(300)]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "batch.yaml").write_text(
        yaml.safe_dump({"inputs": ["in.jsonl"], "output_dir": "out"})
    )
    spec = load_spec(tmp_path / "batch.yaml")
    store = Store(tmp_path / "state")
    try:
        sync_inputs(spec, store, NullReporter())
        path = spec.inputs[0]
        keys = [row.key for row in store.requests_of(str(path))]
        states = ["ok", "failed", "retry", None, "ok", None, "shard"]
        with store.transaction():
            rows = []
            for i, key in enumerate(keys):
                state = states[i % len(states)]
                if state in ("ok", "failed", "retry"):
                    line = json.dumps({"custom_id": f"c{i}"}) if state == "ok" else None
                    rows.append((key, state, 1, line, None if state == "ok" else "bad", "b1"))
            store.write_results(rows)
            members = [(k, f"c{i}") for i, k in enumerate(keys) if states[i % 7] == "shard"]
            store.add_shard(
                "s1",
                model="gpt-4o-mini",
                url="/v1/chat/completions",
                members=members,
                tokens=1,
                nbytes=1,
                cost=None,
            )
            store.update_shard("s1", state="submitted")
        got = list(pending_reasons(spec, store))
        in_shard = {k: "in shard" for k, _ in members}
        walked = [
            (row.line, row.custom_id)
            for row, result in store.request_results(str(path))
            if _reason(result, in_shard.get(row.key), row.reason) is not None
        ]
        assert [(r.line, r.custom_id) for r in got] == walked
        assert len(got) == sum(states[i % 7] in ("retry", None, "shard") for i in range(300))
        reasons = {r.custom_id: r.reason for r in got}
        assert reasons["c2"].startswith("attempt 1 did not succeed (bad)")
        assert reasons["c3"] == "new request: never built"
        assert reasons["c6"].startswith("in shard s1")
    finally:
        store.close()
