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


# The columns of a request row as stored, in RequestRow field order.
REQUEST_COLUMNS = ", ".join(RequestRow._fields)
# A request's byte offset is stored relative to the start of the chunk of its input that
# holds it (input_chunks: the chunk with requests whose first ordinal is the greatest at or
# below the request's), or as it is when no chunks of its input are recorded. An edit that
# moves the bytes of the chunks after it then changes their starts (a few thousand rows at
# a million requests), not the offset of every request after it. This reads it back.
ABSOLUTE_OFFSET = (
    "(r.offset + coalesce((SELECT c.start FROM input_chunks c WHERE c.path=r.path"
    " AND c.rows>0 AND c.first_ordinal<=r.ordinal ORDER BY c.first_ordinal DESC LIMIT 1), 0))"
)
# What the store's queries read of a request (alias r), its offset in the file: every column
# but the digest, which only the input diff compares (RequestRow(*row) leaves it None).
REQUEST_SELECT = ", ".join(
    ABSOLUTE_OFFSET if name == "offset" else f"r.{name}"
    for name in RequestRow._fields
    if name != "digest"
)
# The same with the digest: a whole RequestRow.
REQUEST_ROW_SELECT = REQUEST_SELECT + ", r.digest"
