"""A shard's upload file: its members' input lines, made canonical and each checked against
its key, so what goes up is what was read (the input may have changed since).

Written by the submitter as it uploads, or ahead of that by a worker process (ReadAhead)
while the shard before is uploaded and created: the worker reads the members on a
connection of its own to the state, which the plan that made the shard has committed.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from gptbatch.canonical import atomic_writer, sha256_hex
from gptbatch.errors import InputChangedError, InputError
from gptbatch.inputs.requests import read_raw_line
from gptbatch.inputs.upload import upload_line
from gptbatch.state.rows import RequestRow
from gptbatch.state.shards import member_requests
from gptbatch.state.store import Store

# Below this many requests a shard file is written by the submitter itself: a worker's
# hand-over costs more than it saves.
AHEAD_MIN_REQUESTS = 4_000


def write_shard_file(
    path: Path,
    shard_id: str,
    members: Iterable[tuple[str, RequestRow | None]],
    model: str | None,
    endpoint: str | None,
) -> Path:
    """Write (or rewrite) a shard's file from (key, request) members, atomically."""
    with contextlib.ExitStack() as files, atomic_writer(path, "wb") as out:
        opened: dict[str, BinaryIO | None] = {}  # one handle per input, not one per line
        for key, row in members:
            if row is None:
                raise InputChangedError(
                    f"request {key[:12]} of shard {shard_id[:12]} left the inputs while "
                    "gptbatch ran: run `gptbatch build` again"
                )
            if row.path not in opened:
                try:
                    opened[row.path] = files.enter_context(open(row.path, "rb"))
                except OSError:
                    opened[row.path] = None
            out.write(checked_line(row, key, opened[row.path], model, endpoint) + b"\n")
    return path


def checked_line(
    row: RequestRow, key: str, f: BinaryIO | None, model: str | None, endpoint: str | None
) -> bytes:
    """The line to upload for a request, checked against its key: the file may have moved."""
    try:
        if f is None:
            raw = read_raw_line(row.path, row.offset, row.length)
        else:
            f.seek(row.offset)
            raw = f.read(row.length)
        line = upload_line(raw, model, endpoint) if len(raw) == row.length else b""
    except (InputError, ValueError, UnicodeDecodeError, OSError):
        line = b""
    if sha256_hex(line) != key:
        raise InputChangedError(
            f"{row.path}:{row.line}: the file changed while gptbatch ran (this line is "
            "no longer what was read): nothing more was submitted from it; batches already "
            "submitted keep running. Run `gptbatch build` again to pick up the change"
        )
    return line


def write_from_state(
    state: str, shard_id: str, path: str, model: str | None, endpoint: str | None
) -> str:
    """write_shard_file in a worker process, reading the members on its own connection."""
    db = sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=30)
    try:
        write_shard_file(Path(path), shard_id, member_requests(db, shard_id), model, endpoint)
    finally:
        db.close()
    return path


def remove_final_shard_files(store: Store) -> None:
    """Delete shard files whose batch is final (done or dropped): never read again.

    A shard's file is read only to upload it; a refused shard is sent again under the file
    id it was uploaded as, so only a final shard's file is certain to be garbage.
    """
    folder = store.directory / "shards"
    if not folder.is_dir():
        return
    for path in folder.glob("*.jsonl"):
        shard = store.shard(path.name[: -len(".jsonl")])
        if shard is None or shard.state in ("done", "dropped"):
            with contextlib.suppress(OSError):
                path.unlink()
