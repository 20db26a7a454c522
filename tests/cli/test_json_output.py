"""validate, tokens, plan and status take --json."""

from __future__ import annotations

import json
from pathlib import Path

from gptbatch.cli import main

LINE = (
    '{"custom_id": "%s", "method": "POST", "url": "/v1/chat/completions", '
    '"body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}}\n'
)


def test_validate_and_tokens_print_json(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.jsonl").write_text(LINE % "a" + LINE % "b")
    (tmp_path / "batch.yaml").write_text("inputs: [in.jsonl]\n")
    assert main(["validate", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True and doc["requests"] == 2
    assert doc["groups"] == [
        {"model": "gpt-4o-mini", "endpoint": "/v1/chat/completions", "requests": 2}
    ]
    assert main(["tokens", "in.jsonl", "--json", "--per-request"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["total"]["requests"] == 2 and doc["total"]["tokens"] > 0
    assert [r["custom_id"] for r in doc["requests"]] == ["a", "b"]
    (tmp_path / "in.jsonl").write_text(LINE % "a" + "{oops\n")
    assert main(["validate", "--json"]) == 2
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and doc["problems"][0]["line"] == 2
