"""A shard's members are written in key order (index locality) and read in upload order."""

from __future__ import annotations

from pathlib import Path

from gptbatch.state.store import Store


def test_members_come_back_in_upload_order_whatever_order_they_were_written_in(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path)
    members = [("k9", "c0"), ("k1", "c1"), ("k5", "c2"), ("k0", "c3")]
    try:
        with store.transaction():
            for i, (key, cid) in enumerate(members):
                store.db.execute(
                    "INSERT INTO requests(path, ordinal, line, offset, length, key, custom_id,"
                    " url, tokens, nbytes, inputs) VALUES ('in', ?, ?, 0, 1, ?, ?, '/v1/x', 1,"
                    " 1, 1)",
                    (i, i + 1, key, cid),
                )
            store.add_shard(
                "s", model="m", url="/v1/x", members=members, tokens=4, nbytes=4, cost=None
            )
        assert store.members("s") == members
        assert [(k, r.custom_id if r else None) for k, r in store.member_requests("s")] == members
        written = [k for (k,) in store.db.execute("SELECT key FROM members ORDER BY rowid")]
        assert written == sorted(k for k, _ in members)
        ordinals = dict(store.db.execute("SELECT key, ordinal FROM members"))
        assert ordinals == {k: i for i, (k, _) in enumerate(members)}
    finally:
        store.close()


def test_work_to_submit_is_found_from_the_end_exactly_as_the_pending_walk_finds_it(
    tmp_path: Path,
) -> None:
    """has_work_to_submit looks for a free request from the last one back; its answer is
    the walk's from the first one (pending requests exist or not), whatever is packed."""
    store = Store(tmp_path)
    keys = [f"k{i}" for i in range(10)]

    def check(expected: bool) -> None:
        walk = next(store._pending(store.db, limit=1), None) is not None
        assert store._any_pending() == walk == expected
        assert store.has_work_to_submit() == expected

    try:
        with store.transaction():
            for i, key in enumerate(keys):
                store.db.execute(
                    "INSERT INTO requests(path, ordinal, line, offset, length, key, custom_id,"
                    " url, tokens, nbytes, inputs) VALUES ('in', ?, ?, 0, 1, ?, ?, '/v1/x', 1,"
                    " 1, 1)",
                    (i, i + 1, key, f"c{i}"),
                )
        check(True)
        for shard, members in (("head", keys[:8]), ("tail", keys[8:])):
            with store.transaction():
                store.add_shard(
                    shard,
                    model=None,
                    url="/v1/x",
                    members=[(k, k) for k in members],
                    tokens=len(members),
                    nbytes=1,
                    cost=None,
                    state="submitted",  # at the API: neither pending nor unsent
                )
            check(shard == "head")  # the last two are free until the tail is packed
        with store.transaction():
            store.write_results([(k, "ok", 1, "l", None, "b") for k in keys[8:]])
            store.update_shard("tail", state="done")
        check(False)  # the free end is done: nothing left, however far the walk goes
        with store.transaction():
            store.update_shard("head", state="dropped")  # its members are free again
        check(True)
    finally:
        store.close()
