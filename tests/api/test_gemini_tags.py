"""A Gemini job's display name carries gptbatch's tags, and reads back as them."""

from __future__ import annotations

from gptbatch.api.gemini import DISPLAY_NAME_MAX, display_name, display_tags


def test_display_name_round_trips_within_the_limit() -> None:
    keys = ",".join(f"{i:016x}" for i in range(28))
    for project in ("p", "x" * 64):
        meta = {"gptbatch_project": project, "gptbatch_shard": "a" * 64, "gptbatch_keys": keys}
        shown = display_name(meta)
        assert len(shown) <= DISPLAY_NAME_MAX
        tags = display_tags(shown)
        assert tags["gptbatch_project"] == project and tags["gptbatch_shard"] == "a" * 12
        sample = tags["gptbatch_keys"].split(",")
        assert sample and keys.startswith(",".join(sample))  # whole prefixes, in order
    assert len(display_tags(display_name({"gptbatch_project": "p", "gptbatch_keys": keys}))) == 3


def test_names_gptbatch_did_not_write_carry_no_tags() -> None:
    for shown in (None, "", "someone else", "gptbatch", "gptbatch  x", "gptbatch - -"):
        assert display_tags(shown) == {}
    assert display_tags("gptbatch proj") == {"gptbatch_project": "proj"}
