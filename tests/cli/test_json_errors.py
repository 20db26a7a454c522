"""Under --json, errors are JSON events on stdout too (and still a line on stderr)."""

from __future__ import annotations

import json
from pathlib import Path

from gptbatch.cli import main
from gptbatch.errors import EXIT_BAD_INPUT


def test_a_json_build_reports_its_error_as_an_event(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.jsonl").write_text(
        '{"custom_id": "a", "method": "POST", "url": "/v1/embeddings", '
        '"body": {"model": "text-embedding-3-small", "input": "x"}}\n'
    )
    (tmp_path / "batch.yaml").write_text("inputs: [in.jsonl]\n")
    assert main(["build", "--json"]) == EXIT_BAD_INPUT
    out, err = capsys.readouterr()
    (event,) = [json.loads(line) for line in out.splitlines()]
    assert event["event"] == "error" and event["exit_code"] == EXIT_BAD_INPUT
    assert "OPENAI_API_KEY" in event["message"] and "--simulate" in event["message"]
    assert err.startswith("gptbatch: error: no API key")
