"""Shards, their members and the remote batches made of them: life cycle, costs, gc."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from operator import itemgetter
from typing import Any

from gptbatch.state.base import StoreBase
from gptbatch.state.rows import REQUEST_SELECT, BatchRow, RequestRow, ShardRow


class ShardsMixin(StoreBase):
    """The Store's shards, members and batches tables."""

    def new_shard_id(self, key: str) -> str:
        """The shard key, made unique if an earlier shard had exactly the same members."""
        if not self.db.execute("SELECT 1 FROM shards WHERE id=?", (key,)).fetchone():
            return key
        n = 2
        while self.db.execute("SELECT 1 FROM shards WHERE id=?", (f"{key[:56]}-r{n}",)).fetchone():
            n += 1
        return f"{key[:56]}-r{n}"

    def add_shard(
        self,
        shard_id: str,
        *,
        model: str | None,
        url: str,
        members: list[tuple[str, str]],
        tokens: int,
        nbytes: int,
        cost: float | None,
        state: str = "ready",
        note: str | None = None,
    ) -> None:
        """Record a shard and its members (key, custom_id) in order."""
        now = time.time()
        self.db.execute(
            "INSERT INTO shards(id, model, url, requests, tokens, nbytes, cost, state,"
            " created_at, updated_at, note) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (shard_id, model, url, len(members), tokens, nbytes, cost, state, now, now, note),
        )
        # Inserted in key order (each keeps its ordinal, its upload position): the key index
        # is then written page after page, not at a random page per member.
        self.db.executemany(
            "INSERT INTO members(shard, ordinal, key, custom_id) VALUES (?, ?, ?, ?)",
            sorted(((shard_id, i, k, c) for i, (k, c) in enumerate(members)), key=itemgetter(2)),
        )
        # Packed now (not recovered from the API): of a forced run? (A walk of the members
        # only while a forced run's set is not empty.)
        resending = self.db.execute("SELECT 1 FROM resend LIMIT 1").fetchone() is not None
        if state == "ready" and resending:
            self.db.execute(
                "INSERT OR IGNORE INTO resend_shards(shard) SELECT ?1 WHERE EXISTS (SELECT 1"
                " FROM members m JOIN resend f ON f.key=m.key WHERE m.shard=?1)",
                (shard_id,),
            )

    def update_shard(self, shard_id: str, **fields: Any) -> None:
        fields["updated_at"] = time.time()
        cols = ", ".join(f"{k}=?" for k in fields)
        self.db.execute(f"UPDATE shards SET {cols} WHERE id=?", (*fields.values(), shard_id))

    def shard(self, shard_id: str) -> ShardRow | None:
        row = self.db.execute("SELECT * FROM shards WHERE id=?", (shard_id,)).fetchone()
        return ShardRow(*row) if row else None

    def shards(self, states: Iterable[str] | None = None) -> list[ShardRow]:
        if states is None:
            cur = self.db.execute("SELECT * FROM shards ORDER BY created_at, id")
        else:
            states = tuple(states)
            marks = ",".join("?" * len(states))
            cur = self.db.execute(
                f"SELECT * FROM shards WHERE state IN ({marks}) ORDER BY created_at, id", states
            )
        return [ShardRow(*r) for r in cur]

    def members(self, shard_id: str) -> list[tuple[str, str]]:
        """(key, custom_id) of a shard's requests, in upload order."""
        return [
            (r[0], r[1])
            for r in self.db.execute(
                "SELECT key, custom_id FROM members WHERE shard=? ORDER BY ordinal", (shard_id,)
            )
        ]

    def member_requests(self, shard_id: str) -> Iterator[tuple[str, RequestRow | None]]:
        """(key, the first current request with that key or None) per member, in upload order."""
        return member_requests(self.db, shard_id)

    def release_members(self, shard_id: str) -> int:
        """Forget a finished shard's members once every batch of it is collected.

        Only shards at the API (active states) hold their requests back; a done shard's
        member list is needed again only to collect a batch of it, so it goes when the last
        one is collected (a third of a 100k state). A batch of it found later (a duplicate
        adopted from the API) names its requests in its own input file.
        """
        return self.db.execute(
            "DELETE FROM members WHERE shard=?1"
            " AND EXISTS (SELECT 1 FROM shards WHERE id=?1 AND state='done')"
            " AND NOT EXISTS (SELECT 1 FROM batches WHERE shard=?1 AND collected=0)",
            (shard_id,),
        ).rowcount

    def upsert_batch(
        self,
        batch_id: str,
        *,
        shard: str,
        status: str,
        input_file_id: str | None,
        output_file_id: str | None,
        error_file_id: str | None,
        created_at: int | None,
        info: dict[str, Any] | None = None,
    ) -> None:
        self.db.execute(
            "INSERT INTO batches(id, shard, status, input_file_id, output_file_id,"
            " error_file_id, created_at, info) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(id) DO UPDATE SET status=excluded.status,"
            " output_file_id=excluded.output_file_id, error_file_id=excluded.error_file_id,"
            " info=excluded.info",
            (
                batch_id,
                shard,
                status,
                input_file_id,
                output_file_id,
                error_file_id,
                created_at,
                json.dumps(info, sort_keys=True) if info is not None else None,
            ),
        )

    def batch(self, batch_id: str) -> BatchRow | None:
        row = self.db.execute("SELECT * FROM batches WHERE id=?", (batch_id,)).fetchone()
        return BatchRow(*row[:7], bool(row[7]), row[8]) if row else None

    def batches(self) -> list[BatchRow]:
        return [
            BatchRow(*r[:7], bool(r[7]), r[8])
            for r in self.db.execute("SELECT * FROM batches ORDER BY created_at, id")
        ]

    def mark_collected(self, batch_id: str) -> None:
        self.db.execute("UPDATE batches SET collected=1 WHERE id=?", (batch_id,))

    def shard_cost(self, shard_id: str) -> float | None:
        """Estimated cost of a shard from its requests' current estimates (None: unknown)."""
        total, priced, cost = self.db.execute(
            "SELECT count(*), count(c), sum(c) FROM (SELECT"
            " (SELECT max(r.cost) FROM requests r WHERE r.key=m.key) AS c"
            " FROM members m WHERE m.shard=?)",
            (shard_id,),
        ).fetchone()
        return float(cost or 0.0) if total == priced else None

    def committed_unpriced(self) -> bool:
        """Did a shard of a model with no known price reach the API?"""
        row = self.db.execute(
            "SELECT 1 FROM shards WHERE state IN ('submitting', 'submitted', 'done')"
            " AND cost IS NULL LIMIT 1"
        ).fetchone()
        return row is not None

    def committed_cost(self, exclude: str | None = None) -> float:
        """Estimated cost of every shard that reached the API and was not refused outright."""
        row = self.db.execute(
            "SELECT sum(cost) FROM shards WHERE state IN ('submitting', 'submitted', 'done')"
            " AND id IS NOT ?",
            (exclude,),
        ).fetchone()
        return float(row[0] or 0.0)

    def set_batch_status(self, batch_id: str, status: str) -> None:
        """Record a batch's status as the API last reported it (e.g. after a cancel)."""
        self.db.execute("UPDATE batches SET status=? WHERE id=?", (status, batch_id))

    def uploaded_file_ids(self) -> list[str]:
        """Ids of every input file this state uploaded or adopted, oldest first."""
        return [
            r[0]
            for r in self.db.execute(
                "SELECT file_id FROM (SELECT file_id, created_at AS t FROM shards"
                " WHERE file_id IS NOT NULL UNION SELECT input_file_id, created_at FROM batches"
                " WHERE input_file_id IS NOT NULL) GROUP BY file_id ORDER BY min(t), file_id"
            )
        ]

    def shard_ids(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT id FROM shards ORDER BY id")]

    def drop_unneeded_shards(self) -> list[tuple[str, str]]:
        """Drop unsent shards this run must not send; return (id, why) of each.

        Those holding a request whose final result nothing asks to replace (packed by a
        forced run that stopped early), and in a subset build those holding a request of
        another input. Their other requests are packed again; nothing of a dropped shard
        reached the API.
        """
        found = self._unneeded("h.state IN ('ready', 'uploading', 'uploaded', 'waiting')")
        for sid, why in found:
            self.update_shard(sid, state="dropped", note=f"not sent: {why}")
        return found

    def unneeded_reason(self, shard_id: str) -> str | None:
        """Why this run must not send this shard (as drop_unneeded_shards), or None.

        For a shard left in `submitting` once the API's list shows its create never
        happened: a forced run killed before its create leaves requests up to date.
        """
        found = self._unneeded("h.id = ?", (shard_id,))
        return found[0][1] if found else None

    def left_by_forced_run(self) -> set[str]:
        """Unsent shards a plain build would drop: they hold a request with a final result.

        Only a -B or --retry-failed run that stopped before sending them packs such shards;
        the next plain build starts an empty resend set, so it never sends them.
        """
        return {
            r[0]
            for r in self.db.execute(
                "SELECT h.id FROM shards h"
                " WHERE h.state IN ('ready', 'uploading', 'uploaded', 'waiting')"
                " AND EXISTS (SELECT 1 FROM members m JOIN results s ON s.key=m.key"
                "   WHERE m.shard=h.id AND s.state IN ('ok', 'failed'))"
            )
        }

    def _unneeded(self, where: str, args: tuple[Any, ...] = ()) -> list[tuple[str, str]]:
        """(id, why) of the shards matching `where` that this run must not send."""
        scope, params = self._scope_sql()
        found = [
            (r[0], "results up to date")
            for r in self.db.execute(
                f"SELECT h.id FROM shards h WHERE {where}"
                " AND EXISTS (SELECT 1 FROM members m JOIN results s ON s.key=m.key"
                "   WHERE m.shard=h.id AND s.state IN ('ok', 'failed')"
                "   AND NOT EXISTS (SELECT 1 FROM resend f WHERE f.key=m.key))"
                " ORDER BY h.created_at, h.id",
                args,
            )
        ]
        if scope:
            found += [
                (r[0], "holds requests of inputs this subset build leaves alone")
                for r in self.db.execute(
                    f"SELECT h.id FROM shards h WHERE {where}"
                    " AND EXISTS (SELECT 1 FROM members m WHERE m.shard=h.id"
                    f"   AND NOT EXISTS (SELECT 1 FROM requests r WHERE r.key=m.key{scope}))"
                    " ORDER BY h.created_at, h.id",
                    (*args, *params),
                )
                if r[0] not in {sid for sid, _ in found}
            ]
        return found

    def drop_unreferenced(self, keep: Iterable[str] = ()) -> dict[str, Any]:
        """Delete results of keys that are neither current requests nor in keep, and the
        finished shards (with members and batches) that hold only such keys; one transaction.

        Returns the counts deleted and the ids of the shards dropped.
        """
        db = self.db
        with self.transaction():
            db.execute("CREATE TEMP TABLE IF NOT EXISTS gc_keep(key TEXT PRIMARY KEY)")
            db.execute("DELETE FROM gc_keep")
            db.execute("INSERT OR IGNORE INTO gc_keep(key) SELECT key FROM requests")
            db.executemany("INSERT OR IGNORE INTO gc_keep(key) VALUES (?)", ((k,) for k in keep))
            shards = [
                r[0]
                for r in db.execute(
                    "SELECT id FROM shards h WHERE h.state IN ('done', 'dropped')"
                    " AND NOT EXISTS (SELECT 1 FROM batches b WHERE b.shard=h.id"
                    "   AND b.collected=0)"
                    " AND NOT EXISTS (SELECT 1 FROM members m JOIN gc_keep k ON k.key=m.key"
                    "   WHERE m.shard=h.id)"
                    # a released shard (members forgotten once collected) is kept: its
                    # batch rows stop the next reconcile from adopting its batches again
                    " AND EXISTS (SELECT 1 FROM members m WHERE m.shard=h.id)"
                    " ORDER BY id"
                )
            ]
            counts = {"results": 0, "shards": len(shards), "members": 0, "batches": 0}
            for sid in shards:
                for table, column in (
                    ("members", "shard"),
                    ("batches", "shard"),
                    ("resend_shards", "shard"),
                    ("shards", "id"),
                ):
                    gone = db.execute(f"DELETE FROM {table} WHERE {column}=?", (sid,)).rowcount
                    if table in ("members", "batches"):
                        counts[table] += gone
            counts["results"] = db.execute(
                "DELETE FROM results WHERE key NOT IN (SELECT key FROM gc_keep)"
            ).rowcount
            db.execute("DELETE FROM gc_keep")
        return {**counts, "shard_ids": shards}


def member_requests(
    db: sqlite3.Connection, shard_id: str
) -> Iterator[tuple[str, RequestRow | None]]:
    """ShardsMixin.member_requests on any connection to the state (a worker's own too)."""
    cur = db.execute(
        f"SELECT m.ordinal, m.key, {REQUEST_SELECT}"
        " FROM members m LEFT JOIN requests r ON r.key=m.key WHERE m.shard=?"
        " ORDER BY m.ordinal, r.path, r.ordinal",
        (shard_id,),
    )
    last = None
    for row in cur:
        if row[0] == last:
            continue
        last = row[0]
        yield row[1], (RequestRow(*row[2:]) if row[2] is not None else None)
