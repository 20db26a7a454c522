"""`gptbatch build --simulate`: the README's first command, with no API key and no network."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from buildkit import REPO, read_jsonl

from gptbatch.cli import main
from gptbatch.errors import EXIT_BAD_INPUT, EXIT_OK


def copy_examples(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "examples", tmp_path / "examples", ignore=shutil.ignore_patterns("out*"))
    return tmp_path / "examples" / "batch.yaml"


def test_simulate_builds_the_examples_without_a_key(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    config = copy_examples(tmp_path)
    assert main(["build", str(config), "--simulate"]) == EXIT_OK
    out = config.parent / "out-simulated"
    for name in ("reviews", "embeddings"):
        inputs = read_jsonl(config.parent / "inputs" / f"{name}.jsonl")
        results = read_jsonl(out / f"{name}.jsonl")
        assert [r["custom_id"] for r in results] == [i["custom_id"] for i in inputs]
        assert all(r["response"]["status_code"] == 200 for r in results)
    # A rehearsal never writes where real results go.
    assert not (config.parent / "out").exists()


def test_without_a_key_the_build_says_how_to_simulate(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)  # no .env here
    config = copy_examples(tmp_path)
    assert main(["build", str(config)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "OPENAI_API_KEY" in err and "--simulate" in err
    assert not (config.parent / "out").exists()


def test_simulate_recovers_from_a_killed_rehearsal(tmp_path: Path) -> None:
    config = copy_examples(tmp_path)
    env = {"GPTBATCH_CRASH_AT": "after_create", "PATH": "/usr/bin:/bin"}
    cmd = [sys.executable, "-m", "gptbatch", "build", str(config), "--simulate", "--json"]
    killed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert killed.returncode == -9
    env.pop("GPTBATCH_CRASH_AT")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == EXIT_OK, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert [e["event"] for e in events][-2:] == ["summary", "usage"]
    summary = events[-2]
    assert summary["event"] == "summary" and summary["ok"] == 20 and summary["pending"] == 0
