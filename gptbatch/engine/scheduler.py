"""What goes next under the queue budget: shard sizing and packing, and which shard may go.

Pipelining: with a token budget B per model, shards are filled (first fit over a window of
the next pending requests) to B / k tokens, k = limits.pipeline, so k of them always fit in
B together: while one batch turns over (poll delay, download, upload, validation) the others
keep the queue held, and the next shard goes the moment one is seen finished. At the tail,
once what is left fits in two queue-fulls (2B), each shard takes a 2k-th of what is left
(never below an eighth of B / k), so the last batches are small and finish close together.

Pure functions first (`shard_target`, `fill_shard`); `Scheduler` packs shards into the store
and says which may go, under the working budgets `budget.Budget` keeps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gptbatch.config.spec import Spec
from gptbatch.engine.batches import TERMINAL_BATCH_STATUSES
from gptbatch.engine.budget import Budget
from gptbatch.engine.census import Census, share
from gptbatch.engine.summary import BuildSummary
from gptbatch.pricing import usd
from gptbatch.report import Reporter
from gptbatch.shards import Caps, Item, Packer, batch_caps, shard_key
from gptbatch.state.rows import IN_FLIGHT_SHARD_STATES, RequestRow, ShardRow
from gptbatch.state.store import Store

UNSENT_SHARD_STATES = ("submitting", "ready", "uploading", "uploaded", "waiting")
SMALLEST_SHARE = 8  # tail shards never go below (B / k) / 8 tokens
TAIL_WAVES = 2  # shards start shrinking once what is left would fill the queue this often
FILL_LOOKAHEAD = 2_000  # pending requests a shard may be filled from (first fit)
DEFAULT_PIPELINE = 4


# --- pure sizing ----------------------------------------------------------------------------


def shard_target(working: int, pipeline: int, remaining: int) -> int:
    """Tokens one shard aims at: B / k, shrinking once what is left fits in TAIL_WAVES * B.

    In the tail each shard takes a (k * TAIL_WAVES)-th of what is left (guided
    self-scheduling), so shards shrink as the work runs out and the last batches are small
    and finish close together; never below an eighth of B / k.
    """
    pipeline = max(1, pipeline)
    full = max(1, working // pipeline)
    if pipeline > 1 and remaining <= TAIL_WAVES * working:
        share = remaining // (pipeline * TAIL_WAVES)
        return min(full, max(share, full // SMALLEST_SHARE, 1))
    return full


@dataclass(frozen=True)
class Room:
    """What one new shard may hold: tokens (aimed at), and hard room beside what flies."""

    tokens: int
    tokens_room: int  # working budget less tokens in flight (a lone request may use it all)
    requests: int
    bytes: int
    inputs: int | None
    alone: bool  # nothing in flight: the first request goes even if larger than the room


def fill_shard(rows: Iterable[Any], room: Room, lookahead: int = FILL_LOOKAHEAD) -> list[Any]:
    """Rows (with tokens, nbytes, inputs) for one shard: in order, then first fit.

    Takes requests in input order until the next does not fit, then keeps looking at up to
    `lookahead` further requests for ones that fill the rest, so the shard ends within one
    request of its size. A first request larger than the aim goes alone if it fits the room.
    """
    chosen: list[Any] = []
    tokens = requests = nbytes = inputs = 0
    misses = 0
    for row in rows:
        fits = (
            tokens + row.tokens <= room.tokens
            and requests + 1 <= room.requests
            and nbytes + row.nbytes <= room.bytes
            and (room.inputs is None or inputs + row.inputs <= room.inputs)
        )
        if not fits and not chosen and (room.alone or row.tokens <= room.tokens_room):
            return [row]  # larger than the aim: alone, within the room
        if fits:
            chosen.append(row)
            tokens, requests = tokens + row.tokens, requests + 1
            nbytes, inputs = nbytes + row.nbytes, inputs + row.inputs
            if tokens >= room.tokens or requests >= room.requests:
                break
        else:
            misses += 1
            if misses > lookahead:
                break
    return chosen


# --- the scheduler ----------------------------------------------------------------------------

Group = tuple[str | None, str]


class Scheduler:
    """Packs pending requests into shards and says which shard may go to the API now."""

    def __init__(
        self, spec: Spec, store: Store, report: Reporter, budget: Budget, summary: BuildSummary
    ) -> None:
        self.spec = spec
        self.store = store
        self.report = report
        self.budget = budget
        self.summary = summary
        self.pipeline = max(1, getattr(spec.limits, "pipeline", DEFAULT_PIPELINE))
        self.dirty = True  # pending requests may need packing
        self.tail_waiting = False  # tail requests wait uncut for room (see _cut)
        self.waiting: set[Group] = set()  # the groups whose tails wait, as the last plan left them
        self._run_base: dict[str, float] | None = None  # committed before this run, by shard
        # Other projects' batches on the same queue (None: plan with the whole budget).
        self.census: Census | None = None
        self.first_sent_at: int | None = None  # census.listings when this run first sent
        self.sent_at: dict[str | None, int] = {}  # model -> census.listings at its last create
        # model -> created_at (API time) of the batch this build announced itself with, while
        # others filled the queue: it shares only once they acknowledge it (census.py).
        self.joined: dict[str | None, int] = {}
        # Early release (module doc): model -> the finalizing batch no longer counted, the
        # batches created while it was released, and whether a refusal ended it for the run.
        self.released: dict[str | None, str] = {}
        self.early: set[str] = set()
        self.early_off = False

    def room(self, model: str | None, *, first_wave: bool = True) -> int | None:
        """The tokens this build may hold of a model's queue: the working budget, less what
        other gptbatch projects hold and share with it (census.py); None: no budget.

        first_wave=False: without the first wave's cap (it lasts until the next listing,
        which fits_queue takes at once: shards are cut for the room after it)."""
        working = self.budget.working(model)
        census = self.census
        if working is None or census is None:
            return working
        return share(
            working,
            census.others(model),
            census.senders(model),
            member=self.member(model),
            # Until a listing taken after this run's first create shows what others did
            # meanwhile (a build started at the same instant saw the same empty queue).
            first_wave=first_wave
            and (self.first_sent_at is None or self.first_sent_at == census.listings),
        )

    def member(self, model: str | None) -> bool:
        """Do the others leave this build a share? Only if they see it sending: its newest
        batch listed says more follows, or it created one since that listing."""
        census = self.census
        if census is None:
            return False
        if model in self.joined and not census.acknowledged(model, self.joined[model]):
            return False
        return census.sending(model) or self.sent_at.get(model) == census.listings

    def announce(self, model: str | None) -> int:
        """Tokens of one small batch a build may send to be seen sending, when others fill
        the queue and do not leave it a share (0: none needed or no room for one).

        It goes into the API's headroom above the others' budget: half the safety margin,
        and never past the limit less the other half by what the census counts. Once it
        is listed, the others keep to their shares and this build grows into its own as
        their batches end; without a margin there is no headroom, and it waits for them.
        """
        census, limit = self.census, self.budget.configured(model)
        nominal = self.budget.nominal(model)
        if census is None or limit is None or nominal is None or not census.senders(model):
            return 0
        if self.member(model):
            return 0
        headroom = (limit - nominal) // 2
        held = census.others(model) + self.in_flight(model)[0]
        return max(0, min(headroom, limit - headroom - held))

    def crowded(self, model: str | None) -> bool:
        """Do other projects hold or claim this model's queue (a lone shard must fit too)?"""
        census = self.census
        return census is not None and (census.others(model) > 0 or census.senders(model) > 0)

    # --- caps and room ---------------------------------------------------------------

    def caps(self, model: str | None, url: str) -> Caps:
        """A shard's caps: the working budget, and the enqueued-request budget in force."""
        limits = self.spec.limits
        return batch_caps(
            url,
            self.budget.working(model),
            max_requests=limits.max_requests_per_batch,
            max_bytes=limits.max_bytes_per_batch,
            enqueued_requests=self.budget.requests(model),
        )

    def in_flight(self, model: str | None, exclude: str | None = None) -> tuple[int, int]:
        """(tokens, requests) of this model's shards holding queue room at the API.

        A shard counts from the intent to create until its batch is seen finished: a
        batch the last poll saw completed no longer holds room, though its results may
        not be downloaded yet, so the next shard goes before the download.
        """
        tokens = requests = 0
        released = self.released.get(model)
        for s in self.store.shards(IN_FLIGHT_SHARD_STATES):
            if s.model != model or s.id == exclude:
                continue
            batch = self.store.batch(s.batch_id) if s.batch_id else None
            if batch is not None and batch.status in TERMINAL_BATCH_STATUSES:
                continue
            if batch is not None and batch.id == released:
                continue  # finalizing: its room is taken by the batch created meanwhile
            tokens, requests = tokens + s.tokens, requests + s.requests
        return tokens, requests

    def release_finalizing(self, allowed: bool, began: Mapping[str, int]) -> None:
        """Count a batch seen finalizing as released, if early release is allowed (see the
        module doc); forget a release once its batch is seen ended.

        began: batch id -> when it began finalizing (API time). A batch of ours created
        before that and still validating may be admitted before it completes (by a queue
        that counts the batch created meanwhile): it holds the release back.
        """
        for model, batch_id in list(self.released.items()):
            batch = self.store.batch(batch_id)
            if batch is None or batch.status in TERMINAL_BATCH_STATUSES:
                del self.released[model]
        if not allowed or self.early_off:
            return
        flying: dict[str | None, list[tuple[Any, ShardRow]]] = {}
        for s in self.store.shards(IN_FLIGHT_SHARD_STATES):
            batch = self.store.batch(s.batch_id) if s.batch_id else None
            if batch is None or batch.status not in TERMINAL_BATCH_STATUSES:
                flying.setdefault(s.model, []).append((batch, s))
        for model, pairs in flying.items():
            if model in self.released or self.crowded(model) or not self.budgeted(model):
                continue
            if any(b is None for b, _ in pairs):
                continue  # being created: when it will be admitted is not known
            validating = [b.created_at for b, _ in pairs if b.status == "validating"]
            finalizing = [
                (s.tokens, b.id)
                for b, s in pairs
                if b.id in began
                # Strictly later in whole API seconds: certainly created after it began.
                and all(created is not None and created > began[b.id] for created in validating)
            ]
            if finalizing:
                tokens, batch_id = max(finalizing)
                self.released[model] = batch_id
                self.report.event("early_release", batch=batch_id, model=model, tokens=tokens)
                self.room_changed()

    def sent_early(self, model: str | None, batch_id: str) -> None:
        """Note a batch created while a batch of its model is released (it counts on that
        room: a refusal of it says the release came late, not that the limit fell)."""
        if model in self.released:
            self.early.add(batch_id)

    def refused_early(self, batch_id: str, model: str | None) -> bool:
        """Was a refused batch created early (or a create refused with a 429 while a batch
        of its model is released)? Then early release ends for this run."""
        at_create = batch_id == "batches.create" and model in self.released
        if batch_id not in self.early and not at_create:
            return False
        self.early_off = True
        self.released.clear()
        return True

    def unsent_tokens(self, model: str | None) -> int:
        """Tokens of this model's shards cut but not yet sent (they will take room first)."""
        waiting = tuple(s for s in UNSENT_SHARD_STATES if s not in IN_FLIGHT_SHARD_STATES)
        return sum(s.tokens for s in self.store.shards(waiting) if s.model == model)

    def fits_queue(self, shard: ShardRow) -> bool:
        """Does the shard fit beside what is in flight? A shard alone may go, unless other
        projects hold the queue: then it waits for room like any other."""
        tokens_in, requests_in = self.in_flight(shard.model, exclude=shard.id)
        room = self.room(shard.model)
        alone = not tokens_in and not self.crowded(shard.model)
        # Over the room, only a build's one small batch to be seen sending may go.
        announcing = not tokens_in and shard.tokens <= self.announce(shard.model)
        if room is not None and not alone and tokens_in + shard.tokens > room and not announcing:
            return False
        limit = self.budget.requests(shard.model)
        if limit is not None and requests_in and requests_in + shard.requests > limit:
            return False
        return self.budget.may_go(shard, tokens_in, requests_in)

    def _spend_cap_source(self) -> str:
        """Where the spend cap was set, as a message names it."""
        if self.spec.limits.max_cost_from == "--max-cost":
            return "--max-cost"
        return f"limits.max_cost in {self.spec.path.name}"

    def _committed_before_run(self) -> dict[str, float]:
        """Estimated cost of each shard that reached the API before this run (read once)."""
        if self._run_base is None:
            committed = ("submitting", "submitted", "done")
            self._run_base = {s.id: s.cost or 0.0 for s in self.store.shards(committed)}
        return self._run_base

    def within_spend_cap(self, shard: ShardRow) -> bool:
        """May this shard go under the spend cap? Otherwise note why on it, report once.

        --max-cost caps what this run commits; limits.max_cost caps what the project has
        committed over all its runs (a CI schedule rerunning the build must not spend the
        config's cap again on every run).
        """
        cap = self.spec.limits.max_cost
        if cap is None:
            return True
        source = self._spend_cap_source()
        per_run = self.spec.limits.max_cost_from == "--max-cost"
        base = self._committed_before_run()
        committed = self.store.committed_cost(exclude=shard.id)
        if per_run:  # what this run committed: all committed now less what was before it
            committed -= sum(c for i, c in base.items() if i != shard.id)
            committed = max(0.0, committed)
        cost = self.store.shard_cost(shard.id)  # from current prices, not packing-time ones
        if cost is None:
            reason = (
                f"no price known for model {shard.model!r}, so the spend cap ({source}) cannot "
                f"be checked: add prices.{shard.model} to {self.spec.path.name}"
            )
        elif committed + cost > cap:
            spent = (
                f"this run committed {usd(committed)} of --max-cost {usd(cap)}"
                if per_run
                else f"the project committed {usd(committed)} of {usd(cap)} ({source})"
            )
            remedy = "rerun with a larger --max-cost" if per_run else f"raise {source}"
            reason = (
                f"spend cap reached: {spent}; the next shard ({shard.requests:,} requests) "
                f"would cost {usd(cost)}: {remedy} to continue"
            )
        else:
            if cost != shard.cost or shard.note:
                with self.store.transaction():
                    self.store.update_shard(shard.id, cost=cost, note=None)
            return True
        with self.store.transaction():
            self.store.update_shard(shard.id, cost=cost, note=reason)
        if self.summary.stopped_by_cost is None:  # said once a run, not once a shard
            self.summary.stopped_by_cost = reason
            self.report.event("spend_cap", message=reason)
        return False

    def too_big_after_refusal(self, shard: ShardRow) -> bool:
        """Release an unsent shard larger than the lowered budget, so it is repacked smaller.

        A shard cut before the budget fell would otherwise go alone, over the budget, and be
        refused: a refused one is released, and so is one not uploaded yet (an uploaded one
        keeps its file; if refused, it is released then). A shard in `submitting` may have
        been created: it is never released here.
        """
        if shard.requests < 2 or shard.state == "submitting":
            return False
        if not shard.refusals and shard.file_id:
            return False
        working = self.budget.working(shard.model)
        requests = self.budget.requests(shard.model)
        if (working is None or shard.tokens <= working) and (
            requests is None or shard.requests <= requests
        ):
            return False
        with self.store.transaction():
            self.store.update_shard(shard.id, state="dropped", note="over lowered budget")
        self.report.event(
            "dropped", shard=shard.id[:12], reason="larger than the lowered queue budget"
        )
        self.dirty = True
        self.plan()
        return True

    def budgeted(self, model: str | None) -> bool:
        """Are this model's shards cut for pipelining (it has a token budget)?"""
        return self.budget.working(model) is not None

    def plan(self, limit: int | None = None) -> int:
        """Pack every pending request into new shards; return how many were made.

        With a token budget, shards are filled to B / k (first fit over a window of the
        next pending requests), shrinking at the tail; without one, the content-defined
        packer cuts them under the per-batch caps. limit: where every group has a budget,
        stop once this many shards are cut and leave the rest to the next plan (dirty
        stays set): the first shards go to the API while the rest is cut. The
        next plan reads on from the first request left, so it cuts what one plan would.
        """
        self.dirty = False
        left = self.store.pending_totals()
        packers: dict[Group, Packer] = {}
        buffers: dict[Group, list[Any]] = {}
        windows: dict[Group, list[Any]] = {}
        # Tail requests left uncut until there is room: a tail with no room at all waits
        # before its rows are read (the walk past the packed ones is most of a plan's cost).
        waiting = {g for g, tokens in left.items() if tokens > 0 and self.budgeted(g[0])}
        waiting = {g for g in waiting if self._no_room(g, left[g])}
        if waiting and waiting.issuperset(left):
            self.waiting = waiting
            self.tail_waiting = True
            return 0
        held: dict[Group, int] = {}  # tokens in each window
        aims: dict[Group, tuple[int, int]] = {}  # (tokens left, shard target) of each window
        group_caps: dict[Group, tuple[Caps, int | None]] = {}
        made = 0
        stopped = False  # at the limit: the rest is left to the next plan
        with self.store.transaction(), contextlib.closing(self.store.pending_requests()) as rows:
            for row in rows:
                group = (row.model, row.url)
                if group not in packers and group not in windows:
                    if self.budgeted(row.model):
                        windows[group] = []
                    else:
                        packers[group] = Packer(self.caps(*group))
                        buffers[group] = []
                if group not in group_caps:  # once per plan: these read the store's meta
                    group_caps[group] = self.caps(*group), self.budget.hard_limit(row.model)
                caps, hard = group_caps[group]
                if self.oversized(row, caps, hard):
                    left[group] = left.get(group, 0) - row.tokens
                    made += 1
                    continue
                if group in windows:
                    # Nothing more is cut for a group waiting for room in this plan: its
                    # later rows are not held (the next plan reads them again), and once
                    # every group with pending requests waits, the rest is not read. A plan
                    # runs at every turnover: with 1M requests, reading (and holding) the
                    # whole tail each time took ~10 s and ~300 MB.
                    if group in waiting:
                        if waiting.issuperset(left):
                            break
                        continue
                    window = windows[group]
                    window.append(row)
                    held[group] = held.get(group, 0) + row.tokens
                    # The target moves only with what is left: a row that neither reaches
                    # it nor the request cap cannot ripen the window (no call per row).
                    aim = aims.get(group)
                    if aim is None or aim[0] != left.get(group, 0):
                        remaining = left.get(group, 0)
                        target = shard_target(
                            caps.max_tokens or 1, self.pipeline, max(0, remaining)
                        )
                        aim = aims[group] = (remaining, target)
                    if held[group] < aim[1] and len(window) < caps.max_requests + FILL_LOOKAHEAD:
                        continue
                    while group not in waiting and self._ripe(
                        caps, window, held[group], left.get(group, 0)
                    ):
                        cut = self._cut(group, window, left)
                        if cut is None:
                            waiting.add(group)
                        made += bool(cut)
                        held[group] = sum(r.tokens for r in window)
                        if limit is not None and made >= limit and not packers:
                            break
                    if limit is not None and made >= limit and not packers:
                        self.dirty = stopped = True
                        break
                    continue
                buffers[group].append(row)
                for size in packers[group].add(Item(row.key, row.tokens, row.nbytes, row.inputs)):
                    made += self._add_shard(group, buffers[group][:size]) is not None
                    del buffers[group][:size]
            for group, window in windows.items():
                while window and group not in waiting and not stopped:
                    if limit is not None and made >= limit and not packers:
                        self.dirty = stopped = True
                        break
                    cut = self._cut(group, window, left)
                    if cut is None:
                        waiting.add(group)
                    made += bool(cut)
            for group, packer in packers.items():
                for size in packer.finish():
                    made += self._add_shard(group, buffers[group][:size]) is not None
                    del buffers[group][:size]
        self.waiting = waiting
        self.tail_waiting = bool(waiting)
        return made

    def _ripe(self, caps: Caps, window: list[Any], held: int, left: int) -> bool:
        """Does a window hold enough to cut a full shard with room to choose (first fit)?"""
        target = shard_target(caps.max_tokens or 1, self.pipeline, max(0, left))
        if len(window) >= caps.max_requests + FILL_LOOKAHEAD:
            return True
        if held < target:
            return False
        spare = len(window) * (1 - target / held)  # about how many rows the target leaves
        return spare >= FILL_LOOKAHEAD

    def room_changed(self) -> None:
        """A poll saw batches move: uncut tail requests may now have room (plan again).

        Not while every waiting tail still has no room at all (a plan would cut nothing:
        at 1M, each such plan read the open requests for 2-7 s while shards already cut
        waited to take the room that had just opened)."""
        if self.tail_waiting and not all(self._no_room(group) for group in self.waiting):
            self.dirty = True

    def _announcing(self, model: str | None) -> int:
        """Tokens of the small batch to cut so this build is seen sending (0: none now)."""
        small = self.announce(model)
        if small and not any(
            s.model == model and s.tokens <= small for s in self.store.shards(UNSENT_SHARD_STATES)
        ):
            return small
        return 0

    def _tail_free(self, group: Group, remaining: int) -> int | None:
        """In the tail, the tokens free now for a new shard of the group, beside what flies
        and what waits to be sent; None: not in the tail (shards are cut regardless)."""
        model = group[0]
        working = self.budget.working(model) or 1
        if self.pipeline <= 1 or remaining > TAIL_WAVES * working:
            return None
        room = self.room(model, first_wave=False)
        room = working if room is None else room
        return room - self.in_flight(model)[0] - self.unsent_tokens(model)

    def _no_room(self, group: Group, remaining: int = 0) -> bool:
        """Does a tail group certainly wait uncut: no room at all, nothing to announce?

        Whatever the group has left (>= 1 token), _cut would wait too. remaining only
        says whether the group is in the tail (0: it was, at the plan that left it waiting).
        """
        if self._announcing(group[0]):
            return False
        free = self._tail_free(group, remaining)
        return free is not None and free <= 0

    def _cut(self, group: Group, window: list[Any], left: dict[Group, int]) -> str | None:
        """Cut one pipelined shard from the front of a window of pending rows.

        In the tail (what is left would fill the queue at most TAIL_WAVES times) a shard is
        cut only into the room the queue has now, beside what flies and what waits to be
        sent: cut later, when less is left, it comes out smaller, so a large shard never
        starts last. None: no room now; the rest waits uncut.
        """
        model, url = group
        working = self.budget.working(model) or 1
        caps = self.caps(model, url)
        remaining = max(0, left.get(group, 0))
        target = shard_target(working, self.pipeline, remaining)
        small = self._announcing(model)
        free = None if small else self._tail_free(group, remaining)
        if small:
            target = min(target, small)  # one batch small enough to be seen sending
        elif free is not None:
            if free < min(max(1, working // self.pipeline // SMALLEST_SHARE), remaining):
                return None
            target = min(target, free)
        room = Room(target, target, caps.max_requests, caps.max_bytes, caps.max_inputs, True)
        chosen = fill_shard(window, room, lookahead=len(window)) or window[:1]
        taken = {id(r) for r in chosen}
        window[:] = [r for r in window if id(r) not in taken]
        left[group] = left.get(group, 0) - sum(r.tokens for r in chosen)
        return self._add_shard(group, chosen)

    def oversized(self, row: RequestRow, caps: Caps, hard: int | None) -> bool:
        """Handle a request that no shard under the caps can hold: alone, or failed for good.

        hard: the model's hard token limit (Budget.hard_limit).
        """
        over_tokens = caps.max_tokens is not None and row.tokens > caps.max_tokens
        over_other = row.nbytes > caps.max_bytes or (
            caps.max_inputs is not None and row.inputs > caps.max_inputs
        )
        over_hard = hard is not None and row.tokens > hard
        if not over_tokens and not over_other and not over_hard:
            return False
        if over_other or over_hard:
            limit = (
                f"{caps.max_bytes:,} bytes / {caps.max_inputs or 0:,} inputs per batch"
                if over_other
                else f"the enqueued-token limit of {hard:,} for {row.model}"
            )
            why = (
                f"{row.path}:{row.line}: request has ~{row.tokens:,} tokens and {row.nbytes:,} "
                f"bytes, more than {limit}: it can never be queued; split it into smaller "
                "requests"
            )
            self.store.record_result(row.key, state="failed", error=why, attempt=False)
            self.report.event("too_large", message=why)
        else:  # only over the (lowered) working budget: it goes alone
            self._add_shard((row.model, row.url), [row])
        return True

    def _add_shard(self, group: Group, rows: Sequence[Any]) -> str | None:
        if not rows:
            return None
        model, url = group
        sid = self.store.new_shard_id(shard_key(model, url, [r.key for r in rows]))
        costs = [r.cost for r in rows]
        self.store.add_shard(
            sid,
            model=model,
            url=url,
            members=[(r.key, r.custom_id) for r in rows],
            tokens=sum(r.tokens for r in rows),
            nbytes=sum(r.nbytes for r in rows),
            cost=None if any(c is None for c in costs) else sum(costs),  # type: ignore[misc]
        )
        self.report.event(
            "planned",
            shard=sid[:12],
            model=model,
            url=url,
            requests=len(rows),
            tokens=sum(r.tokens for r in rows),
        )
        return sid

    def drop_stale_shards(
        self, states: tuple[str, ...] = ("ready", "uploading", "uploaded", "waiting")
    ) -> None:
        """Release unsent shards holding requests that are no longer in the inputs."""
        with self.store.transaction():
            for shard in self.store.shards(states):
                if not all(self.store.is_current(k) for k, _ in self.store.members(shard.id)):
                    self.store.update_shard(shard.id, state="dropped", note="inputs changed")
                    self.dirty = True
                    self.report.event("dropped", shard=shard.id[:12], reason="inputs changed")
