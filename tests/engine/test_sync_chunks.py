"""A changed input synced by its content-defined chunks (gptbatch.engine.chunked) leaves the
rows, the problems and the chunks that a full read leaves, however the file changed."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gptbatch.config.spec import Spec, load_spec
from gptbatch.engine import chunked
from gptbatch.engine.sync import _request_row, line_digest, sync_inputs
from gptbatch.errors import InputError
from gptbatch.inputs import chunks as chunks_module
from gptbatch.inputs import requests as requests_module
from gptbatch.inputs.chunks import find_chunks
from gptbatch.inputs.requests import read_raw_line, read_requests
from gptbatch.report import NullReporter
from gptbatch.state.rows import REQUEST_ROW_SELECT, RequestRow
from gptbatch.state.store import Store


def _chat(cid: str, text: str, url: str = "/v1/chat/completions") -> str:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}
    return json.dumps({"custom_id": cid, "method": "POST", "url": url, "body": body})


@contextlib.contextmanager
def small_chunks(
    average: int = 4, least: int = 2, most: int = 8, block: int = 64
) -> Iterator[None]:
    """Chunks of a few lines, read in small blocks: a file of tens of lines has many."""
    names = ("AVERAGE", "_MASK", "MIN_LINES", "MAX_LINES", "BLOCK", "_SEED")
    saved = {name: getattr(chunks_module, name) for name in names}
    chunks_module.AVERAGE, chunks_module._MASK = average, average - 1
    chunks_module.MIN_LINES, chunks_module.MAX_LINES, chunks_module.BLOCK = least, most, block
    chunks_module._SEED = f"test {average} {least} {most}\n".encode()
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(chunks_module, name, value)


def _table(store: Store) -> list[tuple[Any, ...]]:
    return list(store.db.execute(f"SELECT {REQUEST_ROW_SELECT} FROM requests r ORDER BY r.ordinal"))


def _expected(spec: Spec, path: Path, before: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The rows a full read gives: every line parsed, estimates kept where the key is."""
    previous = {row[6]: RequestRow(*row) for row in before}
    rows = []
    for ordinal, req in enumerate(read_requests([path], model=spec.model, endpoint=spec.endpoint)):
        raw = read_raw_line(path, req.offset, req.length)
        row = _request_row(spec, ordinal, req, previous.get(req.custom_id), False)
        rows.append((str(path), *row, line_digest(raw)))
    return rows


def _chunk_rows(store: Store, path: Path) -> list[tuple[Any, ...]]:
    return list(
        store.db.execute(
            "SELECT first_ordinal, first_line, start, length, lines, rows, hash"
            " FROM input_chunks WHERE path=? ORDER BY seq",
            (str(path),),
        )
    )


class _Counting:
    """Counts the syncs the chunked path answered."""

    def __init__(self) -> None:
        self.answered = 0
        self.real = chunked.sync_chunked

    def __call__(self, *args: Any) -> Any:
        read = self.real(*args)
        self.answered += read is not None
        return read


# An edit of the file, applied to the lines of the version before.
OP = st.one_of(
    st.tuples(st.just("edit"), st.integers(0, 80), st.sampled_from(["x", "yy", "a longer text"])),
    st.tuples(st.just("insert"), st.integers(0, 80), st.integers(0, 200)),
    st.tuples(st.just("dup"), st.integers(0, 80), st.integers(0, 80)),
    st.tuples(st.just("delete"), st.integers(0, 80), st.integers(1, 12)),
    st.tuples(st.just("move"), st.integers(0, 80), st.integers(1, 12), st.integers(0, 80)),
    st.tuples(st.just("blank"), st.integers(0, 80), st.sampled_from(["", "   ", "\r"])),
    st.tuples(st.just("bad"), st.integers(0, 80), st.sampled_from(["{not json", "EMBED"])),
    st.tuples(st.just("crlf"), st.integers(0, 80), st.integers(1, 12)),
    st.tuples(st.just("bom"), st.booleans()),
    st.tuples(st.just("same")),
    st.tuples(st.just("unterminated"), st.booleans()),
)


def _apply(state: dict[str, Any], op: tuple[Any, ...]) -> None:
    lines: list[str] = state["lines"]
    kind = op[0]
    at = min(op[1], len(lines)) if len(op) > 1 and isinstance(op[1], int) else 0
    if kind == "edit" and lines:
        at = min(at, len(lines) - 1)
        try:
            cid = json.loads(lines[at].rstrip("\r"))["custom_id"]
        except (ValueError, KeyError, TypeError):
            cid = f"e{at}"
        lines[at] = _chat(cid, op[2])
    elif kind == "insert":
        lines.insert(at, _chat(f"n{op[2]}", "new"))
    elif kind == "dup" and lines:  # a copy of another line: a duplicate custom_id
        lines.insert(at, lines[min(op[2], len(lines) - 1)].rstrip("\r") + " ")
    elif kind == "delete":
        del lines[at : at + op[2]]
    elif kind == "move":
        block = lines[at : at + op[2]]
        del lines[at : at + op[2]]
        to = min(op[3], len(lines))
        lines[to:to] = block
    elif kind == "blank":
        lines.insert(at, op[2])
    elif kind == "bad":
        lines.insert(at, _chat("e0", "x", url="/v1/embeddings") if op[2] == "EMBED" else op[2])
    elif kind == "crlf":
        for i in range(at, min(at + op[2], len(lines))):
            lines[i] = lines[i][:-1] if lines[i].endswith("\r") else lines[i] + "\r"
    elif kind == "bom":
        state["bom"] = op[1]
    elif kind == "unterminated":
        state["unterminated"] = op[1]


def _render(state: dict[str, Any]) -> bytes:
    lines = state["lines"]
    text = "\n".join(lines) + ("" if state.get("unterminated") or not lines else "\n")
    return (b"\xef\xbb\xbf" if state.get("bom") else b"") + text.encode()


def _check(size: int, ops: list[tuple[Any, ...]], counting: _Counting) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "batch.yaml").write_text(
            yaml.safe_dump({"inputs": ["in.jsonl"], "output_dir": "out"})
        )
        path = root / "in.jsonl"
        state: dict[str, Any] = {"lines": [_chat(f"c{i}", f"t{i % 7}") for i in range(size)]}
        path.write_bytes(_render(state))
        spec = load_spec(root / "batch.yaml")
        path = spec.inputs[0]
        store = Store(root / "state")
        try:
            sync_inputs(spec, store, NullReporter())
            for n, op in enumerate(ops):
                _apply(state, op)
                path.write_bytes(_render(state))
                os.utime(path, ns=(n + 1, n + 1))  # a new stat each time: never skipped
                before = _table(store)
                chunks_before = _chunk_rows(store, path)
                try:
                    expected: Any = _expected(spec, path, before)
                except InputError as exc:
                    expected = [str(p) for p in exc.problems]
                try:
                    sync_inputs(spec, store, NullReporter())
                except InputError as exc:
                    assert [str(p) for p in exc.problems] == expected
                    assert _table(store) == before  # rolled back, chunks too
                    assert _chunk_rows(store, path) == chunks_before
                    continue
                assert _table(store) == expected
                # The chunks recorded are those of a full chunking, and count the rows.
                recorded = _chunk_rows(store, path)
                found = find_chunks(path)
                assert [r[2:5] + r[6:] for r in recorded] == [
                    (c.start, c.length, c.lines, c.hash) for c in found
                ]
                assert sum(r[5] for r in recorded) == len(expected)
                if path.stat().st_size:
                    assert store.input_chunks(str(path)), "recorded chunks account for every row"
        finally:
            store.close()


@settings(max_examples=120, deadline=None)
@given(size=st.integers(0, 60), ops=st.lists(OP, min_size=1, max_size=6))
def test_chunked_sync_leaves_what_a_full_read_leaves(size: int, ops: list[Any]) -> None:
    counting = _Counting()
    chunked_sync = chunked.sync_chunked
    import gptbatch.engine.sync as sync_module

    sync_module.sync_chunked = counting
    try:
        with small_chunks():
            _check(size, ops, counting)
    finally:
        sync_module.sync_chunked = chunked_sync


@pytest.mark.parametrize(
    "ops",
    [
        [("insert", 30, 1)],  # an insertion: rows after it move to new ordinals
        [("delete", 10, 5)],
        [("move", 5, 10, 40)],  # a block moved down
        [("move", 40, 10, 3)],  # and up
        [("same",)],  # the same bytes written again
        [("crlf", 0, 50)],
        [("edit", 20, "a longer text"), ("edit", 21, "x"), ("edit", 50, "yy")],
        [("dup", 50, 3)],  # a custom_id of an unchanged chunk, again further down
        [("dup", 3, 50)],  # and further up
        [("insert", 0, 1), ("delete", 0, 1)],
    ],
)
def test_each_kind_of_change_through_chunks(ops: list[Any]) -> None:
    """The cases by name, each taking the chunked path where it can answer."""
    counting = _Counting()
    import gptbatch.engine.sync as sync_module

    sync_module.sync_chunked = counting
    try:
        with small_chunks():
            _check(60, ops, counting)
    finally:
        sync_module.sync_chunked = counting.real
    if ops[0][0] == "dup":
        assert counting.answered == 0, "a duplicate is left to the full read, which reports it"
    elif ops[0][0] == "same":
        assert counting.answered == 0, "the same bytes: the file's hash says so, nothing read"
    else:
        assert counting.answered == len(ops), "the chunked path answered every change"


LINES = st.lists(st.sampled_from([f"line {i}" for i in range(40)] + ["", "x" * 70]), max_size=80)


@settings(max_examples=150, deadline=None)
@given(
    lines=LINES,
    edits=st.lists(st.tuples(st.integers(0, 80), st.integers(0, 3), LINES), max_size=4),
    block=st.sampled_from([16, 64, 1 << 20]),
    end=st.sampled_from(["\n", "\r\n", ""]),
)
def test_known_chunks_find_what_a_full_chunking_finds(
    lines: list[str], edits: list[Any], block: int, end: str
) -> None:
    """Chunks found from the last ones (checked in place, found anew only where the file
    differs) are those found with none, for any blocks they are read in."""
    with tempfile.TemporaryDirectory() as tmp, small_chunks(block=block):
        path = Path(tmp) / "f"
        path.write_bytes(("\n".join(lines) + end).encode())
        known = find_chunks(path)
        assert sum(c.length for c in known) == path.stat().st_size
        for at, gone, new in edits:
            lines[at : at + gone] = new
        path.write_bytes(("\n".join(lines) + end).encode())
        with small_chunks(block=1 << 20):
            full = find_chunks(path)
        assert find_chunks(path, known) == full
        assert all(a.start + a.length == b.start for a, b in itertools.pairwise(full))
        assert all(c.lines <= chunks_module.MAX_LINES + 1 for c in full)


def test_a_one_line_edit_reads_only_its_chunk(tmp_path: Path, monkeypatch: Any) -> None:
    """5,000 requests, one edited: only the lines of the edited chunk are parsed."""
    (tmp_path / "batch.yaml").write_text(
        yaml.safe_dump({"inputs": ["in.jsonl"], "output_dir": "out"})
    )
    lines = [_chat(f"c{i}", f"text {i}") for i in range(5_000)]
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    spec = load_spec(tmp_path / "batch.yaml")
    store = Store(tmp_path / "state")
    parsed = []
    real = requests_module._Reader.read_line

    def counting(self: Any, *args: Any) -> Any:
        parsed.append(args[1])
        return real(self, *args)

    try:
        sync_inputs(spec, store, NullReporter())
        lines[2_500] = _chat("c2500", "edited, and longer")
        path.write_text("\n".join(lines) + "\n")
        monkeypatch.setattr(requests_module._Reader, "read_line", counting)
        sync_inputs(spec, store, NullReporter())
        assert 2_501 in parsed and 0 < len(parsed) <= chunks_module.MAX_LINES, len(parsed)
        assert _table(store) == _expected(spec, spec.inputs[0], _table(store))
    finally:
        store.close()


def _two_inputs(root: Path, chunked_sync: bool, versions: list[tuple[list[str], list[str]]]) -> Any:
    """Sync two inputs through versions; each sync's problems (or None) and the final rows."""
    import gptbatch.engine.sync as sync_module

    (root / "batch.yaml").write_text(
        yaml.safe_dump({"inputs": ["a.jsonl", "b.jsonl"], "output_dir": "out"})
    )
    for name in ("a", "b"):
        (root / f"{name}.jsonl").write_text("")
    spec = load_spec(root / "batch.yaml")
    store = Store(root / "state")
    real = sync_module.sync_chunked
    counting = _Counting()
    sync_module.sync_chunked = counting if chunked_sync else (lambda *args: None)
    seen: list[Any] = []
    try:
        for n, (a, b) in enumerate(versions):
            for path, lines in zip(spec.inputs, (a, b), strict=True):
                data = ("\n".join(lines) + "\n").encode()
                if path.read_bytes() != data:
                    path.write_bytes(data)
                    os.utime(path, ns=(n + 1, n + 1))
            try:
                sync_inputs(spec, store, NullReporter())
                seen.append(None)
            except InputError as exc:
                seen.append([str(p) for p in exc.problems])
        return seen, _table(store), counting.answered
    finally:
        sync_module.sync_chunked = real
        store.close()


@pytest.mark.parametrize("where", [0, 25, 59])
def test_a_duplicate_across_inputs_is_reported_as_by_a_full_read(where: int) -> None:
    """An edit of one input (synced by its chunks) that takes a custom_id of the other, then
    one that gives it back: the problems and rows of syncs that read everything."""
    a = [_chat(f"a{i}", "x") for i in range(60)]
    b = [_chat(f"b{i}", "y") for i in range(60)]
    b_dup = list(b)
    b_dup[where] = _chat(f"a{59 - where}", "y")
    b_dup2 = [*b_dup[:10], _chat("a3", "z"), *b_dup[10:]]
    versions = [(a, b), (a, b_dup), (a, b_dup2), (a, b), (a[1:], b), (a[1:], b_dup)]
    with tempfile.TemporaryDirectory() as one, tempfile.TemporaryDirectory() as two, small_chunks():
        got = _two_inputs(Path(one), True, versions)
        full = _two_inputs(Path(two), False, versions)
    assert got[0][1] is not None and got[0][2] is not None  # the duplicates are reported
    assert got[2] >= 2  # the edits without a duplicate were synced by their chunks
    assert [[p.replace(one, "") for p in x] if x else x for x in got[0]] == [
        [p.replace(two, "") for p in x] if x else x for x in full[0]
    ]
    assert [r[1:] for r in got[1]] == [r[1:] for r in full[1]]
