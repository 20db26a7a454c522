"""`gpt_batch_manager FILE...`, the original tool's manager, on the build engine."""

from __future__ import annotations

from pathlib import Path

from buildkit import batch_count, chat, read_jsonl, write_jsonl

from gptbatch.cli.legacy import manager_main
from gptbatch.errors import EXIT_BAD_INPUT, EXIT_OK


def test_manager_writes_output_beside_each_file_and_resumes(
    tmp_path: Path, simulator, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    shards = {
        "shard-000-of-002.jsonl": [chat(f"a{i}") for i in range(5)],
        "shard-001-of-002.jsonl": [chat(f"b{i}") for i in range(4)],
    }
    for name, rows in shards.items():
        write_jsonl(tmp_path / name, rows)
    assert manager_main(sorted(shards)) == EXIT_OK
    for name, rows in shards.items():
        out = read_jsonl(tmp_path / name.replace(".jsonl", ".output.jsonl"))
        assert [o["custom_id"] for o in out] == [r["custom_id"] for r in rows]
        assert all(o["response"]["status_code"] == 200 for o in out)
    # One batch a file, one at a time, like the original (not the file cut into pieces).
    assert batch_count(simulator) == 2
    batches = batch_count(simulator)
    assert manager_main(sorted(shards)) == EXIT_OK  # resumes: nothing to do
    assert batch_count(simulator) == batches
    assert max(simulator.journal.billed_counts().values()) == 1


def test_manager_refuses_missing_files(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert manager_main(["nope.jsonl"]) == EXIT_BAD_INPUT
    assert "nope.jsonl" in capsys.readouterr().err
    assert not (tmp_path / ".gpt_batch_manager").exists()
