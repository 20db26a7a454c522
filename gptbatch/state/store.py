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
        return self._cached(
            self._scoped("pending"),
            lambda: next(self._pending(self.db, limit=1), None) is not None,
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
