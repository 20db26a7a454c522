"""The API key never leaves the environment: not in the state, the outputs, the lock files,
the console, the --json events, or any error message, whatever happens.

Every build here is a separate process (so a traceback would be captured whole), and every
check looks for the key and for its distinctive middle, so a partly masked key fails too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from buildkit import REPO, Project, chat, json_events, make_project

from gptbatch.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_PENDING
from gptbatch.simulator import Fault

KEY = "sk-proj-SECRETSECRET1234567890abcd"
SECRET_PARTS = (KEY, "SECRETSECRET", "1234567890abcd")
MASKED = "sk-...abcd"  # what redact() shows of it


def assert_no_key(*texts: str) -> None:
    for text in texts:
        for part in SECRET_PARTS:
            assert part not in text, f"the key leaked: {text[-600:]}"


def assert_no_key_in_files(*roots: Path) -> int:
    """No file under roots holds the key (state.db and its WAL included); return files read."""
    seen = 0
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                seen += 1
                for part in SECRET_PARTS:
                    assert part.encode() not in data, f"the key is in {path}"
    return seen


def run(project: Project, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`gptbatch ARGS CONFIG` as a process, with env; its output checked for the key."""
    done = subprocess.run(
        [sys.executable, "-m", "gptbatch", *args, str(project.config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        cwd=REPO,
    )
    assert_no_key(done.stdout, done.stderr)
    return done


@pytest.fixture
def env(tmp_path: Path, simulator, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment of a build with KEY as its key and lock files under tmp_path."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("GPTBATCH_LOCK_DIR", str(tmp_path / "locks"))
    return dict(os.environ)


def project_of(tmp_path: Path, n: int = 4, **config) -> Project:
    return make_project(
        tmp_path / "p", {"requests.jsonl": [chat(f"r{i}") for i in range(n)]}, **config
    )


def test_a_build_and_everything_after_it_never_show_the_key(
    tmp_path: Path, simulator, env: dict[str, str]
) -> None:
    project = project_of(tmp_path)
    assert run(project, "build", "-v", env=env).returncode == EXIT_OK
    assert len(project.output()) == 4  # the key worked
    json_run = run(project, "build", "--json", env=env)
    assert json_run.returncode == EXIT_OK and json_events(json_run.stdout)
    for args in (("status", "--json"), ("status", "--explain"), ("plan",), ("validate",)):
        assert run(project, *args, env=env).returncode == EXIT_OK
    files = assert_no_key_in_files(project.out, tmp_path / "locks")
    # state.db, the output and more (the shard file went when its batch was final)
    assert (project.out / ".gptbatch" / "state.db").is_file() and files >= 3


def test_a_key_from_dotenv_is_not_copied_anywhere(
    tmp_path: Path, simulator, env: dict[str, str]
) -> None:
    project = project_of(tmp_path)
    (project.root / ".env").write_text(f"OPENAI_API_KEY={KEY}\n")
    del env["OPENAI_API_KEY"]
    assert run(project, "build", "--json", env=env).returncode == EXIT_OK
    assert len(project.output()) == 4
    assert_no_key_in_files(project.out, tmp_path / "locks")


@pytest.mark.parametrize("flag", ["-v", "--json"])
def test_a_refused_key_gets_a_clear_error_without_the_key(
    tmp_path: Path, simulator, env: dict[str, str], flag: str
) -> None:
    simulator.add_fault(Fault.http(401, count=0))
    project = project_of(tmp_path)
    done = run(project, "build", flag, env=env)
    assert done.returncode == EXIT_BAD_INPUT  # AuthError: nothing was submitted
    assert "refused the key (401)" in done.stderr and "Traceback" not in done.stderr
    assert_no_key_in_files(project.out, tmp_path / "locks")


def test_a_key_refused_mid_build_loses_nothing_and_is_never_shown(
    tmp_path: Path, simulator, env: dict[str, str]
) -> None:
    # Submitted fine, then the key is revoked: every poll gets a 401.
    simulator.add_fault(Fault.http(401, method="GET", path="/v1/batches/*", count=0))
    project = project_of(tmp_path)
    done = run(project, "build", "--json", env=env)
    assert done.returncode not in (EXIT_OK, EXIT_PENDING) and "refused the key (401)" in done.stderr
    assert len(simulator.service.batches()) == 1
    simulator.clear_faults()
    assert run(project, "build", env=env).returncode == EXIT_OK
    assert len(simulator.service.batches()) == 1
    assert sorted(simulator.journal.billed_counts().values()) == [1, 1, 1, 1]
    assert [o["custom_id"] for o in project.output()] == [f"r{i}" for i in range(4)]
    assert_no_key_in_files(project.out, tmp_path / "locks")


@pytest.mark.parametrize(
    "args", [("build",), ("build", "--json"), ("status",), ("plan",)], ids=" ".join
)
def test_a_key_pasted_into_api_key_env_is_masked(
    tmp_path: Path, simulator, env: dict[str, str], args: tuple[str, ...]
) -> None:
    project = project_of(tmp_path, api={"api_key_env": KEY})
    done = run(project, *args, env=env)
    assert done.returncode == EXIT_BAD_INPUT
    assert "api.api_key_env" in done.stderr and MASKED in done.stderr
    assert simulator.journal.calls == []
    assert not project.out.exists()  # bad config: nothing written


def test_validate_masks_a_key_pasted_into_api_key_env(
    tmp_path: Path, simulator, env: dict[str, str]
) -> None:
    project = project_of(tmp_path, api={"api_key_env": KEY})
    done = subprocess.run(
        [sys.executable, "-m", "gptbatch", "validate", str(project.config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode == EXIT_BAD_INPUT and "api.api_key_env" in done.stderr
    assert_no_key(done.stdout, done.stderr)
