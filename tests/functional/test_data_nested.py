"""Nested JSONL values (objects, lists) in a template render as canonical JSON, not repr."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from buildkit import billed_ids, read_jsonl
from test_data_targets import TEMPLATE, data_project

import gptbatch.inputs.render as render_module
from gptbatch.cli import main
from gptbatch.errors import EXIT_OK, EXIT_PENDING
from gptbatch.inputs import where

KEY = "{{ extra.k if extra is mapping else '-' }}"  # reaching inside a nested value
NESTED: dict[str, Any] = {
    **TEMPLATE,
    "body": {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": f"{{{{ text }}}} / {{{{ extra }}}} / {KEY}"}],
    },
}
PLAIN: dict[str, Any] = {
    **TEMPLATE,
    "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "{{ text }}"}]},
}
RECORDS = [
    {"review_id": "j0", "text": "t0", "extra": "plain"},
    {"review_id": "j1", "text": "t1", "extra": {"z": [1, 2.5, None], "k": "é"}},
    {"review_id": "j2", "text": "t2", "extra": {"k": ["a", "b"]}},
]


def jsonl_project(tmp_path: Path, request: Any = None) -> Any:
    project = data_project(
        tmp_path, request=request or NESTED, data="data/reviews.jsonl", id="review_id"
    )
    (tmp_path / "data" / "reviews.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in RECORDS), encoding="utf-8"
    )
    return project


def contents(project: Any) -> list[str]:
    rendered = read_jsonl(project.out / ".gptbatch" / "rendered" / "sentiment.jsonl")
    return [r["body"]["messages"][0]["content"] for r in rendered]


@pytest.fixture
def as_before() -> Iterator[pytest.MonkeyPatch]:
    """Render as gptbatch did before render format 3: nested values as Python's repr, until
    the test calls undo() (its own patch: the simulator's environment stays)."""
    patch = pytest.MonkeyPatch()
    patch.setattr(render_module, "RENDER_FORMAT", 2)
    patch.setattr(render_module, "environment", lambda legacy=False: where.environment(True))
    yield patch
    patch.undo()


def test_nested_values_render_as_canonical_json(tmp_path: Path, simulator) -> None:
    project = jsonl_project(tmp_path)
    assert project.build() == EXIT_OK
    assert contents(project) == [
        "t0 / plain / -",
        't1 / {"k":"é","z":[1,2.5,null]} / é',
        't2 / {"k":["a","b"]} / ["a","b"]',
    ]


def test_the_change_rebuilds_only_rows_with_nested_values_in_the_template_and_says_why(
    tmp_path: Path, simulator, capsys, as_before
) -> None:
    project = jsonl_project(tmp_path)
    assert project.build() == EXIT_OK
    assert "{'k': ['a', 'b']}" in contents(project)[2]  # as it was: Python's repr
    first = len(billed_ids(simulator))
    as_before.undo()
    capsys.readouterr()
    assert main(["status", str(project.config), "--explain"]) == EXIT_PENDING
    out = capsys.readouterr().out
    why = [line for line in out.splitlines() if "rendering of nested values changed" in line]
    # j0's `extra` is a string: its request is as it was, and not sent again
    assert [line.split(": ")[1] for line in why] == ["j1", "j2"], out
    assert project.build() == EXIT_OK
    assert sorted(billed_ids(simulator)[first:]) == ["j1", "j2"]


def test_a_template_placing_no_nested_value_rebuilds_nothing(
    tmp_path: Path, simulator, capsys, as_before
) -> None:
    project = jsonl_project(tmp_path, request=PLAIN)
    assert project.build() == EXIT_OK
    first = len(billed_ids(simulator))
    as_before.undo()
    assert main(["status", str(project.config)]) == EXIT_OK
    assert project.build() == EXIT_OK
    assert len(billed_ids(simulator)) == first


def test_a_csv_project_rebuilds_nothing_after_the_change(
    tmp_path: Path, simulator, capsys, as_before
) -> None:
    project = data_project(tmp_path)
    assert project.build() == EXIT_OK
    first = len(billed_ids(simulator))
    stamp = project.out / ".gptbatch" / "rendered" / "sentiment.fingerprint"
    before = stamp.read_text()
    as_before.undo()
    capsys.readouterr()
    assert main(["status", str(project.config), "--explain"]) == EXIT_OK
    assert project.build() == EXIT_OK
    assert stamp.read_text() != before  # rendered again under the new format...
    assert len(billed_ids(simulator)) == first  # ...to the same requests: nothing billed


def test_a_list_a_csv_template_makes_is_json_too_and_says_why(
    tmp_path: Path, simulator, capsys, as_before
) -> None:
    words = {**PLAIN, "body": {**PLAIN["body"], "messages": [{"role": "user", "content": ""}]}}
    words["body"]["messages"][0]["content"] = "{{ text.split()[:2] }}"
    project = data_project(tmp_path, request=words)
    assert project.build() == EXIT_OK
    first = len(billed_ids(simulator))
    as_before.undo()
    capsys.readouterr()
    assert main(["status", str(project.config), "--explain"]) == EXIT_PENDING
    out = capsys.readouterr().out
    assert out.count("rendering of nested values changed") == 6, out
    assert project.build() == EXIT_OK
    assert contents(project)[0] == '["Review","number"]'
    assert len(billed_ids(simulator)) == first + 6
