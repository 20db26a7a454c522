"""Files expire as the API's do: after `expires_at` they are gone (issue 15)."""

from __future__ import annotations

import openai
import pytest
from simtools import chat, client, jsonl, manual_service, submit

from gptbatch.simulator import ApiError

HOUR = 3600.0
DAY = 86400.0


def test_an_upload_past_its_expires_after_is_gone_and_cannot_start_a_batch() -> None:
    service = manual_service()
    upload = service.create_file("in.jsonl", "batch", jsonl([chat("a")]), expires_after=3600)
    assert upload["expires_at"] - upload["created_at"] == 3600
    service.clock.advance(HOUR - 1)
    assert service.file_content(upload["id"])  # still there a second before
    service.clock.advance(1)
    for call in (service.file, service.file_content, service.delete_file):
        with pytest.raises(ApiError) as info:
            call(upload["id"])
        assert info.value.status == 404
    assert service.list_files(purpose="batch")["data"] == []
    with pytest.raises(ApiError) as info:
        service.create_batch(
            {
                "input_file_id": upload["id"],
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            }
        )
    assert info.value.status == 400
    assert f"Cannot find file {upload['id']}" in info.value.message


def test_uploads_without_expires_after_live_30_days() -> None:
    service = manual_service()
    upload = service.create_file("in.jsonl", "batch", jsonl([chat("a")]))
    assert upload["expires_at"] - upload["created_at"] == 30 * DAY
    service.clock.advance(30 * DAY)
    with pytest.raises(ApiError):
        service.file(upload["id"])


def test_output_files_expire_by_output_expires_after_or_30_days() -> None:
    service = manual_service()
    short = submit(
        service, [chat("a")], output_expires_after={"anchor": "created_at", "seconds": 7200}
    )
    default = submit(service, [chat("b")])
    service.clock.advance(HOUR)  # both complete
    short, default = service.batch(short["id"]), service.batch(default["id"])
    assert short["status"] == default["status"] == "completed"
    assert service.file_content(short["output_file_id"])
    service.clock.advance(2 * HOUR)
    with pytest.raises(ApiError) as info:
        service.file_content(short["output_file_id"])
    assert info.value.status == 404
    assert service.batch(short["id"])["output_file_id"] == short["output_file_id"]  # as the API
    assert service.file_content(default["output_file_id"])
    service.clock.advance(30 * DAY)
    with pytest.raises(ApiError):
        service.file_content(default["output_file_id"])


def test_the_sdk_sees_an_expired_file_as_404(simulator) -> None:
    api = client(simulator)
    f = api.files.create(
        file=("x.jsonl", jsonl([chat("a")])),
        purpose="batch",
        expires_after={"anchor": "created_at", "seconds": 3600},
    )
    simulator.clock.advance(HOUR + 1)
    with pytest.raises(openai.NotFoundError):
        api.files.content(f.id)
    with pytest.raises(openai.BadRequestError, match="Cannot find file"):
        api.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
