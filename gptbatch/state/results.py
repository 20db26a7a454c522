"""Result rows and outcomes: compressed lines, final results kept, resends, output reads."""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Collection, Iterable, Iterator
from operator import itemgetter
from typing import Any

from gptbatch.errors import StateError
from gptbatch.state.base import StoreBase
from gptbatch.state.db import stream_rows
from gptbatch.state.lines import (
    ZDICT_MAX,
    ZDICT_META,
    pack_line,
    unpack_bytes,
    unpack_line,
    zline_dictionary_id,
)
from gptbatch.state.rows import (
    FINAL_RESULT_STATES,
    IN_FLIGHT_SHARD_STATES,
    REQUEST_SELECT,
    RequestRow,
    ResultRow,
)

# A request's `done` for its result's state (m004): 1 ok, 2 failed for good, 0 to retry.
_DONE = {"ok": 1, "failed": 2}


def _by_key(item: tuple[int, tuple[Any, ...]]) -> str:
    """A (version, row) pair's key."""
    return item[1][0]  # type: ignore[no-any-return]


class _Packer:
    """A row's line as stored: text is packed here; a line packed already (bytes, by the
    collector's read-ahead worker) must be packed against this same dictionary."""

    def __init__(self, zdict: bytes | None) -> None:
        self.zdict = zdict
        self.wanted = None if zdict is None else zlib.adler32(zdict)

    def __call__(self, line: str | bytes | None) -> bytes | None:
        if not isinstance(line, bytes):
            return pack_line(line, self.zdict)
        if self.wanted is None or zline_dictionary_id(line) != self.wanted:
            raise StateError(
                "a result line was packed against another dictionary than the state's: "
                "nothing was recorded; run `gptbatch build` again"
            )
        return line


class ResultsMixin(StoreBase):
    """The Store's results (one row per request key) and what output files are read from."""

    def result(self, key: str) -> ResultRow | None:
        row = self.db.execute(
            "SELECT key, state, attempts, line, error, batch_id, zline FROM results WHERE key=?",
            (key,),
        ).fetchone()
        if not row:
            return None
        return ResultRow(*row[:3], self.unpack(row[3], row[6]), *row[4:6])

    def result_states(self, keys: Iterable[str]) -> dict[str, tuple[str, int]]:
        """key -> (state, attempts) of the keys that have a result."""
        out: dict[str, tuple[str, int]] = {}
        # Looked up in key order: each chunk's keys then lie next to the last chunk's in the
        # key index (a batch's members at random took twice as long at 1M results).
        keys = sorted(keys)
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for key, state, attempts in self.db.execute(
                f"SELECT key, state, attempts FROM results WHERE key IN ({marks})", chunk
            ):
                out[key] = (state, attempts)
        return out

    def write_results(
        self,
        rows: Iterable[tuple[str, str, int, str | bytes | None, str | None, str | None]],
        *,
        stored: Collection[str] | None = None,
    ) -> None:
        """Write (key, state, attempts, line, error, batch_id) rows, a statement per kind.

        The caller has checked that none of these keys holds a final result; a key's earlier
        row (a retry) is replaced. Each row gets the next version of the results counter
        (unique, and greater than every version before: outputs copy a line whose version
        they wrote before), the counter moves past them and the requests of these keys take
        their outcome, a statement each for the whole batch (m011: no per-row triggers).
        stored: the keys known to have a row already (else they are looked up); a key
        missing from it that has one fails the write (OR FAIL), it is never lost.
        """
        now = time.time()
        rows = list(rows)
        if not rows:
            return
        with self.transaction():  # atomic even for a caller outside one (record_result)
            zdict = self._dictionary(next((r[3] for r in rows if isinstance(r[3], str)), None))
            if stored is None:
                earlier = set(self.result_states(r[0] for r in rows))
            else:
                earlier = {r[0] for r in rows if r[0] in stored}
            base = self.db.execute("SELECT value FROM counters WHERE name='results'").fetchone()[0]
            sql = (
                "INTO results(key, state, attempts, line, zline, error, batch_id, updated_at,"
                " version) VALUES (?, ?, ?, NULL, ?, ?, ?, ?, ?)"
            )
            # Keys with no row yet (nearly all) go in with OR FAIL: REPLACE, or the default
            # ABORT, keeps a statement journal (each row's pages copied to a temp file), and
            # any error here rolls the whole transaction back anyway.
            fresh, again = [], []
            for version, row in enumerate(rows, base + 1):
                (again if row[0] in earlier else fresh).append((version, row))
                earlier.add(row[0])  # given twice: the later one replaces the first
            # Written in key order (stable: a key given twice keeps its order): the results'
            # and requests' key indexes are then walked once, page after page, instead of
            # at random (a quarter of the time of recording a batch at a million requests).
            fresh.sort(key=_by_key)
            again.sort(key=_by_key)
            packed = _Packer(zdict)
            for verb, batch in (("INSERT OR FAIL", fresh), ("INSERT OR REPLACE", again)):
                self.db.executemany(
                    f"{verb} {sql}",
                    ((k, st, n, packed(ln), err, b, now, v) for v, (k, st, n, ln, err, b) in batch),
                )
            self.db.execute("UPDATE counters SET value=value+? WHERE name='results'", (len(rows),))
            # In key order, stable: a key given twice ends with its later outcome, as its
            # result does.
            self.db.executemany(
                "UPDATE requests SET done=?, result_version=? WHERE key=?",
                sorted(
                    ((_DONE.get(r[1], 0), v, r[0]) for v, r in enumerate(rows, base + 1)),
                    key=itemgetter(2),
                ),
            )

    def result_dictionary(self) -> bytes | None:
        """The preset dictionary result lines are packed against now (None: none chosen yet)."""
        text = self.get_meta(ZDICT_META)
        return None if text is None else text.encode("utf-8")

    def _dictionary(self, sample: str | None) -> bytes | None:
        """The preset dictionary to compress result lines with; the first sample becomes it.

        Read from meta on every write (never trusted from memory), so a rolled-back
        transaction that chose it cannot leave lines compressed against a lost dictionary.
        """
        text = self.get_meta(ZDICT_META)
        if text is None:
            if sample is None:
                return None
            text = sample.encode("utf-8")[-ZDICT_MAX:].decode("utf-8", "ignore")
            self.set_meta(ZDICT_META, text)
        return text.encode("utf-8")

    def unpack(self, line: str | None, zline: bytes | None) -> str | None:
        """A stored result line as text, whichever way it was stored."""
        return unpack_line(line, zline, self._zdict_of(zline))

    def unpack_bytes(self, line: str | None, zline: bytes | None) -> bytes | None:
        """A stored result line as UTF-8, whichever way it was stored."""
        return unpack_bytes(line, zline, self._zdict_of(zline))

    def _zdict_of(self, zline: bytes | None) -> bytes | None:
        """The preset dictionary a stored line was compressed against (None: none)."""
        wanted = None if zline is None else zline_dictionary_id(zline)
        if wanted is None:
            return None
        zdict = self._zdicts.get(wanted)
        if zdict is None:
            text = self.get_meta(ZDICT_META)
            zdict = text.encode("utf-8") if text is not None else b""
            if zlib.adler32(zdict) != wanted:
                raise StateError(
                    f"{self.path}: a stored result needs a compression dictionary the state "
                    f"no longer holds: move it aside (mv {self.path.parent} "
                    f"{self.path.parent}.broken) and run again; gptbatch then adopts its "
                    "batches from the API by their metadata instead of paying twice"
                )
            self._zdicts[wanted] = zdict
        return zdict

    def record_result(
        self,
        key: str,
        *,
        state: str,
        line: str | None = None,
        error: str | None = None,
        batch_id: str | None = None,
        attempt: bool = True,
    ) -> ResultRow:
        """Record an outcome for a key; a final result is never overwritten by a later one."""
        old = self.result(key)
        if old is not None and old.state in FINAL_RESULT_STATES:
            # A key sent again (-B) whose resend ended in what is not its replacement (a
            # rejected line, a request too large now): the old result stays, and this run
            # does not send it once more.
            self.db.execute("DELETE FROM resend WHERE key=?", (key,))
            return old
        attempts = (old.attempts if old else 0) + (1 if attempt else 0)
        self.write_results([(key, state, attempts, line, error, batch_id)])
        return ResultRow(key, state, attempts, line, error, batch_id)

    def settled_keys(self, keys: list[str]) -> set[str]:
        """Those of keys a build would leave alone, as is_settled says (one query for all)."""
        marks = ",".join("?" * len(keys))
        return {
            r[0]
            for r in self.db.execute(
                f"SELECT key FROM results WHERE key IN ({marks}) AND state IN ('ok', 'failed')"
                " UNION SELECT m.key FROM members m JOIN shards h ON h.id=m.shard"
                f" WHERE m.key IN ({marks}) AND h.state IN {IN_FLIGHT_SHARD_STATES!r}",
                (*keys, *keys),
            )
        }

    def is_settled(self, key: str) -> bool:
        """Would a build leave this request alone: a final result, or a shard at the API?"""
        row = self.db.execute(
            "SELECT 1 FROM results WHERE key=? AND state IN ('ok', 'failed')"
            " UNION ALL SELECT 1 FROM members m JOIN shards h ON h.id=m.shard"
            f" WHERE m.key=? AND h.state IN {IN_FLIGHT_SHARD_STATES!r} LIMIT 1",
            (key, key),
        ).fetchone()
        return row is not None

    def reset_results(self, paths: list[str], *, only_failed: bool) -> int:
        """Make these inputs' requests pending again (all, or those failed for good).

        The only way a final result is ever replaced: the user asked for it (build --force or
        --retry-failed). Attempts start again from zero.
        """
        marks = ",".join("?" * len(paths))
        states = "('failed')" if only_failed else "('ok', 'failed', 'retry')"
        cur = self.db.execute(
            f"UPDATE results SET state='retry', attempts=0, error='rebuild asked for'"
            f" WHERE state IN {states}"
            f" AND key IN (SELECT key FROM requests WHERE path IN ({marks}))",
            paths,
        )
        return cur.rowcount

    def begin_resend(self, paths: list[str] | None = None, *, only_failed: bool = False) -> int:
        """Start a run's resend set: these inputs' keys that hold a final result (only those
        failed for good with only_failed); None: empty it. Returns how many keys it holds.

        Results are not touched: each stays the output until the outcome of its resend
        replaces it (Outcomes). Every run starts a new set, so what a forced run did not get
        to send is up to date again for the next plain build. Keys already in a shard at the
        API are not packed again (their batch's outcome replaces the result).
        """
        if self.db.execute("SELECT 1 FROM resend LIMIT 1").fetchone() is not None:
            self.db.execute("DELETE FROM resend")
        if not paths:
            return 0
        marks = ",".join("?" * len(paths))
        done = "r.done=2" if only_failed else "r.done<>0"
        return self.db.execute(
            f"INSERT OR IGNORE INTO resend(key) SELECT r.key FROM requests r"
            f" WHERE r.path IN ({marks}) AND {done}",
            paths,
        ).rowcount

    def resend_shard(self, shard_id: str) -> bool:
        """Was this shard packed with keys sent again (-B)? Its outcomes replace results."""
        row = self.db.execute("SELECT 1 FROM resend_shards WHERE shard=?", (shard_id,)).fetchone()
        return row is not None

    def resend_done(self, keys: Iterable[str]) -> None:
        """These keys' resends ended (replaced, or given up on): not sent again this run."""
        self.db.executemany("DELETE FROM resend WHERE key=?", ((k,) for k in keys))

    def resend_retried(self, keys: Iterable[str], retries: int) -> None:
        """A resend came back retryable: the old result stays; send it again while the
        attempts last (as `retries` allows any request)."""
        keys = list(keys)
        self.db.executemany(
            "UPDATE resend SET attempts=attempts+1 WHERE key=?", ((k,) for k in keys)
        )
        self.db.executemany(
            "DELETE FROM resend WHERE key=? AND attempts>?", ((k, retries) for k in keys)
        )

    def ok_lines_after(self, rowid: int) -> Iterator[tuple[int, str]]:
        """(rowid, line) of successful results recorded after rowid, in record order."""
        cur = self.db.execute(
            "SELECT rowid, line, zline FROM results WHERE rowid > ? AND state='ok'"
            " AND (line IS NOT NULL OR zline IS NOT NULL) ORDER BY rowid",
            (rowid,),
        )
        for rowid_, line, zline in cur:
            yield rowid_, self.unpack(line, zline)  # type: ignore[misc]

    def last_result_rowid(self) -> int:
        return self.db.execute("SELECT coalesce(max(rowid), 0) FROM results").fetchone()[0]

    def request_results(
        self, path: str, *, open_only: bool = False
    ) -> Iterator[tuple[RequestRow, ResultRow | None]]:
        """An input's current requests in input order, each with its result if any.

        open_only: only those without a final result (ok or failed), through their own
        small index: what is pending, not a walk over every request.
        """
        cur = self.db.execute(
            f"SELECT {REQUEST_SELECT},"
            " s.key, s.state, s.attempts, s.line, s.error, s.batch_id, s.zline"
            " FROM requests r LEFT JOIN results s ON s.key=r.key"
            f" WHERE r.path=?{' AND r.done=0' if open_only else ''} ORDER BY r.ordinal",
            (path,),
        )
        for row in cur:
            result = None
            if row[14]:
                k, state, attempts, line, error, batch, zline = row[14:]
                result = ResultRow(k, state, attempts, self.unpack(line, zline), error, batch)
            yield RequestRow(*row[:14]), result

    def request_result(self, path: str, ordinal: int) -> tuple[RequestRow, ResultRow | None]:
        """One request of an input, with its result if any."""
        row = self.db.execute(
            f"SELECT {REQUEST_SELECT},"
            " s.key, s.state, s.attempts, s.line, s.error, s.batch_id, s.zline"
            " FROM requests r LEFT JOIN results s ON s.key=r.key"
            " WHERE r.path=? AND r.ordinal=?",
            (path, ordinal),
        ).fetchone()
        result = None
        if row[14]:
            k, state, attempts, line, error, batch, zline = row[14:]
            result = ResultRow(k, state, attempts, self.unpack(line, zline), error, batch)
        return RequestRow(*row[:14]), result

    def output_rows(
        self, path: str, *, lines: bool, start: int | None = None, stop: int | None = None
    ) -> Iterator[tuple[int, int, int | None, str, bytes | None]]:
        """(ordinal, done, result_version, key, line) of an input's requests, in input order
        (those with ordinals in [start, stop) if given).

        With lines, ok rows (done=1) come with their result line as UTF-8 (one join for the
        whole input); without, line is None and `result_line` fetches the ones needed, so a
        rewrite that copies most lines from the last output reads no result at all.
        """
        bounds = [b for b in (start, stop) if b is not None]
        within = (" AND r.ordinal>=?" if start is not None else "") + (
            " AND r.ordinal<?" if stop is not None else ""
        )
        if not lines:
            for ordinal, done, version, key in self.db.execute(
                f"SELECT ordinal, done, result_version, key FROM requests r WHERE path=?{within}"
                " ORDER BY ordinal",
                (path, *bounds),
            ):
                yield ordinal, done, version, key, None
            return
        # Joined by version (m014): a result whose version is unknown (NULL after an
        # UPDATE) is not found so, and is read by its key. The unary + keeps SQLite on the
        # version index: with s.key=r.key it took the key's (6 s against 2.5 s at 1M).
        cur = self.db.execute(
            "SELECT r.ordinal, r.done, r.result_version, r.key, s.line, s.zline"
            " FROM requests r LEFT JOIN results s"
            " ON r.done=1 AND s.version=r.result_version AND +s.key=r.key"
            f" WHERE r.path=?{within} ORDER BY r.ordinal",
            (path, *bounds),
        )
        for ordinal, done, version, key, line, zline in stream_rows(cur):
            if done == 1 and line is None and zline is None:
                yield ordinal, done, version, key, self.result_line(key)
                continue
            yield ordinal, done, version, key, self.unpack_bytes(line, zline)

    def input_requests(self, path: str) -> int:
        """How many requests an input has (as its last read counted them)."""
        row = self.db.execute("SELECT requests FROM inputs WHERE path=?", (path,)).fetchone()
        return int(row[0]) if row else 0

    def nth_ordinal(self, path: str, n: int) -> int | None:
        """The ordinal of an input's request number n (from 0) in input order."""
        row = self.db.execute(
            "SELECT ordinal FROM requests WHERE path=? ORDER BY ordinal LIMIT 1 OFFSET ?",
            (path, n),
        ).fetchone()
        return None if row is None else int(row[0])

    def table_rows(self, path: str) -> Iterator[tuple[int, str, str, int, int | None]]:
        """(ordinal, custom_id, key, done, result_version) of an input's requests, in input
        order: what an answers table needs to tell a row's answer changed, reading no result."""
        yield from self.db.execute(
            "SELECT ordinal, custom_id, key, done, result_version FROM requests WHERE path=?"
            " ORDER BY ordinal",
            (path,),
        )

    def result_line(self, key: str) -> bytes | None:
        """A key's stored result line as UTF-8, if it has one."""
        row = self.db.execute("SELECT line, zline FROM results WHERE key=?", (key,)).fetchone()
        return self.unpack_bytes(*row) if row else None

    def output_index(self, output: str) -> tuple[str, bytes] | None:
        """(stat, entries) recorded when an output file was last written."""
        row = self.db.execute(
            "SELECT stat, entries FROM output_index WHERE output=?", (output,)
        ).fetchone()
        return (row[0], row[1]) if row else None

    def output_stat(self, output: str) -> str | None:
        """The stat recorded when an output (or errors) file was last written (no entries)."""
        row = self.db.execute("SELECT stat FROM output_index WHERE output=?", (output,)).fetchone()
        return row[0] if row else None

    def set_output_stat(self, output: str, stat: str) -> None:
        """Record a new stat for an output file whose content did not change."""
        self.db.execute("UPDATE output_index SET stat=? WHERE output=?", (stat, output))

    def set_output_index(self, output: str, stat: str, entries: bytes) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO output_index(output, stat, entries) VALUES (?, ?, ?)",
            (output, stat, entries),
        )

    def outputs_fingerprint(self) -> str:
        """Changes whenever anything the output files are made of changes."""
        # what a build sends again (resend) is in no output until its result is
        results = [
            r[0]
            for r in self.db.execute(
                "SELECT value FROM counters WHERE name<>'resend' ORDER BY name"
            )
        ]
        inputs = list(self.db.execute("SELECT path, sha256, defaults FROM inputs ORDER BY path"))
        return json.dumps([list(results), inputs])
