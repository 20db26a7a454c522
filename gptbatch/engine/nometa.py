"""Finding our batches at a provider whose batches carry no metadata (Anthropic).

With no tags, a batch cannot say whose it is; what it can say, once it has ended, is which
requests it answered: each was sent under its content key as custom_id. So:
- an ended batch the state does not know is adopted by its results: a shard that was being
  submitted with exactly those keys takes it, else a shard is rebuilt from the keys (results
  are stored by content key, so an answer only ever serves a byte-identical request);
- a batch still in progress cannot say what it holds: while one exists that the state does
  not know, and the state was lost or a create may have happened, nothing is submitted; it
  is waited for, never sent again.
An intact state with no create in doubt made every batch of its own on record, so it looks
at no other batch (another project's, in the same workspace).

A state with nothing in it cannot tell a new project from a lost one, so by default it waits
too. Two ways out, each only where nothing of ours can be in the batch:
- `build --new-project`: the user asserts no batch at the API is this project's; the batches
  listed before its first create are recorded as foreign (FOREIGN_META), never waited for nor
  adopted, also by a later scan for a create in doubt;
- tags a provider does keep (Gemini's display name, see api/gemini.py): a job naming another
  project, none of whose sampled keys is a current request of ours, is not waited for, and
  once ended is adopted only if its results answer a current request.
"""

from __future__ import annotations

import json
import time
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gptbatch.api.provider import caps_of
from gptbatch.engine.batches import META_KEYS, META_PROJECT, RECOVERED, save_batch
from gptbatch.errors import NotFoundError, TransientRemoteError
from gptbatch.shards import shard_key
from gptbatch.state.rows import ShardRow

if TYPE_CHECKING:
    from gptbatch.api.remote import BatchInfo
    from gptbatch.engine.submit import Submitter
    from gptbatch.state.store import Store

_HEX = frozenset("0123456789abcdef")
FOREIGN_META = "foreign_batches"  # ids listed before a --new-project build's first create


@dataclass
class _Seen:
    """What one build learned of batches it cannot adopt (kept for the run)."""

    empty: set[str] = field(default_factory=set)  # ended batches naming none of ours
    reported: set[str] = field(default_factory=set)  # in-progress batches said to be waited for
    others: set[str] = field(default_factory=set)  # running batches another project's tags name


_SEEN: weakref.WeakKeyDictionary[Any, _Seen] = weakref.WeakKeyDictionary()


def is_key(value: Any) -> bool:
    """Is value a content key (64 lowercase hex digits)?"""
    return isinstance(value, str) and len(value) == 64 and set(value) <= _HEX


def user_ids(store: Store, members: list[tuple[str, str]]) -> dict[str, str]:
    """key -> the user's custom_id for a batch's members (a rebuilt shard's members carry
    their key until the request is read again: the current request's id is taken then)."""
    out: dict[str, str] = {}
    for key, cid in members:
        if cid == key:
            row = store.locate(key)
            cid = row.custom_id if row is not None else key
        out[key] = cid
    return out


def named(text: str, obj: dict[str, Any], custom_id: str) -> tuple[str, dict[str, Any]]:
    """A result line (sent under its key) under the user's custom_id again."""
    if obj.get("custom_id") == custom_id:
        return text, obj
    obj = {**obj, "custom_id": custom_id}
    return json.dumps(obj, ensure_ascii=False), obj


def reconcile(sub: Submitter) -> bool:
    """Submitter.reconcile for a provider without metadata (see the module docstring).

    False (nothing may be submitted yet) while the API cannot be listed or a batch that may
    hold our requests is still in progress.
    """
    store = sub.store
    try:
        waiting = scan(sub, store.shards(("submitting",)))
    except TransientRemoteError as exc:
        sub.report.event("api_retry", batch="", error=f"reconciling with the API: {exc}")
        return False
    if waiting:
        return False
    if sub.newest_listed is not None:
        from gptbatch.engine.submit import RECONCILED_META

        with store.transaction():
            store.set_meta(RECONCILED_META, str(sub.newest_listed))
    return True


def adopt_existing(sub: Submitter, shard: ShardRow) -> bool:
    """Submitter.adopt_existing without metadata: True if the shard's batch was found, or if
    a batch that may be it is still in progress (the shard waits; it is not created again)."""
    waiting = scan(sub, [shard])
    current = sub.store.shard(shard.id)
    if current is not None and current.state != "submitting":
        return True
    if waiting:
        with sub.store.transaction():
            sub.store.update_shard(shard.id, not_before=time.time() + sub.spec.polling.max_seconds)
        return True
    return False


def scan(sub: Submitter, submitting: list[ShardRow]) -> list[BatchInfo]:
    """Adopt the ended batches the state does not know; the unknown ones in progress."""
    from gptbatch.engine.submit import RECONCILED_META

    store = sub.store
    last = store.get_meta(RECONCILED_META)
    lost = last is None
    sub.newest_listed = None  # nothing listed (yet) in this pass
    if not lost and not submitting:
        return []  # every batch of ours is on record
    known = {b.id for b in store.batches()}
    foreign = set(json.loads(store.get_meta(FOREIGN_META) or "[]"))
    # --new-project on a state that never listed: whatever is at the API now is not ours.
    fresh = lost and sub.new_project
    # Any shard whose create is in doubt may own an ended batch, not only the one asked
    # about: taken for a stranger, its batch would be rebuilt as a new shard and the shard
    # itself, finding no batch, created again (billed twice).
    mine = {s.id for s in submitting}
    submitting = [*submitting, *(s for s in store.shards(("submitting",)) if s.id not in mine)]
    seen = _SEEN.setdefault(sub, _Seen())
    skipped = seen.empty
    waiting: list[BatchInfo] = []
    listed: list[str] = []
    for info in sub.listed_back():
        if info.id in known or info.id in skipped or info.id in foreign:
            continue
        if fresh:
            listed.append(info.id)
            continue
        other = elsewhere(sub, info)
        if not info.terminal:
            if other is None:
                waiting.append(info)
            elif info.id not in seen.others:
                seen.others.add(info.id)
                sub.report.event(
                    "unknown_batch",
                    batch=info.id,
                    message=f"in progress, tagged by project {other}, none of whose sampled "
                    "requests is one of ours: not waited for",
                )
            continue
        if not adopt_ended(sub, info, submitting, only_current=other is not None):
            skipped.add(info.id)
    if fresh and sub.newest_listed is not None:  # a whole pass: record what it found
        with store.transaction():
            store.set_meta(FOREIGN_META, json.dumps(sorted(foreign | set(listed))))
        if listed:
            sub.report.event(
                "unknown_batch",
                batch="",
                message=f"--new-project: {len(listed)} batch(es) already at the API taken "
                "for other projects': not waited for, not adopted",
            )
    for info in waiting:
        if info.id not in seen.reported:
            seen.reported.add(info.id)
            sub.report.event("unknown_batch", batch=info.id, message=wait_message(sub, info))
    return waiting


def wait_message(sub: Submitter, info: BatchInfo) -> str:
    """Why a build waits for a batch it does not know, until when, and the way out."""
    ttl = caps_of(sub.remote).batch_ttl
    ends = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(info.created_at + ttl))
    return (
        "in progress at the API and unknown to this state; batches here carry no tags that "
        "say whose they are, so it may hold this project's requests (a lost state): nothing "
        f"is submitted until it ends, by {ends} at the latest (the API expires a batch "
        f"{ttl // 3600} h after its creation). If this project is new and no batch in flight "
        "is its own, `gptbatch build --new-project` does not wait for them"
    )


def elsewhere(sub: Submitter, info: BatchInfo) -> str | None:
    """The other project a batch's tags name, if none of its sampled keys is a current
    request of ours (a renamed project's own batch names its old id, but its keys)."""
    project = info.metadata.get(META_PROJECT)
    if not project or project in sub.project_ids:
        return None
    sample = info.metadata.get(META_KEYS) or ""
    if any(sub.store.has_key_prefix(p) for p in sample.split(",") if p):
        return None
    return project


def adopt_ended(
    sub: Submitter, info: BatchInfo, submitting: list[ShardRow], *, only_current: bool = False
) -> bool:
    """Take an ended batch by the keys its results name; False if they name none (or, with
    only_current, none of the requests this build has: another project's batch)."""
    store = sub.store
    keys: list[str] = []
    if info.output_file_id:
        path = sub.work_dir / "downloads" / f"adopt-{info.id}.jsonl"
        try:
            sub.remote.download(info.output_file_id, path)
        except NotFoundError as exc:  # its results expired (29 days): nothing to recover
            sub.report.event("recover_failed", batch=info.id, error=str(exc))
            return False
        with open(path, "rb") as f:
            for raw in f:
                if raw.strip():
                    cid = json.loads(raw).get("custom_id")
                    if is_key(cid):
                        keys.append(cid)
        path.unlink(missing_ok=True)
    if not keys or (only_current and not any(store.is_current(k) for k in keys)):
        return False
    wanted = set(keys)
    shard = next((s for s in submitting if {k for k, _ in store.members(s.id)} == wanted), None)
    if shard is not None:
        sub.record_submitted(shard.id, info)
        sid = shard.id
    else:
        sid = rebuild_shard(store, info, sorted(wanted))
    sub.summary.adopted += 1
    sub.report.event("adopted", shard=sid[:12], batch=info.id, status=info.status)
    return True


def rebuild_shard(store: Store, info: BatchInfo, keys: list[str]) -> str:
    """A shard for an ended batch found at the API, its members the keys it answered."""
    located = {k: store.locate(k) for k in keys}
    members = [(k, row.custom_id if row is not None else k) for k, row in located.items()]
    known = store.known_estimates(keys)
    first = next((row for row in located.values() if row is not None), None)
    with store.transaction():
        sid = store.new_shard_id(shard_key(None, info.endpoint, keys))
        store.add_shard(
            sid,
            model=first.model if first is not None else None,
            url=info.endpoint,
            members=members,
            tokens=sum(known[k][0] for k in keys if k in known),
            nbytes=0,
            cost=sum(c for c in (known[k][3] for k in keys if k in known) if c is not None),
            state="submitted",
            note=RECOVERED,
        )
        save_batch(store, sid, info)
        store.update_shard(sid, batch_id=info.id)
    return sid
