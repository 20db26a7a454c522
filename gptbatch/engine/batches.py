"""What a batch of ours carries and what a step tells the build loop: metadata, refusals, outcomes.

Shared by submit and collect (and the budget), so neither imports the other: the metadata
keys every batch is tagged with, how a refusal is recognised, recording what the API says of
a batch, reading a batch's input file back, and the `Outcome` each step returns.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from gptbatch.api.remote import BatchInfo, Remote
from gptbatch.canonical import canonical_json, sha256_hex
from gptbatch.errors import NotFoundError
from gptbatch.report import Reporter
from gptbatch.state.rows import ShardRow
from gptbatch.state.store import Store

TERMINAL_BATCH_STATUSES = ("completed", "failed", "expired", "cancelled")
META_PROJECT = "gptbatch_project"
META_SHARD = "gptbatch_shard"
# A sample of the members' content keys (16 hex digits each), so a build that lost its state
# can recognise its own work at the API even when the project id changed (renamed config,
# moved checkout), and never download another project's files to find out.
META_KEYS = "gptbatch_keys"
KEY_SAMPLE = 28  # 28 * 17 - 1 = 475 characters, under the API's 512 per value
# The batch's estimated prompt tokens, whether its project had more to send after it, how
# many projects (itself included) it saw sending on the model when it made it, and its
# model ("1200 more/2 gpt-4o-mini", "1200 last/1 gpt-4o-mini"): other builds on the same
# API count it against the shared enqueued-token limit (census.py). Batches without it
# (older gptbatch, other tools) are not counted.
META_TOKENS = "gptbatch_tokens"
REFUSAL_CODES = ("token_limit_exceeded", "request_limit_exceeded")
RECOVERED = "recovered from the API"  # the note of a shard rebuilt from its batch


def key_sample(keys: list[str]) -> str:
    """Up to KEY_SAMPLE evenly spread 16-hex prefixes of keys, comma-separated."""
    step = max(1, -(-len(keys) // KEY_SAMPLE))
    return ",".join(k[:16] for k in keys[::step][:KEY_SAMPLE])


def queue_value(tokens: int, more: bool, model: str | None, sharing: int = 1) -> str:
    """The META_TOKENS value of a batch (at most 512 characters: a long model is left out)."""
    value = f"{max(0, int(tokens))} {'more' if more else 'last'}/{max(1, sharing)}"
    return f"{value} {model}" if model and len(value) + 1 + len(model) <= 512 else value


@dataclass(frozen=True)
class QueueTag:
    """What a batch's META_TOKENS says (see queue_value)."""

    tokens: int
    more: bool
    sharing: int
    model: str | None


def queue_tag(metadata: dict[str, str]) -> QueueTag | None:
    """A batch's META_TOKENS read back; None if absent or unreadable."""
    raw = metadata.get(META_TOKENS)
    if not raw:
        return None
    parts = raw.split(" ", 2)
    if not parts[0].isdigit():
        return None
    word, _, sharing = (parts[1] if len(parts) > 1 else "").partition("/")
    return QueueTag(
        int(parts[0]),
        word != "last",
        int(sharing) if sharing.isdigit() else 1,
        parts[2] if len(parts) > 2 and parts[2] else None,
    )


def refused(info: BatchInfo) -> bool:
    """Did the API fail this batch for lack of queue room (nothing was processed)?"""
    return info.status == "failed" and any(e.code in REFUSAL_CODES for e in info.errors)


@dataclass(frozen=True)
class Refusal:
    """The API had no queue room for a shard: what it said, and where."""

    shard: ShardRow
    unit: str  # "tokens" or "requests"
    stated: int | None  # the limit the API stated, if it did
    message: str | None
    code: str | None
    batch: str  # the refused batch, or "batches.create"
    sized_at: float  # when the shard was sized against the budget
    collected: str | None = None  # the refused batch, to be marked collected with it


@dataclass(frozen=True)
class Outcome:
    """What one step of submit or collect did; the build loop decides what comes next."""

    room_changed: bool = False  # batches moved at the API (status, finished, gone)
    shards_changed: bool = False  # shards or pending requests changed: pack again
    refusal: Refusal | None = None  # a shard was refused for lack of queue room
    completed: bool = False  # a batch of `model` completed
    model: str | None = None


NOTHING = Outcome()
ROOM_CHANGED = Outcome(room_changed=True)
SHARDS_CHANGED = Outcome(shards_changed=True)


def save_batch(store: Store, shard_id: str, info: BatchInfo) -> None:
    """Record what the API says of a batch (inside the caller's transaction)."""
    store.upsert_batch(
        info.id,
        shard=shard_id,
        status=info.status,
        input_file_id=info.input_file_id,
        output_file_id=info.output_file_id,
        error_file_id=info.error_file_id,
        created_at=info.created_at,
        info=info.summary(),
    )


def file_members(
    remote: Remote, report: Reporter, work_dir: Path, info: BatchInfo
) -> list[tuple[str, str]]:
    """(key, custom_id) of the requests in a batch's input file ([] if it is gone).

    For a batch of a finished shard whose member list was released (a duplicate found
    after the shard's own batch was collected): its lines map back to requests by this.
    """
    if not info.input_file_id:
        return []
    path = work_dir / "downloads" / f"{info.input_file_id}.jsonl"
    try:
        remote.download(info.input_file_id, path)
    except NotFoundError as exc:
        report.event("recover_failed", batch=info.id, error=str(exc))
        return []
    return read_input_file(path)[0]


def read_input_file(path: Path) -> tuple[list[tuple[str, str]], str | None]:
    """(key, custom_id) of each request of a downloaded input file, and the first request's
    model (a recovered batch may hold no current request to take it from); removes it."""
    members: list[tuple[str, str]] = []
    model: str | None = None
    with open(path, "rb") as f:
        for raw in f:
            if raw.strip():
                obj = json.loads(raw)
                members.append((sha256_hex(canonical_json(obj)), str(obj.get("custom_id"))))
                if model is None and isinstance(obj.get("body"), dict):
                    found = obj["body"].get("model")
                    model = found if isinstance(found, str) else None
    path.unlink(missing_ok=True)
    return members, model
