"""Row types the store hands out, the shard and result state names, and request columns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

# Shard life cycle. `ready` -> `uploading` -> `uploaded` -> `submitting` -> `submitted`
# -> `done`; `waiting` (refused for lack of queue room, file kept) goes back to `submitting`;
# `dropped` releases its members (stale, or too big for a lowered budget).
ACTIVE_SHARD_STATES = ("ready", "uploading", "uploaded", "submitting", "submitted", "waiting")
IN_FLIGHT_SHARD_STATES = ("submitting", "submitted")
FINAL_RESULT_STATES = ("ok", "failed")


class RequestRow(NamedTuple):
    """A current request of an input, as the store knows it.

    A named tuple, not a dataclass: a walk over 100k rows builds one per row, four times
    faster so.
    """

    path: str
    ordinal: int
    line: int
    offset: int
    length: int
    key: str
    custom_id: str
    model: str | None
    url: str
    tokens: int
    nbytes: int
    inputs: int
    cost: float | None
    reason: str | None
    digest: bytes | None = None  # of the line's raw bytes (None: written before m003)


@dataclass(frozen=True)
class ShardRow:
    """A shard: a set of requests sent, or to be sent, as one batch."""

    id: str
    model: str | None
    url: str
    requests: int
    tokens: int
    nbytes: int
    cost: float | None
    state: str
    file_id: str | None
    batch_id: str | None
    nonce: str | None
    refusals: int
    not_before: float
    created_at: float | None
    updated_at: float | None
    note: str | None


@dataclass(frozen=True)
class BatchRow:
    """A remote batch we created or adopted."""

    id: str
    shard: str
    status: str
    input_file_id: str | None
    output_file_id: str | None
    error_file_id: str | None
    created_at: int | None
    collected: bool
    info: str | None


@dataclass(frozen=True)
class ResultRow:
    """What the store holds for one request key."""

    key: str
    state: str  # ok | failed | retry
    attempts: int
    line: str | None
    error: str | None
    batch_id: str | None


# The columns of a request row, in RequestRow field order.
REQUEST_COLUMNS = ", ".join(RequestRow._fields)
# What the store's queries read of a request (alias r): every column but the digest, which
# only the input diff compares (RequestRow(*row) leaves it None).
REQUEST_SELECT = ", ".join(f"r.{name}" for name in RequestRow._fields if name != "digest")
