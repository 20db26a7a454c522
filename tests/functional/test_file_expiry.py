"""Uploaded files expire (and may be deleted once collected); output expiry is passed on."""

from __future__ import annotations

from pathlib import Path

from buildkit import chat, make_project

from gptbatch.errors import EXIT_OK


def test_uploads_expire_and_output_expiry_reaches_batches_create(tmp_path: Path, simulator) -> None:
    project = make_project(
        tmp_path,
        {"requests.jsonl": [chat("a"), chat("b")]},
        upload_expires_after=7200,
        output_expires_after=86400,
    )
    assert project.build() == EXIT_OK
    (upload,) = [f for f in simulator.service.files() if f["filename"].startswith("gptbatch-")]
    assert upload["expires_at"] - upload["created_at"] == 7200
    (batch,) = simulator.service.batches()
    output = next(f for f in simulator.service.files() if f["id"] == batch["output_file_id"])
    assert output["expires_at"] - output["created_at"] == 86400


def test_delete_uploads_removes_the_input_file_once_collected(tmp_path: Path, simulator) -> None:
    project = make_project(tmp_path, {"requests.jsonl": [chat("a")]}, delete_uploads=True)
    assert project.build() == EXIT_OK
    names = [f["filename"] for f in simulator.service.files()]
    assert not any(n.startswith("gptbatch-") for n in names)  # the upload is gone
    assert [o["custom_id"] for o in project.output()] == ["a"]
