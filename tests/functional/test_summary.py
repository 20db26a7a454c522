"""The end-of-build summary: tokens and actual cost from the results' usage."""

from __future__ import annotations

import re
from pathlib import Path

from buildkit import chat, make_project

from gptbatch.errors import EXIT_OK
from gptbatch.pricing import price_for


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


def test_summary_says_the_price_is_unknown_instead_of_zero(tmp_path: Path, simulator, capsys):
    project = make_project(tmp_path, {"requests.jsonl": [chat("a", model="my-finetune-x")]})
    capsys.readouterr()
    assert project.build() == EXIT_OK
    out = capsys.readouterr().out
    assert "cost unknown (no price for my-finetune-x" in out
    assert "$0.0000" not in out
