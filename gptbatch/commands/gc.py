"""Garbage collection of the build state: results of requests no longer in any input.

The state keeps results of deleted or edited lines so that undoing an edit costs nothing;
gc gives that up for space. A result is kept if its key is a request of the last build or
of the inputs as they are now, so an edit not yet built never loses its result.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from gptbatch.config.spec import Spec
from gptbatch.errors import UsageError
from gptbatch.inputs.requests import read_requests
from gptbatch.state.lock import BuildLock
from gptbatch.state.store import Store, state_dir

STATE_FILES_GLOB = "state.db*"


@dataclass(frozen=True)
class GcSummary:
    """What gc dropped and how much space that freed."""

    results: int
    shards: int
    members: int
    batches: int
    shard_files: int
    bytes_before: int
    bytes_after: int


def collect_garbage(spec: Spec) -> GcSummary:
    """Drop unreferenced results and finished shards under the build lock, then VACUUM."""
    work = state_dir(spec.output_dir)
    if not (work / "state.db").exists():
        raise UsageError(f"no build state in {work}: nothing to collect")
    with BuildLock(spec.output_dir, work):
        store = Store(work)
        try:
            before = state_bytes(work)
            keys = (
                r.key
                for r in read_requests(
                    [str(p) for p in spec.inputs],
                    model=spec.model,
                    endpoint=spec.endpoint,
                    max_line_bytes=spec.limits.max_bytes_per_batch,
                )
            )
            dropped = store.drop_unreferenced(keys)
            files = 0
            for sid in dropped["shard_ids"]:
                with contextlib.suppress(FileNotFoundError):
                    (work / "shards" / f"{sid}.jsonl").unlink()
                    files += 1
            store.vacuum()
            after = state_bytes(work)
        finally:
            store.close()
    return GcSummary(
        dropped["results"],
        dropped["shards"],
        dropped["members"],
        dropped["batches"],
        files,
        before,
        after,
    )


def state_bytes(work: Path) -> int:
    """Bytes the state takes on disk: the database, its WAL, and shard files."""
    total = 0
    for path in [*work.glob(STATE_FILES_GLOB), *work.glob("shards/*.jsonl")]:
        with contextlib.suppress(OSError):
            total += path.stat().st_size
    return total
