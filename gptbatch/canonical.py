"""Canonical JSON, content hashes, and atomic file writes: the one place for each."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from gptbatch.fastjson import canonical_dumps


def canonical_json(obj: Any) -> bytes:
    """Serialise obj deterministically: sorted keys, no whitespace, UTF-8."""
    return canonical_dumps(obj)


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def content_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of obj."""
    return sha256_hex(canonical_json(obj))


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give: mkstemp's 0600 is too private


def fsync_dir(directory: Path) -> None:
    """Make a rename in directory durable (where the platform can fsync a directory)."""
    with contextlib.suppress(OSError):  # not every platform can fsync a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_writer(
    path: str | os.PathLike[str],
    mode: str = "wb",
    *,
    sync_dir: bool = True,
    buffering: int = -1,
) -> Iterator[IO[Any]]:
    """Write to a sibling temp file; on success fsync it and rename it over path.

    On any exception the temp file is removed and path is left untouched. sync_dir=False
    leaves the directory's fsync to the caller: for a file renamed again afterwards (split's
    shard parts), whose directory is synced once after the last rename. buffering: as
    open's.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _FILE_MODE)
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, buffering, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if sync_dir:
        fsync_dir(target.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Atomically replace path with data."""
    with atomic_writer(path, "wb") as f:
        f.write(data)


def remove_stale_temp_files(*directories: Path) -> None:
    """Delete temp files that killed runs left (atomic writes name them .NAME.*.tmp)."""
    for directory in directories:
        for path in directory.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                path.unlink()
