"""`gptbatch export` against the simulator: one row per request, matching the output files."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from buildkit import chat, embedding, make_project, read_jsonl

from gptbatch.cli import main
from gptbatch.commands.export import COLUMNS, reply_of, usage_of
from gptbatch.errors import EXIT_BAD_INPUT, EXIT_FAILED_REQUESTS, EXIT_OK, EXIT_PENDING
from gptbatch.simulator import Fault


def _responses(custom_id: str) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/responses",
        "body": {"model": "gpt-4o-mini", "input": f"Tell me about {custom_id}."},
    }


def _moderation(custom_id: str) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/moderations",
        "body": {"model": "omni-moderation-latest", "input": f"text {custom_id}"},
    }


def _unpriced(custom_id: str) -> dict[str, Any]:
    return chat(custom_id, model="gpt-unpriced-model")


INPUTS = {
    "chat.jsonl": [chat(f"c{i}") for i in range(6)] + [chat("bad1")],
    "emb.jsonl": [embedding(f"e{i}") for i in range(3)],
    "resp.jsonl": [_responses(f"p{i}") for i in range(2)],
    "mod.jsonl": [_moderation("m0")],
    "free.jsonl": [_unpriced("u0")],
}


def _export(project, *args: str, capsys) -> str:
    capsys.readouterr()
    assert main(["export", str(project.config), *args]) == EXIT_OK
    return capsys.readouterr().out


def test_export_rows_match_outputs_in_both_formats(
    tmp_path: Path, simulator_factory, capsys
) -> None:
    simulator = simulator_factory(any_model=True)  # gpt-unpriced-model is made up
    simulator.add_fault(Fault.request_error("bad*", status=400, message="Invalid request."))
    project = make_project(tmp_path, INPUTS)
    assert project.build() == EXIT_FAILED_REQUESTS
    rows = [json.loads(line) for line in _export(project, capsys=capsys).splitlines()]
    assert len(rows) == sum(len(v) for v in INPUTS.values())
    assert all(list(r) == list(COLUMNS) for r in rows)
    # config order, then input order
    assert [r["custom_id"] for r in rows] == [
        line["custom_id"] for lines in INPUTS.values() for line in lines
    ]
    assert [r["status"] for r in rows].count("failed") == 1
    by_id = {r["custom_id"]: r for r in rows}
    assert by_id["bad1"]["error"] and by_id["bad1"]["reply"] is None
    assert by_id["bad1"]["input"] == "inputs/chat.jsonl" and by_id["bad1"]["line"] == 7
    for name in INPUTS:
        stem = name.removesuffix(".jsonl")
        outputs = read_jsonl(project.out / f"{stem}.jsonl")
        ok = [r for r in rows if r["input"] == f"inputs/{name}" and r["status"] == "ok"]
        assert [r["custom_id"] for r in ok] == [o["custom_id"] for o in outputs]
        for row, out in zip(ok, outputs, strict=True):
            body = out["response"]["body"]
            assert row["reply"] == reply_of(row["endpoint"], body)[0]
            assert row["input_tokens"] == usage_of(body)[0]
    chat_out = read_jsonl(project.out / "chat.jsonl")[0]["response"]["body"]
    assert by_id["c0"]["reply"] == chat_out["choices"][0]["message"]["content"]
    assert by_id["c0"]["finish_reason"] == "stop"
    assert by_id["c0"]["output_tokens"] == chat_out["usage"]["completion_tokens"] > 0
    assert by_id["c0"]["cost"] > 0
    assert isinstance(by_id["e0"]["reply"], list) and len(by_id["e0"]["reply"]) == 1536
    assert by_id["p0"]["reply"].startswith("Simulated reply") and by_id["p0"]["cost"] > 0
    assert by_id["m0"]["reply"]["flagged"] is False
    assert isinstance(by_id["m0"]["reply"]["categories"], dict)
    assert by_id["u0"]["status"] == "ok" and by_id["u0"]["cost"] is None  # never $0

    target = tmp_path / "export.csv"
    capsys.readouterr()
    assert main(["export", str(project.config), "--format", "csv", "-o", str(target)]) == EXIT_OK
    with open(target, newline="") as f:
        table = list(csv.DictReader(f))
    assert [t["custom_id"] for t in table] == [r["custom_id"] for r in rows]
    for t, r in zip(table, rows, strict=True):
        if isinstance(r["reply"], list | dict):
            assert json.loads(t["reply"]) == r["reply"]
        else:
            assert t["reply"] == (r["reply"] or "")
        if r["cost"] is None:
            assert t["cost"] == ""
        else:
            assert "e" not in t["cost"] and float(t["cost"]) == pytest.approx(r["cost"])
        assert t["status"] == r["status"]
    assert not list(tmp_path.glob(".export.csv.*.tmp"))


def test_export_marks_unfinished_requests_pending(tmp_path: Path, simulator, capsys) -> None:
    project = make_project(tmp_path, {"requests.jsonl": [chat(f"r{i}") for i in range(4)]})
    assert project.build("--no-wait") == EXIT_PENDING
    rows = [json.loads(line) for line in _export(project, capsys=capsys).splitlines()]
    assert [r["status"] for r in rows] == ["pending"] * 4
    assert all(r["reply"] is None and r["cost"] is None for r in rows)


def test_export_before_any_build_says_what_to_do(tmp_path: Path, capsys) -> None:
    project = make_project(tmp_path, {"requests.jsonl": [chat("r0")]})
    assert main(["export", str(project.config)]) == EXIT_BAD_INPUT
    assert "run `gptbatch build` first" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_reply_and_usage_of_completions_and_incomplete_responses() -> None:
    completion = {
        "choices": [{"text": " hi", "finish_reason": "length"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2},
    }
    assert reply_of("/v1/completions", completion) == (" hi", "length")
    assert usage_of(completion) == (5, None, 2, None)
    response = {
        "status": "incomplete",
        "incomplete_details": {"reason": "max_output_tokens"},
        "output": [
            {"type": "reasoning", "content": []},
            {"type": "message", "content": [{"type": "output_text", "text": "a"}]},
            {"type": "message", "content": [{"type": "output_text", "text": "b"}]},
        ],
        "usage": {
            "input_tokens": 9,
            "input_tokens_details": {"cached_tokens": 4},
            "output_tokens": 7,
            "output_tokens_details": {"reasoning_tokens": 3},
        },
    }
    assert reply_of("/v1/responses", response) == ("ab", "max_output_tokens")
    assert usage_of(response) == (9, 4, 7, 3)
