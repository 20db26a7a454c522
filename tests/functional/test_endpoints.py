"""Every endpoint the Batch API accepts today builds, including images and videos."""

from __future__ import annotations

from pathlib import Path

import pytest
from buildkit import make_project

from gptbatch.cli import main
from gptbatch.errors import EXIT_OK

NEW = {
    "/v1/images/generations": {"model": "gpt-image-1", "prompt": "A lighthouse at dusk"},
    "/v1/images/edits": {"prompt": "Make it snow", "image": "https://example.com/a.png"},
    "/v1/videos": {"model": "sora-2", "prompt": "Waves on a beach", "seconds": "4"},
}


@pytest.mark.parametrize("url", sorted(NEW))
def test_image_and_video_batches_build_and_estimate_the_prompt(
    tmp_path: Path, simulator, capsys, url: str
) -> None:
    reqs = [
        {"custom_id": f"x{i}", "method": "POST", "url": url, "body": dict(NEW[url])}
        for i in range(3)
    ]
    project = make_project(tmp_path, {"requests.jsonl": reqs})
    assert main(["validate", str(project.config)]) == EXIT_OK
    capsys.readouterr()
    assert main(["tokens", str(project.input())]) == EXIT_OK
    out = capsys.readouterr().out
    assert "only the prompt text is counted" in out or "3 requests" in out
    assert project.build() == EXIT_OK
    results = project.output()
    assert [r["custom_id"] for r in results] == ["x0", "x1", "x2"]
    assert all(r["response"]["status_code"] == 200 for r in results)
    assert sorted(simulator.journal.billed_counts().values()) == [1, 1, 1]


def test_an_image_request_without_a_prompt_is_caught_offline(tmp_path: Path, capsys) -> None:
    bad = {"custom_id": "x", "method": "POST", "url": "/v1/images/generations", "body": {}}
    project = make_project(tmp_path, {"requests.jsonl": [bad]})
    assert main(["validate", str(project.config)]) == 2
    assert "requests.jsonl:1: body.prompt is missing" in capsys.readouterr().err
