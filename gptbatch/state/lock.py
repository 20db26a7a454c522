"""One build per output directory: a lock that deleting or moving the state cannot lift.

A lock file inside the state directory is lifted by `rm -rf out/.gptbatch`, and one state
directory per build (`GPTBATCH_STATE_DIR`) gives every build its own lock; both let two
builds submit the same requests. So a build holds three flocks, taken in a fixed order:

1. a lock file outside the project, keyed by the output directory's real path (it survives
   deleting anything in the project, and its text names the holder);
2. the same for the state directory when `GPTBATCH_STATE_DIR` puts it elsewhere;
3. the output directory itself (its inode), which holds across containers that share
   the mount but not /tmp.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import IO

from gptbatch.errors import LocalIOError, LockedError


def lock_dir() -> Path:
    """Where lock files live: GPTBATCH_LOCK_DIR, else a private directory per user."""
    override = os.environ.get("GPTBATCH_LOCK_DIR")
    if override:
        return Path(override)
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / f"gptbatch-locks-{os.getuid()}"


def _key(path: Path) -> str:
    return hashlib.sha256(os.path.realpath(path).encode("utf-8", "surrogateescape")).hexdigest()


class BuildLock:
    """The exclusive lock of one build on an output directory (and its state directory)."""

    def __init__(self, output_dir: Path, state_dir: Path) -> None:
        self.output_dir = output_dir
        self.state_dir = state_dir
        self._held: list[IO[str] | int] = []

    def acquire(self) -> None:
        """Take every lock or none; raise LockedError naming the holder."""
        directory = lock_dir()
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LocalIOError(
                f"cannot create {exc.filename}: {exc.strerror}: check the permissions of "
                "its parent directory"
            ) from None
        targets = [self.output_dir]
        if os.path.realpath(self.state_dir.parent) != os.path.realpath(self.output_dir):
            targets.append(self.state_dir)
        try:
            for target in targets:
                self._lock_file(directory / f"{_key(target)}.lock", target)
            self._lock_directory(self.output_dir)
        except BaseException:
            self.release()
            raise

    def _lock_file(self, path: Path, target: Path) -> None:
        f = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the whole build
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise self._locked(target, holder) from None
        f.seek(0)
        f.truncate()
        f.write(
            f"pid {os.getpid()} on {socket.gethostname()} since {time.ctime()} "
            f"building {os.path.realpath(self.output_dir)}\n"
        )
        f.flush()
        self._held.append(f)

    def _lock_directory(self, directory: Path) -> None:
        fd = os.open(directory, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise self._locked(directory, "a process on another machine or container") from None
        self._held.append(fd)

    def _locked(self, target: Path, holder: str) -> LockedError:
        return LockedError(
            f"another gptbatch build holds the lock on {target} ({holder}): wait for it to "
            "finish, or stop it; two builds never run on one output directory"
        )

    def release(self) -> None:
        """Let go of every lock held (the files stay: deleting one could unlock a waiter)."""
        while self._held:
            held = self._held.pop()
            with contextlib.suppress(OSError):
                if isinstance(held, int):
                    os.close(held)
                else:
                    held.close()

    def __enter__(self) -> BuildLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
