"""Request offsets stored relative to their chunk (m013, gptbatch.state.positions): an edit
moves chunk starts, not every row after it, and every reader still gets offsets in the file."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import yaml

from gptbatch.config.spec import Spec, load_spec
from gptbatch.engine import sync as sync_module
from gptbatch.engine.sync import sync_inputs
from gptbatch.inputs.requests import read_raw_line
from gptbatch.report import NullReporter
from gptbatch.state.rows import REQUEST_ROW_SELECT
from gptbatch.state.store import Store


def _chat(cid: str, text: str) -> str:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}
    return json.dumps(
        {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": body}
    )


def _project(tmp_path: Path, lines: list[str]) -> tuple[Spec, Store]:
    (tmp_path / "batch.yaml").write_text(
        yaml.safe_dump({"inputs": ["in.jsonl"], "output_dir": "out"})
    )
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    return load_spec(tmp_path / "batch.yaml"), Store(tmp_path / "state")


def _stored(store: Store) -> list[int]:
    return [r[0] for r in store.db.execute("SELECT offset FROM requests ORDER BY ordinal")]


def _points_at_its_line(store: Store, path: Path) -> None:
    """Every request's offset, as the store hands it out, is where its line is in the file."""
    rows = list(store.requests_of(str(path)))
    assert rows
    for row in rows:
        raw = read_raw_line(path, row.offset, row.length)
        assert json.loads(raw)["custom_id"] == row.custom_id, row


def test_a_longer_line_moves_chunk_starts_not_the_rows_after_it(tmp_path: Path) -> None:
    lines = [_chat(f"c{i}", "text") for i in range(6_000)]
    spec, store = _project(tmp_path, lines)
    try:
        sync_inputs(spec, store, NullReporter())
        chunks = store.db.execute("SELECT count(*) FROM input_chunks").fetchone()[0]
        assert chunks > 4  # the edit below has chunks after it
        stored = _stored(store)
        # relative: every chunk's first request is stored at 0 (no blank lines here)
        assert stored.count(0) == chunks
        lines[100] = _chat("c100", "edited, and longer than it was")
        (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
        updates: list[str] = []
        store.db.set_trace_callback(
            lambda sql: updates.append(sql) if sql.startswith("UPDATE requests") else None
        )
        sync_inputs(spec, store, NullReporter())
        store.db.set_trace_callback(None)
        # rows moved only within the chunk that holds the edit: none of a later chunk
        first, rows = store.db.execute(
            "SELECT first_ordinal, rows FROM input_chunks WHERE first_ordinal<=100"
            " ORDER BY first_ordinal DESC LIMIT 1"
        ).fetchone()
        end = first + rows - 1
        assert end < 5_000
        for sql in updates:
            assert int(sql.rsplit(" ", 1)[1]) <= end, sql
        after = _stored(store)
        assert after[end + 1 :] == stored[end + 1 :]  # later chunks' rows: as they were
        _points_at_its_line(store, tmp_path / "in.jsonl")
        # and where the chunks start moved by what the line grew
        grown = len(lines[100]) - len(_chat("c100", "text"))
        starts = [r[0] for r in store.db.execute("SELECT start FROM input_chunks ORDER BY seq")]
        assert starts[-1] > grown and all(s > 0 for s in starts[1:])
    finally:
        store.close()


def test_a_file_changing_while_read_leaves_offsets_in_the_file(tmp_path: Path) -> None:
    """No chunks recorded (the file changed while read): the rows hold offsets in the file."""
    lines = [_chat(f"c{i}", "text") for i in range(3_000)]
    spec, store = _project(tmp_path, lines)
    real = sync_module._chunk_records
    sync_module._chunk_records = lambda *args: []  # what a stat moved under the read gives
    try:
        sync_inputs(spec, store, NullReporter())
        assert store.db.execute("SELECT count(*) FROM input_chunks").fetchone()[0] == 0
        path = tmp_path / "in.jsonl"
        _points_at_its_line(store, path)
        assert _stored(store) == [row.offset for row in store.requests_of(str(path))]
        sync_module._chunk_records = real
        lines.insert(5, _chat("new", "x"))  # the next sync reads it in full, chunks again
        path.write_text("\n".join(lines) + "\n")
        sync_inputs(spec, store, NullReporter())
        assert store.db.execute("SELECT count(*) FROM input_chunks").fetchone()[0] > 1
        _points_at_its_line(store, path)
    finally:
        sync_module._chunk_records = real
        store.close()


def test_a_state_from_m012_is_upgraded_in_place(tmp_path: Path) -> None:
    """Offsets written in the file by the previous schema read back the same after m013."""
    lines = [_chat(f"c{i}", "text") for i in range(3_000)]
    spec, store = _project(tmp_path, lines)
    try:
        sync_inputs(spec, store, NullReporter())
        path = tmp_path / "in.jsonl"
        want = list(store.db.execute(f"SELECT {REQUEST_ROW_SELECT} FROM requests r"))
    finally:
        store.close()
    db = sqlite3.connect(tmp_path / "state" / "state.db")
    # undo m013 by hand: offsets in the file, no index, no record of the migration
    db.execute(
        "UPDATE requests SET offset=offset+(SELECT c.start FROM input_chunks c"
        " WHERE c.path=requests.path AND c.rows>0 AND c.first_ordinal<=requests.ordinal"
        " ORDER BY c.first_ordinal DESC LIMIT 1)"
    )
    db.execute("DROP INDEX input_chunks_ordinal")
    db.execute("DELETE FROM migrations WHERE name='m013_chunk_relative_offsets'")
    db.commit()
    absolute = [r[0] for r in db.execute("SELECT offset FROM requests ORDER BY ordinal")]
    db.close()
    assert absolute == [row[3] for row in sorted(want, key=lambda r: r[1])]
    store = Store(tmp_path / "state")
    try:
        assert list(store.db.execute(f"SELECT {REQUEST_ROW_SELECT} FROM requests r")) == want
        assert _stored(store) != absolute
        _points_at_its_line(store, path)
    finally:
        store.close()
