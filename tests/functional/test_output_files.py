"""Files a build writes: modes follow the umask, and no empty errors file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from buildkit import chat, make_project

from gptbatch.errors import EXIT_FAILED_REQUESTS, EXIT_OK
from gptbatch.simulator import Fault


def test_outputs_follow_the_umask_and_errors_file_only_when_something_failed(
    tmp_path: Path, simulator
) -> None:
    project = make_project(tmp_path, {"requests.jsonl": [chat("a"), chat("b")]})
    assert project.build() == EXIT_OK
    out = project.out / "requests.jsonl"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~mask
    assert not (project.out / "requests.errors.jsonl").exists()

    simulator.add_fault(Fault.request_error("c", status=400))
    with open(project.input(), "a") as f:
        f.write(
            '{"custom_id": "c", "method": "POST", "url": "/v1/chat/completions", "body": '
            '{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}}\n'
        )
    assert project.build() == EXIT_FAILED_REQUESTS
    assert [e["custom_id"] for e in project.errors()] == ["c"]

    # The failing line is removed: its errors file goes with it.
    lines = project.input().read_text().splitlines()[:-1]
    project.input().write_text("\n".join(lines) + "\n")
    assert project.build() == EXIT_OK
    assert not (project.out / "requests.errors.jsonl").exists()
