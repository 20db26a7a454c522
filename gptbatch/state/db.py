"""SQLite wrappers whose errors name the state file and say what to do (full disk, damage...)."""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from gptbatch.errors import LocalIOError, StateError


def _identity(path: Path) -> tuple[int, int] | None:
    """A file's (device, inode), to notice it deleted or replaced; None: it is gone."""
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


_Method = TypeVar("_Method", bound=Callable[..., Any])


def _translated(method: _Method) -> _Method:
    """A cursor method whose state errors (not our bugs) become ours, naming the file."""

    @functools.wraps(method)
    def call(self: sqlite3.Cursor, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except _BUG_ERRORS:
            raise
        except _STATE_ERRORS as exc:
            raise _state_error(self.connection.path, exc) from exc  # type: ignore[attr-defined]

    return call  # type: ignore[return-value]


class _Cursor(sqlite3.Cursor):
    """A cursor whose errors name the state file and say what to do."""

    execute = _translated(sqlite3.Cursor.execute)
    executemany = _translated(sqlite3.Cursor.executemany)
    __next__ = _translated(sqlite3.Cursor.__next__)
    fetchone = _translated(sqlite3.Cursor.fetchone)
    fetchmany = _translated(sqlite3.Cursor.fetchmany)


def stream_rows(cursor: sqlite3.Cursor, size: int = 1024) -> Iterator[Any]:
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
