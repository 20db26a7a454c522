"""Content-defined chunks of an input: runs of whole lines whose boundaries the lines choose.

A chunk ends after a line whose CRC-32 has its low bits zero (one line in AVERAGE), if at
least MIN_LINES lines long; a chunk of MAX_LINES lines ends anyway. A boundary depends only
on the lines since the one before, so an edited, inserted or deleted line changes the chunk
that holds it and leaves the chunks after it as they were: a sync reads only the chunks
whose hash changed.

`find_chunks` is given the chunks found last time: it checks each where the one before it
ended (hashing the file at C speed, no step per line) and looks for boundaries line by
line only from a chunk that differs until a chunk it finds is one it knew again.
"""

from __future__ import annotations

import hashlib
import itertools
import operator
import os
import stat
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, NamedTuple

from gptbatch.canonical import file_sha256

AVERAGE = 512  # lines per chunk, on average (a power of two)
MIN_LINES = 64
MAX_LINES = 4096
BLOCK = 8 << 20  # the most read at once while looking for boundaries
_MASK = AVERAGE - 1
# In every chunk's hash: chunks found with other parameters never match. The first chunk
# of a file is hashed apart: its first line may start with a BOM that only there is skipped.
_SEED = f"gptbatch-chunks-1 {AVERAGE} {MIN_LINES} {MAX_LINES}\n".encode()
_FIRST = b"first\n"


class Chunk(NamedTuple):
    """A run of whole lines: where it starts, its bytes, its lines, and its hash."""

    start: int
    length: int
    lines: int
    hash: bytes


def _hasher(start: int) -> hashlib._Hash:
    h = hashlib.sha256(_SEED)
    if start == 0:
        h.update(_FIRST)
    return h


def find_chunks(path: str | Path, known: Sequence[Chunk] = ()) -> list[Chunk]:
    """An input's chunks, in order, covering every byte of it.

    known: the chunks found last time (in order). One that holds the same bytes where the
    chunk before it ended is taken as it is; from one that does not, lines are read until
    a chunk found is a known one again. The result is the same as with no known chunks.
    """
    by_hash: dict[bytes, int] = {}
    for i, chunk in enumerate(known):
        by_hash.setdefault(chunk.hash, i)
    chunks: list[Chunk] = []
    with open(path, "rb") as f, _Checks(f, known) as checks:
        size = checks.size
        pos = 0
        i = 0  # the known chunk expected at pos
        while pos < size:
            if i < len(known) and checks.same(i, pos):
                chunks.append(known[i]._replace(start=pos))
                pos += known[i].length
                i += 1
                continue
            for chunk in _scan(f, pos):
                chunks.append(chunk)
                pos = chunk.start + chunk.length
                j = by_hash.get(chunk.hash)
                if j is not None and j >= i:  # in step again: check the next ones in place
                    i = j + 1
                    break
            else:
                break
    return chunks


class _Checks:
    """Whether known chunk i holds the file's bytes at pos, checked ahead on two threads.

    Hashing is most of an edited big input's sync, and hashlib and pread let go of the GIL:
    while chunk i is checked, the next ones are checked where they will be if it holds (the
    usual answer). A guess that proves wrong is dropped and checked again where asked.
    """

    AHEAD = 8
    PARALLEL_BYTES = 32 << 20  # below this, one thread: a pool costs more than it saves

    def __init__(self, f: BinaryIO, known: Sequence[Chunk]) -> None:
        self.f = f
        self.known = known
        self.size = os.fstat(f.fileno()).st_size
        self.pool: ThreadPoolExecutor | None = None
        if self.size >= self.PARALLEL_BYTES and len(known) > 1 and (os.cpu_count() or 1) > 1:
            self.pool = ThreadPoolExecutor(2, thread_name_prefix="gptbatch-chunks")
        self.ahead: dict[int, tuple[int, Future[bool]]] = {}  # i -> (pos guessed, check)

    def __enter__(self) -> _Checks:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            for _, future in self.ahead.values():
                future.cancel()
            self.pool.shutdown(wait=True)  # no thread outlives the read (forks follow)

    def _check(self, i: int, pos: int) -> bool:
        return _same_at(self.f, pos, self.known[i], self.size, last=i == len(self.known) - 1)

    def same(self, i: int, pos: int) -> bool:
        pool = self.pool
        if pool is None:
            return self._check(i, pos)
        guessed = self.ahead.pop(i, None)
        if guessed is not None and guessed[0] != pos:
            guessed[1].cancel()
            guessed = None
        # queue the next AHEAD chunks where they are if this one holds
        at = pos + self.known[i].length
        for k in range(i + 1, min(i + 1 + self.AHEAD, len(self.known))):
            held = self.ahead.get(k)
            if held is None or held[0] != at:
                if held is not None:
                    held[1].cancel()
                self.ahead[k] = (at, pool.submit(self._check, k, at))
            at += self.known[k].length
        return guessed[1].result() if guessed is not None else self._check(i, pos)


def input_digest(path: str | Path, known: Sequence[Chunk] = ()) -> tuple[str, list[Chunk] | None]:
    """An input's digest and its chunks, from one read of it (known: as for find_chunks).

    The digest hashes each chunk's hash and length in order: the same bytes give the same
    digest, and the chunks a sync needs come with it. A file that is not a regular file
    (a pipe) has no chunks and is hashed whole.
    """
    if not stat.S_ISREG(os.stat(path).st_mode):
        return file_sha256(path), None
    chunks = find_chunks(path, known)
    h = hashlib.sha256(b"gptbatch-input-digest-1\n" + _SEED)
    for chunk in chunks:
        h.update(chunk.hash + chunk.length.to_bytes(8, "big"))
    return h.hexdigest(), chunks


def chunk_digest(start: int, data: bytes) -> bytes:
    """The hash of a chunk of these bytes starting at this offset of its file."""
    h = _hasher(start)
    h.update(data)
    return h.digest()[:16]


def _same_at(f: BinaryIO, pos: int, chunk: Chunk, size: int, *, last: bool) -> bool:
    """Does the file hold chunk's bytes at pos? (A known last chunk ended at the end of its
    file, not at a boundary: it stands only if it ends this file too.)"""
    end = pos + chunk.length
    if end > size or (last and end != size):
        return False
    h = _hasher(pos)
    fd = f.fileno()
    while pos < end:
        data = os.pread(fd, min(end - pos, BLOCK), pos)
        if not data:
            return False
        h.update(data)
        pos += len(data)
    return h.digest()[:16] == chunk.hash


def _scan(f: BinaryIO, pos: int) -> Iterator[Chunk]:
    """The chunks from pos (a boundary) to the end of the file, found line by line.

    Reads 1 MiB first, then twice as much each time up to BLOCK: a scan stopped after a
    chunk or two (the file is in step again) has read little more than those.
    """
    f.seek(pos)
    block = min(1 << 20, BLOCK)
    carry = b""
    base = pos  # file offset of data[0]
    since = 0  # lines of the open chunk
    open_start, open_bytes, h = pos, 0, _hasher(pos)
    compress, not_, band, crc32 = itertools.compress, operator.not_, _MASK.__and__, zlib.crc32
    while more := f.read(block):
        block = min(block * 2, BLOCK)
        data = carry + more if carry else more
        lines = data.split(b"\n")
        carry = lines.pop()  # after the last newline: part of a line read on
        count = len(lines)
        if not count:
            continue
        # Candidate ends: lines whose CRC-32 has its low bits zero (all in C).
        candidates = compress(range(count), map(not_, map(band, map(crc32, lines))))
        ends = []
        last = -1 - since  # the index the open chunk started after
        for i in candidates:
            while i - last > MAX_LINES:
                last += MAX_LINES
                ends.append(last)
            if i - last >= MIN_LINES:
                ends.append(i)
                last = i
        while count - 1 - last >= MAX_LINES:
            last += MAX_LINES
            ends.append(last)
        cut = len(data) - len(carry)
        at = 0  # in data: where the open chunk's unhashed bytes start
        if ends:
            lengths = list(itertools.accumulate(map(len, lines)))
            view = memoryview(data)
            for end in ends:
                stop = lengths[end] + end + 1
                h.update(view[at:stop])
                open_bytes += stop - at
                yield Chunk(open_start, open_bytes, since + end + 1, h.digest()[:16])
                since = -end - 1
                at = stop
                open_start, open_bytes, h = base + stop, 0, _hasher(base + stop)
            h.update(view[at:cut])
            view.release()
        else:
            h.update(data[:cut] if carry else data)
        open_bytes += cut - at
        since += count
        base += cut
    if carry:  # a last line with no newline
        h.update(carry)
        open_bytes += len(carry)
        since += 1
    if open_bytes:
        yield Chunk(open_start, open_bytes, since, h.digest()[:16])
