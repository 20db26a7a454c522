"""The end-of-build summary: tokens and actual cost from the results' usage."""

from __future__ import annotations

import re
import signal
import sqlite3
from pathlib import Path

import pytest
from buildkit import chat, make_project, padded_chat

from gptbatch.errors import EXIT_OK
from gptbatch.pricing import price_for
from gptbatch.state.store import state_dir


def expected_cost(project, names: list[str]) -> tuple[int, int, float]:
    """Input tokens, output tokens and dollars, summed straight from the output files."""
    tin = tout = 0
    dollars = 0.0
    for name in names:
        for line in project.output(name):
            body = line["response"]["body"]
            price = price_for(body["model"])
            assert price is not None
            u = body["usage"]
            tin += u["prompt_tokens"]
            tout += u.get("completion_tokens", 0)
            dollars += (
                u["prompt_tokens"] * price.input + u.get("completion_tokens", 0) * price.output
            ) / 1e6
    return tin, tout, dollars


def test_summary_shows_tokens_and_the_cost_the_usage_implies(tmp_path: Path, simulator, capsys):
    project = make_project(tmp_path, {"requests.jsonl": [chat(f"r{i}") for i in range(6)]})
    capsys.readouterr()
    assert project.build() == EXIT_OK
    out = capsys.readouterr().out
    tin, tout, dollars = expected_cost(project, ["requests"])
    run = next(line for line in out.splitlines() if "this run:" in line)
    assert f"6 results, {tin:,} input tokens" in run and f"{tout:,} output" in run
    printed = float(re.search(r"cost \$([0-9.e-]+)", run).group(1))
    assert abs(printed - dollars) <= dollars * 1e-3
    # A no-op rebuild: nothing this run, the same project total.
    capsys.readouterr()
    assert project.build() == EXIT_OK
    out = capsys.readouterr().out
    assert "this run: 0 results, 0 input tokens" in out
    total = next(line for line in out.splitlines() if "project so far:" in line)
    assert f"6 results, {tin:,} input tokens" in total


def test_summary_says_the_price_is_unknown_instead_of_zero(
    tmp_path: Path, simulator_factory, capsys
):
    simulator_factory(any_model=True)  # a fine-tune's name gptbatch cannot know
    project = make_project(tmp_path, {"requests.jsonl": [chat("a", model="my-finetune-x")]})
    capsys.readouterr()
    assert project.build() == EXIT_OK
    out = capsys.readouterr().out
    assert "cost unknown (no price for my-finetune-x" in out
    assert "$0.0000" not in out


@pytest.mark.parametrize("point", ["after_collect:2", "mid_output_write"])
def test_usage_is_counted_once_across_a_kill(tmp_path: Path, simulator, capsys, point: str):
    """Results are accounted as they are collected: a kill and a rerun count each once."""
    inputs = {"requests.jsonl": [padded_chat(f"r{i}", 90) for i in range(6)]}
    project = make_project(
        tmp_path, inputs, limits={"enqueued_tokens": 260, "safety_margin": 0, "pipeline": 1}
    )
    run = project.build_process(env={"GPTBATCH_CRASH_AT": point})
    assert run.returncode == -signal.SIGKILL
    capsys.readouterr()
    assert project.build() == EXIT_OK
    tin, tout, _ = expected_cost(project, ["requests"])
    out = capsys.readouterr().out
    total = next(line for line in out.splitlines() if "project so far:" in line)
    assert f"6 results, {tin:,} input tokens (0 cached), {tout:,} output" in total


def test_results_an_older_run_left_unaccounted_are_caught_up(tmp_path: Path, simulator, capsys):
    project = make_project(tmp_path, {"requests.jsonl": [chat(f"r{i}") for i in range(4)]})
    assert project.build() == EXIT_OK
    tin, tout, _ = expected_cost(project, ["requests"])
    db = sqlite3.connect(state_dir(project.out) / "state.db")
    with db:  # as a build killed between recording results and accounting them left it
        db.execute("DELETE FROM meta WHERE key IN ('usage_total', 'usage_through')")
    db.close()
    capsys.readouterr()
    assert project.build() == EXIT_OK
    total = next(x for x in capsys.readouterr().out.splitlines() if "project so far:" in x)
    assert f"4 results, {tin:,} input tokens (0 cached), {tout:,} output" in total
