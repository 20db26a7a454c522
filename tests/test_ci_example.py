"""examples/ci/gptbatch.yml: valid YAML; its build step maps exit codes as documented."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

WORKFLOW = Path(__file__).resolve().parents[1] / "examples" / "ci" / "gptbatch.yml"


def _steps() -> list[dict]:
    doc = yaml.safe_load(WORKFLOW.read_text())
    return doc["jobs"]["build"]["steps"]


def test_workflow_restores_builds_and_saves_in_order() -> None:
    steps = _steps()
    uses = [s.get("uses", "") for s in steps]
    assert all(u.startswith("actions/") for u in uses if u)
    restore = uses.index("actions/cache/restore@v4")
    save = uses.index("actions/cache/save@v4")
    build = next(i for i, s in enumerate(steps) if s.get("id") == "build")
    assert restore < build < save
    assert steps[save]["if"] == "always()"
    assert "github.ref_name" in steps[restore]["with"]["key"]
    assert "gptbatch build" in steps[build]["run"] and "--no-wait" in steps[build]["run"]


@pytest.mark.parametrize(("code", "expected"), [(0, 0), (3, 0), (4, 0), (1, 1), (2, 2), (5, 5)])
def test_build_step_maps_exit_codes(tmp_path: Path, code: int, expected: int) -> None:
    fake = tmp_path / "bin" / "gptbatch"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\nexit {code}\n")
    fake.chmod(0o755)
    script = next(s for s in _steps() if s.get("id") == "build")["run"]
    env = {
        **os.environ,
        "PATH": f"{fake.parent}:{os.environ['PATH']}",
        "CONFIG": "batch.yaml",
        "OUTPUT_DIR": "out",
        "GITHUB_OUTPUT": str(tmp_path / "output"),
    }
    run = subprocess.run(["bash", "-e", "-c", script], env=env, capture_output=True, text=True)
    assert run.returncode == expected
    assert (tmp_path / "output").read_text() == f"code={code}\n"
    assert ("::warning::" in run.stdout) == (code == 4)
