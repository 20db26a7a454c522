"""Tests for the drop-in commands of the original tool: gpt_batch_splitter, gpt_batch_manager."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from gptbatch.cli.legacy import manager_main, splitter_main
from gptbatch.commands.split import SHARD_FILE
from gptbatch.inputs.tokens import estimate_request


def write_requests(path: Path, count: int) -> list[bytes]:
    lines = []
    for i in range(count):
        text = " ".join(["word"] * (50 + 37 * (i % 9)))
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}
        line = {
            "custom_id": f"id-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": body,
        }
        lines.append(json.dumps(line).encode())
    path.write_bytes(b"\n".join(lines) + b"\n")
    return lines


def shard_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if SHARD_FILE.fullmatch(p.name))


def test_splitter_writes_shards_into_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    lines = write_requests(inputs / "a.jsonl", 120) + write_requests(inputs / "b.jsonl", 0)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert splitter_main(["3000", str(inputs / "a.jsonl")]) == 0
    shards = shard_files(work)
    count = len(shards)
    assert count > 1
    assert [p.name for p in shards] == [f"shard-{i:03d}-of-{count:03d}.jsonl" for i in range(count)]
    written = [line for p in shards for line in p.read_bytes().splitlines()]
    assert Counter(written) == Counter(lines)
    for shard in shards:
        requests = [json.loads(line) for line in shard.read_bytes().splitlines()]
        assert sum(estimate_request(r["url"], r["body"]).tokens for r in requests) <= 3000
    out = capsys.readouterr().out
    assert out.startswith(f"Will use {count} shards for 120 requests / ")
    assert f"  shard-000-of-{count:03d}.jsonl: gpt-4o-mini /v1/chat/completions " in out


def test_splitter_reports_bad_input_with_its_own_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert splitter_main(["1000", "missing.jsonl"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpt_batch_splitter: error: missing.jsonl: no such file")
    assert not shard_files(tmp_path)


def test_splitter_as_a_console_script(tmp_path: Path) -> None:
    write_requests(tmp_path / "in.jsonl", 30)
    code = "import sys; from gptbatch.cli.legacy import splitter_main; sys.exit(splitter_main())"
    done = subprocess.run(
        [sys.executable, "-c", code, "2000", "in.jsonl"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert shard_files(tmp_path)
    usage = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert usage.returncode == 2 and "usage: gpt_batch_splitter [-h] LIMIT FILE" in usage.stderr


def test_manager_without_files_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        manager_main([])
    assert exit_.value.code == 2
    assert "FILE" in capsys.readouterr().err


def test_both_spellings_are_console_scripts() -> None:
    scripts = {e.name: e for e in entry_points(group="console_scripts")}
    for name in ("gpt_batch_splitter", "gpt-batch-splitter"):
        assert scripts[name].load() is splitter_main
    for name in ("gpt_batch_manager", "gpt-batch-manager"):
        assert scripts[name].load() is manager_main


def test_splitter_rerun_over_a_glob_skips_its_own_shards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`gpt_batch_splitter LIMIT *.jsonl` twice in one directory: the second run's glob
    also names the first run's shards, which are output, not more requests."""
    monkeypatch.chdir(tmp_path)
    lines = write_requests(tmp_path / "a.jsonl", 60) + write_requests(tmp_path / "b.jsonl", 0)
    assert splitter_main(["3000", "a.jsonl", "b.jsonl"]) == 0
    first = {p.name: p.read_bytes() for p in shard_files(tmp_path)}
    capsys.readouterr()
    everything = sorted(p.name for p in tmp_path.glob("*.jsonl"))
    assert splitter_main(["3000", *everything]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Skipped shard files of an earlier split"), out
    assert {p.name: p.read_bytes() for p in shard_files(tmp_path)} == first
    written = [line for data in first.values() for line in data.splitlines()]
    assert Counter(written) == Counter(lines)
    # Shard files named alone are split again (here: into smaller shards).
    assert splitter_main(["1500", *sorted(first)]) == 0
    new = [p for p in shard_files(tmp_path) if p.name not in first]  # the old ones were inputs
    assert len(new) > len(first)
    assert Counter(line for p in new for line in p.read_bytes().splitlines()) == Counter(lines)


def test_splitter_piped_into_a_reader_that_left_exits_quietly(tmp_path: Path) -> None:
    """`gpt_batch_splitter ... | head`: no BrokenPipeError traceback when the reader is gone."""
    write_requests(tmp_path / "a.jsonl", 200)
    code = "import sys; from gptbatch.cli.legacy import splitter_main; sys.exit(splitter_main())"
    done = subprocess.run(
        f'{sys.executable} -c "{code}" 3000 a.jsonl | true',  # `true` exits before it writes
        shell=True,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    assert shard_files(tmp_path)
