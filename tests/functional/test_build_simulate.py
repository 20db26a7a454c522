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


def rehearsal_journal(config: Path):
    """The billing journal of a rehearsal's simulator, restored from its state directory."""
    from gptbatch.api.connect import SIMULATE_CONFIG
    from gptbatch.config.spec import load_spec
    from gptbatch.simulator import SimConfig, Simulator

    spec = load_spec(config)
    limits = {m: spec.limits.token_limit(m) for m in ("gpt-4o-mini", "text-embedding-3-small")}
    state = config.parent / "out-simulated" / ".gptbatch" / "simulator"
    sim = Simulator(
        SimConfig(
            token_limits={m: v for m, v in limits.items() if v},
            state_dir=str(state),
            **SIMULATE_CONFIG,
        )
    )
    try:
        return sim.journal
    finally:
        sim.stop()


def test_the_readme_second_step_edit_one_line_and_rehearse_again(tmp_path: Path) -> None:
    """Issue 10 #5: the second rehearsal used to hang on a reused batch id."""
    config = copy_examples(tmp_path)
    cmd = [sys.executable, "-m", "gptbatch", "build", str(config), "--simulate"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert first.returncode == EXIT_OK, first.stderr
    reviews = config.parent / "inputs" / "reviews.jsonl"
    lines = reviews.read_text().splitlines()
    edited = json.loads(lines[0])
    edited["body"]["messages"][-1]["content"] += " (edited)"
    lines[0] = json.dumps(edited)
    reviews.write_text("\n".join(lines) + "\n")
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=REPO)
    assert second.returncode == EXIT_OK, second.stderr
    assert "1 batch submitted" in second.stdout
    assert "this run: 1 result," in second.stdout
    counts = rehearsal_journal(config).billed_counts()
    assert len(counts) == 20
    # The edited request was billed again (new content, same custom_id); nothing else was.
    assert counts.pop(edited["custom_id"]) == 2
    assert set(counts.values()) == {1}


def test_an_interrupted_rehearsal_resumes_instead_of_starting_over(tmp_path: Path) -> None:
    """Issue 10 #6: Ctrl-C a rehearsal with results collected; the next one sends only the rest."""
    import signal
    import time

    config = copy_examples(tmp_path)
    text = config.read_text().replace("gpt-4o-mini: 2000000", "gpt-4o-mini: 200")
    config.write_text(text)  # one review at a time: many batches in a row
    cmd = [sys.executable, "-m", "gptbatch", "build", str(config), "--simulate", "--json"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO
    )
    collected = 0
    assert proc.stdout is not None
    for line in proc.stdout:
        if json.loads(line)["event"] == "collected":
            collected += 1
            if collected == 3:
                break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "BrokenPipe" not in err
    time.sleep(0.1)
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert again.returncode == EXIT_OK, again.stderr
    events = [json.loads(line) for line in again.stdout.splitlines()]
    sent = sum(e["requests"] for e in events if e["event"] == "submitted")
    assert sent < 20 - 3  # what was collected (at least 3 reviews) is not sent again
    journal = rehearsal_journal(config)
    assert sorted(journal.billed_counts().values()) == [1] * 20  # each billed once in all


def test_a_rehearsal_never_becomes_an_input_of_the_real_build(tmp_path: Path, capsys) -> None:
    """Issue 10 #7: `**/*.jsonl` matched <output_dir>-simulated and broke the real validate."""
    config = copy_examples(tmp_path)
    config.write_text(
        config.read_text().replace(
            "inputs:\n  - inputs/reviews.jsonl      # chat completions with gpt-4o-mini\n"
            "  - inputs/embeddings.jsonl   # embeddings with text-embedding-3-small\n",
            'inputs:\n  - "**/*.jsonl"\n',
        )
    )
    assert '"**/*.jsonl"' in config.read_text()
    assert main(["build", str(config), "--simulate"]) == EXIT_OK
    assert (config.parent / "out-simulated" / "reviews.jsonl").exists()
    capsys.readouterr()
    assert main(["validate", str(config)]) == EXIT_OK
    assert "ok: 20 requests in 2 files" in capsys.readouterr().out


def test_a_first_rehearsal_rejected_for_bad_input_leaves_no_trace(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    config = copy_examples(tmp_path)
    reviews = config.parent / "inputs" / "reviews.jsonl"
    reviews.write_text(reviews.read_text() + '{"custom_id": "broken", \n')
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(["build", str(config), "--simulate"]) == EXIT_BAD_INPUT
    assert "reviews.jsonl" in capsys.readouterr().err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_a_ctrl_c_after_the_summary_does_not_kill_the_finished_build(tmp_path: Path) -> None:
    """A Ctrl-C in the moments between `done:` and the process's end (threads joined at
    shutdown) ended it by the signal: exit -2 and no message, after a build that had finished.
    Now it exits 130 with the message while the command still runs, and 0 after."""
    import signal
    import time

    config = copy_examples(tmp_path)
    cmd = [sys.executable, "-m", "gptbatch", "build", str(config), "--simulate", "-B"]
    codes = []
    for delay in (0.0, 0.05, 0.1, 0.2):
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("done:"):
                time.sleep(delay)
                proc.send_signal(signal.SIGINT)
                break
        _, err = proc.communicate(timeout=60)
        codes.append(proc.returncode)
        assert proc.returncode in (EXIT_OK, 130), (delay, proc.returncode, err)
        assert "Traceback" not in err, err
    assert EXIT_OK in codes  # the late ones landed after the command had returned
