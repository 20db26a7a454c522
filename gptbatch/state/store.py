"""The build state's facade: `Store`, made of its parts (requests, results, shards).

One database per output directory, `<output_dir>/.gptbatch/state.db` (WAL). Every change that
must survive a crash happens inside one `transaction()`, so a kill -9 leaves either the old
state or the new one, never half of each. Locking is `gptbatch.state.lock`'s.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from gptbatch.state.chunks import ChunksMixin
from gptbatch.state.requests import RequestsMixin
from gptbatch.state.results import ResultsMixin
from gptbatch.state.shards import ShardsMixin

STATE_DIR_NAME = ".gptbatch"

# What a first read of requests into an empty table goes without until it ends: the indexes
# whose entries come in random order (content keys, custom_ids: each insert a page miss in
# an index larger than the cache; built afterwards by one sort), and the per-row triggers of
# an insert (the requests counter, and the outcome a row takes from an existing result),
# whose work is then done by a statement each for all the rows.
_DEFERRED = (
    ("index", "requests_key"),
    ("index", "requests_custom_id"),
    ("trigger", "requests_ins"),
    ("trigger", "requests_done_ins"),
)


def state_dir(output_dir: Path) -> Path:
    """Where the build state of an output directory lives (GPTBATCH_STATE_DIR overrides)."""
    override = os.environ.get("GPTBATCH_STATE_DIR")
    return Path(override) if override else output_dir / STATE_DIR_NAME


class Store(RequestsMixin, ChunksMixin, ResultsMixin, ShardsMixin):
    """The SQLite-backed build state of one output directory.

    Its methods live in the parts it is made of; here are those that span them.
    """

    def has_work_to_submit(self, besides: str | None = None) -> bool:
        """Is any shard not yet at the API, or any current request unbuilt and unpacked?

        besides: a shard id not to count (the one being sent: is more to follow it?).
        """
        unsent = self.shards(("ready", "uploading", "uploaded", "submitting", "waiting"))
        if any(s.id != besides for s in unsent):
            return True
        return self._cached(self._scoped("pending"), self._any_pending)

    def _any_pending(self) -> bool:
        """Is any current request unbuilt and unpacked?

        Looked for from the end of the inputs: plans pack requests in input order, so while
        shards are at the API the free ones come last, and a walk from the start passed
        every packed one first (0.7 s at 1M with 200k packed, before each shard was sent).
        """
        sql, params = self._open_requests(self.db, "r.path, r.ordinal")
        last = self.db.execute(
            f"SELECT 1 FROM ({sql}) ORDER BY path DESC, ordinal DESC LIMIT 1", params
        ).fetchone()
        return last is not None

    @contextlib.contextmanager
    def bulk_requests(self) -> Iterator[bool]:
        """Inside a transaction: if the requests table is empty, insert into it without the
        deferred indexes and triggers (_DEFERRED), whose effect is had at the end, exactly:
        the counter moves by the rows inserted (as one bump per row moved it), every row
        takes its key's outcome from results, and the indexes are built again as they were.
        Yields whether it is so (else rows are written one trigger at a time, as always).

        All of it is in the caller's transaction: a rollback restores what was dropped.
        """
        db = self.db
        assert db.in_transaction, "bulk_requests runs inside a transaction"
        names = [name for _, name in _DEFERRED]
        saved = db.execute(
            f"SELECT type, name, sql FROM sqlite_master WHERE name IN ({','.join('?' * 4)})"
            " ORDER BY type, name",
            names,
        ).fetchall()
        if len(saved) != len(_DEFERRED) or self.has_requests():
            yield False
            return
        for kind, name, _ in saved:
            db.execute(f"DROP {kind.upper()} {name}")
        try:
            yield True
        finally:
            # Not when SQLite ended the transaction itself (a full disk): then the drops are
            # undone with everything else, and the error raised is the one to tell.
            if db.in_transaction:
                for _, _, sql in saved:  # indexes first (by type): the outcomes need requests_key
                    db.execute(sql)
                db.execute(
                    "UPDATE counters SET value=value+(SELECT count(*) FROM requests)"
                    " WHERE name='requests'"
                )
                db.execute(
                    "UPDATE requests SET done=coalesce((SELECT CASE s.state WHEN 'ok' THEN 1"
                    " WHEN 'failed' THEN 2 ELSE 0 END FROM results s WHERE s.key=requests.key),"
                    " 0), result_version=(SELECT s.version FROM results s"
                    " WHERE s.key=requests.key) WHERE key IN (SELECT key FROM results)"
                )

    @contextlib.contextmanager
    def reading(self) -> Iterator[Store]:
        """A read transaction: every query inside sees one committed state (WAL snapshot)."""
        if self.db.in_transaction:
            yield self
            return
        self.db.execute("BEGIN")
        try:
            yield self
        finally:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")

    def project_ids(self) -> list[str]:
        """Every project id this state has built under (kept by build in meta `projects`)."""
        return sorted(json.loads(self.get_meta("projects") or "[]"))

    def vacuum(self) -> None:
        """Rewrite the database without free pages, and fold the WAL back into it."""
        self.db.execute("VACUUM")
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
