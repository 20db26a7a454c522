"""Inputs and their current requests: the input diff's writes, lookups, pending work, counts."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from itertools import starmap
from typing import Any

from gptbatch.state.base import StoreBase
from gptbatch.state.db import stream_rows
from gptbatch.state.diff import Kept, PreviousRows, _RowsAt, _RowWriter, previous_row
from gptbatch.state.rows import ACTIVE_SHARD_STATES, REQUEST_SELECT, RequestRow


class RequestsMixin(StoreBase):
    """The Store's inputs and requests tables: what each input holds, and what is pending."""

    def input_record(self, path: str) -> tuple[int, int, str, str] | None:
        """(size, mtime_ns, sha256, defaults) recorded at the last sync of an input."""
        row = self.db.execute(
            "SELECT size, mtime_ns, sha256, defaults FROM inputs WHERE path=?", (path,)
        ).fetchone()
        return tuple(row) if row else None  # type: ignore[return-value]

    def input_paths(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT path FROM inputs ORDER BY path")]

    def replace_input(
        self,
        path: str,
        *,
        size: int,
        mtime_ns: int,
        sha256: str,
        defaults: str,
        rows: Iterable[tuple[Any, ...]],
        before: sqlite3.Connection,
    ) -> None:
        """Make an input's requests these rows (RequestRow field order, minus path).

        Writes only what differs from the rows the snapshot `before` holds at each ordinal:
        an edited line rewrites its row, lines that only moved (a longer line before them)
        are shifted by one UPDATE per run, and unchanged rows are not touched. rows must
        come in ordinal order, from 0. A `Kept` in place of a row says the earlier row at
        its ordinal stands, maybe moved: the source knows it, so that row is not even read.
        """
        old = _RowsAt(before, path)
        writer = _RowWriter(self.db, path)
        count = 0
        for row in rows:
            count += 1
            if type(row) is Kept:
                if row.lines or row.offset:
                    writer.shift(count - 1, row.lines, row.offset)
                else:
                    writer.keep()
                continue
            writer.write(row[0], row, old.get(row[0]))
        writer.close()
        self.db.execute("DELETE FROM requests WHERE path=? AND ordinal>=?", (path, count))
        # Rows written without their chunks: any recorded ones no longer describe them.
        self.db.execute("DELETE FROM input_chunks WHERE path=?", (path,))
        self.db.execute(
            "INSERT OR REPLACE INTO inputs(path, size, mtime_ns, sha256, defaults, requests,"
            " synced_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (path, size, mtime_ns, sha256, defaults, count, time.time()),
        )

    def rename_input(self, old: str, new: str) -> None:
        """Record an input's rows, chunks and template as a new path's (it moved there)."""
        for table in ("requests", "input_chunks", "inputs"):
            self.db.execute(f"UPDATE {table} SET path=? WHERE path=?", (new, old))
        self.db.execute("UPDATE meta SET key=? WHERE key=?", (f"template:{new}", f"template:{old}"))

    def touch_input(self, path: str, *, size: int, mtime_ns: int) -> None:
        """Record a new stat for an input whose content hash did not change."""
        self.db.execute("UPDATE inputs SET size=?, mtime_ns=? WHERE path=?", (size, mtime_ns, path))

    def forget_inputs(self, keep: Iterable[str]) -> list[str]:
        """Drop inputs no longer declared; return their paths."""
        keep = set(keep)
        gone = [p for p in self.input_paths() if p not in keep]
        for path in gone:
            self.db.execute("DELETE FROM requests WHERE path=?", (path,))
            self.db.execute("DELETE FROM inputs WHERE path=?", (path,))
            self.db.execute("DELETE FROM input_chunks WHERE path=?", (path,))
        return gone

    def known_estimates(self, keys: Iterable[str]) -> dict[str, tuple[int, int, int, float | None]]:
        """key -> (tokens, nbytes, inputs, cost) for keys already estimated."""
        out: dict[str, tuple[int, int, int, float | None]] = {}
        keys = sorted(keys)  # in key order, chunk after chunk (see result_states)
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for row in self.db.execute(
                f"SELECT key, tokens, nbytes, inputs, cost FROM requests WHERE key IN ({marks})",
                chunk,
            ):
                out[row[0]] = (row[1], row[2], row[3], row[4])
        return out

    def duplicate_custom_ids(
        self,
        paths: Iterable[str] | None = None,
        *,
        limit: int = 50,
        ranges: dict[str, list[tuple[int, int]]] | None = None,
        order: Sequence[str] = (),
    ) -> tuple[list[tuple[str, str, int, str, int]], int]:
        """(custom_id, path_a, line_a, path_b, line_b) for custom_ids used in two inputs, the
        first `limit` of them in order, and how many there are in all.

        One input's own duplicates are found as it is read. With paths, only pairs with a
        request of those inputs (the ones just read): the others were checked when their
        inputs were read. ranges: for an input synced by its chunks, the ordinals (first,
        last) of the rows it read; its other rows are as they were (checked then).
        """
        rank = {path: i for i, path in enumerate(order)}  # the config's order, as validate reads
        inputs = self.input_paths()
        if len(inputs) < 2:
            return [], 0
        if paths is None:
            paths = inputs
        pairs: set[tuple[int, str, str, int, int, int, str, int, int]] = set()
        sql = (
            "SELECT b.custom_id, a.path, a.ordinal, a.line, b.path, b.ordinal, b.line"
            " FROM requests b JOIN requests a ON a.custom_id=b.custom_id AND a.path<>b.path"
            " WHERE b.path=?"
        )
        for path in paths:
            spans = (ranges or {}).get(path)
            queries = (
                [(sql, (path,))]
                if spans is None
                else [(sql + " AND b.ordinal BETWEEN ? AND ?", (path, *s)) for s in spans]
            )
            for query, params in queries:
                for cid, pa, oa, la, pb, ob, lb in self.db.execute(query, params):
                    first, second = sorted(
                        [
                            (rank.get(pa, len(rank)), pa, oa, la),
                            (rank.get(pb, len(rank)), pb, ob, lb),
                        ]
                    )
                    pairs.add((second[0], cid, *first[1:], *second[1:]))
        # in the order a read of the inputs meets the second of each pair
        shown = sorted(pairs, key=lambda p: (p[0], p[6], p[7]))[:limit]
        return [(c, pa, la, pb, lb) for _, c, pa, _, la, pb, _, lb in shown], len(pairs)

    def models(self) -> list[str | None]:
        """The models current requests use."""
        return [r[0] for r in self.db.execute("SELECT DISTINCT model FROM requests")]

    def open_models(self) -> list[str | None]:
        """The models of current requests with no final result (through their small index:
        after an edit, a handful of rows rather than every request)."""
        return [r[0] for r in self.db.execute("SELECT DISTINCT model FROM requests WHERE done=0")]

    def requests_over(self, model: str | None, tokens: int) -> list[RequestRow]:
        """A model's current requests with more estimated tokens than this and no final result."""
        cur = self.db.execute(
            f"SELECT {REQUEST_SELECT}"
            " FROM requests r WHERE r.done=0 AND r.model IS ? AND r.tokens > ?"
            " ORDER BY r.path, r.ordinal",
            (model, tokens),
        )
        return [RequestRow(*row) for row in cur]

    def stated_limits(self) -> list[tuple[str, str]]:
        """Queue limits the API stated in refusals, as (meta key, value)."""
        return list(
            self.db.execute("SELECT key, value FROM meta WHERE key LIKE 'stated:%' ORDER BY key")
        )

    def requests_of(self, path: str) -> Iterator[RequestRow]:
        """An input's current requests, in input order."""
        cur = self.db.execute(
            f"SELECT {REQUEST_SELECT} FROM requests r WHERE r.path=? ORDER BY r.ordinal",
            (path,),
        )
        for row in cur:
            yield RequestRow(*row)

    # An input's request with this custom_id, as a snapshot saw it.
    previous_row = staticmethod(previous_row)

    @staticmethod
    def previous_rows(reader: sqlite3.Connection, path: str) -> PreviousRows:
        """A lookup of an input's earlier rows, cheap when the file kept its order."""
        return PreviousRows(reader, path)

    def pending_requests(self) -> Iterator[RequestRow]:
        """Current requests with no final result and not reserved by an active shard.

        Streams from a second connection's snapshot (WAL), so the caller can write shards
        while iterating without holding every pending request in memory.
        """
        with self.snapshot() as reader:
            yield from self._pending(reader)

    def _open_requests(self, db: sqlite3.Connection, columns: str) -> tuple[str, list[str]]:
        """SQL (and parameters) selecting columns of the pending, unpacked requests (alias r):
        those with no final result, and those this run sends again (resend).

        The resend part is added only while the set is not empty, so every other build
        reads the open rows through their own small index, in order.
        """
        scope, params = self._scope_sql()
        free = (
            " AND NOT EXISTS (SELECT 1 FROM members m JOIN shards h ON h.id=m.shard"
            f"   WHERE m.key=r.key AND h.state IN {ACTIVE_SHARD_STATES!r})"
        )
        sql = f"SELECT {columns} FROM requests r WHERE r.done=0{scope}{free}"
        if db.execute("SELECT 1 FROM resend LIMIT 1").fetchone() is None:
            return sql, params
        return (
            f"{sql} UNION ALL SELECT {columns} FROM resend f JOIN requests r ON r.key=f.key"
            f" WHERE r.done<>0{scope}{free}",
            params + params,
        )

    def _pending(self, db: sqlite3.Connection, limit: int = -1) -> Iterator[RequestRow]:
        sql, params = self._open_requests(db, REQUEST_SELECT)
        cur = db.execute(f"SELECT * FROM ({sql}) ORDER BY path, ordinal LIMIT ?", (*params, limit))
        # custom_ids are unique across inputs, so keys are too
        yield from starmap(RequestRow, stream_rows(cur))

    def pending_totals(self) -> dict[tuple[str | None, str], int]:
        """Estimated tokens of the pending, unpacked requests per (model, url)."""
        sql, params = self._open_requests(self.db, "r.model, r.url, r.tokens")
        cur = self.db.execute(
            f"SELECT model, url, sum(tokens) FROM ({sql}) GROUP BY model, url", params
        )
        return {(model, url): int(total or 0) for model, url, total in cur}

    def result_counts(self, path: str) -> dict[str, int]:
        """How many of an input's requests are ok, failed for good, or missing."""
        return self._cached(f"result_counts:{path}", lambda: self._result_counts(path))

    def _result_counts(self, path: str) -> dict[str, int]:
        # From the input's count and two partial indexes: no walk over its requests.
        total = self.db.execute("SELECT requests FROM inputs WHERE path=?", (path,)).fetchone()
        open_, failed = self.db.execute(
            "SELECT (SELECT count(*) FROM requests WHERE path=? AND done=0),"
            " (SELECT count(*) FROM requests WHERE path=? AND done=2)",
            (path, path),
        ).fetchone()
        ok = (total[0] if total else 0) - open_ - failed
        return {"ok": ok, "failed": failed, "missing": open_}

    def counts(self) -> dict[str, int]:
        """How many current requests are ok, failed, in an active shard, or pending."""
        return self._cached(self._scoped("counts"), self._counts)

    def _counts(self) -> dict[str, int]:
        scope, params = self._scope_sql()
        # From each input's count and two partial indexes: no walk over every request.
        total, open_, failed = self.db.execute(
            f"SELECT (SELECT coalesce(sum(requests), 0) FROM inputs r WHERE 1{scope}),"
            f" (SELECT count(*) FROM requests r WHERE r.done=0{scope}),"
            f" (SELECT count(*) FROM requests r WHERE r.done=2{scope})",
            params * 3,
        ).fetchone()
        ok = total - open_ - failed
        active = self.db.execute(
            "SELECT count(DISTINCT r.key) FROM requests r WHERE r.done=0"
            " AND EXISTS (SELECT 1 FROM members m JOIN shards h ON h.id=m.shard"
            f"   WHERE m.key=r.key AND h.state IN {ACTIVE_SHARD_STATES!r}){scope}",
            params,
        ).fetchone()[0]
        return {
            "total": total,
            "ok": ok,
            "failed": failed,
            "in_shards": active,
            "pending": total - ok - failed - active,
        }

    def resend_left(self) -> int:
        """Requests with a result that this run (-B, --retry-failed) has yet to replace."""
        if self.db.execute("SELECT 1 FROM resend LIMIT 1").fetchone() is None:
            return 0  # nearly always: no join (which may walk every request) to find none
        scope, params = self._scope_sql()
        return self.db.execute(
            f"SELECT count(*) FROM resend f JOIN requests r ON r.key=f.key WHERE r.done<>0{scope}",
            params,
        ).fetchone()[0]

    def locate(self, key: str) -> RequestRow | None:
        """The first current request line with this key, if any."""
        row = self.db.execute(
            f"SELECT {REQUEST_SELECT} FROM requests r WHERE r.key=? ORDER BY r.path, r.ordinal"
            " LIMIT 1",
            (key,),
        ).fetchone()
        return RequestRow(*row) if row else None

    def has_key_prefix(self, prefix: str) -> bool:
        """Is any current request's content key prefixed so (prefix: lowercase hex)?"""
        if not prefix or any(c not in "0123456789abcdef" for c in prefix):
            return False
        row = self.db.execute(
            "SELECT 1 FROM requests WHERE key >= ? AND key < ? LIMIT 1", (prefix, prefix + "g")
        ).fetchone()
        return row is not None

    def is_current(self, key: str) -> bool:
        return (
            self.db.execute("SELECT 1 FROM requests WHERE key=? LIMIT 1", (key,)).fetchone()
            is not None
        )

    def has_open_work(self) -> bool:
        """Is any current request without a final result, or any shard active?"""
        return (
            self.db.execute(
                "SELECT EXISTS (SELECT 1 FROM requests WHERE done=0)"
                f" OR EXISTS (SELECT 1 FROM shards WHERE state IN {ACTIVE_SHARD_STATES!r})"
            ).fetchone()[0]
            == 1
        )

    def has_requests(self) -> bool:
        """Does the state know any current request?"""
        return self.db.execute("SELECT 1 FROM requests LIMIT 1").fetchone() is not None
