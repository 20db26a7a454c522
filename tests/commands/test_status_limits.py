"""status's check for requests over a lowered limit: the open ones, as build refuses them."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from gptbatch.commands.status import over_limit_anywhere
from gptbatch.config.spec import load_spec
from gptbatch.engine.sync import sync_inputs
from gptbatch.report import NullReporter
from gptbatch.state.store import Store


def _line(cid: str, words: int) -> str:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi " * words}]}
    return json.dumps({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
                       "body": body})  # fmt: skip


def _spec(tmp_path: Path, limit: int) -> object:
    (tmp_path / "batch.yaml").write_text(
        yaml.safe_dump(
            {
                "inputs": ["in.jsonl"],
                "output_dir": "out",
                "limits": {"enqueued_tokens": {"gpt-4o-mini": limit}},
            }
        )
    )
    return load_spec(tmp_path / "batch.yaml")


def test_only_requests_still_to_build_count_against_a_lowered_limit(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text(_line("small", 2) + "\n" + _line("big", 400) + "\n")
    store = Store(tmp_path / "state")
    try:
        sync_inputs(_spec(tmp_path, 100_000), store, NullReporter())  # type: ignore[arg-type]
        lowered = _spec(tmp_path, 200)
        assert over_limit_anywhere(lowered, store)  # type: ignore[arg-type]
        big = next(r for r in store.pending_requests() if r.custom_id == "big")
        with store.transaction():
            store.record_result(big.key, state="ok", line="{}")
        assert not over_limit_anywhere(lowered, store)  # type: ignore[arg-type]
        assert over_limit_anywhere(_spec(tmp_path, 5), store)  # type: ignore[arg-type]
    finally:
        store.close()
