"""Request offsets as stored: relative to the start of their chunk (see rows.ABSOLUTE_OFFSET).

A sync reads requests with their offsets in the file; these turn them into what the store
keeps, against the chunks the sync records (`ChunksMixin.unbase` turns them back if it ends
up recording none).
"""

from __future__ import annotations

import bisect
import sqlite3
from collections.abc import Generator, Sequence
from typing import Any

from gptbatch.inputs.chunks import Chunk
from gptbatch.state.diff import Kept


class Bases:
    """Where each recorded chunk of an input starts, by the ordinal of its first request (as
    a connection, maybe a snapshot, sees them): what its requests' offsets are relative to."""

    def __init__(self, db: sqlite3.Connection, path: str) -> None:
        rows = db.execute(
            "SELECT first_ordinal, start FROM input_chunks WHERE path=? AND rows>0"
            " ORDER BY first_ordinal",
            (path,),
        ).fetchall()
        self.ordinals = [r[0] for r in rows]
        self.starts = [r[1] for r in rows]

    def at(self, ordinal: int) -> int:
        """What the stored offset of the request at this ordinal is relative to."""
        i = bisect.bisect_right(self.ordinals, ordinal) - 1
        return self.starts[i] if i >= 0 else 0


class Rebase:
    """Rows of a full read (offsets in the file) made relative to the chunks it will record.

    A row's chunk is found by its line (as the sync counts each chunk's requests), so the
    chunk the store finds by its ordinal is the same one. A `Kept` row's shift is turned into
    the shift of its stored offset: from its old chunk's start (old) to its new one's.
    """

    def __init__(self, chunks: Sequence[Chunk] | None, old: Bases) -> None:
        self.old = old
        self.first_lines: list[int] = []
        self.starts: list[int] = []
        line = 1
        for chunk in chunks or ():
            self.first_lines.append(line)
            self.starts.append(chunk.start)
            line += chunk.lines
        # (first ordinal, last ordinal, start) of the runs of rows made relative to one start
        self.ranges: list[list[int]] = []

    def _base(self, ordinal: int, line: int) -> int:
        i = bisect.bisect_right(self.first_lines, line) - 1
        start = self.starts[i] if i >= 0 else 0
        ranges = self.ranges
        if ranges and ranges[-1][2] == start and ranges[-1][1] == ordinal - 1:
            ranges[-1][1] = ordinal
        else:
            ranges.append([ordinal, ordinal, start])
        return start

    def rows(self, rows: Generator[Any, None, None]) -> Generator[Any, None, None]:
        """rows, each (or each Kept) with its offset as the store keeps it."""
        try:
            for ordinal, row in enumerate(rows):
                if type(row) is Kept:
                    new = self._base(ordinal, row.at)
                    old = self.old.at(ordinal)
                    yield Kept(row.lines, row.offset - new + old, row.at)
                else:
                    yield (*row[:2], row[2] - self._base(row[0], row[1]), *row[3:])
        finally:
            rows.close()
