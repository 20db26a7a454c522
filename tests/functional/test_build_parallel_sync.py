"""A first build that reads its new inputs on every core builds what the one-process read
builds, and its rows serve later builds just as well (no-op rebuild, one-line edit)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from buildkit import chat, embedding, make_project, write_jsonl

from gptbatch.engine import sync
from gptbatch.errors import EXIT_OK
from gptbatch.simulator import request_digest
from gptbatch.state.rows import REQUEST_ROW_SELECT


def _inputs() -> dict[str, list[dict[str, Any]]]:
    chats = [chat(f"c{i}", f"Question {i}: ünïcode {'long ' * (i % 7)}") for i in range(40)]
    chats[3]["body"]["max_tokens"] = 50
    chats[4]["body"]["temperature"] = 1e-05
    embeddings = [embedding(f"e{i}") for i in range(15)]
    embeddings[2]["body"]["input"] = ["one", "two", "three"]
    return {"chat.jsonl": chats, "embed.jsonl": embeddings}


def _uploaded(sim: Any, skip: int = 0) -> list[bytes]:
    """The input files of the simulator's batches (after the first skip), sorted."""
    batches = sim.service.batches()[skip:]
    return sorted(sim.service.file_content(b["input_file_id"]) for b in batches)


def _results(project: Any) -> list[tuple[Any, ...]]:
    """(custom_id, status, echoes its body's digest) per output line; chat results echo it."""
    out = []
    for name, rows in _inputs().items():
        records = project.output(name.removesuffix(".jsonl"))
        for record, row in zip(records, rows, strict=True):
            echoed = request_digest(row["body"]) in json.dumps(record["response"]["body"])
            out.append((record["custom_id"], record["response"]["status_code"], echoed))
    return out


def _rows(project: Any) -> list[tuple[Any, ...]]:
    """The state's request rows, with the project's directory taken out of their paths."""
    with sqlite3.connect(project.out / ".gptbatch" / "state.db") as db:
        rows = db.execute(f"SELECT {REQUEST_ROW_SELECT} FROM requests r ORDER BY r.path, r.ordinal")
        return [(Path(row[0]).name, *row[1:]) for row in rows]


def _forbidden(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the one-process read was used for a new input")


def test_a_parallel_first_build_matches_the_one_process_build(
    tmp_path: Path, simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    simple = make_project(tmp_path / "simple", _inputs())
    parallel = make_project(tmp_path / "parallel", _inputs())
    monkeypatch.setenv("GPTBATCH_WORKERS", "1")
    assert simple.build() == EXIT_OK
    sent = _uploaded(simulator)
    monkeypatch.setenv("GPTBATCH_WORKERS", "2")
    monkeypatch.setenv("GPTBATCH_CHUNK_BYTES", "700")
    with monkeypatch.context() as patched:
        patched.setattr(sync, "_rows", _forbidden)
        assert parallel.build() == EXIT_OK
    assert _rows(parallel) == _rows(simple)
    assert _uploaded(simulator, len(sent)) == sent  # the very bytes uploaded
    assert _results(parallel) == _results(simple)
    assert all(echoed for cid, _, echoed in _results(parallel) if cid.startswith("c"))
    assert parallel.errors("chat") == [] and parallel.errors("embed") == []

    # The rows it wrote (line digests included) let later builds reuse them.
    calls = len(simulator.journal.calls)
    assert parallel.build() == EXIT_OK
    assert len(simulator.journal.calls) == calls  # a no-op
    edited = _inputs()["chat.jsonl"]
    edited[20] = chat("c20", "Another question.")
    write_jsonl(parallel.input("chat.jsonl"), edited)
    billed = len(simulator.journal.billed)
    assert parallel.build() == EXIT_OK
    assert [b.custom_id for b in simulator.journal.billed[billed:]] == ["c20"]
