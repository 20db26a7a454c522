"""Splitting request files into shard files that each fit a token limit (`gptbatch split`).

Two streaming passes keep memory flat however large the input: pass 1 validates every line,
estimates its tokens and runs one Packer per (model, url) group, keeping only shard sizes;
pass 2 reads the files again and copies each raw line into its shard. Shards are written to
temporary files and renamed into place only when all of them are complete, so an error never
leaves a mix of old and new shards.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from gptbatch.canonical import atomic_writer
from gptbatch.errors import InputError, Problem
from gptbatch.requests import Request, read_requests
from gptbatch.shards import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_REQUESTS,
    EMBEDDING_MAX_INPUTS,
    Caps,
    Item,
    ItemTooLarge,
    Packer,
    embedding_inputs,
)
from gptbatch.tokens import estimate_request

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

    def close(self, sizes: list[int]) -> None:
        for size in sizes:
            done, self.window = self.window[:size], self.window[size:]
            self.sizes.append(size)
            self.tokens.append(sum(t for t, _ in done))
            self.nbytes.append(sum(b for _, b in done))


def _too_large(req: Request, exc: ItemTooLarge) -> Problem:
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


def _note(digest: Any, req: Request) -> None:
    digest.update(f"{req.path}\0{req.offset}\0{req.length}\0{req.key}\n".encode())


def _plan(paths: Sequence[str | Path], caps: Caps) -> tuple[list[_Group], int, str]:
    """Pass 1: validate and estimate every line; return the groups with their shard sizes."""
    groups: dict[tuple[str | None, str], _Group] = {}
    problems: list[Problem] = []
    too_many = 0
    digest = hashlib.sha256()
    count = 0
    try:
        for req in read_requests(paths, max_problems=_MAX_PROBLEMS):
            count += 1
            _note(digest, req)
            key = (req.model, req.url)
            group = groups.get(key)
            if group is None:
                group_caps = caps
                if req.url == "/v1/embeddings":
                    group_caps = Caps(
                        caps.max_tokens, caps.max_requests, caps.max_bytes, EMBEDDING_MAX_INPUTS
                    )
                group = groups[key] = _Group(req.model, req.url, Packer(group_caps))
            tokens = estimate_request(req.url, req.body).tokens
            inputs = embedding_inputs(req.body) if req.url == "/v1/embeddings" else 1
            nbytes = req.length + 1  # the line and its "\n" in the shard file
            try:
                closed = group.packer.add(Item(req.key, tokens, nbytes, inputs))
            except ItemTooLarge as exc:
                if len(problems) < _MAX_PROBLEMS:
                    problems.append(_too_large(req, exc))
                else:
                    too_many += 1
                continue
            group.window.append((tokens, nbytes))
            group.close(closed)
    except InputError as exc:
        raise InputError(exc.problems + problems, truncated=exc.truncated + too_many) from None
    if problems:
        raise InputError(problems, truncated=too_many)
    for group in groups.values():
        group.close(group.packer.finish())
    return list(groups.values()), count, digest.hexdigest()


class _RawLines:
    """Reads raw line bytes by (path, offset, length), keeping one file open at a time."""

    def __init__(self) -> None:
        self.path: str | None = None
        self.file: IO[bytes] | None = None

    def read(self, path: str, offset: int, length: int) -> bytes:
        if path != self.path or self.file is None:
            self.close()
            self.file = open(path, "rb")  # noqa: SIM115 - kept open across calls
            self.path = path
        self.file.seek(offset)
        data = self.file.read(length)
        if len(data) != length:
            raise _changed(path)
        return data

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        self.file, self.path = None, None


def _changed(path: str | None = None) -> InputError:
    return InputError(
        Problem(
            path or "",
            None,
            "an input file changed while it was being split; no shard was replaced",
            "run the command again when the inputs are no longer being written",
        )
    )


def _write(
    paths: Sequence[str | Path],
    groups: list[_Group],
    names: list[str],
    out_dir: Path,
    tag: str,
    count: int,
    digest: str,
) -> dict[str, Path]:
    """Pass 2: copy each raw line into its shard's temporary file; return them by name."""
    first: dict[tuple[str | None, str], int] = {}
    index = 0
    for group in groups:
        first[(group.model, group.url)] = index
        index += len(group.sizes)
    by_key = {(g.model, g.url): g for g in groups}
    position = {key: [0, 0] for key in by_key}  # shard within group, lines written to it
    writers: dict[tuple[str | None, str], Any] = {}  # group -> (context manager, file)
    parts: dict[str, Path] = {}
    raw = _RawLines()
    seen = hashlib.sha256()
    written = 0
    try:
        for req in read_requests(paths, max_problems=_MAX_PROBLEMS):
            key = (req.model, req.url)
            group = by_key.get(key)
            if group is None:
                raise _changed(req.path)
            where = position[key]
            if where[0] >= len(group.sizes):
                raise _changed(req.path)
            if key not in writers:
                name = names[first[key] + where[0]]
                parts[name] = out_dir / f".{name}.{tag}.part"
                manager = atomic_writer(parts[name], "wb")
                writers[key] = (manager, manager.__enter__())
            writers[key][1].write(raw.read(req.path, req.offset, req.length) + b"\n")
            _note(seen, req)
            written += 1
            where[1] += 1
            if where[1] == group.sizes[where[0]]:
                manager, _ = writers.pop(key)
                manager.__exit__(None, None, None)
                where[0], where[1] = where[0] + 1, 0
        if written != count or seen.hexdigest() != digest or writers:
            raise _changed()
    except BaseException as exc:
        for manager, _ in writers.values():
            with contextlib.suppress(Exception):
                manager.__exit__(type(exc), exc, exc.__traceback__)
        _remove(list(parts.values()))
        raise
    finally:
        raw.close()
    return parts


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


def split_files(
    paths: Sequence[str | Path],
    limit: int,
    *,
    out_dir: str | Path = ".",
    max_requests: int = DEFAULT_MAX_REQUESTS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> SplitResult:
    """Split request files into shard files of at most `limit` estimated tokens each."""
    if limit < 1:
        raise InputError(Problem("LIMIT", None, f"must be 1 or more, got {limit}", ""))
    if max_requests < 1 or max_bytes < 1:
        raise InputError(Problem("--max-requests/--max-bytes", None, "must be 1 or more", ""))
    caps = Caps(max_tokens=limit, max_requests=max_requests, max_bytes=max_bytes)
    groups, count, digest = _plan(paths, caps)
    if count == 0:
        raise InputError(
            Problem(", ".join(str(p) for p in paths), None, "no requests to split", "")
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    total = sum(len(g.sizes) for g in groups)
    names = shard_names(total)
    parts = _write(paths, groups, names, out, os.urandom(4).hex(), count, digest)
    try:
        for name in names:
            os.replace(parts[name], out / name)
    except BaseException:
        _remove(list(parts.values()))
        raise
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
    return SplitResult(out, tuple(summaries), tuple(removed), tuple(kept))
