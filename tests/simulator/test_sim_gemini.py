"""The simulator's Gemini batch mode, driven through the real `google-genai` SDK."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from google import genai
from google.genai import errors, types

from gptbatch.simulator import Simulator

MODEL = "gemini-2.5-flash"


def _client(sim: Simulator) -> genai.Client:
    return genai.Client(
        api_key="test-key",
        http_options=types.HttpOptions(base_url=sim.base_url.removesuffix("/v1")),
    )


def _requests(tmp_path: Path, n: int, name: str = "in.jsonl") -> Path:
    path = tmp_path / name
    lines = [
        {
            "key": f"k{i}",
            "request": {"contents": [{"role": "user", "parts": [{"text": f"hi {i}"}]}]},
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def uploaded_name(client: genai.Client) -> str:
    return str(next(iter(client.files.list())).name)


def _ended(client: genai.Client, name: str) -> Any:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        job = client.batches.get(name=name)
        if job.done:
            return job
        time.sleep(0.02)
    raise AssertionError(f"{name} did not end")


def test_upload_create_results_keyed_and_unordered(simulator: Simulator, tmp_path: Path) -> None:
    client = _client(simulator)
    file = client.files.upload(
        file=str(_requests(tmp_path, 30)),
        config={"display_name": "shard-1", "mime_type": "application/jsonl"},
    )
    assert file.name and file.name.startswith("files/") and file.display_name == "shard-1"
    assert file.size_bytes == (tmp_path / "in.jsonl").stat().st_size
    job = client.batches.create(model=MODEL, src=file.name, config={"display_name": "tag"})
    assert job.name and job.name.startswith("batches/")
    assert job.state == types.JobState.JOB_STATE_PENDING and job.display_name == "tag"
    assert job.model == f"models/{MODEL}" and job.create_time is not None
    ended = _ended(client, job.name)
    assert ended.state == types.JobState.JOB_STATE_SUCCEEDED and ended.end_time is not None
    assert ended.dest is not None and ended.dest.file_name
    data = client.files.download(file=ended.dest.file_name)
    lines = [json.loads(x) for x in data.splitlines()]
    assert sorted(x["key"] for x in lines) == sorted(f"k{i}" for i in range(30))
    assert [x["key"] for x in lines] != [f"k{i}" for i in range(30)]  # no order promised
    part = lines[0]["response"]["candidates"][0]["content"]["parts"][0]
    assert part["text"].startswith("reply ")
    billed = simulator.journal.billed
    assert len(billed) == 30 and {b.batch_id for b in billed} == {job.name}


def test_list_newest_first_cancel_and_errors(simulator: Simulator, tmp_path: Path) -> None:
    client = _client(simulator)
    simulator.service.gemini.processing_seconds = 10_000.0
    names = []
    for i in range(3):
        file = client.files.upload(
            file=str(_requests(tmp_path, 2, f"f{i}.jsonl")),
            config={"mime_type": "application/jsonl"},
        )
        job = client.batches.create(model=MODEL, src=file.name, config={"display_name": "j"})
        names.append(job.name)
    listed = [j.name for j in client.batches.list(config={"page_size": 2})]
    assert listed == list(reversed(names))  # paged across two pages, newest first
    client.batches.cancel(name=names[0])
    job = client.batches.get(name=names[0])
    assert job.state == types.JobState.JOB_STATE_CANCELLED and job.dest is None
    assert simulator.journal.billed == []
    with pytest.raises(errors.ClientError) as info:
        client.batches.get(name="batches/nope")
    assert info.value.code == 404
    with pytest.raises(errors.ClientError) as info:
        client.batches.create(model=MODEL, src="files/nope", config={"display_name": "j"})
    assert info.value.code == 404
    with pytest.raises(errors.ClientError) as info:  # Google's reference: required
        client.batches.create(model=MODEL, src=uploaded_name(client))
    assert info.value.code == 400
    uploaded = [f.name for f in client.files.list()]
    assert len(uploaded) == 3
    client.files.delete(name=uploaded[0])
    assert len(list(client.files.list())) == 2


def test_expired_after_48_hours_bills_nothing(simulator: Simulator, tmp_path: Path) -> None:
    client = _client(simulator)
    simulator.service.gemini.processing_seconds = 50 * 3600.0
    file = client.files.upload(
        file=str(_requests(tmp_path, 2)), config={"mime_type": "application/jsonl"}
    )
    job = client.batches.create(model=MODEL, src=file.name, config={"display_name": "j"})
    simulator.clock.advance(49 * 3600)
    assert client.batches.get(name=job.name).state == types.JobState.JOB_STATE_EXPIRED
    assert simulator.journal.billed == []
    with pytest.raises(errors.ClientError) as info:  # uploads are kept 48 h
        client.files.get(name=file.name)
    assert info.value.code == 404


def test_a_missing_key_is_refused(simulator: Simulator) -> None:
    client = genai.Client(
        api_key="x", http_options=types.HttpOptions(base_url=simulator.base_url, headers={})
    )
    client._api_client._http_options.headers.pop("x-goog-api-key")
    with pytest.raises(errors.ClientError) as info:
        client.batches.get(name="batches/x")
    assert info.value.code == 401
