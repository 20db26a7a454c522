"""The open state database every part of the Store works on: connection, migrations,
transactions, meta and the answers cached in it, snapshots, and a subset build's scope."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gptbatch.errors import LocalIOError, StateError
from gptbatch.state.db import _Connection, _identity, _state_error
from gptbatch.state.migrations import migrate

# SQLite's page cache per connection, in KiB (negative: a size, not pages). The default
# 2 MiB holds a sliver of a 100k-request state's key indexes, so every write that looks a
# key up reads its pages again; 32 MiB halves the time to record a batch's results (and
# is only used as the state grows).
CACHE_SIZE = -32 * 1024
CACHE_AFTER_SECONDS = 0.05  # an answer computed faster is not worth a commit to remember


class StoreBase:
    """One output directory's state.db, opened and migrated; the parts of Store build on it."""

    def __init__(self, directory: Path, *, read_only: bool = False) -> None:
        """read_only: a reader beside the build that holds the state (a worker process
        writing part of an output): no migration, no write."""
        self.directory = directory
        self.path = directory / "state.db"
        self.created = not self.path.exists()
        try:
            if read_only:
                self.db = sqlite3.connect(
                    f"file:{self.path}?mode=ro",
                    uri=True,
                    isolation_level=None,
                    timeout=30,
                    factory=_Connection,
                )
            else:
                directory.mkdir(parents=True, exist_ok=True)
                self.db = sqlite3.connect(
                    self.path, isolation_level=None, timeout=30, factory=_Connection
                )
        except (OSError, sqlite3.Error) as exc:
            raise _state_error(self.path, exc) from exc
        self.db.path = self.path
        try:
            if not read_only:
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute(f"PRAGMA cache_size={CACHE_SIZE}")
            if not read_only:
                self._migrate()
        except BaseException:
            self.db.close()
            raise
        self._identity = _identity(self.path)
        self._zdicts: dict[int, bytes] = {}  # dictionaries read back, by adler32
        # The inputs a subset build (`build CONFIG INPUT`) works on; None: every input. The
        # other inputs keep their rows (they are not removed), but nothing of theirs is
        # pending for this run.
        self.scope: tuple[str, ...] | None = None

    def _migrate(self) -> None:
        # Read what is done inside the write transaction: a reader (`status`) may open the
        # database while a build is creating it.
        with self.transaction():
            migrate(self.db, self.path)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Run a block atomically (BEGIN IMMEDIATE ... COMMIT, ROLLBACK on error)."""
        if self.db.in_transaction:
            yield self.db
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            if self.db.in_transaction:  # SQLite may have rolled back already (a full disk)
                self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.db.close()

    def check_intact(self) -> None:
        """Raise StateError if state.db was deleted or replaced since it was opened."""
        if _identity(self.path) != self._identity:
            raise StateError(
                f"{self.path} was deleted or replaced while this build ran: stopping here. "
                "Batches in flight keep running; run `gptbatch build` again and it adopts "
                "them from the API (nothing is paid twice)"
            )

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def version(self) -> list[int]:
        """How often requests, results and shards were written (triggers count every row)."""
        return [r[0] for r in self.db.execute("SELECT value FROM counters ORDER BY name")]

    def _cached(self, name: str, compute: Callable[[], Any]) -> Any:
        """compute(), remembered in meta until a request, result or shard row changes.

        What a no-op build asks (counts, is anything pending) can scan many requests (all
        the open ones); the counters make the answer O(1) until something is written.
        """
        version = self.version()
        raw = self.get_meta(f"cache:{name}")
        if raw is not None:
            stored = json.loads(raw)
            if stored[0] == version:
                return stored[1]
        start = time.perf_counter()
        value = compute()
        # A commit costs more than an answer read from small indexes: only a slow one is kept.
        slow = time.perf_counter() - start > CACHE_AFTER_SECONDS
        if slow and not self.db.in_transaction:  # a reader's snapshot must not turn writer
            with contextlib.suppress(StateError, LocalIOError), self.transaction():
                self.set_meta(f"cache:{name}", json.dumps([version, value]))
        return value

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """A second connection reading the state as committed when it first reads (WAL)."""
        try:
            reader = sqlite3.connect(
                self.path, isolation_level=None, timeout=30, factory=_Connection
            )
        except sqlite3.Error as exc:
            raise _state_error(self.path, exc) from exc
        reader.path = self.path
        try:
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM meta").fetchone()  # pin the snapshot now
            yield reader
        finally:
            reader.close()

    def _scope_sql(self) -> tuple[str, list[str]]:
        """The condition limiting request rows (alias r) to a subset build's inputs."""
        if self.scope is None:
            return "", []
        return f" AND r.path IN ({','.join('?' * len(self.scope))})", list(self.scope)

    def _scoped(self, name: str) -> str:
        """A cached answer's name for this scope (a subset build's answers are its own)."""
        if self.scope is None:
            return name
        return f"{name}@{zlib.crc32(json.dumps(sorted(self.scope)).encode()):08x}"
