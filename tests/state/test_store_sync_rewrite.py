"""Syncing an edited input reuses unchanged lines and writes only what changed, yet leaves
exactly the rows (and the problems) a full read with read_requests gives."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gptbatch.config.spec import Spec, load_spec
from gptbatch.engine import sync
from gptbatch.engine.sync import _request_row, line_digest, sync_inputs
from gptbatch.errors import InputError
from gptbatch.inputs.requests import read_raw_line, read_requests
from gptbatch.report import NullReporter
from gptbatch.state import diff as diff_module
from gptbatch.state.rows import REQUEST_ROW_SELECT, RequestRow
from gptbatch.state.store import Store


def _chat(cid: str, text: str, url: str = "/v1/chat/completions") -> str:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}
    return json.dumps({"custom_id": cid, "method": "POST", "url": url, "body": body})


# A line: a request (custom_id, text), or something a sync must handle like read_requests.
LINE = st.one_of(
    st.tuples(st.sampled_from([f"c{i}" for i in range(8)]), st.sampled_from(["a", "bb", "c c"])),
    st.sampled_from(["", "   ", "{not json", "EMBED", "SPACED"]),
)
VERSION = st.tuples(st.lists(LINE, max_size=10), st.booleans(), st.booleans())


def _render(version: tuple[list[Any], bool, bool]) -> bytes:
    lines, crlf, bom = version
    out = []
    for line in lines:
        if isinstance(line, tuple):
            out.append(_chat(*line))
        elif line == "EMBED":  # another endpoint in the same file: an error
            out.append(_chat("e0", "x", url="/v1/embeddings"))
        elif line == "SPACED":  # the same request as c0/a with other whitespace: a new line
            out.append(_chat("c0", "a").replace(": ", ":"))
        else:
            out.append(line)
    text = ("\r\n" if crlf else "\n").join(out) + ("\n" if out else "")
    return (b"\xef\xbb\xbf" if bom else b"") + text.encode()


def _table(store: Store) -> list[tuple[Any, ...]]:
    return list(store.db.execute(f"SELECT {REQUEST_ROW_SELECT} FROM requests r ORDER BY r.ordinal"))


def _expected(spec: Spec, path: Path, before: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The rows a full read gives: every line parsed, estimates kept where the key is."""
    previous = {row[6]: RequestRow(*row) for row in before}
    rows = []
    reqs = read_requests([path], model=spec.model, endpoint=spec.endpoint)
    for ordinal, req in enumerate(reqs):
        raw = read_raw_line(path, req.offset, req.length)
        row = _request_row(spec, ordinal, req, previous.get(req.custom_id), False)
        rows.append((str(path), *row, line_digest(raw)))
    return rows


@settings(max_examples=60, deadline=None)
@given(versions=st.lists(VERSION, min_size=1, max_size=5))
def test_a_sync_leaves_the_rows_a_full_read_gives(versions: list[Any]) -> None:
    _check_versions(versions)


@settings(max_examples=40, deadline=None)
@given(versions=st.lists(VERSION, min_size=1, max_size=5))
def test_reading_earlier_rows_afresh_after_every_skip_changes_nothing(
    versions: list[Any],
) -> None:
    """The earlier rows read again from each ordinal asked for: the same rows result."""
    skip = diff_module._RowsAt.SKIP
    diff_module._RowsAt.SKIP = 0
    try:
        _check_versions(versions)
    finally:
        diff_module._RowsAt.SKIP = skip


def _check_versions(versions: list[Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "batch.yaml").write_text(
            yaml.safe_dump({"inputs": ["in.jsonl"], "output_dir": "out"})
        )
        path = root / "in.jsonl"
        path.write_bytes(b"")
        spec = load_spec(root / "batch.yaml")
        path = spec.inputs[0]
        store = Store(root / "state")
        try:
            for n, version in enumerate(versions):
                path.write_bytes(_render(version))
                os.utime(path, ns=(n + 1, n + 1))  # a new stat each time: never skipped
                before = _table(store)
                try:
                    expected: Any = _expected(spec, path, before)
                except InputError as exc:
                    expected = [str(p) for p in exc.problems]
                try:
                    sync_inputs(spec, store, NullReporter())
                except InputError as exc:
                    assert [str(p) for p in exc.problems] == expected
                    assert _table(store) == before  # rolled back
                    continue
                assert _table(store) == expected
        finally:
            store.close()


def _project(tmp_path: Path, lines: list[str]) -> tuple[Spec, Store]:
    """A project of one input holding lines, and its store."""
    (tmp_path / "batch.yaml").write_text(
        yaml.safe_dump({"inputs": ["in.jsonl"], "output_dir": "out"})
    )
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    return load_spec(tmp_path / "batch.yaml"), Store(tmp_path / "state")


def test_an_edit_rewrites_one_row_and_shifts_the_rest(tmp_path: Path) -> None:
    """A longer line in the middle: one row written, the rows after it moved by one UPDATE."""
    lines = [_chat(f"c{i}", "text") for i in range(20)]
    spec, store = _project(tmp_path, lines)
    try:
        sync_inputs(spec, store, NullReporter())
        lines[10] = _chat("c10", "a longer text than before")
        (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
        statements: list[str] = []
        store.db.set_trace_callback(statements.append)
        sync_inputs(spec, store, NullReporter())
        store.db.set_trace_callback(None)
        # (a trigger's statements are traced as the statement that fired it: count each once)
        written = list(
            dict.fromkeys(
                s for s in statements if s.startswith(("INSERT INTO requests", "UPDATE requests"))
            )
        )
        assert len(written) == 2, "\n".join(written)  # the edited row, one shift of the rest
        assert any(
            s.startswith("INSERT") and "in.jsonl',10,11," in s.replace(" ", "") for s in written
        ), written
        assert any(s.startswith("UPDATE") and "BETWEEN 11 AND 19" in s for s in written)
        assert _table(store) == _expected(spec, spec.inputs[0], _table(store))
    finally:
        store.close()


def test_rows_moved_by_a_longer_line_leave_the_cached_answers_valid(tmp_path: Path) -> None:
    """The rows after a longer line only move: the requests counter (which keys cached
    answers) counts the edit the same whether 0 or 18 rows moved after it."""
    lines = [_chat(f"c{i}", "text") for i in range(20)]
    spec, store = _project(tmp_path, lines)
    bumps = []
    try:
        for edited in (None, 19, 1):
            if edited is not None:
                lines[edited] = _chat(f"c{edited}", "a longer text than before")
            (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
            before = store.version()
            sync_inputs(spec, store, NullReporter())
            bumps.append(store.version()[0] - before[0])  # counters by name: requests first
        assert _table(store) == _expected(spec, spec.inputs[0], _table(store))
        assert bumps[0] >= 20 and bumps[1] == bumps[2] > 0, bumps
    finally:
        store.close()


def test_edits_far_apart_read_few_earlier_rows(tmp_path: Path) -> None:
    """Two edits and a deletion in 12,000 lines: the rows a full read gives, and the earlier
    rows read only around the changes (unchanged or moved lines are kept unread): only the
    three chunks that hold a change are read (gptbatch.inputs.chunks), not all 12,000 rows."""
    lines = [_chat(f"c{i}", "text") for i in range(12_000)]
    spec, store = _project(tmp_path, lines)
    read: list[int] = []
    real_stream = diff_module.stream_rows

    def counting(cursor: Any, size: int = 1024) -> Any:
        for row in real_stream(cursor, size):
            read.append(1)
            yield row

    try:
        sync_inputs(spec, store, NullReporter())
        lines[100] = _chat("c100", "edited, and longer")  # moves every line after it
        lines[6_000] = _chat("c6000", "edited too")
        del lines[11_500]  # every row after it changes ordinal: those are read
        (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
        diff_module.stream_rows = counting
        try:
            sync_inputs(spec, store, NullReporter())
        finally:
            diff_module.stream_rows = real_stream
        assert _table(store) == _expected(spec, spec.inputs[0], _table(store))
        # Each changed chunk's earlier rows are read from its first ordinal, a page (1024)
        # at a time; the unchanged chunks around them are kept by a statement each.
        assert 3 <= len(read) <= 3 * 1024, len(read)
    finally:
        store.close()


@pytest.mark.parametrize("keep_mtime", [True, False])
def test_an_input_edited_while_it_is_read_ends_up_read_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep_mtime: bool
) -> None:
    """An edit between the stat and the read: the rows follow the bytes read, then the file.

    A row's key and digest always come from the same bytes, so a row reused by digest in
    a later sync holds the key of exactly those bytes.
    """
    (tmp_path / "batch.yaml").write_text(
        yaml.safe_dump({"inputs": ["in.jsonl"], "output_dir": "out"})
    )
    path = tmp_path / "in.jsonl"
    lines = [_chat(f"c{i}", "a") for i in range(6)]
    path.write_text("\n".join(lines) + "\n")
    spec = load_spec(tmp_path / "batch.yaml")
    store = Store(tmp_path / "state")
    try:
        sync_inputs(spec, store, NullReporter())
        lines[2] = _chat("c2", "b")  # same length: only the stat's mtime can tell
        path.write_text("\n".join(lines) + "\n")
        real_hash = sync.input_digest

        def hash_then_edit(p: Path, known: Any) -> Any:
            digest = real_hash(p, known)
            st_ = p.stat()
            lines[4] = _chat("c4", "c")
            p.write_text("\n".join(lines) + "\n")
            if keep_mtime:
                os.utime(p, ns=(st_.st_atime_ns, st_.st_mtime_ns))
            return digest

        monkeypatch.setattr(sync, "input_digest", hash_then_edit)
        sync_inputs(spec, store, NullReporter())
        monkeypatch.setattr(sync, "input_digest", real_hash)
        assert _table(store) == _expected(spec, spec.inputs[0], _table(store))
        sync_inputs(spec, store, NullReporter())
        assert _table(store) == _expected(spec, spec.inputs[0], _table(store))
    finally:
        store.close()
