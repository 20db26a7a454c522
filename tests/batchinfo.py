"""BatchInfo as the API lists a batch, for the engine's unit tests."""

from __future__ import annotations

from typing import Any

from gptbatch.api.remote import BatchInfo


def batch_info(batch: str, status: str, **fields: Any) -> BatchInfo:
    """A chat batch with no result files, created at 0, unless fields say otherwise."""
    defaults: dict[str, Any] = {
        "endpoint": "/v1/chat/completions",
        "input_file_id": "file-in",
        "output_file_id": None,
        "error_file_id": None,
        "created_at": 0,
    }
    return BatchInfo(id=batch, status=status, **{**defaults, **fields})
