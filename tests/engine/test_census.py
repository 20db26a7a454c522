"""The queue census: other projects' tokens in flight reduce the room; finished ones and
batches without gptbatch's estimate do not; how the room is shared; how far it pages."""

from __future__ import annotations

import itertools

from batchinfo import batch_info

from gptbatch.api.remote import BatchInfo
from gptbatch.engine.batches import META_PROJECT, META_TOKENS, QueueTag, queue_tag, queue_value
from gptbatch.engine.census import (
    CENSUS_PAGES,
    IN_FLIGHT_HORIZON,
    QUIET_RUN,
    SENDING_GRACE,
    Census,
    share,
)

MODEL = "gpt-4o-mini"
_ids = itertools.count()


def batch(
    project: str | None,
    tokens: int | None,
    status: str = "in_progress",
    *,
    more: bool = True,
    sharing: int = 1,
    model: str = MODEL,
    created: int = 1_000_000,
    finished: int | None = None,
) -> BatchInfo:
    metadata = {}
    if project is not None:
        metadata[META_PROJECT] = project
    if tokens is not None:
        metadata[META_TOKENS] = queue_value(tokens, more, model, sharing)
    return batch_info(
        f"batch_{next(_ids)}",
        status,
        input_file_id="file-x",
        created_at=created,
        metadata=metadata,
        finished_at=finished,
        model=model,
    )


def census_of(*infos: BatchInfo, ours: str = "mine") -> Census:
    census = Census({ours})
    census.begin()
    for info in infos:
        census.see(info)
    census.page_done()
    census.end()
    return census


def test_the_tag_round_trips_and_rejects_what_it_cannot_read() -> None:
    tag = queue_tag({META_TOKENS: queue_value(1_234, True, MODEL, 2)})
    assert tag == QueueTag(1_234, True, 2, MODEL)
    assert queue_tag({META_TOKENS: queue_value(7, False, None)}) == QueueTag(7, False, 1, None)
    assert queue_tag({}) is None
    assert queue_tag({META_TOKENS: "lots more"}) is None
    assert len(queue_value(10**12, True, "m" * 600)) <= 512


def test_only_other_projects_batches_in_flight_with_the_estimate_count() -> None:
    census = census_of(
        batch("other", 1_000),  # counted
        batch("other", 500, "validating"),  # counted: validating holds room too
        batch("other", 300, "finalizing"),  # counted
        batch("other", 4_000, "completed", finished=1_000_000),  # finished: not counted
        batch("other", 4_000, "failed", finished=1_000_000),  # refused or failed: not counted
        batch("mine", 2_000),  # ours: our own state counts it
        batch("legacy", None),  # an older gptbatch: no estimate, not counted
        batch(None, None),  # not gptbatch at all
        batch("other", 800, model="gpt-4o"),  # another model's queue
    )
    assert census.others(MODEL) == 1_800
    assert census.others("gpt-4o") == 800
    assert census.others("gpt-4.1") == 0
    assert census.senders(MODEL) == 1  # "other": in flight, more to follow
    assert census.sending(MODEL)  # others see this build sending: they leave it its share
    assert not census_of(batch("mine", 2_000, more=False)).sending(MODEL)


def test_each_listing_replaces_the_counts() -> None:
    census = census_of(batch("other", 1_000))
    assert census.others(MODEL) == 1_000
    census.begin()
    census.see(batch("other", 1_000, "completed", finished=1_000_000))
    census.page_done()
    assert census.others(MODEL) == 1_000  # a listing under way changes nothing yet
    census.end()
    assert census.others(MODEL) == 0


def test_other_projects_in_flight_reduce_the_room() -> None:
    # Nobody else: the whole working budget; others' tokens come off it.
    assert share(3_000, 0, 0, member=True, first_wave=False) == 3_000
    assert share(3_000, 1_200, 0, member=True, first_wave=False) == 1_800
    assert share(3_000, 4_000, 0, member=True, first_wave=False) == 0
    # One other project sending: half each, less if it holds more than its half.
    assert share(3_000, 1_000, 1, member=True, first_wave=False) == 1_500
    assert share(3_000, 2_000, 1, member=True, first_wave=False) == 1_000
    assert share(3_000, 0, 2, member=True, first_wave=False) == 1_000
    # A build holding nothing waits for senders to finish rather than race them for room.
    assert share(3_000, 500, 1, member=False, first_wave=False) == 0
    # The first wave takes at most half: a build started at the same instant does too.
    assert share(3_000, 0, 0, member=False, first_wave=True) == 1_500


def test_a_project_between_batches_keeps_its_share_for_a_while() -> None:
    now = 1_000_000
    recent = census_of(
        batch("other", 900, "completed", more=True, created=now - 100, finished=now - 10),
        batch("third", 900, created=now),
    )
    assert recent.senders(MODEL) == 2 and recent.others(MODEL) == 900
    stale = census_of(
        batch("third", 900, created=now),
        batch("other", 900, "completed", created=now - 5_000, finished=now - SENDING_GRACE - 60),
    )
    assert stale.senders(MODEL) == 1  # a killed build stops counting
    last = census_of(batch("other", 900, more=False))
    assert last.senders(MODEL) == 0 and last.others(MODEL) == 900  # draining: no share


def test_paging_is_bounded() -> None:
    census = Census({"mine"})
    census.begin()
    census.see(batch("other", 10))
    for _ in range(QUIET_RUN - 1):
        census.see(batch("other", 10, "completed", finished=1))
    assert census.page_done()  # a batch in flight, then too few ended ones to be sure
    for _ in range(QUIET_RUN):
        census.see(batch("other", 10, "completed", finished=1))
    assert not census.page_done()  # QUIET_RUN ended in a row: older ones are done
    census.begin()
    census.see(batch("other", 10, created=2_000_000))
    census.see(batch("other", 10, created=2_000_000 - int(IN_FLIGHT_HORIZON) - 1))
    assert not census.page_done()  # past the completion window: nothing older flies
    census.begin()
    pages = 0
    while True:
        census.see(batch("other", 10))
        pages += 1
        if not census.page_done():
            break
    assert pages == CENSUS_PAGES


def test_a_build_that_joined_shares_once_every_sender_saw_others() -> None:
    joined_at = 1_000
    unaware = census_of(batch("other", 900, created=joined_at + 5), batch("mine", 100))
    assert not unaware.acknowledged(MODEL, joined_at)  # it made a batch seeing nobody else
    before = census_of(batch("other", 900, sharing=2, created=joined_at - 5))
    assert not before.acknowledged(MODEL, joined_at)  # it saw someone, before we joined
    aware = census_of(
        batch("other", 900, sharing=2, created=joined_at + 5),
        batch("other", 900, created=joined_at - 50),
    )
    assert aware.acknowledged(MODEL, joined_at)
    assert census_of(batch("other", 900, more=False)).acknowledged(MODEL, joined_at)  # draining
