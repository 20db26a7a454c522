"""Reading request files once, on every core: each valid request with its token count.

How: each regular input file is cut at newlines into chunks of about a megabyte. Worker
processes (one per core) read a chunk, validate its lines with the very checks
read_requests makes (`line_validator`), hash the chunk, compute content keys, look the keys
up in the token cache and count the rest with tiktoken. They send back compact records.

The parent takes the chunks' results in file order and keeps the state that spans lines:
custom_ids seen in any file (a compact hash index, gptbatch.inputs.seen_ids), and each file's one
endpoint. A line a worker found wrong, or whose custom_id or url the parent finds clashing,
is validated again in the parent, in order, by the same validator holding that state, so
problems, their order and the cap of shown problems are exactly read_requests'. Small
inputs, or one core, take the same path in the parent alone (no process start-up). Files
that are not regular files (pipes, missing paths, directories) are read by read_requests'
own file reader.

The parent reads the first 64 KB itself before forking the workers: if counting was
needed, tiktoken's encoding is loaded once there and shared with the workers.

Line numbers: a chunk after the first starts one byte early, on the newline that ends the
previous chunk, so its first "line" is that blank newline; workers number lines from 1 in
their chunk and the parent shifts them by the lines of the chunks before.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from gptbatch.errors import GptbatchError, InputError, Problem
from gptbatch.inputs import fast_counter
from gptbatch.inputs.requests import (
    DEFAULT_MAX_LINE_BYTES,
    DEFAULT_MAX_PROBLEMS,
    Request,
    iter_lines,
    line_validator,
    read_raw_line,
)
from gptbatch.inputs.seen_ids import OFFSET_BITS, SeenIds
from gptbatch.inputs.sightings import custom_id_of, line_at
from gptbatch.inputs.token_cache import (
    CachedCount,
    PendingCounts,
    TokenCache,
    cache_path,
    estimator_version,
)
from gptbatch.processes import start_worker, worker_context
from gptbatch.shards import embedding_inputs

PARALLEL_MIN_BYTES = 4 << 20  # below this, process start-up costs more than it saves
MIN_CHUNK_BYTES = 256 << 10
FIRST_CHUNK_BYTES = 64 << 10  # the parent's, before the fork: serial, so small (see above)
MAX_CHUNK_BYTES = 4 << 20
_CHUNKS_PER_WORKER = 24  # small enough chunks that no worker idles long at the end
_SCAN_BLOCK = 1 << 16  # bytes read at a time while looking for a chunk's closing newline


class ScannedRequest(NamedTuple):
    """One valid request line: its key, group, token count, and where it is.

    A named tuple: the parent makes one per request (a million for a large input), four
    times faster than a frozen dataclass.
    """

    key: str
    custom_id: str
    url: str
    model: str | None
    tokens: int
    encoding: str
    caveats: tuple[str, ...]
    inputs: int  # embedding inputs it counts against a batch (1 for other endpoints)
    extra: Any  # ScanOptions.extra(request, line), or None
    crc: int  # crc32 of the line's raw bytes
    path: str
    line: int
    offset: int
    length: int


@dataclass(frozen=True)
class ScanOptions:
    """How to read: config defaults, limits, and what to compute per request."""

    model: str | None = None
    endpoint: str | None = None
    max_problems: int = DEFAULT_MAX_PROBLEMS
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    # Computed per valid request in the worker, from the request and its line's raw bytes
    # (None for a file read whole: not a regular file); must be a module-level function.
    extra: Callable[[Request, bytes | None], Any] | None = None
    workers: int | None = None  # None: GPTBATCH_WORKERS, else one per core for large inputs
    chunk_bytes: int | None = None  # None: sized from the input and the workers
    use_cache: bool = True


@dataclass(frozen=True)
class Chunk:
    """A byte range of one file: [start, end), read from window_start (a newline before it)."""

    index: int  # the file's position among the inputs
    path: str
    window_start: int
    start: int
    end: int
    last: bool  # ends the file (as it was when the chunks were cut)


@dataclass(frozen=True)
class ReadChunk:
    """A chunk as read: its hash, first line and the records it gave (by position)."""

    chunk: Chunk
    sha256: str
    first_line: int
    first_record: int  # records yielded before this chunk's


@dataclass(frozen=True)
class _ChunkResult:
    lines: int  # lines in the window, counting the leading newline's
    sha256: str
    items: list[tuple[Any, ...]]  # _clean (14 fields) or _dirty (4 fields) tuples
    torn: bool  # the window does not start or end on a newline: the file changed


@dataclass
class ScanReport:
    """What a scan read, for a caller that copies lines afterwards (split)."""

    chunks: list[ReadChunk] = field(default_factory=list)
    sizes: dict[int, int] = field(default_factory=dict)  # file index -> size when cut
    unchunked: set[int] = field(default_factory=set)  # files read by read_requests' reader
    loose: dict[int, str] = field(default_factory=dict)  # unchunked files that gave requests
    records: int = 0


def changed_error(path: str, line: int | None) -> InputError:
    """The error for an input that changed between being read and being used."""
    return InputError(
        Problem(
            path,
            line,
            "changed while gptbatch ran (its bytes differ from when they were read); "
            "nothing was written",
            "run the command again when the inputs are no longer being written",
        )
    )


def worker_count(options: ScanOptions, total_bytes: int) -> int:
    """How many worker processes to use; 0 means read in this process."""
    wanted = options.workers
    if wanted is None:
        env = os.environ.get("GPTBATCH_WORKERS", "")
        if env.strip().isdigit():
            wanted = int(env)
        elif total_bytes < PARALLEL_MIN_BYTES:
            return 0
        else:
            wanted = _cores()
    return 0 if wanted <= 1 else wanted


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def _chunk_size(options: ScanOptions, total_bytes: int, workers: int) -> int:
    if options.chunk_bytes is not None:
        return max(1, options.chunk_bytes)
    env = os.environ.get("GPTBATCH_CHUNK_BYTES", "")  # for tests and benchmarks
    if env.strip().isdigit():
        return max(1, int(env))
    size = total_bytes // (max(workers, 1) * _CHUNKS_PER_WORKER)
    return min(MAX_CHUNK_BYTES, max(MIN_CHUNK_BYTES, size))


def cut_chunks(
    index: int, path: str, size: int, chunk_bytes: int, first_bytes: int | None = None
) -> Iterator[Chunk]:
    """Cut a file of size bytes into chunks ending just after a newline (or at the end)."""
    with open(path, "rb") as f:
        start = 0
        while start < size:
            want = chunk_bytes if start or first_bytes is None else first_bytes
            end = _next_boundary(f, start + want, size)
            yield Chunk(index, path, max(0, start - 1), start, end, end >= size)
            start = end


def _next_boundary(f: Any, target: int, size: int) -> int:
    """The offset just after the first newline at or after target - 1; size if none."""
    if target >= size:
        return size
    position = target - 1
    f.seek(position)
    while block := f.read(_SCAN_BLOCK):
        found = block.find(b"\n")
        if found >= 0:
            return min(size, position + found + 1)
        position += len(block)
    return size


class _Window(io.RawIOBase):
    """A read-only view of bytes [start, end) of a file, hashing what is read."""

    def __init__(self, fd: int, start: int, end: int) -> None:
        super().__init__()
        self.fd = fd
        self.position = start
        self.end = end
        self.digest = hashlib.sha256()
        self.first = b""
        self.last = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        want = min(len(buffer), self.end - self.position)
        if want <= 0:
            return 0
        data = os.pread(self.fd, want, self.position)
        n = len(data)
        if not n:
            return 0
        if not self.first:
            self.first = data[:1]
        self.last = data[-1:]
        buffer[:n] = data
        self.position += n
        self.digest.update(data)
        return n


class ChunkReader:
    """Reads chunks: validates lines, keys them, counts their tokens (in a worker or here)."""

    early_load = False  # the parent's: start fastokens' load if the first chunk is cold

    def __init__(self, options: ScanOptions, version: str, path: Path | None) -> None:
        self.options = options
        self.version = version
        self.cache = TokenCache(path if options.use_cache else None, version)

    def read(self, chunk: Chunk) -> _ChunkResult:
        options = self.options
        validator = line_validator(
            [chunk.path],
            model=options.model,
            endpoint=options.endpoint,
            max_problems=0,
            max_line_bytes=options.max_line_bytes,
        )
        group: list[Any] = [None, 0]
        items: list[tuple[Any, ...]] = []
        valid: list[tuple[int, Request, bytes]] = []  # (position in items, request, line)
        lines = 0
        fd = os.open(chunk.path, os.O_RDONLY)
        try:
            window = _Window(fd, chunk.window_start, chunk.end)
            reader = io.BufferedReader(window, 1 << 20)
            for number, offset, content, length in iter_lines(reader, options.max_line_bytes):
                lines = number
                if content is not None and (not content or content.isspace()):
                    continue
                offset += chunk.window_start
                request = validator.read_line(0, number, offset, content, length, group)
                if request is None:
                    items.append((number, offset, content, length))
                else:
                    valid.append((len(items), request, content or b""))
                    items.append(())
        finally:
            os.close(fd)
        torn = (chunk.start > 0 and window.first != b"\n") or (
            not chunk.last and window.last != b"\n"
        )
        known = self.cache.lookup([request.key for _, request, _ in valid])
        early, self.early_load = self.early_load, False  # the first chunk read decides
        if early and len(known) < len(valid) and fast_counter.may_start():
            fast_counter.start_loading_for([r.model for _, r, _ in valid if r.key not in known])
        for position, request, line in valid:
            count = known.get(request.key)
            items[position] = _clean(request, count, line, options.extra)
        return _ChunkResult(lines, window.digest.hexdigest(), items, torn)


def _estimate(request: Request) -> Any:
    """The request's Estimate: tokens, encoding and caveats, read as a CachedCount's are."""
    from gptbatch.inputs.tokens.endpoints import estimate_request  # tiktoken: only if needed

    return estimate_request(request.url, request.body)


def _clean(
    request: Request,
    count: CachedCount | None,
    line: bytes | None,
    extra: Callable[[Request, bytes | None], Any] | None,
) -> tuple[Any, ...]:
    """A valid request's record; line is its raw bytes (None if unknown: crc 0)."""
    fresh = count is None
    if count is None:
        count = _estimate(request)
    inputs = embedding_inputs(request.body) if request.url == "/v1/embeddings" else 1
    return (
        request.line,
        request.offset,
        request.length,
        request.key,
        request.custom_id,
        request.url,
        request.model,
        count.tokens,
        count.encoding,
        count.caveats,
        inputs,
        None if extra is None else extra(request, line),
        zlib.crc32(line or b""),
        fresh,
    )


_WORKER: ChunkReader | None = None


def _init_worker(options: ScanOptions, version: str, path: Path | None, parent: int) -> None:
    global _WORKER
    start_worker(parent)
    _WORKER = ChunkReader(options, version, path)


def _read_in_worker(chunk: Chunk) -> _ChunkResult:
    assert _WORKER is not None
    return _WORKER.read(chunk)


class Scanner:
    """One read of request files: iterate `requests()`, then `commit_counts()` on success."""

    def __init__(self, paths: Sequence[str | Path], options: ScanOptions | None = None) -> None:
        self.options = options or ScanOptions()
        self.names = [str(p) for p in paths]
        total = sum(self._regular_sizes().values())  # the counter first: the version names it
        fast_counter.select(total, worker_count(self.options, total))
        self.version = estimator_version()
        self.cache_file = cache_path() if self.options.use_cache else None
        self.pending = PendingCounts(self.cache_file, self.version)
        self.report = ScanReport()
        self.join_workers = True  # wait for the workers to exit before the read ends
        self.streaming = False  # see stream_counts

    def commit_counts(self) -> None:
        """Remember the counts made in this run (call only when the command succeeded)."""
        self.pending.commit()

    def commit_counts_behind(self) -> None:
        """Remember this run's counts on a thread (see PendingCounts.commit_behind)."""
        self.pending.commit_behind()

    def stream_counts(self) -> None:
        """Write the counts while reading (PendingCounts.stream), from the workers' fork on."""
        self.streaming = True

    def prepare_counts(self) -> None:
        """Start writing this run's counts in the background (see PendingCounts.prepare)."""
        self.pending.prepare()

    def discard_counts(self) -> None:
        self.pending.discard()

    def requests(self) -> Iterator[ScannedRequest]:
        """Stream the valid requests in order; at the end raise InputError as read_requests."""
        options = self.options
        validator = line_validator(
            self.names,
            model=options.model,
            endpoint=options.endpoint,
            max_problems=options.max_problems,
            max_line_bytes=options.max_line_bytes,
        )
        sizes = self._regular_sizes()
        total = sum(sizes.values())
        workers = worker_count(options, total)
        chunk_bytes = _chunk_size(options, total, workers)
        local = ChunkReader(options, self.version, self.cache_file)
        local.early_load = True
        state = _ParentState(self, validator, local)
        first_bytes = min(chunk_bytes, FIRST_CHUNK_BYTES) if workers else None
        units = self._units(sizes, chunk_bytes, first_bytes)
        if workers:
            yield from state.consume(self._in_workers(units, local, workers))
        else:
            self._streaming()
            here = ((u, _read_here(local, u)) for u in units)
            yield from state.consume(fast_counter.loading_after_first(here))
        if validator.count:
            raise InputError(
                validator.problems, truncated=validator.count - len(validator.problems)
            )

    def _in_workers(
        self, units: Iterator[Chunk | int], local: ChunkReader, workers: int
    ) -> Iterator[tuple[Chunk | int, _ChunkResult | None]]:
        """Each unit with its result, in order, read by worker processes where possible."""
        # The parent reads a small first chunk itself before forking: if that needed a
        # count, the counters (tiktoken; fastokens if selected) load here once, shared with
        # the workers (copy on write) instead of loaded by each; a warm cache loads neither.
        first = next(units, None)
        if first is not None:
            yield first, _read_here(local, first)
        fast_counter.before_fork()
        pool = _start_pool(workers, (self.options, self.version, self.cache_file))
        self._streaming()  # after the fork: a fork copies no thread, and no lock one held
        if pool is None:  # no processes to be had: read everything here
            yield from ((u, _read_here(local, u)) for u in units)
            return
        finished = False
        try:
            yield from _ahead(units, pool, 3 * workers)
            finished = True
        finally:  # idle workers may exit as the caller goes on (the interpreter joins them)
            pool.shutdown(wait=self.join_workers or not finished, cancel_futures=True)

    def _streaming(self) -> None:
        if self.streaming:
            self.pending.stream()

    def _regular_sizes(self) -> dict[int, int]:
        sizes: dict[int, int] = {}
        for index, name in enumerate(self.names):
            try:
                info = os.stat(name)
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode):
                sizes[index] = info.st_size
        return sizes

    def _units(
        self, sizes: dict[int, int], chunk_bytes: int, first_bytes: int | None = None
    ) -> Iterator[Chunk | int]:
        """Every file's chunks in order; a file index alone for files read whole."""
        for index, name in enumerate(self.names):
            size = sizes.get(index)
            if size is None:
                self.report.unchunked.add(index)
                yield index
                continue
            self.report.sizes[index] = size
            try:
                yield from cut_chunks(index, name, size, chunk_bytes, first_bytes)
                if size:
                    first_bytes = None
            except OSError:
                self.report.unchunked.add(index)
                yield index  # unreadable after all: the file reader reports it


def _read_here(reader: ChunkReader, unit: Chunk | int) -> _ChunkResult | None:
    return None if isinstance(unit, int) else reader.read(unit)


def _start_pool(workers: int, initargs: tuple[Any, ...]) -> ProcessPoolExecutor | None:
    """Worker processes for chunks, or None if the system refuses to start them."""
    try:
        return ProcessPoolExecutor(
            workers,
            mp_context=worker_context(),
            initializer=_init_worker,
            initargs=(*initargs, os.getpid()),
        )
    except (OSError, ValueError):
        return None


def _result(pending: Future[_ChunkResult]) -> _ChunkResult:
    try:
        return pending.result()
    except BrokenProcessPool:
        raise GptbatchError(
            "a worker process reading the inputs died (killed, or out of memory?): "
            "run again, or set GPTBATCH_WORKERS=1 to read in one process"
        ) from None


def _ahead(
    units: Iterator[Chunk | int], pool: ProcessPoolExecutor, depth: int
) -> Iterator[tuple[Chunk | int, _ChunkResult | None]]:
    """Results in order, with up to depth chunks being read by the pool meanwhile."""
    queue: deque[tuple[Chunk | int, Any]] = deque()
    for unit in units:
        queue.append((unit, None if isinstance(unit, int) else pool.submit(_read_in_worker, unit)))
        while len(queue) > depth or (queue and isinstance(queue[0][0], int)):
            head, pending = queue.popleft()
            yield head, None if pending is None else _result(pending)
    while queue:
        head, pending = queue.popleft()
        yield head, None if pending is None else _result(pending)


class _ParentState:
    """The cross-line state of one scan, and the parent's share of the work."""

    def __init__(self, scanner: Scanner, validator: Any, local: ChunkReader) -> None:
        self.scanner = scanner
        self.validator = validator
        self.local = local
        self.groups: list[list[Any]] = [[None, 0] for _ in scanner.names]
        self.ids = SeenIds()  # custom_ids of lines taken without re-validation
        self.lines: dict[int, int] = {}  # file index -> lines in its chunks so far

    def consume(
        self, results: Iterator[tuple[Chunk | int, _ChunkResult | None]]
    ) -> Iterator[ScannedRequest]:
        report = self.scanner.report
        for unit, result in results:
            if isinstance(unit, int):
                yield from self.whole_file(unit)
                continue
            assert result is not None
            before = self.lines.get(unit.index, 0)
            if result.torn:
                raise changed_error(unit.path, before + 1)
            lead = 1 if unit.start > 0 else 0  # the previous chunk's newline
            shift = before - lead
            report.chunks.append(ReadChunk(unit, result.sha256, before + 1, report.records))
            for item in result.items:
                record = self.item(unit, item, shift)
                if record is not None:
                    report.records += 1
                    yield record
            self.lines[unit.index] = before + result.lines - lead

    def item(self, chunk: Chunk, item: tuple[Any, ...], shift: int) -> ScannedRequest | None:
        index = chunk.index
        number = item[0] + shift
        if len(item) == 4:  # a line the worker found wrong: validate it here, in order
            return self.replay(index, number, item[1], item[2], item[3])
        custom_id, url, offset = item[4], item[5], item[1]
        group = self.groups[index]
        where = (index << 40) | number
        if self.seen_before(custom_id, where, offset) or (group[0] is not None and group[0] != url):
            content = read_raw_line(chunk.path, offset, item[2])
            return self.replay(index, number, offset, content, item[2])
        if group[0] is None:
            group[0], group[1] = url, number
        record = ScannedRequest(*item[3:13], chunk.path, number, item[1], item[2])
        if item[13]:
            self.remember(record)
        return record

    def seen_before(self, custom_id: str, where: int, offset: int) -> bool:
        """Was custom_id seen before this line (at where, offset)? If not, remember it.

        Exact: a sighting found in the compact index is confirmed by reading it back, then
        copied into the validator's own record so that re-validating the line reports the
        duplicate just as read_requests does; a mere hash match is recorded exactly.
        """
        seen = self.validator.seen
        if custom_id in seen:
            return True
        index = where >> 40
        found = self.ids.first_or_add(custom_id, (index << OFFSET_BITS) | offset)
        if found is None:
            return False
        first = self.confirmed(custom_id, found)
        seen[custom_id] = where if first is None else first
        return first is not None

    def first_sighting(self, custom_id: str) -> None:
        """If custom_id is in the compact index, copy its first sighting to the validator's."""
        if custom_id not in self.validator.seen:
            found = self.ids.find(custom_id)
            first = None if found is None else self.confirmed(custom_id, found)
            if first is not None:
                self.validator.seen[custom_id] = first

    def confirmed(self, custom_id: str, found: int) -> int | None:
        """found (file << 48 | offset) as file << 40 | line, if that line has custom_id."""
        index, offset = found >> OFFSET_BITS, found & ((1 << OFFSET_BITS) - 1)
        line = line_at(self.scanner.names[index], offset, custom_id)
        return None if line is None else (index << 40) | line

    def replay(
        self, index: int, number: int, offset: int, content: bytes | None, length: int
    ) -> ScannedRequest | None:
        custom_id = custom_id_of(content)
        if custom_id is not None:
            self.first_sighting(custom_id)
        request = self.validator.read_line(
            index, number, offset, content, length, self.groups[index]
        )
        if request is None:
            return None
        return self.local_record(request, content)

    def whole_file(self, index: int) -> Iterator[ScannedRequest]:
        """A file that is not a regular file: read_requests' own reader, counted here."""
        report = self.scanner.report
        for request in self.validator.read_file(index):
            report.loose[index] = request.path
            report.records += 1
            yield self.local_record(request, None)

    def local_record(self, request: Request, line: bytes | None) -> ScannedRequest:
        known = self.local.cache.lookup([request.key]).get(request.key)
        item = _clean(request, known, line, self.scanner.options.extra)
        record = ScannedRequest(*item[3:13], request.path, request.line, item[1], item[2])
        if item[13]:
            self.remember(record)
        return record

    def remember(self, record: ScannedRequest) -> None:
        self.scanner.pending.add_count(record.key, record.tokens, record.encoding, record.caveats)
