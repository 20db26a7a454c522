"""Splitting request files into shard files that each fit a token limit (`gptbatch split`).

One read of the inputs (gptbatch.inputs.scan, on every core) validates and counts every line and
runs one Packer per (model, url) group, keeping per request only its group and byte range.
As soon as every request of a chunk is in a closed shard (while the read goes on), the
chunk is read again as raw bytes, checked against the sha256 taken on the first read (a
file that changed meanwhile is an error naming the line), and each line is copied into its
shard. Shards are written to temporary files and renamed into place only when all of them
are complete, so an error never leaves a mix of old and new shards.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import zlib
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from gptbatch.canonical import atomic_writer, fsync_dir
from gptbatch.errors import InputError, ItemTooLarge, Problem
from gptbatch.inputs.scan import (
    ReadChunk,
    ScannedRequest,
    Scanner,
    ScanOptions,
    ScanReport,
    changed_error,
)
from gptbatch.shards import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_REQUESTS,
    Caps,
    Packer,
    batch_caps,
)

SHARD_FILE = re.compile(r"shard-(\d{3,})-of-(\d{3,})\.jsonl")
_MAX_PROBLEMS = 50


@dataclass(frozen=True)
class ShardSummary:
    """One written shard: its file name, group and size."""

    name: str
    model: str | None
    url: str
    requests: int
    tokens: int
    nbytes: int


@dataclass(frozen=True)
class SplitResult:
    """What `split` wrote, and the stale shard files it removed."""

    out_dir: Path
    shards: tuple[ShardSummary, ...]
    removed: tuple[str, ...] = ()
    kept_inputs: tuple[str, ...] = ()  # stale-looking shard names left alone: they were inputs
    skipped: tuple[str, ...] = ()  # shard files of an earlier split named beside the inputs

    @property
    def requests(self) -> int:
        return sum(s.requests for s in self.shards)

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.shards)


def shard_names(count: int) -> list[str]:
    """shard-000-of-NNN.jsonl names, zero-padded to at least 3 digits, sorting in order."""
    width = max(3, len(str(count - 1)))
    return [f"shard-{i:0{width}d}-of-{count:03d}.jsonl" for i in range(count)]


@dataclass
class _Group:
    """Pass-1 state of one (model, url) group: its packer and its shards so far."""

    model: str | None
    url: str
    packer: Packer
    window: list[tuple[int, int]] = field(default_factory=list)  # (tokens, bytes) not yet final
    sizes: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    nbytes: list[int] = field(default_factory=list)
    added: int = 0  # requests packed so far
    placed: int = 0  # of them, those in closed shards

    def close(self, sizes: list[int]) -> None:
        for size in sizes:
            done, self.window = self.window[:size], self.window[size:]
            self.placed += size
            self.sizes.append(size)
            self.tokens.append(sum(t for t, _ in done))
            self.nbytes.append(sum(b for _, b in done))


def _too_large(req: ScannedRequest, exc: ItemTooLarge) -> Problem:
    what = {
        "tokens": (
            f"request {req.custom_id!r} needs ~{exc.value:,} prompt tokens, more than the "
            f"limit of {exc.cap:,} per shard",
            f"raise LIMIT to at least {exc.value:,} or shorten this request",
        ),
        "bytes": (
            f"request {req.custom_id!r} is {exc.value:,} bytes, more than the {exc.cap:,} "
            "bytes allowed per shard",
            "raise --max-bytes (the Batch API takes up to 200 MB per file) or shrink the request",
        ),
        "inputs": (
            f"request {req.custom_id!r} has {exc.value:,} embedding inputs, more than the "
            f"{exc.cap:,} allowed per batch",
            "split its input list over several requests",
        ),
        "requests": (
            f"no request fits a shard of {exc.cap:,} requests",
            "use --max-requests 1 or more",
        ),
    }[exc.dimension]
    return Problem(req.path, req.line, *what)


@dataclass
class _Layout:
    """Per valid request, in input order: its group and where its bytes are (for copying)."""

    group: array = field(default_factory=lambda: array("I"))
    offset: array = field(default_factory=lambda: array("q"))
    length: array = field(default_factory=lambda: array("q"))
    crc: array = field(default_factory=lambda: array("I"))
    line: array = field(default_factory=lambda: array("Q"))
    rank: array = field(default_factory=lambda: array("I"))  # its place within its group

    def add(self, group: int, rank: int, req: ScannedRequest) -> None:
        self.group.append(group)
        self.rank.append(rank)
        self.offset.append(req.offset)
        self.length.append(req.length)
        self.crc.append(req.crc)
        self.line.append(req.line)


def _plan(scanner: Scanner, caps: Caps, copier: _Copier) -> list[_Group]:
    """Read every line once: validate, count, pack; copy lines whose shards are final."""
    groups: dict[tuple[str | None, str], _Group] = {}
    order: dict[tuple[str | None, str], int] = {}
    layout = copier.layout
    problems: list[Problem] = []
    too_many = 0
    try:
        for req in scanner.requests():
            key = (req.model, req.url)
            group = groups.get(key)
            if group is None:
                group_caps = batch_caps(
                    req.url,
                    caps.max_tokens,
                    max_requests=caps.max_requests,
                    max_bytes=caps.max_bytes,
                )
                group = groups[key] = _Group(req.model, req.url, Packer(group_caps))
                order[key] = len(order)
                copier.groups.append(group)
            nbytes = req.length + 1  # the line and its "\n" in the shard file
            try:
                closed = group.packer.push(req.key, req.tokens, nbytes, req.inputs)
            except ItemTooLarge as exc:
                if len(problems) < _MAX_PROBLEMS:
                    problems.append(_too_large(req, exc))
                else:
                    too_many += 1
                copier.stopped = True  # the split fails: copying more is wasted
                continue
            layout.add(order[key], group.added, req)
            group.added += 1
            group.window.append((req.tokens, nbytes))
            if closed:
                group.close(closed)
                copier.advance()
    except InputError as exc:
        raise InputError(exc.problems + problems, truncated=exc.truncated + too_many) from None
    if problems:
        raise InputError(problems, truncated=too_many)
    for group in groups.values():
        group.close(group.packer.finish())
    return list(groups.values())


def _read_window(path: str, start: int, end: int) -> bytes:
    """Bytes [start, end) of a file as it is now (shorter if it shrank)."""
    parts = []
    with open(path, "rb") as f:
        f.seek(start)
        remaining = end - start
        while remaining > 0 and (block := f.read(min(remaining, 1 << 24))):
            parts.append(block)
            remaining -= len(block)
    return b"".join(parts)


def _changed_line(read: ReadChunk, data: bytes, layout: _Layout, stop: int) -> int:
    """The first line of a changed chunk whose bytes differ from when it was read."""
    base = read.chunk.window_start
    for r in range(read.first_record, stop):
        begin = layout.offset[r] - base
        if zlib.crc32(data[begin : begin + layout.length[r]]) != layout.crc[r]:
            return int(layout.line[r])
    return read.first_line


class _Shards:
    """Each group's shard part files, filled in order while the inputs are read.

    Final names (shard-000-of-NNN) need the total count, known only at the end, so parts
    are named by group and ordinal until then.
    """

    def __init__(self, groups: list[_Group], out_dir: Path, tag: str) -> None:
        self.groups = groups  # grows as the read finds new groups
        self.out_dir = out_dir
        self.tag = tag
        self.position: list[list[int]] = []  # per group: shard ordinal, lines written to it
        self.writers: dict[int, Any] = {}  # group -> (context manager, file)
        self.parts: dict[tuple[int, int], Path] = {}
        self.made_dir = False

    def where(self, group: int) -> list[int]:
        while len(self.position) <= group:
            self.position.append([0, 0])
        return self.position[group]

    def file(self, group: int) -> IO[bytes]:
        writer = self.writers.get(group)
        if writer is None:
            if not self.parts and not self.out_dir.is_dir():
                self.out_dir.mkdir(parents=True, exist_ok=True)
                self.made_dir = True
            ordinal = self.where(group)[0]
            part = self.out_dir / f".shard-g{group}-{ordinal}.{self.tag}.part"
            self.parts[(group, ordinal)] = part
            manager = atomic_writer(part, "wb", sync_dir=False)  # synced once, at the end
            writer = self.writers[group] = (manager, manager.__enter__())
        return writer[1]

    def room(self, group: int) -> int:
        """Lines the group's current shard still takes."""
        where = self.where(group)
        return self.groups[group].sizes[where[0]] - where[1]

    def wrote(self, group: int, lines: int = 1) -> None:
        where = self.where(group)
        where[1] += lines
        if where[1] == self.groups[group].sizes[where[0]]:
            manager, _ = self.writers.pop(group)
            manager.__exit__(None, None, None)
            where[0], where[1] = where[0] + 1, 0

    def keep_dir(self) -> None:
        """Make out_dir if need be, and keep it whatever happens next."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.made_dir = False

    def named(self, names: list[str]) -> dict[str, Path]:
        """The part file of each final shard name."""
        named: dict[str, Path] = {}
        index = 0
        for g, group in enumerate(self.groups):
            for ordinal in range(len(group.sizes)):
                named[names[index]] = self.parts[(g, ordinal)]
                index += 1
        return named

    def abort(self, exc: BaseException) -> None:
        for manager, _ in self.writers.values():
            with contextlib.suppress(Exception):
                manager.__exit__(type(exc), exc, exc.__traceback__)
        self.writers.clear()
        _remove(list(self.parts.values()))
        if self.made_dir:
            with contextlib.suppress(OSError):
                self.out_dir.rmdir()  # only if still empty


class _Copier:
    """Copies each chunk's lines into their shards as soon as every one of them is in a
    closed shard, while the read goes on, instead of in a second pass after it.

    Each chunk is read again whole and its sha256 compared with the one taken when it was
    first read, so the bytes copied are the bytes that were validated and counted.
    """

    def __init__(self, report: ScanReport, out_dir: Path, tag: str) -> None:
        self.report = report
        self.layout = _Layout()
        self.groups: list[_Group] = []
        self.shards = _Shards(self.groups, out_dir, tag)
        self.placed = 0  # requests [0, placed) are all in closed shards
        self.copied = 0  # chunks copied
        self.stopped = False

    def advance(self) -> None:
        """Copy every chunk whose requests all have their final shard."""
        report = self.report
        if self.stopped or report.loose:  # a failing split, or one that will fail
            return
        group_of, rank, groups = self.layout.group, self.layout.rank, self.groups
        placed, known = self.placed, len(group_of)
        while placed < known and rank[placed] < groups[group_of[placed]].placed:
            placed += 1
        self.placed = placed
        chunks = report.chunks
        while self.copied + 1 < len(chunks) and chunks[self.copied + 1].first_record <= placed:
            _copy_chunk(chunks[self.copied], chunks[self.copied + 1].first_record, self)
            self.copied += 1

    def finish(self) -> None:
        """After the read and the last shards closed: copy the rest, check the inputs."""
        report = self.report
        for path in report.loose.values():
            raise InputError(
                Problem(
                    path,
                    None,
                    "is not a regular file: split reads each input twice (to check and to copy)",
                    "save it to a file first",
                )
            )
        chunks = report.chunks
        for c in range(self.copied, len(chunks)):
            stop = chunks[c + 1].first_record if c + 1 < len(chunks) else report.records
            _copy_chunk(chunks[c], stop, self)
        self.copied = len(chunks)
        _check_sizes(report)
        if self.shards.writers:
            raise changed_error(chunks[-1].chunk.path if chunks else "", None)


def _copy_chunk(read: ReadChunk, stop: int, copier: _Copier) -> None:
    """Copy requests [read.first_record, stop) of a chunk, checking its bytes are unchanged."""
    chunk = read.chunk
    data = _read_window(chunk.path, chunk.window_start, chunk.end)
    if hashlib.sha256(data).hexdigest() != read.sha256:
        raise changed_error(chunk.path, _changed_line(read, data, copier.layout, stop))
    _copy_lines(data, chunk.window_start, copier.layout, read.first_record, stop, copier.shards)


def _copy_lines(
    data: bytes, base: int, layout: _Layout, first: int, stop: int, shards: _Shards
) -> None:
    """Copy records [first, stop) of a chunk read whole (data starts at byte base) to shards.

    Consecutive records of one shard that are separated by exactly one "\n" in the input
    (the common case: one model, LF line ends, no blank lines) go out as one write of the
    input's own bytes, so the cost is per run of lines rather than per line.
    """
    view = memoryview(data)
    group_of, offset, length = layout.group, layout.offset, layout.length
    r = first
    while r < stop:
        group = group_of[r]
        room = shards.room(group)
        begin = offset[r] - base
        end = begin + length[r]
        n = 1
        while (
            n < room
            and r + n < stop
            and group_of[r + n] == group
            and offset[r + n] - base == end + 1
            and data[end] == 10  # the one byte between is "\n"
        ):
            end = offset[r + n] - base + length[r + n]
            n += 1
        f = shards.file(group)
        if end < len(data) and data[end] == 10:
            f.write(view[begin : end + 1])
        else:
            f.write(view[begin:end])
            f.write(b"\n")
        shards.wrote(group, n)
        r += n


def _check_sizes(report: ScanReport) -> None:
    """Every input still has the size it had when read (nothing was appended)."""
    lines: dict[int, int] = {}
    paths: dict[int, str] = {}
    for read in report.chunks:
        paths[read.chunk.index] = read.chunk.path
        lines[read.chunk.index] = read.first_line
    for index, size in report.sizes.items():
        path = paths.get(index)
        if path is None:
            continue
        try:
            now = os.stat(path).st_size
        except OSError:
            now = -1
        if now != size:
            raise changed_error(path, lines.get(index))


def _remove(paths: Sequence[Path]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _stale(out_dir: Path, keep: set[str], inputs: Sequence[Path]) -> Iterator[tuple[Path, bool]]:
    """(path, is an input) for each shard file in out_dir that is not one of keep."""
    for entry in sorted(os.listdir(out_dir)):
        if SHARD_FILE.fullmatch(entry) and entry not in keep:
            path = out_dir / entry
            yield path, any(_same_file(path, i) for i in inputs)


def earlier_shards(paths: Sequence[str | Path], out_dir: Path) -> tuple[list[Path], list[str]]:
    """(the files to split, shard files of an earlier split that the list also named).

    `split LIMIT *.jsonl`, run again in the directory it writes to, would read its own
    shards as inputs and put every request in twice: when the files name both request files
    and shard files in out_dir, those shard files are an earlier run's output and are
    skipped. Shard files named alone are split again.
    """
    files = [Path(p) for p in paths]
    shards = [f for f in files if SHARD_FILE.fullmatch(f.name) and _same_file(f.parent, out_dir)]
    if not shards or len(shards) == len(files):
        return files, []
    return [f for f in files if f not in shards], [str(f) for f in shards]


def split_files(
    paths: Sequence[str | Path],
    limit: int,
    *,
    out_dir: str | Path = ".",
    max_requests: int = DEFAULT_MAX_REQUESTS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    options: ScanOptions | None = None,
) -> SplitResult:
    """Split request files into shard files of at most `limit` estimated tokens each."""
    if limit < 1:
        raise InputError(Problem("LIMIT", None, f"must be 1 or more, got {limit}", ""))
    if max_requests < 1 or max_bytes < 1:
        raise InputError(Problem("--max-requests/--max-bytes", None, "must be 1 or more", ""))
    caps = Caps(max_tokens=limit, max_requests=max_requests, max_bytes=max_bytes)
    out = Path(out_dir)
    files, skipped = earlier_shards(paths, out) if out.is_dir() else ([Path(p) for p in paths], [])
    paths = files
    scanner = Scanner(paths, options or ScanOptions(max_problems=_MAX_PROBLEMS))
    scanner.join_workers = False  # they exit while the last shards are copied
    scanner.stream_counts()  # the cache's inserts run beside the workers, not after them
    copier = _Copier(scanner.report, out, os.urandom(4).hex())
    try:
        groups = _plan(scanner, caps, copier)
        if not copier.layout.group:
            raise InputError(
                Problem(", ".join(str(p) for p in paths), None, "no requests to split", "")
            )
        copier.shards.keep_dir()  # as the inputs are read: the directory stays, as it did
        scanner.prepare_counts()  # the last counts to the cache's writer
        copier.finish()
        names = shard_names(sum(len(g.sizes) for g in groups))
        parts = copier.shards.named(names)
        for name in names:
            os.replace(parts[name], out / name)
        fsync_dir(out)  # the final names, once (each part's own rename is not worth one)
    except BaseException as exc:
        copier.shards.abort(exc)
        scanner.discard_counts()
        raise
    scanner.commit_counts()
    inputs = [Path(p) for p in paths]
    removed: list[str] = []
    kept: list[str] = []
    for path, is_input in _stale(out, set(names), inputs):
        if is_input:
            kept.append(path.name)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            removed.append(path.name)
    summaries = []
    i = 0
    for group in groups:
        for size, tokens, nbytes in zip(group.sizes, group.tokens, group.nbytes, strict=True):
            summaries.append(ShardSummary(names[i], group.model, group.url, size, tokens, nbytes))
            i += 1
    return SplitResult(out, tuple(summaries), tuple(removed), tuple(kept), tuple(skipped))
