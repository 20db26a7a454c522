"""A changed input synced by its content-defined chunks: only the lines of chunks whose hash
changed are read, parsed and keyed; the requests of the others are kept as runs.

Whatever it cannot answer exactly as a full read would (a problem in a line, a custom_id
used twice, another endpoint, no chunks recorded, much of the file changed), it leaves
to the full read: nothing it wrote stays, and the full read says it in its own words.
"""

from __future__ import annotations

import io
import os
import sqlite3
from collections import deque
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from gptbatch.config.spec import Spec
from gptbatch.inputs.chunks import Chunk, chunk_digest
from gptbatch.inputs.requests import DEFAULT_MAX_LINE_BYTES, Request, iter_lines, line_validator
from gptbatch.state.chunks import Run, StoredChunk
from gptbatch.state.diff import previous_row
from gptbatch.state.rows import RequestRow
from gptbatch.state.store import Store

# Past this many changed bytes (or a quarter of the file) the full read, which streams, is
# as fast: the changed chunks' rows are held in memory until they are written.
MAX_CHANGED_BYTES = 64 << 20
_BOM = b"\xef\xbb\xbf"


class _Unanswered(Exception):
    """The full read must answer: its rows or its problems."""


def sync_chunked(
    spec: Spec,
    store: Store,
    before: sqlite3.Connection,
    path: Path,
    st: os.stat_result,
    digest: str,
    chunks: list[Chunk] | None,
    defaults: str,
    tally: dict[str, int],
    make_row: Callable[[int, Request, RequestRow | None], tuple[Any, ...]],
    line_digest: Callable[[bytes], bytes],
) -> list[tuple[int, int]] | None:
    """Rewrite an input's rows from its chunks, and return the ordinals (first, last) of the
    rows read (the others were kept); None (nothing written) if a full read must.

    The input's recorded defaults are these (same config): a line with the bytes it had
    makes the same request, so an unchanged chunk makes the same rows. make_row(ordinal,
    request, earlier row with its custom_id) is a read request's row, as the full read's.
    """
    stored = store.input_chunks(str(path))
    if not stored or chunks is None:
        return None
    pool: dict[bytes, deque[StoredChunk]] = {}
    for old in stored:
        pool.setdefault(old.hash, deque()).append(old)
    plan = [(chunk, _take(pool, chunk.hash)) for chunk in chunks]
    changed = sum(chunk.length for chunk, old in plan if old is None)
    if changed > min(MAX_CHANGED_BYTES, max(st.st_size // 4, 1 << 20)):
        return None
    validator = line_validator([path], model=spec.model, endpoint=spec.endpoint)
    group: list[Any] = [None, 0]  # the url of the lines read, and the line that set it
    ops: list[Run | tuple[Any, ...]] = []
    records: list[tuple[Any, ...]] = []
    read: list[tuple[int, int]] = []  # ordinals (first, last) of the rows read
    kept_url: str | None = None
    ordinal, line = 0, 1
    try:
        with open(path, "rb") as f:
            for chunk, old in plan:
                first = ordinal
                if old is not None:
                    if old.rows:
                        ops.append(Run(old.first_ordinal, old.rows, line - old.first_line))
                        if kept_url is None:
                            kept_url = store.url_of(before, str(path), old.first_ordinal)
                    ordinal += old.rows
                else:
                    for number, offset, content, length in _lines(f, chunk, line):
                        if content is not None and (not content or content.isspace()):
                            continue
                        req = validator.read_line(0, number, offset, content, length, group)
                        if req is None:
                            continue
                        earlier = previous_row(before, str(path), req.custom_id)
                        row = make_row(ordinal, req, earlier)
                        ops.append(
                            (
                                *row[:2],
                                row[2] - chunk.start,  # stored relative to its chunk
                                *row[3:],
                                None if content is None else line_digest(content),
                            )
                        )
                        tally["new"] += earlier is None or earlier.key != req.key
                        ordinal += 1
                    if ordinal > first:
                        read.append((first, ordinal - 1))
                records.append(
                    (
                        first,
                        line,
                        chunk.start,
                        chunk.length,
                        chunk.lines,
                        ordinal - first,
                        chunk.hash,
                    )
                )
                line += chunk.lines
        if validator.count or (kept_url not in (None, group[0]) and group[0] is not None):
            raise _Unanswered
        with store.savepoint():
            store.replace_chunked(
                str(path),
                size=st.st_size,
                mtime_ns=st.st_mtime_ns,
                sha256=digest,
                defaults=defaults,
                ops=ops,
                before=before,
            )
            if store.has_duplicate_in(str(path), read):
                raise _Unanswered
            store.set_input_chunks(str(path), records)
    except (_Unanswered, OSError):
        tally["new"] = 0
        return None
    tally["requests"] = ordinal
    return read


def _take(pool: dict[bytes, deque[StoredChunk]], digest: bytes) -> StoredChunk | None:
    """The first recorded chunk with these bytes not yet matched, if any."""
    found = pool.get(digest)
    return found.popleft() if found else None


def _lines(f: Any, chunk: Chunk, line: int) -> Iterator[tuple[int, int, bytes | None, int]]:
    """A changed chunk's lines, as the full read numbers them; its bytes checked against its
    hash (the file changed since it was chunked: the full read answers)."""
    if chunk.length > MAX_CHANGED_BYTES:
        raise _Unanswered
    data = os.pread(f.fileno(), chunk.length, chunk.start)
    if len(data) != chunk.length or chunk_digest(chunk.start, data) != chunk.hash:
        raise _Unanswered
    if chunk.start and data.startswith(_BOM):
        raise _Unanswered  # read on its own, its first line would lose a BOM it keeps
    lines = iter_lines(io.BytesIO(data), DEFAULT_MAX_LINE_BYTES)
    for number, offset, content, length in islice(lines, chunk.lines):
        yield number + line - 1, offset + chunk.start, content, length
