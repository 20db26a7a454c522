"""Cleaning a project: its outputs and build state, and (optionally) its uploads at the API.

Only files gptbatch writes are removed: each input's output and error files (and pairs
left by inputs since dropped from batch.yaml), temp files of killed writes, and the state
database with its shard and download files. Anything else in output_dir stays, and so
does every input. Without --remote the API's batches stay, so a later build adopts and
collects them instead of paying again.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gptbatch.config.spec import Spec
from gptbatch.engine.outputs import output_paths
from gptbatch.errors import NotFoundError, UsageError
from gptbatch.inputs.parquet import is_parquet
from gptbatch.state.store import Store, state_dir

if TYPE_CHECKING:
    from gptbatch.api.remote import Remote

STATE_FILES = ("state.db", "state.db-wal", "state.db-shm", "state.db-journal")
# where build keeps shard and downloaded files, and data targets' rendered requests and the
# copies of their data they were rendered from (a directory before its parent: removed so)
WORK_DIRS = ("shards", "downloads", "rendered/sources", "rendered")
SIMULATOR_DIR = "simulator"  # `build --simulate` keeps its simulator's state here (api.connect)


@dataclass(frozen=True)
class CleanPlan:
    """What clean would remove, and what it leaves."""

    files: tuple[Path, ...]
    dirs: tuple[Path, ...]  # removed when empty afterwards, deepest first
    kept: tuple[Path, ...]  # other files in output_dir or the state dir, left in place
    bytes: int
    in_flight: int  # batches the state has not collected


def plan_clean(spec: Spec, *, rehearsal: bool = False) -> CleanPlan:
    """The local files clean removes; ConfigError if an output would be an input.

    With rehearsal (spec is `build --simulate`'s), the rehearsal's simulator state goes too:
    left behind, a later rehearsal would adopt its old batches as if they were current.
    """
    output_dir, work = spec.output_dir, state_dir(spec.output_dir)
    # A data target's rendered requests are an input made from its data: ours to remove.
    rendered = {os.path.realpath(p) for p in spec.targets.values()}
    inputs = {os.path.realpath(p) for p in spec.inputs} - rendered
    ours: list[Path] = [t for pair in output_paths(spec.inputs, output_dir).values() for t in pair]
    ours += [output_dir / f"{t.name}.csv" for t in spec.data_targets]  # answers tables
    ours += [output_dir / f"{t.name}.parquet" for t in spec.data_targets if is_parquet(t.data)]
    if output_dir.is_dir():
        for path in output_dir.glob("*.errors.jsonl"):  # inputs since dropped from batch.yaml
            ours += [path, path.with_name(path.name[: -len(".errors.jsonl")] + ".jsonl")]
        ours += output_dir.glob(".*.tmp")
    ours += [work / name for name in STATE_FILES]
    for sub in WORK_DIRS:
        if (work / sub).is_dir():
            ours += (p for p in (work / sub).iterdir() if p.is_file())
    simulator = work / SIMULATOR_DIR
    sim_dirs: list[Path] = []
    if rehearsal and simulator.is_dir():
        ours += (p for p in simulator.rglob("*") if not p.is_dir())
        sim_dirs = sorted((p for p in simulator.rglob("*") if p.is_dir()), reverse=True)
        sim_dirs.append(simulator)
    files = _unique(
        p for p in ours if (p.is_file() or p.is_symlink()) and os.path.realpath(p) not in inputs
    )
    dirs = (*sim_dirs, *(work / sub for sub in WORK_DIRS), work, output_dir)
    removed = {os.path.realpath(p) for p in files}
    kept = _unique(
        p
        for d in (output_dir, work)
        if d.is_dir()
        for p in d.rglob("*")
        if p.is_file() and os.path.realpath(p) not in removed
    )
    return CleanPlan(
        files, tuple(d for d in dirs if d.is_dir()), kept, _size(files), _in_flight(work)
    )


def remove_local(plan: CleanPlan) -> int:
    """Remove the plan's files, then its directories that are left empty; bytes removed."""
    for path in plan.files:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    for directory in plan.dirs:
        with contextlib.suppress(OSError):  # not empty: something not ours is inside
            directory.rmdir()
    return plan.bytes


def remote_uploads(spec: Spec, remote: Remote) -> list[str]:
    """This project's input files at the API: those the state knows, and those named by its
    shards (`gptbatch-<shard>.jsonl`). UsageError while batches are still in flight.
    """
    work = state_dir(spec.output_dir)
    if not (work / "state.db").exists():
        return []
    store = Store(work)
    try:
        flying = _in_flight(work, store)
        if flying:
            raise UsageError(
                f"{flying} batch(es) of this project are still in flight and use their input "
                "files: run `gptbatch cancel` then `gptbatch build` (or wait for the build to "
                "finish), then clean --remote"
            )
        known = dict.fromkeys(store.uploaded_file_ids())
        names = {f"gptbatch-{sid[:40]}.jsonl" for sid in store.shard_ids()}
    finally:
        store.close()
    for info in remote.list_uploads():
        if info.filename in names:
            known.setdefault(info.id)
    return list(known)


def unrecoverable_results(spec: Spec, *, deleting_uploads: bool) -> int:
    """Current requests whose results the API could no longer give back once the state goes.

    A build without its state finds its batches at the API and recovers their results
    through their input files. Once those are deleted (by clean --remote, or after
    collection with delete_uploads: true), the next build submits and pays for these again.
    """
    work = state_dir(spec.output_dir)
    if not (deleting_uploads or spec.delete_uploads) or not (work / "state.db").exists():
        return 0
    # With delete_uploads alone, only the input files of collected batches were deleted.
    collected = "" if deleting_uploads else " AND b.collected=1"
    store = Store(work)
    try:
        row = store.db.execute(
            "SELECT count(DISTINCT q.key) FROM requests q JOIN results r ON r.key=q.key"
            " JOIN batches b ON b.id=r.batch_id"
            f" WHERE r.state IN ('ok', 'failed'){collected}"
        ).fetchone()
    finally:
        store.close()
    return int(row[0] or 0)


def delete_uploads(remote: Remote, file_ids: Iterable[str]) -> list[str]:
    """Delete files at the API; return the ids deleted (those already gone are skipped)."""
    deleted = []
    for file_id in file_ids:
        try:
            remote.delete_file(file_id)
        except NotFoundError:
            continue
        deleted.append(file_id)
    return deleted


def _in_flight(work: Path, store: Store | None = None) -> int:
    if store is None:
        if not (work / "state.db").exists():
            return 0
        opened = Store(work)
        try:
            return _in_flight(work, opened)
        finally:
            opened.close()
    return sum(1 for b in store.batches() if not b.collected)


def _unique(paths: Iterable[Path]) -> tuple[Path, ...]:
    return tuple(dict.fromkeys(paths))


def _size(paths: Iterable[Path]) -> int:
    total = 0
    for p in paths:
        with contextlib.suppress(OSError):
            total += p.stat().st_size
    return total
