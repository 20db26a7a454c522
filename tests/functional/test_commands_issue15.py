"""Issue 15 items 2, 6, 8, 10 and 13: the newer commands keep the old promises about money and data.

Each test drives the real CLI against the simulator (or a rehearsal's own simulator) and
fails on e688b8b.
"""

from __future__ import annotations

import io
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from buildkit import (
    REPO,
    billed_ids,
    billed_twice,
    chat,
    creates,
    make_project,
    padded_chat,
    read_jsonl,
    write_jsonl,
)

from gptbatch.cli import main
from gptbatch.cli.legacy import manager_main
from gptbatch.config.spec import load_spec
from gptbatch.errors import EXIT_BAD_INPUT, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_PENDING
from gptbatch.state.store import state_dir

FAST_POLLING = {"initial_seconds": 0.02, "max_seconds": 0.2, "factor": 1.5}


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


# --- item 2: init --force keeps what identifies the project ----------------------------------


def test_init_force_keeps_a_derived_project_id_output_dir_and_inputs(
    tmp_path: Path, simulator, capsys
) -> None:
    """A config without project: keeps the id the spec derived, so a lost state pays nothing."""
    reqs = [chat(f"q{i}") for i in range(10)]
    write_jsonl(tmp_path / "data" / "questions.jsonl", reqs)
    config = tmp_path / "batch.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "version": 1,
                "inputs": ["data/questions.jsonl"],
                "output_dir": "results",
                "model": "gpt-4o-mini",
                "polling": FAST_POLLING,
            },
            sort_keys=False,
        )
    )
    assert main(["build", str(config)]) == EXIT_OK
    derived = load_spec(config).project
    capsys.readouterr()
    assert main(["init", str(tmp_path), "--force"]) == EXIT_OK
    out = capsys.readouterr().out
    assert f"kept project {derived}" in out
    assert "kept output_dir results" in out and "kept inputs data/questions.jsonl" in out
    assert "reset to the template's defaults: model, polling" in out
    assert "note: model filled requests that lack them" in out
    doc = yaml.safe_load(config.read_text())
    assert doc["project"] == derived  # written out: it no longer depends on the template
    assert doc["output_dir"] == "results" and doc["inputs"] == ["data/questions.jsonl"]
    assert load_spec(config).project == derived
    assert "results/" in (tmp_path / ".gitignore").read_text()
    # Then the state is lost: the rebuild finds the batches by the same id, pays nothing.
    doc["polling"] = FAST_POLLING
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    shutil.rmtree(tmp_path / "results" / ".gptbatch")
    assert main(["build", str(config)]) == EXIT_OK
    assert billed_twice(simulator) == []
    assert creates(simulator) == 1
    assert len(read_jsonl(tmp_path / "results" / "questions.jsonl")) == 10


def test_init_force_writes_back_inputs_and_output_dir_yaml_would_misread(
    tmp_path: Path, capsys
) -> None:
    inputs = ["data/*.jsonl", "notes #2.jsonl", "yes", "01.jsonl"]
    doc = {"version": 1, "inputs": inputs, "output_dir": "out: results", "project": "p-1"}
    (tmp_path / "batch.yaml").write_text(yaml.safe_dump(doc))
    assert main(["init", str(tmp_path), "--force"]) == EXIT_OK
    written = yaml.safe_load((tmp_path / "batch.yaml").read_text())
    assert written["inputs"] == inputs and written["output_dir"] == "out: results"
    assert written["project"] == "p-1"
    assert "kept project p-1 (as it was)" in capsys.readouterr().out


# --- item 6: clean says which results a lost state would pay for again -----------------------


def test_clean_warns_when_deleted_uploads_make_the_next_build_pay_again(
    tmp_path: Path, simulator, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    reqs = [chat(f"r{i}") for i in range(6)]
    project = make_project(tmp_path, {"requests.jsonl": reqs}, delete_uploads=True)
    assert project.build() == EXIT_OK
    capsys.readouterr()
    monkeypatch.setattr("sys.stdin", _Terminal("n\n"))
    assert main(["clean", str(project.config)]) == EXIT_ERROR
    prompt = capsys.readouterr().out
    warning = prompt[prompt.index("warning:") : prompt.index("remove these?")]
    assert "6 results could not be recovered from the API" in warning
    assert "delete_uploads: true" in warning and "pays for them again" in warning
    # The warning is true: with the state gone, the next build buys all six again.
    assert main(["clean", str(project.config), "--yes"]) == EXIT_OK
    assert project.build() == EXIT_OK
    assert billed_twice(simulator) == sorted(r["custom_id"] for r in reqs)


def test_clean_remote_warns_with_the_count_and_plain_clean_does_not(
    tmp_path: Path, simulator, capsys
) -> None:
    project = make_project(tmp_path / "a", {"requests.jsonl": [chat(f"a{i}") for i in range(4)]})
    assert project.build() == EXIT_OK
    capsys.readouterr()
    assert main(["clean", str(project.config), "--remote", "--yes"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "warning: 4 results could not be recovered from the API" in out
    assert "deletes their input files at the API" in out
    # Without --remote and delete_uploads the batches stay recoverable: no warning, no cost.
    other = make_project(tmp_path / "b", {"requests.jsonl": [chat(f"b{i}") for i in range(3)]})
    assert other.build() == EXIT_OK
    capsys.readouterr()
    assert main(["clean", str(other.config), "--yes"]) == EXIT_OK
    assert "warning" not in capsys.readouterr().out
    assert other.build() == EXIT_OK
    assert billed_ids(simulator).count("b0") == 1


# --- item 8: export -o never overwrites an input, an output or the state ---------------------


def test_export_refuses_an_output_file_it_would_destroy(tmp_path: Path, simulator, capsys) -> None:
    project = make_project(tmp_path, {"requests.jsonl": [chat(f"r{i}") for i in range(3)]})
    assert project.build() == EXIT_OK
    work = state_dir(project.out)
    targets = [
        project.input(),
        project.out / "requests.jsonl",
        project.out / "requests.errors.jsonl",
        work / "state.db",
        work / "export.jsonl",  # anything under the state directory
        project.config,
        tmp_path / "out-simulated" / ".gptbatch" / "state.db",  # the rehearsal's state too
    ]
    before = {p: p.read_bytes() for p in targets if p.exists()}
    for target in targets:
        capsys.readouterr()
        assert main(["export", str(project.config), "-o", str(target)]) == EXIT_BAD_INPUT
        err = capsys.readouterr().err
        assert "would destroy it" in err and "Nothing was written" in err, err
    assert {p: p.read_bytes() for p in targets if p.exists()} == before
    assert not (work / "export.jsonl").exists()
    assert sorted(p.name for p in work.iterdir() if p.name.startswith(".")) == []  # no temp
    # A file of its own is written, and the project still works.
    assert main(["export", str(project.config), "-o", str(tmp_path / "rows.jsonl")]) == EXIT_OK
    assert len(read_jsonl(tmp_path / "rows.jsonl")) == 3
    assert main(["status", str(project.config)]) == EXIT_OK


# --- item 10: a full disk is not a damaged state ---------------------------------------------


def _limited(limit: int):
    def preexec() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


def test_gc_on_a_full_disk_says_disk_full_and_the_state_is_intact(
    tmp_path: Path, simulator
) -> None:
    """No root needed: a file size limit makes SQLite's writes fail as a full disk would."""
    reqs = [chat(f"r{i}", "word " * 200 + str(i)) for i in range(60)]
    project = make_project(tmp_path, {"requests.jsonl": reqs})
    assert project.build() == EXIT_OK
    write_jsonl(project.input(), [chat(f"r{i}", "edited " + str(i)) for i in range(60)])
    assert project.build() == EXIT_OK
    db = state_dir(project.out) / "state.db"
    assert db.stat().st_size > 64 * 1024
    bought = len(billed_ids(simulator))
    gc = subprocess.run(
        [sys.executable, "-m", "gptbatch", "gc", str(project.config)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        preexec_fn=_limited(32 * 1024),  # VACUUM rewrites the database: over the limit
    )
    assert gc.returncode == EXIT_ERROR, gc.stderr
    assert "disk full" in gc.stderr and "the state is intact" in gc.stderr, gc.stderr
    assert "damaged" not in gc.stderr and "move it aside" not in gc.stderr
    assert ".broken" not in gc.stderr
    # It was intact: with room again gc works and nothing is bought again.
    assert main(["gc", str(project.config)]) == EXIT_OK
    assert project.build() == EXIT_OK
    assert len(billed_ids(simulator)) == bought
    assert len(project.output()) == 60
    # build says the same (here it stops reading the edited input, before sending anything)
    write_jsonl(project.input(), [chat(f"r{i}", "again " + str(i)) for i in range(60)])
    build = subprocess.run(
        [sys.executable, "-m", "gptbatch", "build", str(project.config)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        preexec_fn=_limited(32 * 1024),
    )
    assert build.returncode == EXIT_ERROR, build.stderr
    assert "disk full" in build.stderr and "the state is intact" in build.stderr
    assert "damaged" not in build.stderr
    assert project.build() == EXIT_OK
    assert billed_twice(simulator) == sorted({f"r{i}" for i in range(60)})
    assert max(simulator.journal.billed_counts().values()) == 3  # each version once


# --- item 13: rehearsal options everywhere ---------------------------------------------------


def test_plan_gc_and_cancel_accept_simulate(tmp_path: Path, capsys) -> None:
    project = make_project(tmp_path, {"requests.jsonl": [chat(f"r{i}") for i in range(5)]})
    assert main(["build", str(project.config), "--simulate"]) == EXIT_OK
    capsys.readouterr()
    assert main(["plan", str(project.config), "--simulate"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "what `build` would send now" in out and "5 of them done or in flight" in out
    assert main(["gc", str(project.config), "--simulate"]) == EXIT_OK
    assert "dropped 0 results" in capsys.readouterr().out
    assert main(["cancel", str(project.config), "--simulate"]) == EXIT_OK
    assert "nothing to cancel" in capsys.readouterr().out
    assert not project.out.exists()  # none of them touched the real output directory


def test_cancel_simulate_stops_the_rehearsals_batches(tmp_path: Path, capsys) -> None:
    reqs = [padded_chat(f"r{i}", words=2000) for i in range(40)]
    project = make_project(tmp_path, {"requests.jsonl": reqs})
    assert main(["build", str(project.config), "--simulate", "--no-wait"]) == EXIT_PENDING
    out = capsys.readouterr().out
    assert "run `gptbatch build --simulate` again to continue" in out  # the resume hint
    assert "status --explain --simulate" in out
    assert main(["cancel", str(project.config), "--simulate"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "cancelled 1 batch" in out and "gptbatch build --simulate" in out


def test_an_interrupted_rehearsal_names_simulate_in_its_resume_hint(tmp_path: Path) -> None:
    project = make_project(
        tmp_path,
        {"requests.jsonl": [padded_chat(f"r{i}") for i in range(8)]},
        limits={"enqueued_tokens": 150, "safety_margin": 0},
    )
    cmd = [sys.executable, "-m", "gptbatch", "build", str(project.config), "--simulate", "--json"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if json.loads(line)["event"] == "submitted":
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_INTERRUPTED, err
    assert "`gptbatch build --simulate` picks up where this stopped" in err, err
    assert "Traceback" not in err


def test_clean_simulate_removes_the_rehearsals_simulator(tmp_path: Path, capsys) -> None:
    project = make_project(tmp_path, {"requests.jsonl": [chat(f"r{i}") for i in range(4)]})
    assert main(["build", str(project.config), "--simulate"]) == EXIT_OK
    simulator_state = tmp_path / "out-simulated" / ".gptbatch" / "simulator"
    assert simulator_state.is_dir()
    capsys.readouterr()
    assert main(["clean", str(project.config), "--simulate", "--yes"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "not written by gptbatch" not in out and "of them the rehearsal's simulator" in out
    assert not (tmp_path / "out-simulated").exists()
    # A later rehearsal starts afresh: it adopts no batch of the old one.
    capsys.readouterr()
    assert main(["build", str(project.config), "--simulate"]) == EXIT_OK
    summary = capsys.readouterr().out
    assert "1 batch submitted, 0 adopted" in summary, summary


def test_export_after_only_a_rehearsal_mentions_simulate(tmp_path: Path, capsys) -> None:
    project = make_project(tmp_path, {"requests.jsonl": [chat("r0")]})
    assert main(["build", str(project.config), "--simulate"]) == EXIT_OK
    capsys.readouterr()
    assert main(["export", str(project.config)]) == EXIT_BAD_INPUT
    assert "pass --simulate to export the rehearsal" in capsys.readouterr().err
    assert main(["export", str(project.config), "--simulate"]) == EXIT_OK


def test_manager_simulate_writes_output_beside_each_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    shards = {
        "shard-000-of-002.jsonl": [chat(f"a{i}") for i in range(3)],
        "shard-001-of-002.jsonl": [chat(f"b{i}") for i in range(2)],
    }
    for name, rows in shards.items():
        write_jsonl(tmp_path / name, rows)
    assert manager_main([*sorted(shards), "--simulate"]) == EXIT_OK
    for name, rows in shards.items():
        out = read_jsonl(tmp_path / name.replace(".jsonl", ".output.jsonl"))
        assert [o["custom_id"] for o in out] == [r["custom_id"] for r in rows]
