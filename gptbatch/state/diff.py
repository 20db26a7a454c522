"""The input diff: an input's earlier rows walked beside its new lines; changed rows written."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any, NamedTuple

from gptbatch.state.db import stream_rows
from gptbatch.state.rows import REQUEST_COLUMNS, REQUEST_ROW_SELECT, RequestRow


def previous_row(reader: sqlite3.Connection, path: str, custom_id: str) -> RequestRow | None:
    """An input's request with this custom_id, as a snapshot saw it."""
    row = reader.execute(
        f"SELECT {REQUEST_ROW_SELECT} FROM requests r WHERE r.custom_id=? AND r.path=?",
        (custom_id, path),
    ).fetchone()
    return RequestRow(*row) if row else None


class Kept(NamedTuple):
    """For `replace_input`: the earlier row at this ordinal, moved by so many lines and bytes
    (in the file as read; by what its stored offset moves once `positions.Rebase` passed it)."""

    lines: int = 0
    offset: int = 0
    at: int = 0  # its line now


class PreviousRows:
    """An input's earlier rows (in a snapshot), walked in input order beside the new lines.

    An unchanged or edited line matches the next earlier row at once; only lines that moved,
    or came after an insertion or deletion, cost an indexed query (which also resynchronises).
    """

    def __init__(self, reader: sqlite3.Connection, path: str) -> None:
        self.reader = reader
        self.path = path
        self.rows = stream_rows(
            reader.execute(
                f"SELECT {REQUEST_ROW_SELECT} FROM requests r WHERE r.path=? ORDER BY r.ordinal",
                (path,),
            )
        )
        self.head: RequestRow | None = None
        self._advance()
        self.empty = self.head is None  # a new input: nothing to look up

    def _advance(self) -> None:
        row = next(self.rows, None)
        self.head = RequestRow._make(row) if row else None

    def __call__(self, custom_id: str) -> RequestRow | None:
        """The earlier row with this custom_id, if any."""
        current = self.head
        if current is not None and current.custom_id == custom_id:
            self._advance()
            return current
        if self.empty:
            return None
        found = previous_row(self.reader, self.path, custom_id)
        if found is not None:  # skip what lies before it: deleted or moved lines
            while self.head is not None and self.head.ordinal <= found.ordinal:
                self._advance()
        return found

    def same_bytes(self, digest: bytes) -> RequestRow | None:
        """The next earlier row if its line had exactly these bytes (then it is consumed)."""
        current = self.head
        if current is not None and current.digest == digest:
            self._advance()
            return current
        return None


class _RowsAt:
    """An input's earlier rows (in a snapshot) by ordinal, asked for in increasing order, as
    stored (offsets relative to their chunk): what a row to write is compared with.

    Read in order from the first ordinal asked for, and from further on again after a long
    stretch nobody asked about (unchanged rows): a one-line edit reads a few rows, not all.
    """

    SKIP = 4096

    def __init__(self, reader: sqlite3.Connection, path: str) -> None:
        self.reader = reader
        self.path = path
        self.rows: Iterator[tuple[Any, ...]] = iter(())
        self.head: tuple[Any, ...] | None = None
        self.start: int | None = None  # where the current read began

    def get(self, ordinal: int) -> tuple[Any, ...] | None:
        """The earlier row at this ordinal, if any."""
        head = self.head
        if (
            self.start is None
            or ordinal < self.start
            or (head is not None and ordinal > head[1] + self.SKIP)
        ):
            self.start = ordinal
            self.rows = stream_rows(
                self.reader.execute(
                    f"SELECT {REQUEST_COLUMNS} FROM requests WHERE path=? AND ordinal>=?"
                    " ORDER BY ordinal",
                    (self.path, ordinal),
                )
            )
            head = next(self.rows, None)
        while head is not None and head[1] < ordinal:
            head = next(self.rows, None)
        self.head = head
        return head if head is not None and head[1] == ordinal else None


class _RowWriter:
    """Writes an input's changed request rows in batches, and moved ones as ranged shifts."""

    BATCH = 1000

    def __init__(self, db: sqlite3.Connection, path: str) -> None:
        self.db = db
        self.path = path
        self.rows: list[tuple[Any, ...]] = []  # over earlier rows (an upsert)
        self.new_rows: list[tuple[Any, ...]] = []  # at ordinals no earlier row holds
        self.run: list[int] | None = None  # [first ordinal, last ordinal, line and byte shift]

    def put(self, row: tuple[Any, ...], *, new: bool = False) -> None:
        """Write a row; new: no row holds its ordinal yet."""
        self._end_run()
        rows = self.new_rows if new else self.rows
        rows.append((self.path, *row))
        if len(rows) >= self.BATCH:
            self._flush()

    def write(self, ordinal: int, row: tuple[Any, ...], current: tuple[Any, ...] | None) -> None:
        """Make the row at ordinal this one (RequestRow order minus path), given the earlier
        row left there (None: none): kept if equal, shifted if only its line and offset
        moved, else written."""
        if current is None:
            self.put(row, new=True)
        elif current[1:] == row:
            self.keep()
        elif current[4:] == row[3:]:  # the same request on another line or offset
            self.shift(ordinal, row[1] - current[2], row[2] - current[3])
        else:
            self.put(row)

    def keep(self) -> None:
        self._end_run()

    def shift(self, ordinal: int, lines: int, offset: int) -> None:
        run = self.run
        if run is not None and run[1] == ordinal - 1 and run[2] == lines and run[3] == offset:
            run[1] = ordinal
            return
        self._end_run()
        self.run = [ordinal, ordinal, lines, offset]

    def close(self) -> None:
        self._end_run()
        self._flush()

    def _end_run(self) -> None:
        if self.run is not None:
            first, last, lines, offset = self.run
            self.db.execute(
                "UPDATE requests SET line=line+?, offset=offset+? WHERE path=?"
                " AND ordinal BETWEEN ? AND ?",
                (lines, offset, self.path, first, last),
            )
            self.run = None

    def _flush(self) -> None:
        if self.new_rows:
            # OR FAIL, not the default ABORT: ABORT keeps a statement journal for the triggers'
            # writes (each row's pages copied to a temp file: 2.3 s for 100k rows, not 0.9),
            # and any error here rolls the whole transaction back anyway.
            self.db.executemany(
                f"INSERT OR FAIL INTO requests({REQUEST_COLUMNS}) VALUES ({','.join('?' * 15)})",
                self.new_rows,
            )
            self.new_rows = []
        if self.rows:
            self.db.executemany(
                f"INSERT INTO requests({REQUEST_COLUMNS}) VALUES ({','.join('?' * 15)})"
                " ON CONFLICT(path, ordinal) DO UPDATE SET line=excluded.line,"
                " offset=excluded.offset, length=excluded.length, key=excluded.key,"
                " custom_id=excluded.custom_id, model=excluded.model, url=excluded.url,"
                " tokens=excluded.tokens, nbytes=excluded.nbytes, inputs=excluded.inputs,"
                " cost=excluded.cost, reason=excluded.reason, digest=excluded.digest",
                self.rows,
            )
            self.rows = []
