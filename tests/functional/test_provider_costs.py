"""Claude and Gemini builds are priced from gptbatch's table: the build, status and export
show a cost (not "unknown"), and `prices:` still overrides the table."""

from __future__ import annotations

import json
from pathlib import Path

from test_build_anthropic import claude, claude_project
from test_build_gemini import gem, gemini_project

from gptbatch.cli import main
from gptbatch.errors import EXIT_OK
from gptbatch.pricing import price_for


def exported(project, tmp_path: Path) -> list[dict]:
    target = tmp_path / "export.jsonl"
    assert main(["export", str(project.config), "-o", str(target)]) == EXIT_OK
    return [json.loads(line) for line in target.read_text().splitlines()]


def check_costs(project, tmp_path: Path, capsys, model: str, rate: tuple[float, float]) -> None:
    assert project.build() == EXIT_OK
    rows = exported(project, tmp_path)
    total = 0.0
    for row in rows:
        want = (row["input_tokens"] * rate[0] + row["output_tokens"] * rate[1]) / 1e6
        assert row["input_tokens"] > 0 and row["cost"] > 0
        assert abs(row["cost"] - want) < 1e-9, (row, want)
        total += row["cost"]
    capsys.readouterr()
    assert main(["status", str(project.config), "--json"]) == EXIT_OK
    usage = json.loads(capsys.readouterr().out)["usage"]
    assert usage["requests"] == len(rows) and usage["unpriced"] == []
    assert abs(usage["cost"] - total) < 1e-9
    assert main(["status", str(project.config)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "results so far:" in out and "cost $" in out and "unknown" not in out


def test_a_claude_build_is_priced_from_the_table(tmp_path: Path, simulator, capsys) -> None:
    project = claude_project(tmp_path, [claude(f"q{i}") for i in range(3)])
    price = price_for("claude-sonnet-4-5")
    assert price is not None and price.source == "table"
    check_costs(project, tmp_path, capsys, "claude-sonnet-4-5", (price.input, price.output))


def test_a_gemini_build_is_priced_from_the_table(tmp_path: Path, simulator, capsys) -> None:
    project = gemini_project(tmp_path, [gem(f"q{i}") for i in range(3)])
    price = price_for("gemini-2.5-flash")
    assert price is not None and price.source == "table"
    check_costs(project, tmp_path, capsys, "gemini-2.5-flash", (price.input, price.output))


def test_prices_in_the_config_override_the_table(tmp_path: Path, simulator, capsys) -> None:
    override = {"input": 10.0, "output": 20.0}
    project = claude_project(tmp_path, [claude("q0")], prices={"claude-sonnet-4-5": override})
    check_costs(project, tmp_path, capsys, "claude-sonnet-4-5", (10.0, 20.0))
