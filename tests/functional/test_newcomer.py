"""A new user's first half hour (issue 15, items 12 and 15): typos, messages, Ctrl-C, --json.

Each test drives the real CLI; the builds run against the simulator.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from buildkit import REPO, billed_ids, chat, json_events, make_project, padded_chat

from gptbatch.cli import main
from gptbatch.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_OK, EXIT_PENDING
from gptbatch.simulator import Fault, SimConfig
from gptbatch.simulator.results import TokenCounter
from gptbatch.simulator.validation import parse_input

TYPO = "gpt-4o-mnii"


def _typo_project(tmp_path: Path, model: str = TYPO):
    return make_project(
        tmp_path, {"requests.jsonl": [chat(f"r{i}", model=model) for i in range(3)]}
    )


# --- item 12: a typo'd model -------------------------------------------------------------------


def test_validate_warns_of_a_typo_with_the_closest_known_model(tmp_path: Path, capsys) -> None:
    project = _typo_project(tmp_path)
    assert project.cli("validate") == EXIT_OK  # a warning, not an error: the model may be new
    out, err = capsys.readouterr()
    assert out.startswith("ok: 3 requests in 1 file")
    assert f"unknown model '{TYPO}': did you mean gpt-4o-mini?" in err
    assert "inputs/requests.jsonl:1:" in err and "(3 requests)" in err
    assert project.cli("validate", "--json") == EXIT_OK
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True
    assert [w for w in doc["warnings"] if "did you mean gpt-4o-mini?" in w]


def test_validate_is_quiet_about_known_models_snapshots_and_fine_tunes(
    tmp_path: Path, capsys
) -> None:
    models = ["gpt-4o-mini", "gpt-4o-mini-2024-07-18", "ft:gpt-4o-mini-2024-07-18:acme::abc123"]
    inputs = {f"f{i}.jsonl": [chat(f"r{i}", model=m)] for i, m in enumerate(models)}
    project = make_project(tmp_path, inputs)
    assert project.cli("validate") == EXIT_OK
    assert capsys.readouterr().err == ""


def test_plan_warns_of_a_typo(tmp_path: Path, capsys) -> None:
    project = _typo_project(tmp_path)
    assert project.cli("plan") == EXIT_OK
    out = capsys.readouterr().out
    assert f"unknown model '{TYPO}': did you mean gpt-4o-mini?" in out


def test_the_simulator_fails_a_batch_naming_an_unknown_model_and_build_warns(
    tmp_path: Path, simulator, capsys
) -> None:
    project = _typo_project(tmp_path)
    code = project.build()
    err = capsys.readouterr().err
    assert code != EXIT_OK
    assert f"warning: unknown model '{TYPO}': did you mean gpt-4o-mini?" in err
    [batch] = simulator.service.batches()
    assert batch["status"] == "failed"
    codes = {e["code"] for e in batch["errors"]["data"]}
    assert codes == {"model_not_found"}
    assert billed_ids(simulator) == []  # a batch failed at validation costs nothing
    assert all("model_not_found" in e["error"] for e in project.errors())


def test_an_unknown_but_real_model_still_builds(tmp_path: Path, simulator_factory, capsys) -> None:
    simulator_factory(any_model=True)  # a service that knows a model gptbatch does not
    project = _typo_project(tmp_path, model="gpt-9-turbo-preview")
    assert project.build() == EXIT_OK
    assert "warning: unknown model 'gpt-9-turbo-preview'" in capsys.readouterr().err
    assert len(project.output()) == 3


def test_a_rehearsal_rejects_a_typo_like_the_api(tmp_path: Path, capsys) -> None:
    project = _typo_project(tmp_path)
    assert project.build("--simulate") != EXIT_OK
    assert "model_not_found" in capsys.readouterr().err


def test_simulator_parse_input_knows_models_by_list_snapshot_fine_tune_or_option() -> None:
    def errors(model: str, **config) -> list[str]:
        line = json.dumps(chat("a", model=model) | {"method": "POST"}).encode()
        parsed = parse_input(line, "/v1/chat/completions", SimConfig(**config), TokenCounter())
        return [e["code"] for e in parsed.errors]

    assert errors("gpt-4o-mini") == []
    assert errors("gpt-4o-mini-2024-07-18") == []
    assert errors("ft:gpt-4o-mini-2024-07-18:acme::abc123") == []
    assert errors(TYPO) == ["model_not_found"]
    assert errors(TYPO, any_model=True) == []
    assert errors(TYPO, models=(TYPO,)) == []


# --- item 15: Ctrl-C ------------------------------------------------------------------------------


def _gptbatch(*args: str, cwd: Path, **kw) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, *kw.pop("python_args", ()), "-m", "gptbatch", *args],
        env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


# Ctrl-C lands wherever the process is; while gptbatch loads, that is inside an import. This
# raises KeyboardInterrupt exactly there, as SIGINT's default handler would, without a race.
_INTERRUPT_AT_IMPORT = """
import runpy, sys

AT = sys.argv[1]

class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == AT:
            raise KeyboardInterrupt
        return None

sys.meta_path.insert(0, Interrupt())
sys.argv = ["gptbatch", *sys.argv[2:]]
runpy.run_module("gptbatch", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("command", ["build", "validate", "cancel"])
@pytest.mark.parametrize("loading", ["gptbatch.errors", "gptbatch.config.spec", "jsonschema"])
def test_ctrl_c_while_the_command_line_loads_is_one_line_and_exit_130(
    tmp_path: Path, command: str, loading: str
) -> None:
    """Ctrl-C while gptbatch loads (its first ~0.3 s): one line and exit 130, not a traceback
    and -2. gptbatch.errors loads first (`from gptbatch.cli import main`), spec and jsonschema
    with the command's modules."""
    project = _typo_project(tmp_path, model="gpt-4o-mini")
    done = subprocess.run(
        [sys.executable, "-c", _INTERRUPT_AT_IMPORT, loading, command, str(project.config)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == EXIT_INTERRUPTED, done.stderr
    assert done.stderr == "gptbatch: interrupted before anything was done\n"
    assert done.stdout == ""


def test_ctrl_c_during_cancel_says_what_cancel_did(tmp_path: Path, simulator_factory) -> None:
    sim = simulator_factory(validating_seconds=10_000.0)  # batches stay in flight
    # The cancel call hangs: Ctrl-C comes while cancel is at work.
    sim.add_fault(Fault.slow(8.0, path="/v1/batches/*/cancel"))
    project = make_project(tmp_path, {"requests.jsonl": [chat(f"r{i}") for i in range(3)]})
    assert project.build("--no-wait") == EXIT_PENDING
    proc = _gptbatch("cancel", str(project.config), cwd=tmp_path)
    try:
        time.sleep(3.0)  # loaded, listed, waiting on the cancel call
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == EXIT_INTERRUPTED, err
    assert "run `gptbatch cancel` again" in err
    assert "`gptbatch build` picks up" not in err
    assert "Traceback" not in err


# --- item 15: --json starts with start ------------------------------------------------------------


def test_json_build_events_begin_with_start(tmp_path: Path, simulator, capsys) -> None:
    project = make_project(tmp_path, {"requests.jsonl": [chat("a"), chat("b")]})
    capsys.readouterr()
    assert project.build("--json") == EXIT_OK
    events = json_events(capsys.readouterr().out)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start", kinds
    assert "input" in kinds  # still reported, after start


# --- item 15: status reports what validate reports ----------------------------------------------


def _problem_lines(err: str) -> list[str]:
    """The problems a command printed: its `path:line: ...` lines, without the error prefix."""
    lines = [line.removeprefix("gptbatch: error: ") for line in err.splitlines()]
    return sorted(line for line in lines if ".jsonl:" in line and "warning" not in line)


def test_status_reports_the_problems_validate_reports_unchanged_files_included(
    tmp_path: Path, simulator, capsys
) -> None:
    inputs = {
        "a.jsonl": [padded_chat(f"a{i}") for i in range(8)],
        "b.jsonl": [padded_chat(f"b{i}") for i in range(6)],
    }
    project = make_project(tmp_path, inputs)
    assert project.build() == EXIT_OK
    assert project.cli("status") == EXIT_OK
    # A lowered limit makes every built request too big, in files status does not re-read;
    # b also gets malformed lines (a changed file, which status does re-read).
    doc = yaml.safe_load(project.config.read_text())
    doc["limits"] = {"enqueued_tokens": {"gpt-4o-mini": 50}}
    project.config.write_text(yaml.safe_dump(doc))
    with project.input("b.jsonl").open("a") as f:
        f.write("{not json\n" * 4)
    capsys.readouterr()
    assert project.cli("validate") == EXIT_BAD_INPUT
    validated = _problem_lines(capsys.readouterr().err)
    assert len(validated) == 8 + 6 + 4
    assert project.cli("status") == EXIT_BAD_INPUT
    assert _problem_lines(capsys.readouterr().err) == validated


def test_status_reports_a_lowered_limit_even_when_no_file_changed(
    tmp_path: Path, simulator, capsys
) -> None:
    project = make_project(tmp_path, {"a.jsonl": [padded_chat(f"a{i}") for i in range(5)]})
    assert project.build() == EXIT_OK
    doc = yaml.safe_load(project.config.read_text())
    doc["limits"] = {"enqueued_tokens": {"gpt-4o-mini": 50}}
    project.config.write_text(yaml.safe_dump(doc))
    capsys.readouterr()
    assert project.cli("validate") == EXIT_BAD_INPUT
    validated = _problem_lines(capsys.readouterr().err)
    assert len(validated) == 5
    assert project.cli("status") == EXIT_BAD_INPUT  # not "up to date"
    assert _problem_lines(capsys.readouterr().err) == validated


# --- item 15: messages a new user meets ---------------------------------------------------------


def test_validate_given_a_request_file_says_so_and_names_the_config(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    project = make_project(tmp_path, {"x.jsonl": [chat("a"), chat("b")]})
    monkeypatch.chdir(project.root)
    assert main(["validate", "inputs/x.jsonl"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "YAML" not in err
    assert "inputs/x.jsonl: this is a request file, not a config" in err
    assert "pass the batch.yaml (gptbatch validate batch.yaml)" in err
    # One line of JSON is also valid YAML: still a request file, not schema errors.
    (project.root / "one.jsonl").write_text(json.dumps(chat("a")) + "\n")
    assert main(["validate", "one.jsonl"]) == EXIT_BAD_INPUT
    assert "one.jsonl: this is a request file, not a config" in capsys.readouterr().err


def test_no_batch_yaml_here_points_to_init_not_to_the_repos_examples(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    for command in ("validate", "status", "plan"):
        assert main([command]) == EXIT_BAD_INPUT
        err = capsys.readouterr().err
        assert f"no batch.yaml in {tmp_path}" in err
        assert "`gptbatch init`" in err and "examples/" not in err
    assert main(["validate", str(tmp_path)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "gptbatch init" in err and "examples/" not in err


def test_init_on_an_existing_batch_yaml_says_it_exists_and_suggests_force(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["init"]) == EXIT_OK
    before = (tmp_path / "batch.yaml").read_text()
    capsys.readouterr()
    assert main(["init", "batch.yaml"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "File exists" not in err and "permissions" not in err
    assert "batch.yaml already exists" in err and "--force" in err
    assert (tmp_path / "batch.yaml").read_text() == before


def test_plan_names_the_budget_a_too_big_request_exceeds_not_a_shards_share(
    tmp_path: Path, capsys
) -> None:
    project = make_project(
        tmp_path,
        {"requests.jsonl": [padded_chat("big")]},
        limits={"enqueued_tokens": {"gpt-4o-mini": 5}},
    )
    assert project.cli("plan") == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "the 1 a batch may hold" not in err
    assert "more than the ~4 the batch queue may hold at once for gpt-4o-mini" in err
    assert "limits.enqueued_tokens 5 less the 10% safety margin" in err


def test_validate_counts_have_thousands_separators(tmp_path: Path, capsys) -> None:
    project = make_project(tmp_path, {"x.jsonl": [chat(f"r{i}", "hi") for i in range(1200)]})
    assert project.cli("validate") == EXIT_OK
    out = capsys.readouterr().out
    assert out == "ok: 1,200 requests in 1 file (gpt-4o-mini /v1/chat/completions: 1,200)\n"


def test_one_of_a_kind_is_singular_in_build_and_status(tmp_path: Path, simulator, capsys) -> None:
    project = make_project(tmp_path, {"requests.jsonl": [chat("only")]})
    capsys.readouterr()
    assert project.build() == EXIT_OK
    out = capsys.readouterr().out
    assert "1 of 1 request has a result" in out
    assert "1 batch submitted" in out and "1 batches" not in out
    assert "this run: 1 result," in out and "1 results" not in out
    assert "out/requests.jsonl: 1 result" in out
    assert project.cli("status") == EXIT_OK
    out = capsys.readouterr().out
    assert "1 of 1 request done" in out and "1 requests" not in out


def test_export_costs_carry_no_float_noise(tmp_path: Path, simulator, capsys) -> None:
    texts = ["hi", "tell me more about it " * 3, "a " * 37, "why " * 11, "x"]
    project = make_project(tmp_path, {"r.jsonl": [chat(f"r{i}", t) for i, t in enumerate(texts)]})
    assert project.build() == EXIT_OK
    capsys.readouterr()
    assert project.cli("export") == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    costs = [json.loads(line)["cost"] for line in lines]
    assert len(costs) == 5 and all(c is not None and c > 0 for c in costs)
    assert all(c == round(c, 10) for c in costs), costs
    assert not any("99999" in line or "00000000" in line for line in lines)
