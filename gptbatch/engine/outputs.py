"""Output files: each input's results in input order, and its failures, written atomically."""

from __future__ import annotations

import bisect
import contextlib
import json
import os
import struct
from array import array
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptbatch.canonical import atomic_writer, file_sha256
from gptbatch.config.spec import Spec
from gptbatch.engine.crash import armed, crashpoint
from gptbatch.engine.prepared import ReadAhead
from gptbatch.errors import ConfigError, LocalIOError
from gptbatch.state.rows import RequestRow, ResultRow
from gptbatch.state.store import Store

# A full write of an input this large is split in two: a worker process writes the second
# half to a part file while this process writes the first, and the kernel copies the part
# in. At 1M lines, reading, inflating and writing them took ~15 s on one core.
PARALLEL_MIN_LINES = 200_000


@dataclass(frozen=True)
class OutputSummary:
    """What was written for one input."""

    input: str
    path: str
    errors_path: str
    written: int
    failed: int
    missing: int


# JSONL by its names: x.jsonl and x.ndjson both write x.jsonl (so the two are an error).
JSONL_SUFFIXES = (".jsonl", ".ndjson")


def output_names(inputs: Sequence[Path]) -> dict[Path, str]:
    """The output base name of each input: its file name without .jsonl or .ndjson, unique."""
    names: dict[Path, str] = {}
    seen: dict[str, Path] = {}
    for path in inputs:
        suffix = next((s for s in JSONL_SUFFIXES if path.name.endswith(s)), "")
        name = path.name[: len(path.name) - len(suffix)]
        if name in seen:
            raise ConfigError(
                f"inputs {seen[name]} and {path} would write the same output {name}.jsonl: "
                "rename one of them"
            )
        seen[name] = path
        names[path] = name
    return names


def output_paths(inputs: Sequence[Path], output_dir: Path) -> dict[Path, tuple[Path, Path]]:
    """Each input's (output, errors) paths; ConfigError if any is an input or shared.

    Checked before anything is submitted: a result file written over an input (output_dir
    holding the inputs, or inputs named x.jsonl and x.errors.jsonl) would destroy it.
    """
    paths = {
        path: (output_dir / f"{name}.jsonl", output_dir / f"{name}.errors.jsonl")
        for path, name in output_names(inputs).items()
    }
    check_targets(inputs, [(p, t) for p, targets in paths.items() for t in targets])
    return paths


def check_targets(inputs: Sequence[Path], targets: Sequence[tuple[Path, Path]]) -> None:
    """Refuse (input, target) pairs where a target is an input or another input's target."""
    sources = {_identity(p): p for p in inputs}
    owner: dict[str, Path] = {}
    problems = []
    for path, target in targets:
        ident = _identity(target)
        if ident in sources:
            problems.append(
                f"{target} would be written with results of {path}, but it is an input: "
                "move output_dir away from the inputs, or rename the input"
            )
        elif ident in owner:
            problems.append(
                f"inputs {owner[ident]} and {path} would both write {target}: rename one of them"
            )
        owner.setdefault(ident, path)
    if problems:
        raise ConfigError(problems[0] if len(problems) == 1 else "\n".join(problems))


def _identity(path: Path) -> str:
    """A path as the file system resolves it (symlinks and .. followed)."""
    return os.path.realpath(path)


def write_outputs(
    spec: Spec, store: Store, *, skip_if: bool = False, errors_elsewhere: Collection[Path] = ()
) -> list[OutputSummary]:
    """Rewrite every input's output and error file from the store, streaming.

    errors_elsewhere: inputs whose errors file another writer owns (a data target's, which
    also records invalid answers: engine/tables.py); only their output is written here.

    With skip_if (nothing changed since the last write), files that are still as they
    were written (`written_as_indexed`) are left as they are and only counted; one edited,
    truncated or deleted since is written again. A line whose result is the one the last
    output held is copied from that file (see `_LastOutput`) instead of read from the store.
    """
    summaries = []
    for path, (out_path, err_path) in output_paths(spec.inputs, spec.output_dir).items():
        own_errors = path not in errors_elsewhere
        if (
            skip_if
            and written_as_indexed(store, out_path, fix=True) is None
            and (not own_errors or written_as_indexed(store, err_path, fix=True) is None)
        ):
            summaries.append(_count(store, str(path), out_path, err_path))
            continue
        # A data target's table writes its errors file: then only a full write, without it.
        patched = _patch_output(store, str(path), out_path, err_path) if own_errors else None
        if patched is not None:
            summary, index, segments = patched
        else:
            with _LastOutput.open(out_path, store.output_index(out_path.name)) as last:
                summary, index = _write_output(
                    store, str(path), out_path, err_path if own_errors else None, last
                )
            segments = _segments_of(store, str(path), index)
        write_index(store, out_path, index, segments)
        if own_errors:
            write_index(store, err_path, b"")
        summaries.append(summary)
    return summaries


def written_as_indexed(store: Store, path: Path, *, fix: bool = False) -> str | None:
    """None if an output or errors file is as the last build wrote it, else what differs.

    Its stat (inode, size, mtime) against the one recorded first, one stat call; only if
    that differs, its sha256 against the recorded one (a file touched or copied back
    unchanged is still good: with fix, its new stat is recorded). A file with no record
    (never written, or by a gptbatch that kept none for errors files) counts as differing.
    """
    recorded = store.output_stat(path.name)
    if recorded is None:
        return "no record of it being written"
    fields = json.loads(recorded)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None if fields == [] else "deleted since the last build wrote it"
    if fields == []:
        return "not written by the last build (it had nothing to put there)"
    if fields[1:4] == [st.st_ino, st.st_size, st.st_mtime_ns]:
        return None
    if len(fields) < 5 or file_sha256(path) != fields[4]:
        return "edited, truncated or replaced since the last build wrote it"
    if fix:
        with store.transaction():
            store.set_output_stat(path.name, _stat_text(st, fields[4]))
    return None


def _write_output(
    store: Store, path: str, out_path: Path, err_path: Path | None, last: _LastOutput | None
) -> tuple[OutputSummary, bytes]:
    """One input's output and errors file (None: only counted); also the index of the
    lines written."""
    errors = ErrorFile(err_path) if err_path is not None else contextlib.nullcontext(None)
    part = _Part.begin(store, path, out_path) if last is None else None
    try:
        # 1 MiB buffers: with the default 8 KiB, a 1M-line output made 100k write calls.
        with atomic_writer(out_path, "wb", buffering=1 << 20) as out, errors as err:
            stop = part.start if part is not None else None
            lines = _write_lines(store, path, out, err, last, stop=stop)
            if part is not None and not part.append_to(out, err, lines):
                lines = _write_lines(store, path, out, err, None, start=stop, add_to=lines)
    finally:
        if part is not None:
            part.remove()
    shown_errors = str(err_path if err_path is not None else out_path.with_suffix(".errors.jsonl"))
    summary = OutputSummary(
        path, str(out_path), shown_errors, lines.written, lines.failed, lines.missing
    )
    return summary, bytes(lines.index)


@dataclass
class _Lines:
    """What writing (part of) an input's lines did: counts, and the index of the lines."""

    written: int = 0
    failed: int = 0
    missing: int = 0
    index: bytearray = field(default_factory=bytearray)


def _write_lines(
    store: Store,
    path: str,
    out: Any,
    err: Any,
    last: _LastOutput | None,
    *,
    start: int | None = None,
    stop: int | None = None,
    add_to: _Lines | None = None,
    crash: bool = True,
) -> _Lines:
    """Write an input's lines with ordinals in [start, stop) to out, failures to err."""
    lines = add_to if add_to is not None else _Lines()
    index = lines.index
    crash = crash and armed("mid_output_write")
    copier = _Copier(out, last.fd if last is not None else None)
    rows = store.output_rows(path, lines=last is None, start=start, stop=stop)
    for ordinal, done, version, key, line in rows:
        if crash and lines.written:
            copier.flush()
            out.flush()
            crashpoint("mid_output_write")
        if done == 0:
            lines.missing += 1
            continue
        span = last.spans.get(version) if last is not None and done == 1 else None
        if span is not None:
            copier.copy(*span)
            size = span[1] - span[0]
        else:
            if done == 1 and last is not None:
                line = store.result_line(key)
            if done != 1 or line is None:
                lines.failed += 1
                if err is not None:
                    err.write(error_record(*store.request_result(path, ordinal)))
                continue
            data = line.rstrip(b"\n") + b"\n"
            copier.write(data)
            size = len(data)
        index += _ENTRY.pack(version or 0, size)
        lines.written += 1
    copier.flush()
    return lines


class _Part:
    """The second half of an output (and of its errors), written by a worker process to
    part files beside it while the first half is written here; then copied in."""

    @staticmethod
    def begin(store: Store, path: str, out_path: Path) -> _Part | None:
        """Start the worker on the second half of a large input (None: too small to split,
        or no worker process: GPTBATCH_WORKERS=1, as ReadAhead reads it)."""
        total = store.input_requests(path)
        ahead = ReadAhead()
        start = store.nth_ordinal(path, total // 2) if total >= PARALLEL_MIN_LINES else None
        if start is None or not ahead.enabled:
            return None
        return _Part(store, path, start, out_path, ahead)

    def __init__(
        self, store: Store, path: str, start: int, out_path: Path, ahead: ReadAhead
    ) -> None:
        self.start = start  # the first ordinal of the second half
        self.ahead = ahead
        out_path.parent.mkdir(parents=True, exist_ok=True)  # the worker may start first
        self.out = out_path.parent / f".{out_path.name}.part-{os.getpid()}.tmp"
        self.err = out_path.parent / f".{out_path.name}.errors-part-{os.getpid()}.tmp"
        args = (str(store.directory), path, start, str(self.out), str(self.err))
        self.ahead.start("part", write_part, *args)

    def append_to(self, out: Any, err: Any, lines: _Lines) -> bool:
        """Copy the part in after the first half; False if the worker did not write it."""
        done = self.ahead.take("part")
        self.ahead.close()
        if done is None:
            return False
        written, failed, missing, index = done
        with open(self.out, "rb") as part:
            copier = _Copier(out, part.fileno())
            copier.copy(0, os.fstat(part.fileno()).st_size)
            copier.flush()
        if failed and err is not None:
            with open(self.err, encoding="utf-8") as part:
                for chunk in iter(lambda: part.read(1 << 20), ""):
                    err.write(chunk)
        lines.written += written
        lines.failed += failed
        lines.missing += missing
        lines.index += index
        return True

    def remove(self) -> None:
        self.ahead.close()
        for path in (self.out, self.err):
            path.unlink(missing_ok=True)


def write_part(
    directory: str, path: str, start: int, out_path: str, err_path: str
) -> tuple[int, int, int, bytes]:
    """In a worker process: an input's lines from ordinal start on, to part files."""
    store = Store(Path(directory), read_only=True)
    try:
        with (
            open(out_path, "wb", buffering=1 << 20) as out,
            open(err_path, "w", encoding="utf-8") as err,
        ):
            lines = _write_lines(store, path, out, err, None, start=start, crash=False)
    finally:
        store.close()
    return lines.written, lines.failed, lines.missing, bytes(lines.index)


def _patch_output(
    store: Store, path: str, out_path: Path, err_path: Path
) -> tuple[OutputSummary, bytes, list[tuple[Any, ...]]] | None:
    """An output rewritten by its input's chunks: the bytes of a chunk whose requests'
    outcomes are as they were (the same signature) copied from the last output, the lines
    of the others read from the store; also its index and segments. None if the last
    output cannot be trusted (its stat is not the one recorded) or has no segments.
    """
    segments = store.output_segments(out_path.name)
    chunks = store.output_chunks(path) if segments else []
    recorded = store.output_index(out_path.name) if chunks else None
    if recorded is None or recorded[0] == "[]":
        return None
    try:
        fd = os.open(out_path, os.O_RDONLY)
    except OSError:
        return None
    try:
        if not _same_stat(recorded[0], os.fstat(fd)) and not _same_bytes(recorded[0], out_path):
            return None
        return _patch(store, path, out_path, err_path, fd, chunks, segments, recorded[1])
    finally:
        os.close(fd)


def _patch(
    store: Store,
    path: str,
    out_path: Path,
    err_path: Path,
    fd: int,
    chunks: list[tuple[int, int, bytes, int, int, bool]],
    segments: dict[bytes, tuple[int, int, int, int]],
    entries: bytes,
) -> tuple[OutputSummary, bytes, list[tuple[Any, ...]]]:
    written = missing = 0
    index = bytearray()
    made: list[tuple[Any, ...]] = []
    failures: list[int] = []  # failed for good, or ok with no line: the errors file's
    crash = armed("mid_output_write")
    pos = 0
    with atomic_writer(out_path, "wb") as out:
        copier = _Copier(out, fd)
        for first, rows, signature, ok, failed, unknown in chunks:
            if crash and written:
                copier.flush()
                out.flush()
                crashpoint("mid_output_write")
            missing += rows - ok - failed
            start, entry = pos, len(index) // _ENTRY.size
            segment = None if unknown else segments.get(signature)
            if segment is not None and segment[3] == ok:  # every ok result had its line
                copier.copy(segment[0], segment[0] + segment[1])
                index += entries[segment[2] * _ENTRY.size : (segment[2] + ok) * _ENTRY.size]
                pos += segment[1]
                written += ok
                if failed:
                    failures += store.failed_ordinals(path, first, first + rows - 1)
            elif ok or failed:
                for ordinal, done, version, _key, line in store.output_rows_between(
                    path, first, first + rows - 1
                ):
                    if crash and written:  # a kill mid-write, as in _write_output
                        copier.flush()
                        out.flush()
                        crashpoint("mid_output_write")
                    if done == 0:
                        continue
                    if done != 1 or line is None:
                        failures.append(ordinal)
                        continue
                    data = line.rstrip(b"\n") + b"\n"
                    copier.write(data)
                    index += _ENTRY.pack(version or 0, len(data))
                    pos += len(data)
                    written += 1
            made.append((signature, start, pos - start, entry, len(index) // _ENTRY.size - entry))
        copier.flush()
    with ErrorFile(err_path) as err:
        for ordinal in failures:
            err.write(error_record(*store.request_result(path, ordinal)))
    summary = OutputSummary(path, str(out_path), str(err_path), written, len(failures), missing)
    return summary, bytes(index), made


def _segments_of(store: Store, path: str, index: bytes) -> list[tuple[Any, ...]] | None:
    """The segments of an output just written in full from its index, if its input's
    chunks are recorded (each chunk's ok requests made its next entries, in order)."""
    chunks = store.output_chunks(path)
    if not chunks or sum(c[3] for c in chunks) != len(index) // _ENTRY.size:
        return None
    made = []
    pos = entry = 0
    for _first, _rows, signature, ok, _failed, _unknown in chunks:
        length = sum(
            size for _, size in _ENTRY.iter_unpack(index[entry * _ENTRY.size :][: ok * _ENTRY.size])
        )
        made.append((signature, pos, length, entry, ok))
        pos += length
        entry += ok
    return made


# One entry of an output's line index: the result_version its line came from (0: unknown)
# and the line's length with its newline.
_ENTRY = struct.Struct("<qI")
_INDEX_FORMAT = 2  # 2: the file's sha256 follows its stat (1 had none)


def _stat_text(st: os.stat_result, digest: str) -> str:
    """What identifies an output file as written: format, inode, size, mtime and sha256."""
    return json.dumps([_INDEX_FORMAT, st.st_ino, st.st_size, st.st_mtime_ns, digest])


def _same_stat(recorded: str, st: os.stat_result) -> bool:
    """Is a file's stat the one recorded (in either index format)?"""
    return json.loads(recorded)[1:4] == [st.st_ino, st.st_size, st.st_mtime_ns]


def _same_bytes(recorded: str, path: Path) -> bool:
    """Does a file whose stat moved (copied back, restored from a cache) hold the bytes
    recorded? A kill between an output's rename and its index leaves another file: no."""
    fields = json.loads(recorded)
    return (
        len(fields) >= 5 and fields[2] == os.stat(path).st_size and file_sha256(path) == fields[4]
    )


def write_index(
    store: Store, out_path: Path, index: bytes, segments: list[tuple[Any, ...]] | None = None
) -> None:
    """Record which result each line of the output just written holds, and that file's stat
    and sha256 (an errors file: no lines; `[]` when there is none).

    Written after the output is renamed into place: a kill in between leaves an index whose
    stat does not match the new file, so the next write reads everything from the store.
    """
    try:
        st = os.stat(out_path)
    except FileNotFoundError:
        stat = "[]"
    else:
        stat = _stat_text(st, file_sha256(out_path))
    with store.transaction():
        store.set_output_index(out_path.name, stat, index)
        store.set_output_segments(out_path.name, segments or [])


class _LastOutput:
    """The output file as the last build wrote it, and where each result's line is in it.

    Trusted only if the file has exactly the inode, size and mtime its index recorded, so
    an output edited, replaced or half-written since is never copied from.
    """

    def __init__(self, fd: int, spans: _Spans) -> None:
        self.fd = fd
        self.spans = spans

    @staticmethod
    @contextlib.contextmanager
    def open(out_path: Path, index: tuple[str, bytes] | None) -> Iterator[_LastOutput | None]:
        if index is None:
            yield None
            return
        try:
            fd = os.open(out_path, os.O_RDONLY)
        except OSError:
            yield None
            return
        try:
            st = os.fstat(fd)
            same = index[0] != "[]" and _same_stat(index[0], st)
            spans = _spans(index[1], st.st_size) if same else None
            # nothing to copy: one pass over the store is faster than a lookup per line
            yield _LastOutput(fd, spans) if spans else None
        finally:
            os.close(fd)


def _spans(entries: bytes, size: int) -> _Spans | None:
    """Where each known result's line is, if the entries cover exactly size bytes."""
    if len(entries) % _ENTRY.size:
        return None
    versions, starts, ends = array("q"), array("q"), array("q")
    offset = 0
    for version, length in _ENTRY.iter_unpack(entries):
        if version:
            versions.append(version)
            starts.append(offset)
            ends.append(offset + length)
        offset += length
    return _Spans(versions, starts, ends) if offset == size else None


class _Spans:
    """result_version -> (start, end) of its line, in three sorted arrays (a dict of 100k
    tuples would take ~20 MB more)."""

    def __init__(self, versions: array[int], starts: array[int], ends: array[int]) -> None:
        order = sorted(range(len(versions)), key=versions.__getitem__)
        self.versions = array("q", (versions[i] for i in order))
        self.starts = array("q", (starts[i] for i in order))
        self.ends = array("q", (ends[i] for i in order))

    def __len__(self) -> int:
        return len(self.versions)

    def get(self, version: int | None) -> tuple[int, int] | None:
        if version is None:
            return None
        i = bisect.bisect_left(self.versions, version)
        if i < len(self.versions) and self.versions[i] == version:
            return self.starts[i], self.ends[i]
        return None


class _Copier:
    """Writes lines, and spans of the last output (merged when adjacent), to out.

    Spans are copied by the kernel (copy_file_range) where it can, so an unchanged output
    passes through no Python buffer and no mapped memory.
    """

    def __init__(self, out: Any, fd: int | None) -> None:
        self.out = out
        self.fd = fd
        self.start = self.end = 0

    def copy(self, start: int, end: int) -> None:
        if start != self.end or self.start == self.end:
            self.flush()
            self.start = start
        self.end = end

    def write(self, data: bytes) -> None:
        self.flush()
        self.out.write(data)

    def flush(self) -> None:
        start, end = self.start, self.end
        self.start = self.end = 0
        if end <= start:
            return
        assert self.fd is not None
        self.out.flush()
        target = self.out.fileno()
        while start < end:
            try:
                done = os.copy_file_range(self.fd, target, end - start, start)
            except (AttributeError, OSError):  # not on this system or file system
                done = os.write(target, os.pread(self.fd, min(end - start, 1 << 20), start))
            if done <= 0:
                raise LocalIOError(f"the last output ended early while copying from it ({start})")
            start += done


def error_record(request: RequestRow, result: ResultRow | None, at: str | None = None) -> str:
    """The errors file's line for a request that failed for good (at: where its input is,
    if not the request's own file and line)."""
    assert result is not None
    record = {
        "custom_id": request.custom_id,
        "input": at or f"{request.path}:{request.line}",
        "error": result.error,
        "attempts": result.attempts,
        "batch_id": result.batch_id,
    }
    if result.line:
        record["response"] = json.loads(result.line).get("response")
    return json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n"


class ErrorFile:
    """An errors file written atomically only if something failed; else any old one goes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: Any = None
        self._file: Any = None

    def write(self, text: str) -> None:
        if self._file is None:
            self._writer = atomic_writer(self.path, "w")
            self._file = self._writer.__enter__()
        self._file.write(text)

    def __enter__(self) -> ErrorFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._writer is not None:
            self._writer.__exit__(*exc)
        elif exc[0] is None:
            self.path.unlink(missing_ok=True)  # nothing failed: no empty errors file


def _count(store: Store, path: str, out_path: Path, err_path: Path) -> OutputSummary:
    counts = store.result_counts(path)
    return OutputSummary(
        path, str(out_path), str(err_path), counts["ok"], counts["failed"], counts["missing"]
    )
