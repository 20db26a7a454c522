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
