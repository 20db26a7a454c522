"""Inputs' content-defined chunks in the state, and a changed input's rows rewritten by chunk:
runs of unchanged requests kept (shifted by one statement each), the rest diffed row by row."""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

from gptbatch.state.base import StoreBase
from gptbatch.state.diff import _RowsAt, _RowWriter


class StoredChunk(NamedTuple):
    """A chunk of an input as its last sync recorded it."""

    seq: int
    first_ordinal: int  # of its first request
    first_line: int  # its first line's number
    start: int  # its first byte's offset
    length: int
    lines: int
    rows: int  # requests in it
    hash: bytes


class Run(NamedTuple):
    """For `replace_chunked`: the earlier rows from ordinal first, n of them, kept in order
    (at the ordinals they now come to), moved by so many lines. Their offsets, relative to
    their chunk's start, stay as they are: the chunk's new record has its new start."""

    first: int
    n: int
    lines: int


class ChunksMixin(StoreBase):
    """The input_chunks table, and an input's rows rewritten from kept runs and new rows."""

    def input_chunks(self, path: str) -> list[StoredChunk]:
        """An input's chunks, in order, if they account for exactly its recorded requests
        and bytes; else none (the input is then read in full)."""
        chunks = [
            StoredChunk(*row)
            for row in self.db.execute(
                "SELECT seq, first_ordinal, first_line, start, length, lines, rows, hash"
                " FROM input_chunks WHERE path=? ORDER BY seq",
                (path,),
            )
        ]
        record = self.db.execute(
            "SELECT size, requests FROM inputs WHERE path=?", (path,)
        ).fetchone()
        if not chunks or record is None:
            return []
        ordinal = line = start = 0
        for chunk in chunks:  # contiguous, in bytes, lines and requests
            if (chunk.first_ordinal, chunk.first_line - 1, chunk.start) != (ordinal, line, start):
                return []
            ordinal += chunk.rows
            line += chunk.lines
            start += chunk.length
        return chunks if (start, ordinal) == (record[0], record[1]) else []

    def set_input_chunks(self, path: str, chunks: Iterable[tuple[Any, ...]]) -> None:
        """Record an input's chunks: (first_ordinal, first_line, start, length, lines, rows,
        hash) each, in order."""
        self.db.execute("DELETE FROM input_chunks WHERE path=?", (path,))
        self.db.executemany(
            "INSERT INTO input_chunks(path, seq, first_ordinal, first_line, start, length,"
            " lines, rows, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ((path, seq, *chunk) for seq, chunk in enumerate(chunks)),
        )

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        """A nested transaction: its writes undone if the block raises."""
        self.db.execute("SAVEPOINT chunked")
        try:
            yield
        except BaseException:
            # SQLite ends the whole transaction itself on some errors (a full disk): then
            # there is no savepoint to return to, and the original error is the one to tell.
            if self.db.in_transaction:
                self.db.execute("ROLLBACK TO chunked")
                self.db.execute("RELEASE chunked")
            raise
        self.db.execute("RELEASE chunked")

    def url_of(self, reader: sqlite3.Connection, path: str, ordinal: int) -> str | None:
        """The url of an input's request at this ordinal, as a snapshot saw it."""
        row = reader.execute(
            "SELECT url FROM requests WHERE path=? AND ordinal=?", (path, ordinal)
        ).fetchone()
        return row[0] if row else None

    def has_duplicate_in(self, path: str, ranges: Sequence[tuple[int, int]]) -> bool:
        """Does a request at these ordinals (first, last) share its custom_id with another
        request of the same input?"""
        return any(
            self.db.execute(
                "SELECT 1 FROM requests a JOIN requests b ON b.custom_id=a.custom_id"
                " AND b.path=a.path AND b.ordinal<>a.ordinal"
                " WHERE a.path=? AND a.ordinal BETWEEN ? AND ? LIMIT 1",
                (path, first, last),
            ).fetchone()
            for first, last in ranges
        )

    def replace_chunked(
        self,
        path: str,
        *,
        size: int,
        mtime_ns: int,
        sha256: str,
        defaults: str,
        ops: Sequence[Run | tuple[Any, ...]],
        before: sqlite3.Connection,
    ) -> int:
        """Make an input's requests these: each op a Run of earlier rows kept, or a row
        (RequestRow order minus path, its offset relative to its chunk's start) at the next
        ordinal. Returns how many there are. The caller records the chunks after.

        A run that keeps its ordinals is shifted in place by one UPDATE (none if it did not
        move); one whose ordinals change is moved by two (through negative ordinals, so no
        two rows ever hold one ordinal). A row is written only if it differs from the
        earlier row left at its ordinal, as `replace_input` does.
        """
        db = self.db
        moved: list[tuple[int, int]] = []  # earlier ordinals moved away, sorted
        targets: list[tuple[int, int]] = []  # where they come to
        ordinal = 0
        for op in ops:
            if type(op) is not Run:
                ordinal += 1
                continue
            first, n, lines = op
            last = first + n - 1
            if ordinal != first:
                db.execute(
                    "UPDATE requests SET ordinal=-1-(ordinal+?), line=line+?"
                    " WHERE path=? AND ordinal BETWEEN ? AND ?",
                    (ordinal - first, lines, path, first, last),
                )
                moved.append((first, last))
                targets.append((ordinal, ordinal + n - 1))
            elif lines:
                db.execute(
                    "UPDATE requests SET line=line+? WHERE path=? AND ordinal BETWEEN ? AND ?",
                    (lines, path, first, last),
                )
            ordinal += n
        moved.sort()
        starts = [first for first, _ in moved]
        old = _RowsAt(before, path)
        writer = _RowWriter(db, path)
        ordinal = 0
        for op in ops:
            if type(op) is Run:
                writer.keep()
                ordinal += op.n
                continue
            i = bisect.bisect_right(starts, ordinal) - 1
            gone = i >= 0 and moved[i][1] >= ordinal  # its earlier row moved away
            writer.write(ordinal, op, None if gone else old.get(ordinal))
            ordinal += 1
        writer.close()
        for first, last in targets:  # earlier rows left where moved ones come: not kept
            db.execute(
                "DELETE FROM requests WHERE path=? AND ordinal BETWEEN ? AND ?",
                (path, first, last),
            )
        if moved:
            db.execute("UPDATE requests SET ordinal=-1-ordinal WHERE path=? AND ordinal<0", (path,))
        db.execute("DELETE FROM requests WHERE path=? AND ordinal>=?", (path, ordinal))
        db.execute(
            "INSERT OR REPLACE INTO inputs(path, size, mtime_ns, sha256, defaults, requests,"
            " synced_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (path, size, mtime_ns, sha256, defaults, ordinal, time.time()),
        )
        return ordinal

    def unbase(self, path: str, ranges: Iterable[Sequence[int]]) -> None:
        """Make the offsets of an input's rows written relative to chunks that are not
        recorded after all (its file changed while read) offsets in the file again: ranges
        of (first ordinal, last ordinal, the start they are relative to)."""
        for first, last, start in ranges:
            if start:
                self.db.execute(
                    "UPDATE requests SET offset=offset+? WHERE path=? AND ordinal BETWEEN ? AND ?",
                    (start, path, first, last),
                )

    def output_chunks(self, path: str) -> list[tuple[int, int, bytes, int, int, bool]]:
        """Per chunk of an input, in order: (first ordinal, requests, signature, ok, failed,
        unknown), none if its chunks are not recorded.

        The same signature, the same output lines. It hashes the chunk's bytes and the
        input's defaults (so its requests have the same keys, at the same positions) with
        how many of them have an ok result and the sum of those results' versions. A
        result's version is unique and greater than every version before it (the results
        counter), and a key's version only ever changes to a new one (or to unknown): if k
        results were replaced by k others, the sum grew by more than k times the largest
        earlier version, more than it lost. So the same count and sum mean the same results.
        unknown: an ok result whose version is not known (its line is read, never copied).
        """
        if not self.input_chunks(path):
            return []
        defaults = self.db.execute("SELECT defaults FROM inputs WHERE path=?", (path,)).fetchone()
        seed = hashlib.sha256(str(defaults[0]).encode()).digest()
        out = []
        for first, rows, digest, ok, versions, failed, unknown in self.db.execute(
            "SELECT c.first_ordinal, c.rows, c.hash, sum(r.done=1),"
            " sum(CASE WHEN r.done=1 THEN r.result_version END), sum(r.done=2),"
            " sum(r.done=1 AND r.result_version IS NULL)"
            " FROM input_chunks c LEFT JOIN requests r ON r.path=c.path"
            " AND r.ordinal BETWEEN c.first_ordinal AND c.first_ordinal + c.rows - 1"
            " WHERE c.path=? GROUP BY c.seq ORDER BY c.seq",
            (path,),
        ):
            text = f"{ok or 0}:{versions or 0}".encode()
            signature = hashlib.sha256(seed + digest + text).digest()[:16]
            out.append((first, rows, signature, ok or 0, failed or 0, bool(unknown)))
        return out

    def output_segments(self, output: str) -> dict[bytes, tuple[int, int, int, int]]:
        """signature -> (start, length, first entry, entries) in an output as last written."""
        return {
            row[0]: row[1:]
            for row in self.db.execute(
                "SELECT signature, start, length, first_entry, entries FROM output_segments"
                " WHERE output=?",
                (output,),
            )
        }

    def set_output_segments(self, output: str, segments: Iterable[tuple[Any, ...]]) -> None:
        """Record (signature, start, length, first entry, entries) per chunk of an output."""
        self.db.execute("DELETE FROM output_segments WHERE output=?", (output,))
        self.db.executemany(
            "INSERT OR REPLACE INTO output_segments(output, signature, start, length,"
            " first_entry, entries) VALUES (?, ?, ?, ?, ?, ?)",
            ((output, *segment) for segment in segments),
        )

    def failed_ordinals(self, path: str, first: int, last: int) -> list[int]:
        """The ordinals (from first to last) of an input's requests that failed for good."""
        return [
            r[0]
            for r in self.db.execute(
                "SELECT ordinal FROM requests WHERE path=? AND ordinal BETWEEN ? AND ?"
                " AND done=2 ORDER BY ordinal",
                (path, first, last),
            )
        ]

    def output_rows_between(
        self, path: str, first: int, last: int
    ) -> Iterator[tuple[int, int, int | None, str, bytes | None]]:
        """(ordinal, done, result_version, key, line) of an input's requests from ordinal
        first to last, as `output_rows` gives them with lines."""
        cur = self.db.execute(
            "SELECT r.ordinal, r.done, r.result_version, r.key, s.line, s.zline"
            " FROM requests r LEFT JOIN results s ON r.done=1 AND s.key=r.key"
            " WHERE r.path=? AND r.ordinal BETWEEN ? AND ? ORDER BY r.ordinal",
            (path, first, last),
        )
        unpack = self.unpack  # type: ignore[attr-defined]
        for ordinal, done, version, key, line, zline in cur:
            text = unpack(line, zline)
            yield ordinal, done, version, key, None if text is None else text.encode("utf-8")
