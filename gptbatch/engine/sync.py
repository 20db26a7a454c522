"""Syncing the store with the inputs: read only changed files, key every request, refuse bad input
(a request over its model's enqueued-token limit, found by budget.unqueueable)."""

from __future__ import annotations

import bisect
import contextlib
import functools
import hashlib
import os
import stat
from array import array
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gptbatch import pricing
from gptbatch.canonical import content_hash
from gptbatch.config.spec import Spec, config_fingerprint, keys_config_changed
from gptbatch.engine.budget import unqueueable
from gptbatch.engine.chunked import sync_chunked
from gptbatch.errors import InputError, Problem
from gptbatch.inputs.chunks import Chunk, input_digest
from gptbatch.inputs.requests import DEFAULT_MAX_LINE_BYTES, Request, iter_lines, line_validator
from gptbatch.report import Reporter
from gptbatch.shards import embedding_inputs
from gptbatch.state.diff import Kept, PreviousRows
from gptbatch.state.positions import Bases, Rebase
from gptbatch.state.rows import RequestRow
from gptbatch.state.store import Store

if TYPE_CHECKING:
    from gptbatch.inputs.scan import Scanner

_Rows = Generator[tuple[Any, ...], None, None]


def _output_bound(body: Any) -> int:
    if not isinstance(body, dict):
        return 0
    for name in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        value = body.get(name)
        if isinstance(value, int):
            return value
    config = body.get("generationConfig")  # Gemini's GenerateContentRequest
    value = config.get("maxOutputTokens") if isinstance(config, dict) else None
    return value if isinstance(value, int) else 0


def sync_inputs(
    spec: Spec,
    store: Store,
    report: Reporter,
    *,
    keep_going: bool = False,
    declared: Sequence[Path] | None = None,
) -> bool:
    """Bring the store's view of every input up to date, reading only files that changed;
    True if any file was read again.

    All of it is one transaction: bad input (a malformed line, a duplicate custom_id, a
    request no queue can ever hold) raises InputError and leaves the state as it was.
    declared: every input of the config when spec.inputs is a subset being built; only
    inputs it does not hold count as removed from batch.yaml.
    """
    defaults = config_fingerprint(spec)
    changed: list[tuple[Path, os.stat_result, str, list[Chunk] | None]] = []
    for path in spec.inputs:
        st = path.stat()
        record = store.input_record(str(path))
        if (
            record
            and record[0] == st.st_size
            and record[1] == st.st_mtime_ns
            and record[3] == defaults
        ):
            report.event("input", path=str(path), state="unchanged (size and mtime)")
            continue
        # One read gives the digest and the chunks, checked where they were last time.
        digest, chunks = input_digest(path, known_chunks(store, path))
        if record and record[2] == digest and record[3] == defaults:
            with store.transaction():
                store.touch_input(str(path), size=st.st_size, mtime_ns=st.st_mtime_ns)
            report.event("input", path=str(path), state="unchanged (content hash)")
            continue
        changed.append((path, st, digest, chunks))
    if changed:
        changed = _adopt_moved(store, report, changed, defaults, declared or spec.inputs)
    scanners: list[Scanner] = []  # new inputs read on every core; their counts kept on success
    try:
        _sync_changed(
            spec, store, report, changed, defaults, scanners, keep_going, declared or spec.inputs
        )
    except BaseException:
        for scanner in scanners:
            scanner.discard_counts()
        raise
    for scanner in scanners:  # a cache: the build goes on while they are written
        scanner.commit_counts_behind()
    return bool(changed)


def _sync_changed(
    spec: Spec,
    store: Store,
    report: Reporter,
    changed: list[tuple[Path, os.stat_result, str, list[Chunk] | None]],
    defaults: str,
    scanners: list[Scanner],
    keep_going: bool,
    declared: Sequence[Path],
) -> None:
    """Rewrite the changed inputs' rows in one transaction; raise InputError on bad input."""
    problems: list[Problem] = []
    unshown = 0  # problems an input found past its cap of shown ones
    # Earlier rows are looked up one by one in a snapshot taken before this transaction
    # rewrites them, rather than held in memory for a whole input.
    ranges: dict[str, list[tuple[int, int]]] = {}  # the rows read of inputs synced by chunks
    with store.snapshot() as before, store.transaction():
        gone = store.forget_inputs(str(p) for p in declared)
        for path in gone:
            report.event("input", path=path, state="removed from batch.yaml")
        for path, st, digest, chunks in changed:
            record = store.input_record(str(path))
            config_changed = record is not None and keys_config_changed(record[3], defaults)
            edit, template = edit_kind(spec, store, path)
            # Same config: a line with the bytes of its earlier row keeps that row unparsed.
            reuse = record is not None and record[3] == defaults
            tally = {"requests": 0, "new": 0}
            read = (
                sync_chunked(
                    spec,
                    store,
                    before,
                    path,
                    st,
                    digest,
                    chunks,
                    defaults,
                    tally,
                    functools.partial(_request_row, spec, config_changed=False, edit=edit),
                    line_digest,
                )
                if reuse
                else None
            )
            if read is not None:
                ranges[str(path)] = read  # only these rows can be new duplicates of others
                if template is not None:  # what the next edit of this target is compared with
                    store.set_meta(f"template:{path}", template)
                report.event("input", path=str(path), state="read", **tally)
                continue
            previous = store.previous_rows(before, str(path))
            scanner = _parallel_scanner(spec, path, st) if previous.empty else None
            if scanner is None:
                rows = _rows(spec, path, previous, config_changed, reuse, tally, edit)
            else:
                scanners.append(scanner)
                rows = _scanned_rows(spec, scanner, tally)
            lines = array("q")  # each row's line, to count the requests of each chunk
            # offsets stored relative to the chunks recorded below
            rebase = Rebase(chunks, Bases(before, str(path)))
            rows = _noting_lines(rebase.rows(rows), lines)
            # A new input read into an empty state (a first build) is inserted in bulk.
            bulk = store.bulk_requests() if previous.empty else contextlib.nullcontext()
            try:
                # Streams into the open transaction; a bad line rolls all of it back.
                with bulk:
                    store.replace_input(
                        str(path),
                        size=st.st_size,
                        mtime_ns=st.st_mtime_ns,
                        sha256=digest,
                        defaults=defaults,
                        rows=rows,
                        before=before,
                    )
            except InputError as exc:
                problems.extend(exc.problems)
                unshown += exc.truncated
                continue
            finally:
                rows.close()  # a scan's worker processes stop here, whatever happened
            if template is not None:  # what the next edit of this target is compared with
                store.set_meta(f"template:{path}", template)
            records = _chunk_records(path, st, chunks, lines) if chunks is not None else []
            if records:
                store.set_input_chunks(str(path), records)
            else:
                store.unbase(str(path), rebase.ranges)
            report.event("input", path=str(path), state="read", **tally)
        duplicates, found = store.duplicate_custom_ids(
            (str(p) for p, _, _, _ in changed),
            ranges=ranges,
            order=[str(p) for p in declared],
        )
        unshown += found - len(duplicates)
        for cid, pa, la, pb, lb in duplicates:
            problems.append(
                Problem(
                    pb,
                    lb,
                    f"duplicate custom_id {cid!r} (first seen at {pa}:{la})",
                    "custom_ids must be unique across all inputs",
                )
            )
        limits_key = content_hash([spec.limits.enqueued_tokens, store.stated_limits()])
        if changed or store.get_meta("limits_checked") != limits_key:
            problems += unqueueable(spec, store, report, keep_going)
        if problems:
            raise InputError(problems[:50], truncated=max(0, len(problems) - 50) + unshown)
        store.set_meta("limits_checked", limits_key)


def _adopt_moved(
    store: Store,
    report: Reporter,
    changed: list[tuple[Path, os.stat_result, str, list[Chunk] | None]],
    defaults: str,
    declared: Sequence[Path],
) -> list[tuple[Path, os.stat_result, str, list[Chunk] | None]]:
    """The changed inputs left to read once new ones that an input no longer declared moved
    to (a project copied or moved elsewhere, a file renamed) have taken its rows.

    A new input takes the rows of a gone one with its bytes (its digest), or else with its
    file name (then read as an edit of it: by chunks, as any edited input). Paths are
    recorded whole, so without this a moved project read every input again in full. In a
    transaction of its own, so the read that follows sees the rows where they now are.
    """
    keep = {str(p) for p in declared}
    gone = {p: store.input_record(p) for p in store.input_paths() if p not in keep}
    gone = {p: r for p, r in gone.items() if r is not None and r[3] == defaults}
    if not gone:
        return changed
    left = []
    with store.transaction():
        for item in changed:
            path, st, digest, _ = item
            if store.input_record(str(path)) is not None:
                left.append(item)
                continue
            same = [p for p, r in gone.items() if r[2] == digest]
            named = [p for p in gone if Path(p).name == path.name]
            old = same[0] if same else named[0] if len(named) == 1 else None
            if old is None:
                left.append(item)
                continue
            store.rename_input(old, str(path))
            del gone[old]
            if same:  # its rows are this file's: nothing to read
                store.touch_input(str(path), size=st.st_size, mtime_ns=st.st_mtime_ns)
                report.event(
                    "input",
                    path=str(path),
                    state=f"moved from {old} (the same bytes: not read again)",
                )
            else:
                left.append(item)
    return left


def edit_kind(spec: Spec, store: Store, path: Path) -> tuple[str, str | None]:
    """What a changed request of this input is, and the digest of its data target's template
    (None: a plain request file). A data target's request changed either because its request
    template changed since the last sync ("template changed") or, the template being the
    same, because its row did ("row changed"; a step's: "upstream changed")."""
    target = next((t for t in spec.data_targets if spec.targets.get(t.name) == path), None)
    if target is None:
        return "changed", None
    template = content_hash(target.request)
    last = store.get_meta(f"template:{path}")
    if last is None:
        return "changed", template
    if last != template:
        return "template changed", template
    # a step's row is its upstream target's answer (and that row's columns)
    return ("upstream changed" if target.upstream is not None else "row changed"), template


def known_chunks(store: Store, path: Path) -> list[Chunk]:
    """The chunks an input had at its last sync (none if they are not recorded)."""
    return [Chunk(c.start, c.length, c.lines, c.hash) for c in store.input_chunks(str(path))]


def _noting_lines(rows: _Rows, lines: array[int]) -> _Rows:
    """rows, each row's line number noted in lines on its way."""
    try:
        for row in rows:
            lines.append(row.at if type(row) is Kept else row[1])
            yield row
    finally:
        rows.close()


def _chunk_records(
    path: Path, st: os.stat_result, chunks: list[Chunk], lines: array[int]
) -> list[tuple[Any, ...]]:
    """The chunks' records (first ordinal, first line, start, length, lines, rows, hash);
    none if the file changed while it was read (its next sync reads it in full)."""
    try:
        now = path.stat()
    except OSError:
        return []
    if (now.st_size, now.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
        return []
    if sum(c.length for c in chunks) != st.st_size or (
        lines and lines[-1] > sum(c.lines for c in chunks)
    ):
        return []
    records = []
    first_line = 1
    for chunk in chunks:
        first = bisect.bisect_left(lines, first_line)
        end = bisect.bisect_left(lines, first_line + chunk.lines)
        records.append(
            (first, first_line, chunk.start, chunk.length, chunk.lines, end - first, chunk.hash)
        )
        first_line += chunk.lines
    return records


def line_digest(content: bytes) -> bytes:
    """What identifies a request line's raw bytes in the store (16 bytes of BLAKE2b)."""
    return hashlib.blake2b(content, digest_size=16).digest()


def _rows(
    spec: Spec,
    path: Path,
    previous: PreviousRows,
    config_changed: bool,
    reuse: bool,
    tally: dict[str, int],
    edit: str = "changed",
) -> _Rows:
    """Store rows for an input's requests, streamed; counts what is new in tally.

    Validates as read_requests does, except that with reuse a line whose bytes equal the
    earlier row the walk expects takes that row (new line and offset) without being parsed:
    the same bytes under the same config make the same request. Its custom_id and url still
    enter the validator's state, and a line that would clash with either is validated in
    full, so duplicates and mixed endpoints are reported exactly as read_requests does.
    """
    validator = line_validator([path], model=spec.model, endpoint=spec.endpoint)
    group: list[Any] = [None, 0]  # the file's url and the line that set it
    ordinal = 0
    for number, offset, content, length in _lines(validator, path):
        if content is not None and (not content or content.isspace()):
            continue
        digest = None if content is None else line_digest(content)
        old = previous.same_bytes(digest) if reuse and digest is not None else None
        if old is not None and old.custom_id not in validator.seen and group[0] in (None, old.url):
            validator.seen[old.custom_id] = number  # file 0 of this validator
            if group[0] is None:
                group[0], group[1] = old.url, number
            if old.ordinal == ordinal:  # the earlier row, maybe moved: kept without reading
                row = Kept(number - old.line, offset - old.offset, number)
            else:
                row = (ordinal, number, offset, length, *_fields(old), digest)
        else:
            req = validator.read_line(0, number, offset, content, length, group)
            if req is None:
                continue
            before = old if old is not None and old.custom_id == req.custom_id else None
            before = before or previous(req.custom_id)
            row = (*_request_row(spec, ordinal, req, before, config_changed, edit), digest)
            tally["new"] += before is None or before.key != req.key
        tally["requests"] += 1
        ordinal += 1
        yield row
    if validator.count:
        raise InputError(validator.problems, truncated=validator.count - len(validator.problems))


def _parallel_scanner(spec: Spec, path: Path, st: os.stat_result) -> Scanner | None:
    """A scanner for a new input worth reading on every core (or GPTBATCH_WORKERS), else None.

    Nothing earlier to reuse, so every line is parsed, keyed and counted: the scanner does
    that in worker processes, by the same validator, with the same problems.
    """
    # Imported here: multiprocessing and the scanner cost a no-op build ~25 ms to import.
    from gptbatch.inputs.scan import Scanner, ScanOptions, worker_count

    # The shared token-count cache, as split, tokens and plan use it: counts a plan made
    # are not made again, and this read's new counts are kept once the sync commits.
    options = ScanOptions(model=spec.model, endpoint=spec.endpoint, extra=_scan_facts)
    if not stat.S_ISREG(st.st_mode) or not worker_count(options, st.st_size):
        return None
    return Scanner([path], options)


def _scan_facts(req: Request, line: bytes | None) -> tuple[int, int, bytes | None]:
    """A request's (upload bytes with newline, output bound, line digest), in a scan worker.

    line is None only for a file the scanner read whole (it stopped being a regular file):
    its rows then have no digest, and the next sync parses those lines again.
    """
    digest = None if line is None else line_digest(line)
    return req.canonical_size() + 1, _output_bound(req.body), digest


def _scanned_rows(spec: Spec, scanner: Scanner, tally: dict[str, int]) -> _Rows:
    """The rows _rows gives for an input with no earlier rows, from a parallel scan."""
    prices = spec.prices
    known: dict[str, pricing.Price | None] = {}  # an input names one model or a few
    for ordinal, req in enumerate(scanner.requests()):
        nbytes, bound, digest = req.extra
        model = req.model or ""
        price = (
            known[model]
            if model in known
            else known.setdefault(model, pricing.price_for(model, prices))
        )
        # pricing.estimate_cost's sum, the price looked up once per model
        cost = (
            None
            if price is None
            else (req.tokens * price.input + bound * price.output) / pricing.TOKENS_PER_UNIT
        )
        tally["requests"] += 1
        tally["new"] += 1
        yield (*_row(ordinal, req, req.tokens, nbytes, req.inputs, cost, "new"), digest)


def _fields(row: RequestRow) -> tuple[Any, ...]:
    """A row's columns from key to reason (what the same bytes under the same config keep)."""
    return (
        row.key,
        row.custom_id,
        row.model,
        row.url,
        row.tokens,
        row.nbytes,
        row.inputs,
        row.cost,
        row.reason,
    )


def _lines(validator: Any, path: Path) -> Iterator[tuple[int, int, bytes | None, int]]:
    """An input's lines as read_requests reads them; an unreadable file is its problem."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below, after the lines are read
    except OSError:
        for _ in validator.read_file(0):  # records why, in read_requests' own words
            pass
        return
    with f:
        try:
            yield from iter_lines(f, DEFAULT_MAX_LINE_BYTES)
        except OSError as exc:
            validator.problem(
                str(path), None, f"cannot read: {exc.strerror or exc}", "check the file"
            )


def _request_row(
    spec: Spec,
    ordinal: int,
    req: Request,
    previous: RequestRow | None,
    config_changed: bool,
    edit: str = "changed",
) -> tuple[Any, ...]:
    if previous is not None and previous.key == req.key:
        tokens_, nbytes, inputs, reason = (
            previous.tokens,
            previous.nbytes,
            previous.inputs,
            previous.reason,
        )
    else:
        from gptbatch.inputs import tokens  # loads encodings: only when a request is new or changed

        estimate = tokens.estimate_request(req.url, req.body)
        tokens_ = estimate.tokens
        nbytes = req.canonical_size() + 1
        inputs = embedding_inputs(req.body) if req.url == "/v1/embeddings" else 1
        reason = "new" if previous is None else "config changed" if config_changed else edit
    # Cheap, and always from the current prices, so a price change in batch.yaml applies.
    cost = pricing.estimate_cost(req.model or "", tokens_, _output_bound(req.body), spec.prices)
    return _row(ordinal, req, tokens_, nbytes, inputs, cost, reason)


def _row(
    ordinal: int,
    req: Request,
    tokens_: int,
    nbytes: int,
    inputs: int,
    cost: float | None,
    reason: str,
) -> tuple[Any, ...]:
    """A request's row in RequestRow order, from ordinal to reason (no path, no digest)."""
    return (
        ordinal,
        req.line,
        req.offset,
        req.length,
        req.key,
        req.custom_id,
        req.model,
        req.url,
        tokens_,
        nbytes,
        inputs,
        cost,
        reason,
    )
