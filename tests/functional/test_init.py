"""`gptbatch init`: a commented batch.yaml that validate accepts, and .gitignore lines."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from buildkit import chat, write_jsonl

from gptbatch.cli import main
from gptbatch.commands.init import EXAMPLE_INPUT
from gptbatch.config.spec import SCHEMA_PATH, load_spec
from gptbatch.errors import EXIT_BAD_INPUT, EXIT_OK


def _leaves(schema: dict[str, Any]) -> dict[str, Any]:
    """Every scalar-valued key of the schema with its default (objects are descended)."""
    out = {}
    for key, prop in schema.get("properties", {}).items():
        if "properties" in prop:
            out.update(_leaves(prop))
        else:
            out[key] = prop.get("default", "required")
    return out


def test_init_writes_a_config_validate_accepts(tmp_path: Path, capsys) -> None:
    assert main(["init", str(tmp_path)]) == EXIT_OK
    text = (tmp_path / "batch.yaml").read_text()
    first = text.splitlines()[0]
    assert first == f"# yaml-language-server: $schema={SCHEMA_PATH.resolve()}"
    assert Path(first.split("=", 1)[1]).is_file()
    data = yaml.safe_load(text)
    assert re.fullmatch(r"gptbatch-[0-9a-f]{8}", data["project"])
    assert data["output_dir"] == "out" and data["inputs"] == [EXAMPLE_INPUT]
    # validate needs the named input to exist; then it accepts the file as written
    assert main(["validate", str(tmp_path / "batch.yaml")]) == EXIT_BAD_INPUT
    write_jsonl(tmp_path / EXAMPLE_INPUT, [chat("q1")])
    capsys.readouterr()
    assert main(["validate", str(tmp_path / "batch.yaml")]) == EXIT_OK
    assert load_spec(tmp_path / "batch.yaml").project == data["project"]


def test_every_schema_key_is_commented_with_its_default(tmp_path: Path) -> None:
    assert main(["init", str(tmp_path)]) == EXIT_OK
    text = (tmp_path / "batch.yaml").read_text()
    schema = json.loads(SCHEMA_PATH.read_text())
    for key, default in _leaves(schema).items():
        found = re.search(rf"^#?\s*{key}: ?([^#\n]*)", text, re.MULTILINE)
        assert found, f"{key} is not in the template"
        if key not in ("inputs", "project"):  # set, not commented (project: also under api)
            assert yaml.safe_load(found.group(1)) == default, key


def test_init_refuses_to_overwrite_and_force_keeps_the_project(tmp_path: Path, capsys) -> None:
    assert main(["init", str(tmp_path)]) == EXIT_OK
    project = yaml.safe_load((tmp_path / "batch.yaml").read_text())["project"]
    (tmp_path / "batch.yaml").write_text((tmp_path / "batch.yaml").read_text() + "# mine\n")
    assert main(["init", str(tmp_path)]) == EXIT_BAD_INPUT
    assert "--force" in capsys.readouterr().err
    assert (tmp_path / "batch.yaml").read_text().endswith("# mine\n")
    assert main(["init", str(tmp_path), "--force"]) == EXIT_OK
    text = (tmp_path / "batch.yaml").read_text()
    assert not text.endswith("# mine\n")
    assert yaml.safe_load(text)["project"] == project


def test_init_appends_gitignore_lines_once(tmp_path: Path) -> None:
    (tmp_path / ".gitignore").write_text("*.pyc\n/out")  # no final newline; out already there
    assert main(["init", str(tmp_path)]) == EXIT_OK
    assert (tmp_path / ".gitignore").read_text() == "*.pyc\n/out\nout-simulated/\n"
    assert main(["init", str(tmp_path), "--force"]) == EXIT_OK
    assert (tmp_path / ".gitignore").read_text() == "*.pyc\n/out\nout-simulated/\n"
    fresh = tmp_path / "new" / "project"
    assert main(["init", str(fresh)]) == EXIT_OK
    assert (fresh / ".gitignore").read_text() == "out/\nout-simulated/\n"
