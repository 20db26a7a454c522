"""The build state: requests, shards, batches and results in SQLite, with locking.

One database per output directory, `<output_dir>/.gptbatch/state.db` (WAL). Every change that
must survive a crash happens inside one `transaction()`, so a kill -9 leaves either the old
state or the new one, never half of each.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from gptbatch.errors import LocalIOError, StateError

STATE_DIR_NAME = ".gptbatch"
SCHEMA_VERSION = 1

# Append-only, named migrations (as simonw/llm does): never edit one that has shipped.
MIGRATIONS: tuple[tuple[str, str], ...] = (
    (
        "m001_initial",
        """
        CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE inputs(
            path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, sha256 TEXT,
            defaults TEXT, requests INTEGER, synced_at REAL);
        CREATE TABLE requests(
            path TEXT NOT NULL, ordinal INTEGER NOT NULL, line INTEGER NOT NULL,
            offset INTEGER NOT NULL, length INTEGER NOT NULL, key TEXT NOT NULL,
            custom_id TEXT NOT NULL, model TEXT, url TEXT NOT NULL, tokens INTEGER NOT NULL,
            nbytes INTEGER NOT NULL, inputs INTEGER NOT NULL, cost REAL, reason TEXT,
            PRIMARY KEY(path, ordinal));
        CREATE INDEX requests_key ON requests(key);
        CREATE INDEX requests_custom_id ON requests(custom_id);
        CREATE TABLE results(
            key TEXT PRIMARY KEY, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
            line TEXT, error TEXT, batch_id TEXT, updated_at REAL);
        CREATE TABLE shards(
            id TEXT PRIMARY KEY, model TEXT, url TEXT NOT NULL, requests INTEGER NOT NULL,
            tokens INTEGER NOT NULL, nbytes INTEGER NOT NULL, cost REAL, state TEXT NOT NULL,
            file_id TEXT, batch_id TEXT, nonce TEXT, refusals INTEGER NOT NULL DEFAULT 0,
            not_before REAL NOT NULL DEFAULT 0, created_at REAL, updated_at REAL, note TEXT);
        CREATE INDEX shards_state ON shards(state);
        CREATE TABLE members(
            shard TEXT NOT NULL, ordinal INTEGER NOT NULL, key TEXT NOT NULL,
            custom_id TEXT NOT NULL, PRIMARY KEY(shard, ordinal));
        CREATE INDEX members_key ON members(key);
        CREATE INDEX members_custom_id ON members(shard, custom_id);
        CREATE TABLE batches(
            id TEXT PRIMARY KEY, shard TEXT NOT NULL, status TEXT NOT NULL,
            input_file_id TEXT, output_file_id TEXT, error_file_id TEXT, created_at INTEGER,
            collected INTEGER NOT NULL DEFAULT 0, info TEXT);
        CREATE INDEX batches_shard ON batches(shard);
        """,
    ),
    (
        # Counters bumped by triggers in the writing transaction, so cached answers keyed by
        # them stay exact across kills; result lines stored compressed (zline) from now on.
        "m002_counters_zline",
        """
        ALTER TABLE results ADD COLUMN zline BLOB;
        CREATE TABLE counters(name TEXT PRIMARY KEY, value INTEGER NOT NULL);
        INSERT INTO counters(name, value) VALUES ('requests', 0), ('results', 0), ('shards', 0);
        """
        + "".join(
            f"""
        CREATE TRIGGER {table}_{op[:3].lower()} AFTER {op} ON {table} BEGIN
            UPDATE counters SET value=value+1 WHERE name='{table}';
        END;"""
            for table in ("requests", "results", "shards")
            for op in ("INSERT", "UPDATE", "DELETE")
        ),
    ),
    (
        # A digest of each request line's raw bytes: a sync that finds the same bytes where
        # the walk expects them reuses the row without parsing the line again. Rows from
        # before hold NULL and are read in full once.
        "m003_request_digest",
        """
        ALTER TABLE requests ADD COLUMN digest BLOB;
        """,
    ),
    (
        # Each request row carries its key's outcome (done: 0 none yet or to retry, 1 ok,
        # 2 failed for good) and which write of that result it is (result_version), kept by
        # triggers in the writing transaction. The open rows have their own small index, so
        # what is pending is found in O(pending), not by joining every request with its
        # result; an output rewrite copies a line it wrote before when its request's
        # result_version is the same. A result's version is the results counter + 1 when
        # write_results inserted it (unique, never 0); an UPDATE makes it unknown (NULL);
        # results from before get -rowid (unique, and never a counter value).
        "m004_request_outcome",
        """
        ALTER TABLE results ADD COLUMN version INTEGER;
        UPDATE results SET version=-rowid;
        ALTER TABLE requests ADD COLUMN done INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE requests ADD COLUMN result_version INTEGER;
        UPDATE requests SET done=coalesce((SELECT CASE s.state WHEN 'ok' THEN 1
            WHEN 'failed' THEN 2 ELSE 0 END FROM results s WHERE s.key=requests.key), 0),
            result_version=(SELECT s.version FROM results s WHERE s.key=requests.key);
        CREATE INDEX requests_open ON requests(path, ordinal) WHERE done=0;
        CREATE TRIGGER requests_done_ins AFTER INSERT ON requests
        WHEN NEW.done IS NOT coalesce((SELECT CASE s.state WHEN 'ok' THEN 1
                WHEN 'failed' THEN 2 ELSE 0 END FROM results s WHERE s.key=NEW.key), 0)
            OR NEW.result_version IS NOT (SELECT s.version FROM results s WHERE s.key=NEW.key)
        BEGIN
            UPDATE requests SET done=coalesce((SELECT CASE s.state WHEN 'ok' THEN 1
                WHEN 'failed' THEN 2 ELSE 0 END FROM results s WHERE s.key=NEW.key), 0),
                result_version=(SELECT s.version FROM results s WHERE s.key=NEW.key)
            WHERE rowid=NEW.rowid;
        END;
        CREATE TRIGGER requests_done_key AFTER UPDATE OF key ON requests
        WHEN OLD.key IS NOT NEW.key
        BEGIN
            UPDATE requests SET done=coalesce((SELECT CASE s.state WHEN 'ok' THEN 1
                WHEN 'failed' THEN 2 ELSE 0 END FROM results s WHERE s.key=NEW.key), 0),
                result_version=(SELECT s.version FROM results s WHERE s.key=NEW.key)
            WHERE rowid=NEW.rowid;
        END;
        CREATE TRIGGER results_done_ins AFTER INSERT ON results BEGIN
            UPDATE requests SET done=CASE NEW.state WHEN 'ok' THEN 1 WHEN 'failed' THEN 2
                ELSE 0 END, result_version=NEW.version WHERE key=NEW.key;
        END;
        CREATE TRIGGER results_done_upd AFTER UPDATE ON results BEGIN
            UPDATE results SET version=NULL WHERE rowid=NEW.rowid AND version IS NOT NULL;
            UPDATE requests SET done=0, result_version=NULL WHERE key=OLD.key;
            UPDATE requests SET done=CASE NEW.state WHEN 'ok' THEN 1 WHEN 'failed' THEN 2
                ELSE 0 END, result_version=NULL WHERE key=NEW.key;
        END;
        CREATE TRIGGER results_done_del AFTER DELETE ON results BEGIN
            UPDATE requests SET done=0, result_version=NULL WHERE key=OLD.key;
        END;
        """,
    ),
    (
        # A member is looked up by custom_id only within one shard (whose members the primary
        # key already lists in order): this index held a 64-character shard id per request.
        "m005_drop_members_custom_id",
        """
        DROP INDEX IF EXISTS members_custom_id;
        """,
    ),
    (
        # Per output file: the stat it had when written, and the result_version and length
        # of each of its lines, so the next rewrite copies the lines that did not change.
        "m006_output_index",
        """
        CREATE TABLE output_index(
            output TEXT PRIMARY KEY, stat TEXT NOT NULL, entries BLOB NOT NULL);
        """,
    ),
    (
        # Finished shards forget their members once every batch of theirs is collected
        # (Store.release_members); this releases those of states written before.
        "m007_release_members",
        """
        DELETE FROM members WHERE shard IN (SELECT h.id FROM shards h WHERE h.state='done'
            AND NOT EXISTS (SELECT 1 FROM batches b WHERE b.shard=h.id AND b.collected=0));
        """,
    ),
    (
        # A line made longer moves every row after it (line, offset): no cached answer reads
        # those, and an input whose lines moved has a new sha256 (in outputs_fingerprint),
        # so such a shift no longer bumps the requests counter once per row.
        "m008_requests_counter_columns",
        """
        DROP TRIGGER requests_upd;
        CREATE TRIGGER requests_upd AFTER UPDATE OF path, ordinal, length, key, custom_id,
            model, url, tokens, nbytes, inputs, cost, reason, digest, done, result_version
            ON requests BEGIN
            UPDATE counters SET value=value+1 WHERE name='requests';
        END;
        """,
    ),
    (
        # build -B / --retry-failed: the keys one run sends again although they hold a final
        # result (resend, emptied when the next run starts), and the shards packed with them
        # (resend_shards), whose final outcomes replace those results. Nothing is reset up
        # front: an old result stays the output until its replacement arrives, and a forced
        # run that stops early leaves the rest up to date. The counter keeps cached answers
        # (is anything pending?) exact as the set changes.
        "m009_resend",
        """
        CREATE TABLE resend(key TEXT PRIMARY KEY, attempts INTEGER NOT NULL DEFAULT 0);
        CREATE TABLE resend_shards(shard TEXT PRIMARY KEY);
        INSERT INTO counters(name, value) VALUES ('resend', 0);
        """
        + "".join(
            f"""
        CREATE TRIGGER resend_{op[:3].lower()} AFTER {op} ON resend BEGIN
            UPDATE counters SET value=value+1 WHERE name='resend';
        END;"""
            for op in ("INSERT", "UPDATE", "DELETE")
        ),
    ),
)

# The columns of a request row, in RequestRow field order.
REQUEST_COLUMNS = (
    "path, ordinal, line, offset, length, key, custom_id, model, url, tokens, nbytes, inputs,"
    " cost, reason, digest"
)

# SQLite's page cache per connection, in KiB (negative: a size, not pages). The default
# 2 MiB holds a sliver of a 100k-request state's key indexes, so every write that looks a
# key up reads its pages again; 32 MiB halves the time to record a batch's results (and
# is only used as the state grows).
CACHE_SIZE = -32 * 1024

ZLIB_LEVEL = 1  # result lines are JSON: level 1 keeps most of the gain at a fraction of the time
# An 8 KiB window and memory level 5: zlib's defaults (32 KiB, 8) set up ~256 KiB of state for
# every line, which took 21 us a 900-byte line against 12 (more on a busy machine) for the
# same size.
# Lines stored with any window are read alike (inflate takes any window up to 32 KiB).
ZLIB_WBITS = 13
ZLIB_MEMLEVEL = 5
# Result lines are compressed one by one, so alone each finds little to repeat; against the
# project's first result line as a preset dictionary, the JSON keys and shape that every line
# shares compress too (2.5x smaller on the simulator's chat results). The dictionary lives in
# meta under this key, written in the transaction of the first line compressed with it.
ZDICT_META = "zdict"
ZDICT_MAX = 1 << ZLIB_WBITS  # zlib uses at most a window's worth: the dictionary's last bytes


def _statements(sql: str) -> Iterator[str]:
    """The statements of a migration, trigger bodies (with their inner ;) kept whole."""
    pending = ""
    for piece in sql.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                yield pending
            pending = ""


def pack_line(line: str | None, zdict: bytes | None = None) -> bytes | None:
    """A result line as stored: zlib-compressed UTF-8, against a preset dictionary if given."""
    if line is None:
        return None
    if zdict is None:
        packer = zlib.compressobj(ZLIB_LEVEL, zlib.DEFLATED, ZLIB_WBITS, ZLIB_MEMLEVEL)
    else:
        packer = zlib.compressobj(ZLIB_LEVEL, zlib.DEFLATED, ZLIB_WBITS, ZLIB_MEMLEVEL, zdict=zdict)
    return packer.compress(line.encode("utf-8")) + packer.flush()


def zline_dictionary_id(zline: bytes) -> int | None:
    """The adler32 of the preset dictionary a stored line needs (zlib header FDICT), if any."""
    return int.from_bytes(zline[2:6], "big") if zline[1] & 0x20 else None


def unpack_line(line: str | None, zline: bytes | None, zdict: bytes | None = None) -> str | None:
    """A stored result line back as text (rows written before m002 hold it uncompressed)."""
    if zline is None:
        return line
    if zdict is None:
        return zlib.decompress(zline).decode("utf-8")
    unpacker = zlib.decompressobj(zdict=zdict)
    return (unpacker.decompress(zline) + unpacker.flush()).decode("utf-8")


# Shard life cycle. `ready` -> `uploading` -> `uploaded` -> `submitting` -> `submitted`
# -> `done`; `waiting` (refused for lack of queue room, file kept) goes back to `submitting`;
# `dropped` releases its members (stale, or too big for a lowered budget).
ACTIVE_SHARD_STATES = ("ready", "uploading", "uploaded", "submitting", "submitted", "waiting")
IN_FLIGHT_SHARD_STATES = ("submitting", "submitted")
FINAL_RESULT_STATES = ("ok", "failed")


class RequestRow(NamedTuple):
    """A current request of an input, as the store knows it.

    A named tuple, not a dataclass: a walk over 100k rows builds one per row, four times
    faster so.
    """

    path: str
    ordinal: int
    line: int
    offset: int
    length: int
    key: str
    custom_id: str
    model: str | None
    url: str
    tokens: int
    nbytes: int
    inputs: int
    cost: float | None
    reason: str | None
    digest: bytes | None = None  # of the line's raw bytes (None: written before m003)


@dataclass(frozen=True)
class ShardRow:
    """A shard: a set of requests sent, or to be sent, as one batch."""

    id: str
    model: str | None
    url: str
    requests: int
    tokens: int
    nbytes: int
    cost: float | None
    state: str
    file_id: str | None
    batch_id: str | None
    nonce: str | None
    refusals: int
    not_before: float
    created_at: float | None
    updated_at: float | None
    note: str | None


@dataclass(frozen=True)
class BatchRow:
    """A remote batch we created or adopted."""

    id: str
    shard: str
    status: str
    input_file_id: str | None
    output_file_id: str | None
    error_file_id: str | None
    created_at: int | None
    collected: bool
    info: str | None


@dataclass(frozen=True)
class ResultRow:
    """What the store holds for one request key."""

    key: str
    state: str  # ok | failed | retry
    attempts: int
    line: str | None
    error: str | None
    batch_id: str | None


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _state_error(path: Path, exc: BaseException) -> Exception:
    """Our error for an SQLite or OS failure on the state: full disk, permissions, damage."""
    text = str(exc)
    code = getattr(exc, "errno", None)
    if (
        "disk is full" in text
        or code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
        or (_maybe_no_room(exc) and _no_room(path))
    ):
        # SQLite rolls back what it could not write: never advise moving an intact state
        # aside (a build without it re-buys whatever the API can no longer give back).
        return LocalIOError(
            f"disk full: free space and rerun; the state is intact (no room to write {path}: "
            f"{text}; a file size limit or disk quota does the same: raise it)"
        )
    if (
        "readonly" in text
        or "read-only" in text
        or code in (errno.EACCES, errno.EPERM, errno.EROFS)
    ):
        return LocalIOError(
            f"cannot write the build state {path} ({text}): make its directory writable, or "
            "point GPTBATCH_STATE_DIR at a writable directory"
        )
    if "database is locked" in text:
        return StateError(
            f"{path} is busy ({text}): another process holds it open for writing; wait for it, "
            "then run again"
        )
    return StateError(
        f"{path}: the build state is damaged or unreadable ({text}): move it aside "
        f"(mv {path.parent} {path.parent}.broken) and run again; gptbatch then adopts its "
        "batches from the API by their metadata instead of paying twice"
    )


# SQLite reports ENOSPC as SQLITE_FULL only on plain writes: a WAL index it cannot grow
# (IOERR_SHMSIZE), a quota (EDQUOT) or a file size limit (EFBIG) on a write is an I/O
# error, and a journal it cannot create is CANTOPEN. Those are checked against the disk.
_SQLITE_IOERR, _SQLITE_CANTOPEN = 10, 14
_SQLITE_READ_ERRORS = (266, 522)  # IOERR_READ, IOERR_SHORT_READ: reading needs no room
_ROOM_PROBE = 1 << 20  # bytes a state write may need at once (WAL frames, index growth)


def _maybe_no_room(exc: BaseException) -> bool:
    """Could this SQLite error come from a full disk rather than a damaged file?"""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return "disk I/O error" in str(exc) or "unable to open" in str(exc)
    return code & 0xFF in (_SQLITE_IOERR, _SQLITE_CANTOPEN) and code not in _SQLITE_READ_ERRORS


def _no_room(path: Path) -> bool:
    """Is there too little room to write beside path: free space, a quota, a size limit?"""
    directory = path.parent
    while not directory.is_dir() and directory != directory.parent:
        directory = directory.parent
    with contextlib.suppress(OSError):
        fs = os.statvfs(directory)
        if fs.f_bavail * fs.f_frsize < _ROOM_PROBE:
            return True
    with contextlib.suppress(ImportError, OSError, ValueError):
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        biggest = max((p.stat().st_size for p in path.parent.glob(path.name + "*")), default=0)
        if limit != resource.RLIM_INFINITY and limit < biggest + _ROOM_PROBE:
            return True
    # A quota shows in no statistic: try to write what a state write may need.
    try:
        fd, probe = tempfile.mkstemp(prefix=".room-", dir=directory)
    except OSError as exc:
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    try:
        if os.write(fd, bytes(_ROOM_PROBE)) < _ROOM_PROBE:  # a short write: the room ran out
            return True
        os.fsync(fd)
    except OSError as exc:
        return exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(probe)
    return False


# SQLite errors that mean the file, disk or permissions are at fault; others are our bugs.
_STATE_ERRORS = (sqlite3.OperationalError, sqlite3.DatabaseError)
_BUG_ERRORS = (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError)


class _Cursor(sqlite3.Cursor):
    """A cursor whose errors name the state file and say what to do."""

    def _fail(self, exc: sqlite3.Error) -> Exception:
        return _state_error(self.connection.path, exc)  # type: ignore[attr-defined]

    def execute(self, sql: str, parameters: Any = ()) -> _Cursor:  # type: ignore[override]
        try:
            return super().execute(sql, parameters)  # type: ignore[return-value]
        except _BUG_ERRORS:
            raise
        except _STATE_ERRORS as exc:
            raise self._fail(exc) from exc

    def executemany(self, sql: str, seq: Any) -> _Cursor:  # type: ignore[override]
        try:
            return super().executemany(sql, seq)  # type: ignore[return-value]
        except _BUG_ERRORS:
            raise
        except _STATE_ERRORS as exc:
            raise self._fail(exc) from exc

    def __next__(self) -> Any:
        try:
            return super().__next__()
        except _BUG_ERRORS:
            raise
        except _STATE_ERRORS as exc:
            raise self._fail(exc) from exc

    def fetchone(self) -> Any:
        try:
            return super().fetchone()
        except _BUG_ERRORS:
            raise
        except _STATE_ERRORS as exc:
            raise self._fail(exc) from exc

    def fetchmany(self, size: int | None = 1) -> list[Any]:
        try:
            return super().fetchmany(size)
        except _BUG_ERRORS:
            raise
        except _STATE_ERRORS as exc:
            raise self._fail(exc) from exc


def _stream(cursor: sqlite3.Cursor, size: int = 1024) -> Iterator[Any]:
    """A cursor's rows, fetched size at a time (a walk of 100k rows pays per batch, not row)."""
    while rows := cursor.fetchmany(size):
        yield from rows


class _Connection(sqlite3.Connection):
    """A connection whose statements run on _Cursor."""

    path: Path

    def execute(self, sql: str, parameters: Any = ()) -> _Cursor:  # type: ignore[override]
        return self.cursor(_Cursor).execute(sql, parameters)  # type: ignore[return-value]

    def executemany(self, sql: str, seq: Any) -> _Cursor:  # type: ignore[override]
        return self.cursor(_Cursor).executemany(sql, seq)  # type: ignore[return-value]


def state_dir(output_dir: Path) -> Path:
    """Where the build state of an output directory lives (GPTBATCH_STATE_DIR overrides)."""
    override = os.environ.get("GPTBATCH_STATE_DIR")
    return Path(override) if override else output_dir / STATE_DIR_NAME


class Store:
    """The SQLite-backed build state of one output directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / "state.db"
        self.created = not self.path.exists()
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(
                self.path, isolation_level=None, timeout=30, factory=_Connection
            )
        except (OSError, sqlite3.Error) as exc:
            raise _state_error(self.path, exc) from exc
        self.db.path = self.path
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute(f"PRAGMA cache_size={CACHE_SIZE}")
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

    # --- schema --------------------------------------------------------------------------

    def _migrate(self) -> None:
        # Read what is done inside the write transaction: a reader (`status`) may open the
        # database while a build is creating it.
        with self.transaction():
            self.db.execute("CREATE TABLE IF NOT EXISTS migrations(name TEXT PRIMARY KEY)")
            done = {r[0] for r in self.db.execute("SELECT name FROM migrations")}
            known = {name for name, _ in MIGRATIONS}
            if done - known:
                raise StateError(
                    f"{self.path} was written by a newer gptbatch ({sorted(done - known)}): "
                    "upgrade gptbatch, or use another output_dir"
                )
            for name, sql in MIGRATIONS:
                if name in done:
                    continue
                for statement in _statements(sql):
                    self.db.execute(statement)
                self.db.execute("INSERT INTO migrations(name) VALUES (?)", (name,))

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

    # --- meta ----------------------------------------------------------------------------

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

        What a no-op build asks (counts, is anything pending) would otherwise scan every
        request; the counters make the answer O(1) until something is written.
        """
        version = self.version()
        raw = self.get_meta(f"cache:{name}")
        if raw is not None:
            stored = json.loads(raw)
            if stored[0] == version:
                return stored[1]
        value = compute()
        if not self.db.in_transaction:  # a reader's snapshot must not turn into a writer
            with contextlib.suppress(StateError, LocalIOError), self.transaction():
                self.set_meta(f"cache:{name}", json.dumps([version, value]))
        return value

    # --- inputs and requests -------------------------------------------------------------

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
            ordinal = row[0]
            current = old.get(ordinal)
            if current is None:
                writer.put(row, new=True)
            elif current[1:] == row:
                writer.keep()
            elif current[4:] == row[3:]:  # the same request on another line or offset
                writer.shift(ordinal, row[1] - current[2], row[2] - current[3])
            else:
                writer.put(row)
        writer.close()
        self.db.execute("DELETE FROM requests WHERE path=? AND ordinal>=?", (path, count))
        self.db.execute(
            "INSERT OR REPLACE INTO inputs(path, size, mtime_ns, sha256, defaults, requests,"
            " synced_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (path, size, mtime_ns, sha256, defaults, count, time.time()),
        )

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
        return gone

    def known_estimates(self, keys: Iterable[str]) -> dict[str, tuple[int, int, int, float | None]]:
        """key -> (tokens, nbytes, inputs, cost) for keys already estimated."""
        out: dict[str, tuple[int, int, int, float | None]] = {}
        keys = list(keys)
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
        self, paths: Iterable[str] | None = None, *, limit: int = 50
    ) -> tuple[list[tuple[str, str, int, str, int]], int]:
        """(custom_id, path_a, line_a, path_b, line_b) for custom_ids used in two inputs, the
        first `limit` of them in order, and how many there are in all.

        One input's own duplicates are found as it is read. With paths, only pairs with a
        request of those inputs (the ones just read): the others were checked when their
        inputs were read.
        """
        inputs = self.input_paths()
        if len(inputs) < 2:
            return [], 0
        if paths is None:
            paths = inputs
        pairs: set[tuple[str, str, int, int, str, int, int]] = set()
        for path in paths:
            cur = self.db.execute(
                "SELECT b.custom_id, a.path, a.ordinal, a.line, b.path, b.ordinal, b.line"
                " FROM requests b JOIN requests a ON a.custom_id=b.custom_id AND a.path<>b.path"
                " WHERE b.path=?",
                (path,),
            )
            for cid, pa, oa, la, pb, ob, lb in cur:
                first, second = sorted([(pa, oa, la), (pb, ob, lb)])
                pairs.add((cid, *first, *second))
        first = [(c, pa, la, pb, lb) for c, pa, _, la, pb, _, lb in sorted(pairs)[:limit]]
        return first, len(pairs)

    def models(self) -> list[str | None]:
        """The models current requests use."""
        return [r[0] for r in self.db.execute("SELECT DISTINCT model FROM requests")]

    def requests_over(self, model: str | None, tokens: int) -> list[RequestRow]:
        """A model's current requests with more estimated tokens than this and no final result."""
        cur = self.db.execute(
            "SELECT r.path, r.ordinal, r.line, r.offset, r.length, r.key, r.custom_id,"
            " r.model, r.url, r.tokens, r.nbytes, r.inputs, r.cost, r.reason"
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
            "SELECT path, ordinal, line, offset, length, key, custom_id, model, url, tokens,"
            " nbytes, inputs, cost, reason FROM requests WHERE path=? ORDER BY ordinal",
            (path,),
        )
        for row in cur:
            yield RequestRow(*row)

    def has_work_to_submit(self) -> bool:
        """Is any shard not yet at the API, or any current request unbuilt and unpacked?"""
        if self.shards(("ready", "uploading", "uploaded", "submitting", "waiting")):
            return True
        return self._cached(
            self._scoped("pending"),
            lambda: next(self._pending(self.db, limit=1), None) is not None,
        )

    def request_results(self, path: str) -> Iterator[tuple[RequestRow, ResultRow | None]]:
        """An input's current requests in input order, each with its result if any."""
        cur = self.db.execute(
            "SELECT r.path, r.ordinal, r.line, r.offset, r.length, r.key, r.custom_id,"
            " r.model, r.url, r.tokens, r.nbytes, r.inputs, r.cost, r.reason,"
            " s.key, s.state, s.attempts, s.line, s.error, s.batch_id, s.zline"
            " FROM requests r LEFT JOIN results s ON s.key=r.key"
            " WHERE r.path=? ORDER BY r.ordinal",
            (path,),
        )
        for row in cur:
            result = None
            if row[14]:
                k, state, attempts, line, error, batch, zline = row[14:]
                result = ResultRow(k, state, attempts, self.unpack(line, zline), error, batch)
            yield RequestRow(*row[:14]), result

    def output_rows(
        self, path: str, *, lines: bool
    ) -> Iterator[tuple[int, int, int | None, str, bytes | None]]:
        """(ordinal, done, result_version, key, line) of an input's requests, in input order.

        With lines, ok rows (done=1) come with their result line as UTF-8 (one join for the
        whole input); without, line is None and `result_line` fetches the ones needed, so a
        rewrite that copies most lines from the last output reads no result at all.
        """
        if not lines:
            for ordinal, done, version, key in self.db.execute(
                "SELECT ordinal, done, result_version, key FROM requests WHERE path=?"
                " ORDER BY ordinal",
                (path,),
            ):
                yield ordinal, done, version, key, None
            return
        cur = self.db.execute(
            "SELECT r.ordinal, r.done, r.result_version, r.key, s.line, s.zline"
            " FROM requests r LEFT JOIN results s ON r.done=1 AND s.key=r.key"
            " WHERE r.path=? ORDER BY r.ordinal",
            (path,),
        )
        for ordinal, done, version, key, line, zline in cur:
            text = self.unpack(line, zline)
            yield ordinal, done, version, key, None if text is None else text.encode("utf-8")

    def result_line(self, key: str) -> bytes | None:
        """A key's stored result line as UTF-8, if it has one."""
        row = self.db.execute("SELECT line, zline FROM results WHERE key=?", (key,)).fetchone()
        text = self.unpack(*row) if row else None
        return None if text is None else text.encode("utf-8")

    def request_result(self, path: str, ordinal: int) -> tuple[RequestRow, ResultRow | None]:
        """One request of an input, with its result if any."""
        row = self.db.execute(
            "SELECT r.path, r.ordinal, r.line, r.offset, r.length, r.key, r.custom_id,"
            " r.model, r.url, r.tokens, r.nbytes, r.inputs, r.cost, r.reason,"
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

    @staticmethod
    def previous_row(reader: sqlite3.Connection, path: str, custom_id: str) -> RequestRow | None:
        """An input's request with this custom_id, as a snapshot saw it."""
        row = reader.execute(
            f"SELECT {REQUEST_COLUMNS} FROM requests WHERE custom_id=? AND path=?",
            (custom_id, path),
        ).fetchone()
        return RequestRow(*row) if row else None

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
        sql, params = self._open_requests(
            db,
            "r.path, r.ordinal, r.line, r.offset, r.length, r.key, r.custom_id,"
            " r.model, r.url, r.tokens, r.nbytes, r.inputs, r.cost, r.reason",
        )
        cur = db.execute(f"SELECT * FROM ({sql}) ORDER BY path, ordinal LIMIT ?", (*params, limit))
        for row in cur:  # custom_ids are unique across inputs, so keys are too
            yield RequestRow(*row)

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
        row = self.db.execute(
            "SELECT sum(done=1), sum(done=2), count(*) FROM requests WHERE path=?",
            (path,),
        ).fetchone()
        ok, failed = row[0] or 0, row[1] or 0
        return {"ok": ok, "failed": failed, "missing": row[2] - ok - failed}

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

    def counts(self) -> dict[str, int]:
        """How many current requests are ok, failed, in an active shard, or pending."""
        return self._cached(self._scoped("counts"), self._counts)

    def _counts(self) -> dict[str, int]:
        scope, params = self._scope_sql()
        row = self.db.execute(
            f"SELECT sum(done=1), sum(done=2), count(*) FROM requests r WHERE 1{scope}", params
        ).fetchone()
        ok, failed, total = (row[0] or 0), (row[1] or 0), row[2] or 0
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
        scope, params = self._scope_sql()
        return self.db.execute(
            f"SELECT count(*) FROM resend f JOIN requests r ON r.key=f.key WHERE r.done<>0{scope}",
            params,
        ).fetchone()[0]

    # --- results -------------------------------------------------------------------------

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
        keys = list(keys)
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for key, state, attempts in self.db.execute(
                f"SELECT key, state, attempts FROM results WHERE key IN ({marks})", chunk
            ):
                out[key] = (state, attempts)
        return out

    def write_results(
        self, rows: Iterable[tuple[str, str, int, str | None, str | None, str | None]]
    ) -> None:
        """Write (key, state, attempts, line, error, batch_id) rows, a statement per kind.

        The caller has checked that none of these keys holds a final result; a key's earlier
        row (a retry) is replaced.
        """
        now = time.time()
        rows = list(rows)
        zdict = self._dictionary(next((r[3] for r in rows if r[3] is not None), None))
        earlier = set(self.result_states(r[0] for r in rows))
        sql = (
            "INTO results(key, state, attempts, line, zline, error, batch_id, updated_at,"
            " version) VALUES (?, ?, ?, NULL, ?, ?, ?, ?,"
            " (SELECT value + 1 FROM counters WHERE name='results'))"
        )
        # Keys with no row yet (nearly all) go in with OR FAIL: REPLACE, or the default
        # ABORT, keeps a statement journal for the triggers' writes (each row's pages copied
        # to a temp file, a third of the time), and any error here rolls the whole
        # transaction back anyway.
        fresh, again = [], []
        for row in rows:
            (again if row[0] in earlier else fresh).append(row)
            earlier.add(row[0])  # given twice: the later one replaces the first
        for verb, batch in (("INSERT OR FAIL", fresh), ("INSERT OR REPLACE", again)):
            self.db.executemany(
                f"{verb} {sql}",
                ((k, st, n, pack_line(ln, zdict), err, b, now) for k, st, n, ln, err, b in batch),
            )

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
        if zline is None or zline_dictionary_id(zline) is None:
            return unpack_line(line, zline)
        wanted = zline_dictionary_id(zline)
        zdict = self._zdicts.get(wanted)  # type: ignore[arg-type]
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
            self._zdicts[wanted] = zdict  # type: ignore[index]
        return unpack_line(line, zline, zdict)

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

    def drop_unneeded_shards(self) -> list[tuple[str, str]]:
        """Drop unsent shards this run must not send; return (id, why) of each.

        Those holding a request whose final result nothing asks to replace (packed by a
        forced run that stopped early), and in a subset build those holding a request of
        another input. Their other requests are packed again; nothing of a dropped shard
        reached the API.
        """
        scope, params = self._scope_sql()
        unsent = "h.state IN ('ready', 'uploading', 'uploaded', 'waiting')"
        found = [
            (r[0], "results up to date")
            for r in self.db.execute(
                f"SELECT h.id FROM shards h WHERE {unsent}"
                " AND EXISTS (SELECT 1 FROM members m JOIN results s ON s.key=m.key"
                "   WHERE m.shard=h.id AND s.state IN ('ok', 'failed')"
                "   AND NOT EXISTS (SELECT 1 FROM resend f WHERE f.key=m.key))"
                " ORDER BY h.created_at, h.id"
            )
        ]
        if scope:
            found += [
                (r[0], "holds requests of inputs this subset build leaves alone")
                for r in self.db.execute(
                    f"SELECT h.id FROM shards h WHERE {unsent}"
                    " AND EXISTS (SELECT 1 FROM members m WHERE m.shard=h.id"
                    f"   AND NOT EXISTS (SELECT 1 FROM requests r WHERE r.key=m.key{scope}))"
                    " ORDER BY h.created_at, h.id",
                    params,
                )
                if r[0] not in {sid for sid, _ in found}
            ]
        for sid, why in found:
            self.update_shard(sid, state="dropped", note=f"not sent: {why}")
        return found

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

    # --- shards and batches --------------------------------------------------------------

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
        self.db.executemany(
            "INSERT INTO members(shard, ordinal, key, custom_id) VALUES (?, ?, ?, ?)",
            ((shard_id, i, k, c) for i, (k, c) in enumerate(members)),
        )
        if state == "ready":  # packed now (not recovered from the API): of a forced run?
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
        cur = self.db.execute(
            "SELECT m.ordinal, m.key, r.path, r.ordinal, r.line, r.offset, r.length, r.key,"
            " r.custom_id, r.model, r.url, r.tokens, r.nbytes, r.inputs, r.cost, r.reason"
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

    def locate(self, key: str) -> RequestRow | None:
        """The first current request line with this key, if any."""
        row = self.db.execute(
            "SELECT path, ordinal, line, offset, length, key, custom_id, model, url, tokens,"
            " nbytes, inputs, cost, reason FROM requests WHERE key=? ORDER BY path, ordinal"
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

    # --- appended for cancel, clean, gc and export (new methods only) ------------------------

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

    def has_requests(self) -> bool:
        """Does the state know any current request?"""
        return self.db.execute("SELECT 1 FROM requests LIMIT 1").fetchone() is not None

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

    def vacuum(self) -> None:
        """Rewrite the database without free pages, and fold the WAL back into it."""
        self.db.execute("VACUUM")
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


class Kept(NamedTuple):
    """For `replace_input`: the earlier row at this ordinal, moved by so many lines and bytes."""

    lines: int = 0
    offset: int = 0


class PreviousRows:
    """An input's earlier rows (in a snapshot), walked in input order beside the new lines.

    An unchanged or edited line matches the next earlier row at once; only lines that moved,
    or came after an insertion or deletion, cost an indexed query (which also resynchronises).
    """

    def __init__(self, reader: sqlite3.Connection, path: str) -> None:
        self.reader = reader
        self.path = path
        self.rows = _stream(
            reader.execute(
                f"SELECT {REQUEST_COLUMNS} FROM requests WHERE path=? ORDER BY ordinal", (path,)
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
        found = Store.previous_row(self.reader, self.path, custom_id)
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
    """An input's earlier rows (in a snapshot) by ordinal, asked for in increasing order.

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
            self.rows = _stream(
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
