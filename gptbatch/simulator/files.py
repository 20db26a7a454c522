"""The simulated Files store: uploads checked like the real API, contents, expiry, listing, delete.

A plain store: it keeps no clock and takes no lock. `BatchService` gives it the simulated
time it is at and records every change before making it (see gptbatch.simulator.service).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from gptbatch.simulator.validation import ApiError, check_limit

__all__ = ["FILE_PURPOSES", "FileStore", "StoredFile", "page"]

FILE_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")


@dataclass
class StoredFile:
    """One file: an upload or a batch's output or error file."""

    id: str
    seq: int
    filename: str
    purpose: str
    data: bytes
    created_at: float
    expires_at: float | None

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": int(self.created_at),
            "expires_at": None if self.expires_at is None else int(self.expires_at),
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
        }

    def expired(self, now: float) -> bool:
        """Has the file passed its expires_at? The API then deletes it: no content, no listing,
        and no batch may be created from it."""
        return self.expires_at is not None and self.expires_at <= now


def check_upload(filename: str, purpose: str, data: bytes, max_bytes: int) -> None:
    """ApiError 400 for an upload the real API refuses."""
    if not purpose:
        raise ApiError(
            400,
            "Missing required parameter: 'purpose'.",
            param="purpose",
            code="missing_required_parameter",
        )
    if purpose not in FILE_PURPOSES:
        allowed = ", ".join(f"'{p}'" for p in FILE_PURPOSES)
        raise ApiError(
            400,
            f"Invalid value: '{purpose}'. Supported values are: {allowed}.",
            param="purpose",
            code="invalid_value",
        )
    if len(data) > max_bytes:
        raise ApiError(400, "File is too large.")
    if purpose == "batch" and not filename.lower().endswith(".jsonl"):
        raise ApiError(400, "Invalid file format for Batch API. Must be .jsonl", param="file")


def check_expires_after(expires_after: float | None) -> None:
    """ApiError 400 for an upload's expiry the real API refuses (None: the default)."""
    if expires_after is not None and not 3600 <= expires_after <= 2_592_000:
        raise ApiError(
            400,
            "Invalid 'expires_after.seconds': must be between 3600 and 2592000.",
            param="expires_after.seconds",
            code="invalid_value",
        )


class FileStore:
    """Every file the service holds, uploaded or written as a batch's output, by id."""

    def __init__(self, seq: Iterator[int]) -> None:
        """`seq` numbers files in creation order; batches share it (see BatchService)."""
        self._seq = seq
        self._files: dict[str, StoredFile] = {}

    def __contains__(self, file_id: object) -> bool:
        return file_id in self._files

    def add(
        self, file_id: str, filename: str, purpose: str, data: bytes, at: float, ttl: float | None
    ) -> StoredFile:
        record = StoredFile(
            id=file_id,
            seq=next(self._seq),
            filename=filename,
            purpose=purpose,
            data=data,
            created_at=at,
            expires_at=None if ttl is None else at + ttl,
        )
        self._files[record.id] = record
        return record

    def get(self, file_id: str) -> StoredFile | None:
        """The stored file, expired or not; None if unknown."""
        return self._files.get(file_id)

    def find(self, file_id: str, now: float, *, live: bool = True) -> StoredFile:
        """A stored file; ApiError 404 if unknown, or (live) expired as the API forgets it."""
        record = self._files.get(file_id)
        if record is None or (live and record.expired(now)):
            raise ApiError(404, f"No such File object: {file_id}", param="id")
        return record

    def every(self) -> list[dict[str, Any]]:
        """Every file, oldest first (expired ones too: a view for tests, not the API's)."""
        return [f.public() for f in sorted(self._files.values(), key=lambda f: f.seq)]

    def listing(
        self, now: float, *, purpose: str | None, limit: int, after: str | None, order: str
    ) -> dict[str, Any]:
        """One page of the files not expired at `now`, as GET /files gives it."""
        if order not in ("asc", "desc"):
            raise ApiError(
                400,
                f"Invalid value: '{order}'. Supported values are: 'asc' and 'desc'.",
                param="order",
                code="invalid_value",
            )
        check_limit(limit, 10_000)
        records = sorted(
            self._files.values(), key=lambda f: (f.created_at, f.seq), reverse=order == "desc"
        )
        records = [f for f in records if not f.expired(now)]
        if purpose:
            records = [f for f in records if f.purpose == purpose]
        return page([f.public() for f in records], limit, after)

    def delete(self, file_id: str) -> dict[str, Any]:
        del self._files[file_id]
        return {"id": file_id, "object": "file", "deleted": True}


def page(items: list[dict[str, Any]], limit: int, after: str | None) -> dict[str, Any]:
    """One page of a list response: `limit` items after the one with id `after`."""
    start = 0
    if after:
        ids = [item["id"] for item in items]
        start = ids.index(after) + 1 if after in ids else len(items)
    data = items[start : start + limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": start + limit < len(items),
    }
