"""Results written a batch at a time (m011): versions, counters and outcomes without triggers."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gptbatch.state.migrations import MIGRATIONS
from gptbatch.state.store import Store


def _requests(db: sqlite3.Connection, keys: list[str]) -> None:
    for i, key in enumerate(keys):
        db.execute(
            "INSERT INTO requests(path, ordinal, line, offset, length, key, custom_id, url,"
            " tokens, nbytes, inputs) VALUES ('in', ?, ?, 0, 1, ?, ?, '/v1/embeddings', 1, 1, 1)",
            (i, i + 1, key, f"c{i}"),
        )


def _outcomes(store: Store) -> list[tuple[str, int, int | None]]:
    return list(store.db.execute("SELECT key, done, result_version FROM requests ORDER BY ordinal"))


def test_every_write_gives_versions_past_all_before_and_moves_the_counters(
    tmp_path: Path,
) -> None:
    """A version is unique and greater than every earlier one (patched outputs copy a line by
    its version), and each write changes what cached answers are keyed by."""
    store = Store(tmp_path)
    try:
        with store.transaction():
            _requests(store.db, ["a", "b", "c"])
        seen: list[int] = []
        writes = [
            [("a", "retry", 1, None, "e", "b1"), ("b", "ok", 1, "lb", None, "b1")],
            [("a", "ok", 2, "la", None, "b2")],  # a retry's row replaced
            [("c", "failed", 1, None, "bad", "b3"), ("c", "ok", 1, "lc", None, "b3")],  # twice
        ]
        for rows in writes:
            before = store.version()
            with store.transaction():
                store.write_results(rows)
            assert store.version() != before
            versions = [v for (v,) in store.db.execute("SELECT version FROM results")]
            fresh = [v for v in versions if v not in seen]
            assert fresh and min(fresh) > max(seen, default=0)
            seen += fresh
        assert _outcomes(store) == [
            ("a", 1, store.db.execute("SELECT version FROM results WHERE key='a'").fetchone()[0]),
            ("b", 1, store.db.execute("SELECT version FROM results WHERE key='b'").fetchone()[0]),
            ("c", 1, store.db.execute("SELECT version FROM results WHERE key='c'").fetchone()[0]),
        ]
        # outside a transaction, a write is still whole (record_result's callers)
        store.record_result("d", state="ok", line="ld")
        assert store.result("d") is not None and not store.db.in_transaction
    finally:
        store.close()


def test_a_state_from_m010_is_upgraded_in_place(tmp_path: Path) -> None:
    """A state written by the previous schema (its triggers) keeps its outcomes and versions;
    the next results get versions past its own, and its outputs' cache keys still move."""
    db = sqlite3.connect(tmp_path / "state.db")
    db.execute("CREATE TABLE migrations(name TEXT PRIMARY KEY)")
    names = [name for name, _ in MIGRATIONS]
    for name, sql in MIGRATIONS[: names.index("m011_batched_results")]:
        db.executescript(sql)
        db.execute("INSERT INTO migrations(name) VALUES (?)", (name,))
    _requests(db, ["a", "b", "c"])
    for key, state in (("a", "ok"), ("b", "failed")):  # as m010's write_results wrote them
        db.execute(
            "INSERT INTO results(key, state, attempts, line, version) VALUES"
            " (?, ?, 1, 'x', (SELECT value + 1 FROM counters WHERE name='results'))",
            (key, state),
        )
    db.commit()
    old = dict(db.execute("SELECT key, version FROM results"))
    db.close()
    store = Store(tmp_path)
    try:
        assert _outcomes(store) == [("a", 1, old["a"]), ("b", 2, old["b"]), ("c", 0, None)]
        triggers = {n for (n,) in store.db.execute("SELECT name FROM sqlite_master")}
        assert "results_ins" not in triggers and "results_done_ins" not in triggers
        before = store.version()
        with store.transaction():
            store.write_results([("c", "ok", 1, "lc", None, "b")])
        assert store.version() != before
        new = store.db.execute("SELECT version FROM results WHERE key='c'").fetchone()[0]
        assert new > max(old.values())
        assert _outcomes(store)[2] == ("c", 1, new)
        # an update or a delete (forced rebuild, gc) still moves outcomes by its triggers
        assert store.reset_results(["in"], only_failed=False) == 3
        assert [d for _, d, _ in _outcomes(store)] == [0, 0, 0]
        assert store.counts()["pending"] == 3
    finally:
        store.close()


def test_keys_known_to_be_stored_are_not_looked_up_and_a_wrong_guess_fails(
    tmp_path: Path,
) -> None:
    """The collector passes the keys it knows have a row (stored): a retry's row is replaced
    as with the lookup; a key wrongly left out fails the write instead of losing a row."""
    import pytest

    store = Store(tmp_path)
    try:
        with store.transaction():
            _requests(store.db, ["a", "b"])
            store.write_results([("a", "retry", 1, None, "e", "b1")], stored=set())
            store.write_results(
                [("a", "ok", 2, "la", None, "b2"), ("b", "ok", 1, "lb", None, "b2")],
                stored={"a"},
            )
        assert [(k, d) for k, d, _ in _outcomes(store)] == [("a", 1), ("b", 1)]
        assert store.result("a").attempts == 2  # type: ignore[union-attr]
        assert store.db.execute("SELECT count(*) FROM results").fetchone()[0] == 2
        with pytest.raises(sqlite3.IntegrityError), store.transaction():
            store.write_results([("b", "failed", 2, None, "x", "b3")], stored=set())
        assert store.result("b").state == "ok"  # type: ignore[union-attr]
    finally:
        store.close()


def test_rows_written_in_key_order_keep_the_versions_and_outcomes_of_their_given_order(
    tmp_path: Path,
) -> None:
    """write_results writes in key order (index locality); versions still follow the order
    rows were given in, and a key given twice ends with its later outcome."""
    store = Store(tmp_path)
    try:
        with store.transaction():
            _requests(store.db, ["a", "b", "c", "d"])
            base = store.db.execute("SELECT value FROM counters WHERE name='results'").fetchone()[0]
            store.write_results(
                [
                    ("d", "ok", 1, "ld", None, "b"),
                    ("b", "retry", 1, None, "e", "b"),
                    ("c", "failed", 1, None, "x", "b"),
                    ("b", "ok", 1, "lb", None, "b"),
                    ("a", "ok", 1, "la", None, "b"),
                ],
                stored=set(),
            )
        versions = dict(store.db.execute("SELECT key, version FROM results"))
        assert versions == {"d": base + 1, "c": base + 3, "b": base + 4, "a": base + 5}
        assert _outcomes(store) == [
            ("a", 1, base + 5),
            ("b", 1, base + 4),
            ("c", 2, base + 3),
            ("d", 1, base + 1),
        ]
        assert store.result("b").line == "lb"  # type: ignore[union-attr]
        # inserted in key order; the replaced row after them all, as REPLACE gives it
        order = [k for (k,) in store.db.execute("SELECT key FROM results ORDER BY rowid")]
        assert order == ["a", "c", "d", "b"]
    finally:
        store.close()
