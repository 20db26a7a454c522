"""Sharing one organisation's queue: other gptbatch projects' tokens in flight, from batches.list.

The enqueued-token limit is the organisation's, per model, not a project's: two builds on
one API key that each plan with the whole limit refuse each other's work. Every batch
gptbatch creates carries its estimated tokens in its metadata (META_TOKENS, with whether
its project had more to send after it), so a build reads what other projects hold from the
`batches.list` pages it fetches anyway (the reconcile pass at the start, the poll each round
while something waits for room) and plans with what is left (`Census.room`).

Only batches carrying META_TOKENS are counted: one made by an older gptbatch or by another
tool has no estimate here, and its tokens are learned as before, from refusals. Nothing
seen here is adopted, cancelled or collected: the census only reads. Counts live in memory
for one run and are replaced by every listing (state is evidence, the listing is the fact).

How the room is shared, per model, with B the working budget and O the tokens other
projects hold:
- no other project is sending (none has work in flight with more to follow): B - O, so a
  build uses what another one's last batches leave and fills the queue as they drain;
- n - 1 others are sending: min(B - O, B / n) for a build the others see sending too (by
  the same rule, from its own batches listed, or one it created since the last listing),
  a fixed share that the others respect too, so two builds refilling the room their own
  batches free never race for the same tokens;
- a build the others do not see sending gets no share (0): taking room another build is
  about to refill would be refused. It sends one small batch into the API's headroom above
  their budget (half the safety margin, Scheduler.announce) to be seen. It takes a share
  only once every sender made a batch after that one saying it saw others sending (each
  batch says how many projects its build saw): then they keep to their shares and it
  grows into its own as their batches end. With no margin it waits until the others send
  their last batch;
- the first wave of a run (before a listing has shown what the others did meanwhile) takes
  at most B / 2: two builds that start at the same instant and both see an empty queue
  then fill it together, not twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from gptbatch.api.remote import BatchInfo
from gptbatch.engine.batches import (
    META_PROJECT,
    TERMINAL_BATCH_STATUSES,
    QueueTag,
    queue_tag,
)

# No batch created this long before the newest one listed can still hold room: the API
# expires a batch when its 24 h completion window ends (finalizing takes minutes more).
IN_FLIGHT_HORIZON = 26 * 3600.0
# Pages (100 batches each) one census may read: a bound on list calls per poll round. Paging
# stops earlier once QUIET_RUN batches in a row have ended (batches of one queue finish
# roughly in the order they were made, so older ones are done too), or past the horizon.
# A batch older than that run still in flight is missed: its tokens are learned as before,
# from a refusal.
CENSUS_PAGES = 5
QUIET_RUN = 50
# A project whose newest batch says more follows still counts as sending this long (API
# seconds) after its last batch ended: between one batch ending and the next starting it
# holds nothing, yet its share must not be taken. A killed build stops counting after it.
SENDING_GRACE = 600.0


@dataclass
class QueueView:
    """What other gptbatch projects held per model at the last listing."""

    tokens: dict[str, int] = field(default_factory=dict)  # model -> tokens in flight
    senders: dict[str, set[str]] = field(default_factory=dict)  # model -> projects sending
    ours: set[str] = field(default_factory=set)  # models others see this build sending on
    # (model, project) -> created_at of its newest batch, if that batch was made seeing
    # other projects sending: it shares the queue, if we were among those it saw.
    aware: dict[tuple[str, str], int] = field(default_factory=dict)


def share(working: int, others: int, senders: int, *, member: bool, first_wave: bool) -> int:
    """The tokens this build may hold of a model's working budget (see the module doc)."""
    room = max(0, working - others)
    if senders:
        if not member:
            return 0
        room = min(room, working // (senders + 1))
    if first_wave:
        room = min(room, working // 2)
    return room


class Census:
    """Counts other gptbatch projects' batches in flight, from the pages a listing reads."""

    def __init__(self, project_ids: Iterable[str]) -> None:
        self.project_ids = frozenset(project_ids)
        self.view = QueueView()
        self.listings = 0  # complete listings taken in this run
        self._reset()

    def _reset(self) -> None:
        self._next = QueueView()
        self._newest: int | None = None  # created_at of the newest batch listed (API time)
        self._now = 0  # the latest API timestamp listed: a lower bound of the API's clock
        # (model, project) -> what its newest batch listed says, and when it ended
        self._last: dict[tuple[str, str], tuple[QueueTag, int, int | None]] = {}
        self._flying: set[tuple[str, str]] = set()
        self._pages = 0
        self._quiet = 0  # batches in a row, newest first, that ended
        self._page_oldest: int | None = None

    def begin(self) -> None:
        """Start a listing (newest first); `see` each batch, `page_done` after each page."""
        self._reset()

    def see(self, info: BatchInfo) -> None:
        if self._newest is None:
            self._newest = info.created_at
        self._now = max(self._now, info.created_at, info.finished_at or 0)
        self._page_oldest = info.created_at
        flying = info.status not in TERMINAL_BATCH_STATUSES
        self._quiet = 0 if flying else self._quiet + 1
        project = info.metadata.get(META_PROJECT)
        tag = queue_tag(info.metadata)
        if tag is None or not project:
            return  # no estimate to count
        ours = project in self.project_ids
        # Project "" is this build, as the others see it (a sender or not).
        key = (tag.model or info.model or "", "" if ours else project)
        if key not in self._last:  # newest first: the project's latest word on more work
            self._last[key] = (tag, info.created_at, info.finished_at)
        if flying:
            if not ours:  # our own batches are counted from our state
                self._next.tokens[key[0]] = self._next.tokens.get(key[0], 0) + tag.tokens
            self._flying.add(key)

    def page_done(self) -> bool:
        """Is the next page worth reading? Bounded by CENSUS_PAGES and IN_FLIGHT_HORIZON."""
        self._pages += 1
        oldest, self._page_oldest = self._page_oldest, None
        if self._quiet >= QUIET_RUN or self._pages >= CENSUS_PAGES or oldest is None:
            return False
        return self._newest is None or oldest >= self._newest - IN_FLIGHT_HORIZON

    def end(self) -> None:
        """The listing ended (whether or not it read every page): its counts are the view."""
        for key, (tag, created, finished) in self._last.items():
            recent = finished is not None and finished >= self._now - SENDING_GRACE
            if not tag.more or not (key in self._flying or recent):
                continue
            if key[1]:
                self._next.senders.setdefault(key[0], set()).add(key[1])
                if tag.sharing > 1:
                    self._next.aware[key] = created
            else:
                self._next.ours.add(key[0])
        self.view = self._next
        self.listings += 1
        self._reset()

    def others(self, model: str | None) -> int:
        return self.view.tokens.get(model or "", 0)

    def senders(self, model: str | None) -> int:
        return len(self.view.senders.get(model or "", ()))

    def acknowledged(self, model: str | None, since: int) -> bool:
        """Did every project sending on the model make a batch since `since` (API time)
        seeing others send? Then it saw this build's batch made at `since`, and keeps to
        its share (with two projects exactly; with more, about)."""
        name = model or ""
        return all(
            self.view.aware.get((name, project), -1) >= since
            for project in self.view.senders.get(name, ())
        )

    def sending(self, model: str | None) -> bool:
        """Do others see this build sending on the model (so they leave it its share)?"""
        return (model or "") in self.view.ours
