"""requests.done and result_version (m004) always equal what a join with results gives."""

from __future__ import annotations

import contextlib
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from gptbatch.state.migrations import MIGRATIONS
from gptbatch.state.rows import ResultRow
from gptbatch.state.store import Store

KEYS = [f"k{i}" for i in range(6)]

OP = st.one_of(
    st.tuples(st.just("sync"), st.lists(st.sampled_from(KEYS), max_size=6)),
    # as a new input is read: in bulk when no request is stored (a first build)
    st.tuples(st.just("bulk sync"), st.lists(st.sampled_from(KEYS), max_size=6)),
    st.tuples(st.just("write"), st.sampled_from(KEYS), st.sampled_from(["ok", "failed", "retry"])),
    st.tuples(
        st.just("write many"),
        st.lists(st.tuples(st.sampled_from(KEYS), st.sampled_from(["ok", "retry"])), max_size=4),
    ),
    st.tuples(st.just("record"), st.sampled_from(KEYS), st.sampled_from(["ok", "failed", "retry"])),
    st.tuples(st.just("reset"), st.booleans()),
    st.tuples(st.just("gc"), st.lists(st.sampled_from(KEYS), max_size=3)),
    st.tuples(st.just("delete"), st.sampled_from(KEYS)),
)


def _sync(store: Store, keys: list[str], bulk: bool = False) -> None:
    rows = [
        (
            i,
            i + 1,
            0,
            1,
            key,
            f"c-{i}-{key}",
            "m",
            "/v1/chat/completions",
            1,
            1,
            1,
            0.0,
            "new",
            None,
        )
        for i, key in enumerate(keys)
    ]
    with store.snapshot() as before, store.transaction():
        empty = not store.has_requests()
        with store.bulk_requests() if bulk else contextlib.nullcontext(False) as in_bulk:
            assert in_bulk == (bulk and empty)
            store.replace_input(
                "in.jsonl", size=1, mtime_ns=1, sha256="x", defaults="{}", rows=rows, before=before
            )


def _apply(store: Store, op: tuple[Any, ...]) -> None:
    kind = op[0]
    if kind in ("sync", "bulk sync"):
        _sync(store, op[1], bulk=kind == "bulk sync")
        return
    if kind == "gc":
        store.drop_unreferenced(op[1])
        return
    with store.transaction():
        if kind == "write":
            store.write_results([(op[1], op[2], 1, "line", None, "b")])
        elif kind == "write many":  # a key may come twice: the later row stands
            store.write_results(
                [(k, state, 1, f"line {i}", None, "b") for i, (k, state) in enumerate(op[1])]
            )
            for i, (k, state) in enumerate(op[1]):
                if all(k != later for later, _ in op[1][i + 1 :]):
                    assert store.result(k) == ResultRow(k, state, 1, f"line {i}", None, "b")
        elif kind == "record":
            store.record_result(op[1], state=op[2], line="line")
        elif kind == "reset":
            store.reset_results(["in.jsonl"], only_failed=op[1])
        elif kind == "delete":
            store.db.execute("DELETE FROM results WHERE key=?", (op[1],))


def _mismatches(db: sqlite3.Connection) -> list[Any]:
    return list(
        db.execute(
            "SELECT r.key, r.done, s.state FROM requests r LEFT JOIN results s ON s.key=r.key"
            " WHERE r.done != (CASE s.state WHEN 'ok' THEN 1 WHEN 'failed' THEN 2 ELSE 0 END)"
            " OR r.result_version IS NOT s.version"
        )
    )


def _counted(db: sqlite3.Connection) -> dict[str, int]:
    """counts() by a walk over every request (counts reads indexes and per-input counts)."""
    ok, failed, total = db.execute(
        "SELECT coalesce(sum(done=1), 0), coalesce(sum(done=2), 0), count(*) FROM requests"
    ).fetchone()
    pending = total - ok - failed
    return {"total": total, "ok": ok, "failed": failed, "in_shards": 0, "pending": pending}


@settings(max_examples=50, deadline=None)
@given(ops=st.lists(OP, max_size=12))
@example(ops=[("write", "k1", "ok"), ("write", "k2", "failed"), ("bulk sync", ["k1", "k2", "k3"])])
@example(ops=[("bulk sync", ["k1"]), ("write", "k1", "ok"), ("sync", []), ("bulk sync", ["k1"])])
def test_done_follows_every_write(ops: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "a")
        # The same writes, every sync row by row: bulk syncs leave what it leaves, exactly
        # (rows, outcomes, counters: cached answers are keyed by them), and the same schema.
        shadow = Store(Path(tmp) / "b")
        schema = "SELECT type, name, sql FROM sqlite_master ORDER BY name"
        try:
            for op in ops:
                _apply(store, op)
                _apply(shadow, ("sync", *op[1:]) if op[0] == "bulk sync" else op)
                assert _mismatches(store.db) == [], op
                assert store.version() == shadow.version(), op
                every = "SELECT * FROM requests ORDER BY path, ordinal"
                assert list(store.db.execute(every)) == list(shadow.db.execute(every))
                assert list(store.db.execute(schema)) == list(shadow.db.execute(schema))
                versions = [v for (v,) in store.db.execute("SELECT version FROM results")]
                assert len(set(versions) - {None}) == len([v for v in versions if v is not None])
                pending = [r.key for r in store._pending(store.db)]
                expected = [
                    k
                    for (k,) in store.db.execute(
                        "SELECT r.key FROM requests r LEFT JOIN results s ON s.key=r.key"
                        " WHERE s.state IS NULL OR s.state NOT IN ('ok', 'failed')"
                        " ORDER BY r.path, r.ordinal"
                    )
                ]
                assert pending == expected
                assert store._any_pending() == bool(expected)
                assert store._counts() == _counted(store.db)
                assert store._result_counts("in.jsonl") == {
                    "ok": _counted(store.db)["ok"],
                    "failed": _counted(store.db)["failed"],
                    "missing": _counted(store.db)["pending"],
                }
        finally:
            store.close()
            shadow.close()


def test_a_state_from_before_m004_gets_its_outcomes(tmp_path: Path) -> None:
    """An existing project's results mark its requests done when the migration runs."""
    db = sqlite3.connect(tmp_path / "state.db")
    db.execute("CREATE TABLE migrations(name TEXT PRIMARY KEY)")
    for name, sql in MIGRATIONS[:3]:
        db.executescript(sql)
        db.execute("INSERT INTO migrations(name) VALUES (?)", (name,))
    for i, state in enumerate(["ok", "failed", "retry", None]):
        db.execute(
            "INSERT INTO requests(path, ordinal, line, offset, length, key, custom_id, url,"
            " tokens, nbytes, inputs) VALUES ('in', ?, ?, 0, 1, ?, ?, '/v1/embeddings', 1, 1, 1)",
            (i, i + 1, f"k{i}", f"c{i}"),
        )
        if state:
            db.execute("INSERT INTO results(key, state) VALUES (?, ?)", (f"k{i}", state))
    # as every sync leaves it (the request count a later migration recounts)
    db.execute("INSERT INTO inputs(path, requests) VALUES ('in', 0)")
    db.commit()
    db.close()
    store = Store(tmp_path)
    try:
        assert [r[0] for r in store.db.execute("SELECT done FROM requests ORDER BY ordinal")] == [
            1,
            2,
            0,
            0,
        ]
        assert store.counts() == {"total": 4, "ok": 1, "failed": 1, "in_shards": 0, "pending": 2}
    finally:
        store.close()


def test_a_replaced_result_is_written_after_every_other_row(tmp_path: Path) -> None:
    """A retry's row replaced by its outcome gets a rowid past all others (usage is
    accounted by rowid), as REPLACE gave it, even when it was the last row."""
    store = Store(tmp_path)
    try:
        with store.transaction():
            store.write_results([("a", "ok", 1, "l", None, "b"), ("r", "retry", 1, None, "e", "b")])
        last = store.last_result_rowid()
        with store.transaction():
            store.write_results(
                [("r", "ok", 2, "done", None, "b2"), ("n", "ok", 1, "n", None, "b2")]
            )
        rowids = dict(store.db.execute("SELECT key, rowid FROM results"))
        assert rowids["r"] > last and rowids["n"] > last and rowids["a"] <= last
        assert [line for _, line in store.ok_lines_after(last)] in (["done", "n"], ["n", "done"])
    finally:
        store.close()
