"""What goes next under the queue budget: working budgets, learned limits, shard sizing.

Pipelining: with a token budget B per model, shards are filled (first fit over a window of
the next pending requests) to B / k tokens, k = limits.pipeline, so k of them always fit in
B together: while one batch turns over (poll delay, download, upload, validation) the others
keep the queue held, and the next shard goes the moment one is seen finished. At the tail,
once what is left fits in two queue-fulls (2B), each shard takes a 2k-th of what is left
(never below an eighth of B / k), so the last batches are small and finish close together.

Pure functions first (`shard_target`, `fill_shard`, `refusal_delay`); `Budget` keeps learned
limits in the store; `Scheduler` packs shards into the store and says which may go.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from gptbatch.config.spec import Spec
from gptbatch.engine.summary import BuildSummary
from gptbatch.pricing import usd
from gptbatch.report import Reporter
from gptbatch.shards import Caps, Item, Packer, batch_caps, shard_key
from gptbatch.state.store import IN_FLIGHT_SHARD_STATES, RequestRow, ShardRow, Store

TERMINAL_BATCH_STATUSES = ("completed", "failed", "expired", "cancelled")
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


def refusal_delay(initial: float, maximum: float, attempt: int, rng: random.Random) -> float:
    """Exponential backoff with full jitter over its upper half: attempt 0 -> [i/2, i]."""
    ceiling = min(maximum, initial * 2 ** min(attempt, 16))
    return ceiling * (0.5 + 0.5 * rng.random())


# --- budgets --------------------------------------------------------------------------------


REPROBE_SECONDS = 3600.0  # a learned limit older than this is tested again
REPROBE_BATCHES = 20  # ... as is one under which this many batches completed
ACCEPTED_STATUSES = ("in_progress", "finalizing", "completed")  # past the queue check


def probe_step(limit: int) -> int:
    """How far past a decaying learned limit the budget may reach: a quarter more."""
    return max(limit + 1, int(limit * 1.25))


@dataclass(frozen=True)
class Learned:
    """A queue limit a refusal stated: evidence with an age, not a fact for ever."""

    limit: int
    at: float | None  # when it was learned (None: by an older gptbatch, time unknown)
    against: int | None  # the configured limit it was learned under
    where: str  # the batch (or batches.create) whose refusal stated it
    batches: int = 0  # batches completed since
    probed: float | None = None  # when a batch above it was last accepted


@dataclass(frozen=True)
class LimitInForce:
    """The enqueued limit a build uses for one model and unit, and where it came from."""

    unit: str  # "tokens" or "requests"
    value: int | None  # None: no limit known
    configured: int | None
    learned: Learned | None  # still applying (learned under today's configured limit)
    decaying: bool  # the learned limit is old: it is re-probed, one batch at a time

    @property
    def source(self) -> str:
        """Where the limit came from, for status and plan."""
        setting = "limits.enqueued_" + self.unit
        learned = self.learned
        if learned is None or (self.configured is not None and learned.limit >= self.configured):
            return f"config ({setting})" if self.value is not None else "none configured"
        when = (
            time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(learned.at))
            if learned.at is not None
            else "an unknown time"
        )
        told = f"learned from a refusal at {when} ({learned.where})"
        if self.decaying:
            target = f"{self.configured:,} ({setting})" if self.configured else "no limit"
            return (
                f"{learned.limit:,} {told}, decaying: re-probed a quarter above it toward "
                f"{target}, one batch at a time"
            )
        return told


class Budget:
    """Working queue budgets per model: lowered on refusals, raised on success, remembered.

    The token budget starts at limits.enqueued_tokens * (1 - safety_margin). A limit a
    refusal states is learned with when and where, under the configured limit of the
    time: a config that now says otherwise overrides it (the user raised it: believe the
    user, and learn again if refused). Once REPROBE_SECONDS old or REPROBE_BATCHES batches
    later it decays: the budget may grow past it again, but only one batch at a time goes
    beyond what is known to fit, and each one accepted raises the learned limit. All of it
    lives in the state's meta table, so the next run starts from what this one learned.
    """

    def __init__(self, spec: Spec, store: Store) -> None:
        self.spec = spec
        self.store = store
        self.started = time.time()  # a limit learned since is fresh evidence, not stale

    # --- what is configured and what was learned ---------------------------------------

    def configured(self, model: str | None, unit: str = "tokens") -> int | None:
        limits = self.spec.limits
        if unit == "tokens":
            return limits.token_limit(model or "")
        return limits.request_limit(model or "")

    def nominal(self, model: str | None) -> int | None:
        limit = self.configured(model)
        if limit is None:
            return None
        return max(1, int(limit * (1 - self.spec.limits.safety_margin)))

    def _margin(self, unit: str, limit: int) -> int:
        """What of a limit the budget uses (a request count is exact: no margin)."""
        if unit == "requests":
            return limit
        return max(1, int(limit * (1 - self.spec.limits.safety_margin)))

    def _stored(self, model: str | None, unit: str) -> Learned | None:
        raw = self.store.get_meta(f"learned:{unit}:{model}")
        if raw:
            try:
                return Learned(**json.loads(raw))
            except (TypeError, ValueError):
                return None  # unreadable evidence: learn again rather than trust it
        if raw is None:  # a limit stated to an older gptbatch: keep it, of unknown age
            legacy = self.store.get_meta(
                ("stated:" if unit == "tokens" else "requests:") + f"{model}"
            )
            if legacy:
                return Learned(int(legacy), None, self.configured(model, unit), "an earlier build")
        return None

    def _store(self, model: str | None, unit: str, learned: Learned | None) -> None:
        value = "" if learned is None else json.dumps(dataclasses.asdict(learned))
        self.store.set_meta(f"learned:{unit}:{model}", value)

    def learned(self, model: str | None, unit: str = "tokens") -> Learned | None:
        """The limit a refusal stated, if it was learned under today's configured limit."""
        learned = self._stored(model, unit)
        if learned is None or learned.against != self.configured(model, unit):
            return None  # the config changed since: believe the config
        return learned

    @staticmethod
    def decaying(learned: Learned) -> bool:
        if learned.at is None or learned.batches >= REPROBE_BATCHES:
            return True
        return time.time() - learned.at >= REPROBE_SECONDS

    def in_force(self, model: str | None, unit: str = "tokens") -> LimitInForce:
        """The limit used now for a model's queue, and what it rests on."""
        configured = self.configured(model, unit)
        learned = self.learned(model, unit)
        if learned is None:
            return LimitInForce(unit, configured, configured, None, False)
        if self.decaying(learned):  # one step past what is known to fit, not at once all
            value = probe_step(learned.limit)
            value = value if configured is None else min(configured, value)
            return LimitInForce(unit, value, configured, learned, True)
        value = learned.limit if configured is None else min(configured, learned.limit)
        return LimitInForce(unit, value, configured, learned, False)

    def hard_limit(self, model: str | None) -> int | None:
        """The most tokens one batch may ever hold: configured, or stated in this run.

        A limit learned in an earlier run may be stale: a request over it is tried once,
        alone, and only a refusal at its size makes it unqueueable (Scheduler.refused).
        """
        configured = self.configured(model)
        learned = self.learned(model)
        if learned is None or learned.at is None or learned.at < self.started:
            return configured
        return learned.limit if configured is None else min(configured, learned.limit)

    def requests(self, model: str | None) -> int | None:
        """The enqueued-request budget: configured, or lower if the API said so lately."""
        return self.in_force(model, "requests").value

    def working(self, model: str | None) -> int | None:
        nominal = self.nominal(model)
        saved = self.store.get_meta(f"budget:{model}")
        against = self.store.get_meta(f"budget_against:{model}")
        if against is not None and against != str(self.configured(model)):
            saved = None  # lowered under another configured limit: the config changed since
        limit = self.in_force(model)
        ceiling = None
        if limit.learned is not None and limit.value is not None:
            ceiling = self._margin("tokens", limit.value)
        known = [x for x in (nominal, int(saved) if saved else None, ceiling) if x is not None]
        return min(known) if known else None

    def _save_working(self, model: str | None, value: int) -> None:
        self.store.set_meta(f"budget:{model}", str(value))
        self.store.set_meta(f"budget_against:{model}", str(self.configured(model)))

    # --- probing a learned limit --------------------------------------------------------

    def may_go(self, shard: ShardRow, tokens_in: int, requests_in: int) -> bool:
        """May a shard go beyond what a learned limit says fits? One batch at a time.

        Beyond it goes only a shard alone (a single request larger than the learned limit
        is tried once), or, once the limit decays, one shard while everything in flight is
        within it; that shard is the probe, and its acceptance raises the limit.
        """
        for unit, flying, size in (
            ("tokens", tokens_in, shard.tokens),
            ("requests", requests_in, shard.requests),
        ):
            self.confirm_probe(shard.model, unit)
            learned = self.learned(shard.model, unit)
            if learned is None:
                continue
            ceiling = self._margin(unit, learned.limit)
            if flying + size <= ceiling:
                continue
            if flying and (not self.decaying(learned) or flying > ceiling):
                return False  # not alone, and not the one probe
            probe = {"shard": shard.id, "total": flying + size}
            with self.store.transaction():
                self.store.set_meta(f"probe:{unit}:{shard.model}", json.dumps(probe))
        return True

    def confirm_probe(self, model: str | None, unit: str) -> None:
        """A probe batch the API accepted (past validation) raises the learned limit."""
        raw = self.store.get_meta(f"probe:{unit}:{model}")
        if not raw:
            return
        try:
            probe = json.loads(raw)
            shard = self.store.shard(str(probe["shard"]))
            int(probe["total"])
        except (TypeError, ValueError, KeyError):
            self.store.set_meta(f"probe:{unit}:{model}", "")
            return
        batch = self.store.batch(shard.batch_id) if shard and shard.batch_id else None
        if shard is not None and shard.state != "dropped" and batch is None:
            return  # not sent yet, or refused and waiting: no news
        if batch is not None and batch.status not in ACCEPTED_STATUSES:
            if batch.status not in TERMINAL_BATCH_STATUSES:
                return  # still validating
            batch = None  # failed for another reason: no evidence either way
        with self.store.transaction():
            self.store.set_meta(f"probe:{unit}:{model}", "")
            learned = self.learned(model, unit)
            if batch is None or learned is None:
                return
            total = self._unmargin(unit, int(probe["total"]))
            configured = self.configured(model, unit)
            if configured is not None and total >= configured:
                self._store(model, unit, None)  # the configured limit holds again
            elif total > learned.limit:
                self._store(
                    model,
                    unit,
                    dataclasses.replace(learned, limit=total, probed=time.time()),
                )

    def _unmargin(self, unit: str, total: int) -> int:
        """A total accepted within the budget, as a limit (the margin added back)."""
        if unit == "requests":
            return total
        return int(total / max(1e-9, 1 - self.spec.limits.safety_margin))

    # --- refusals and completions -------------------------------------------------------

    def lower(
        self,
        model: str | None,
        *,
        unit: str,
        stated: int | None,
        submitted_at: float,
        shard_tokens: int,
        where: str = "a refusal",
    ) -> tuple[int | None, int] | None:
        """After a refusal: shrink to 3/4, or at once below the limit the API names.

        The stated limit is learned with when and where (and the configured limit of the
        time). A batch submitted before the last lowering was sized for the old budget:
        its refusal says nothing new, so it does not lower the budget again.
        """
        current = self.working(model) if unit == "tokens" else None  # before learning
        if stated is not None:
            self.store.set_meta(f"probe:{unit}:{model}", "")
            against = self.configured(model, unit)
            self._store(model, unit, Learned(stated, time.time(), against, where))
        if unit == "requests":
            return None
        lowered_at = float(self.store.get_meta(f"budget_lowered_at:{model}") or 0)
        if submitted_at < lowered_at:
            return None
        if current is not None and shard_tokens > current:
            # It went alone, larger than the budget (a request over a learned limit, tried
            # once): its refusal says nothing about the budget, which it never fitted.
            return None
        self.store.set_meta(f"budget_lowered_at:{model}", str(time.time()))
        new = max(1, int((current if current is not None else shard_tokens) * 0.75))
        if stated is not None:
            new = max(1, min(new, self._margin("tokens", stated)))
        self._save_working(model, new)
        return current, new

    def raise_(self, model: str | None) -> tuple[int, int] | None:
        """After a batch completes: age learned limits, grow back by a tenth, up to nominal."""
        for unit in ("tokens", "requests"):
            self.confirm_probe(model, unit)
            learned = self.learned(model, unit)
            if learned is not None:
                self._store(model, unit, dataclasses.replace(learned, batches=learned.batches + 1))
        nominal, current = self.nominal(model), self.working(model)
        if current is None or (nominal is not None and current >= nominal):
            return None
        new = current + max(1, (nominal or current) // 10)
        limit = self.in_force(model)
        ceiling = [x for x in (nominal,) if x]
        if limit.learned is not None and limit.value is not None:
            ceiling.append(self._margin("tokens", limit.value))
        if ceiling:
            new = min(new, *ceiling)
        if new <= current:
            return None
        self._save_working(model, new)
        return current, new


@dataclass(frozen=True)
class ModelLimits:
    """The queue limits in force for one model, for `status` and `plan`."""

    model: str | None
    tokens: LimitInForce
    requests: LimitInForce
    working: int | None  # the working token budget (None: none)

    def describe(self) -> str:
        parts = []
        for limit in (self.tokens, self.requests):
            if limit.value is None and limit.learned is None and limit.unit == "requests":
                continue
            value = "no limit" if limit.value is None else f"{limit.value:,}"
            parts.append(f"enqueued {limit.unit} {value} ({limit.source})")
        if self.working is not None:
            parts.append(f"working budget ~{self.working:,} tokens")
        return f"{self.model or '(no model)'}: " + "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "working_tokens": self.working,
            **{
                limit.unit: {
                    "limit": limit.value,
                    "configured": limit.configured,
                    "source": limit.source,
                    "decaying": limit.decaying,
                    "learned": None if limit.learned is None else dataclasses.asdict(limit.learned),
                }
                for limit in (self.tokens, self.requests)
            },
        }


def queue_limits(
    spec: Spec, store: Store | None, models: Iterable[str | None] = ()
) -> list[ModelLimits]:
    """The limits in force per model: the config's, and what refusals taught the state."""
    names = {m for m in models} | set(spec.limits.models())
    if spec.model:
        names.add(spec.model)
    if store is None:
        out = []
        for model in sorted(names, key=str):
            tokens = spec.limits.token_limit(model or "")
            requests = spec.limits.request_limit(model or "")
            out.append(
                ModelLimits(
                    model,
                    LimitInForce("tokens", tokens, tokens, None, False),
                    LimitInForce("requests", requests, requests, None, False),
                    spec.limits.token_budget(model or ""),
                )
            )
        return out
    rows = store.db.execute(
        "SELECT key FROM meta WHERE value != '' AND (key LIKE 'learned:%' OR key LIKE 'stated:%'"
        " OR key LIKE 'budget:%')"
    ).fetchall()
    for (key,) in rows:
        model = key.split(":", 2)[-1]
        names.add(None if model == "None" else model)
    budget = Budget(spec, store)
    return [
        ModelLimits(
            model,
            budget.in_force(model, "tokens"),
            budget.in_force(model, "requests"),
            budget.working(model),
        )
        for model in sorted(names, key=str)
    ]


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
        self._run_base: dict[str, float] | None = None  # committed before this run, by shard

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
        for s in self.store.shards(IN_FLIGHT_SHARD_STATES):
            if s.model != model or s.id == exclude:
                continue
            batch = self.store.batch(s.batch_id) if s.batch_id else None
            if batch is not None and batch.status in TERMINAL_BATCH_STATUSES:
                continue
            tokens, requests = tokens + s.tokens, requests + s.requests
        return tokens, requests

    def unsent_tokens(self, model: str | None) -> int:
        """Tokens of this model's shards cut but not yet sent (they will take room first)."""
        waiting = tuple(s for s in UNSENT_SHARD_STATES if s not in IN_FLIGHT_SHARD_STATES)
        return sum(s.tokens for s in self.store.shards(waiting) if s.model == model)

    def fits_queue(self, shard: ShardRow) -> bool:
        """Does the shard fit beside what is in flight? A shard alone always may go."""
        tokens_in, requests_in = self.in_flight(shard.model, exclude=shard.id)
        working = self.budget.working(shard.model)
        if working is not None and tokens_in and tokens_in + shard.tokens > working:
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

    def refused(
        self,
        shard: ShardRow,
        *,
        unit: str,
        stated: int | None,
        message: str | None,
        code: str | None,
        batch: str,
        sized_at: float,
        collected: str | None = None,
    ) -> None:
        """The API had no queue room for a shard: lower the budget, let the shard wait.

        Nothing was processed, so the shard keeps its uploaded file and goes again once
        room appears (repacked smaller if it no longer fits the lowered budget).
        """
        polling = self.spec.polling
        delay = min(polling.max_seconds, polling.initial_seconds * 2 ** min(shard.refusals, 10))
        with self.store.transaction():
            change = self.budget.lower(
                shard.model,
                unit=unit,
                stated=stated,
                submitted_at=sized_at,
                shard_tokens=shard.tokens,
                where=batch,
            )
            if collected:
                self.store.mark_collected(collected)
            # A lone request refused at its own size: the learned limit was not stale.
            failed = (
                unit == "tokens" and stated is not None and self.unqueueable(shard, stated, batch)
            )
            if not failed:
                self.store.update_shard(
                    shard.id,
                    state="waiting",
                    batch_id=None,
                    refusals=shard.refusals + 1,
                    not_before=time.time() + delay,
                    note=message,
                )
        self.summary.refusals += 1
        self.dirty = True
        self.report.event(
            "refused", shard=shard.id[:12], batch=batch, code=code, wait=round(delay, 2)
        )
        self.report_budget(shard.model, change, "the API refused work for lack of queue room")

    def unqueueable(self, shard: ShardRow, stated: int, batch: str) -> bool:
        """A lone request refused at a size over the limit the API states: failed for good.

        It was tried because the learned limit may have been stale; the refusal at its
        own size says it was not.
        """
        if shard.requests != 1 or shard.tokens <= stated:
            return False
        ((key, custom_id),) = self.store.members(shard.id)
        row = self.store.locate(key)
        place = f"{row.path}:{row.line}: " if row is not None else ""
        why = (
            f"{place}request {custom_id!r} has ~{shard.tokens:,} prompt tokens, over the "
            f"enqueued-token limit of {stated:,} for {shard.model} that the API stated when "
            f"it refused it ({batch}): it can never be queued; split it into smaller requests "
            "(`gptbatch build --retry-failed` tries it again once your limit is higher)"
        )
        self.store.record_result(key, state="failed", error=why, attempt=False)
        self.store.update_shard(shard.id, state="dropped", note=why)
        self.report.event("too_large", message=why)
        return True

    def report_budget(
        self, model: str | None, change: tuple[int | None, int] | None, reason: str
    ) -> None:
        if change:
            self.report.event("budget", model=model, old=change[0], new=change[1], reason=reason)

    # --- packing -----------------------------------------------------------------------

    def budgeted(self, model: str | None) -> bool:
        """Are this model's shards cut for pipelining (it has a token budget)?"""
        return self.budget.working(model) is not None

    def plan(self) -> int:
        """Pack every pending request into new shards; return how many were made.

        With a token budget, shards are filled to B / k (first fit over a window of the
        next pending requests), shrinking at the tail; without one, the content-defined
        packer cuts them under the per-batch caps.
        """
        self.dirty = False
        left = self.store.pending_totals()
        packers: dict[Group, Packer] = {}
        buffers: dict[Group, list[Any]] = {}
        windows: dict[Group, list[Any]] = {}
        waiting: set[Group] = set()  # tail requests left uncut until there is room
        held: dict[Group, int] = {}  # tokens in each window
        group_caps: dict[Group, tuple[Caps, int | None]] = {}
        made = 0
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
                    window = windows[group]
                    window.append(row)
                    held[group] = held.get(group, 0) + row.tokens
                    while group not in waiting and self._ripe(
                        caps, window, held[group], left.get(group, 0)
                    ):
                        cut = self._cut(group, window, left)
                        if cut is None:
                            waiting.add(group)
                        made += bool(cut)
                        held[group] = sum(r.tokens for r in window)
                    continue
                buffers[group].append(row)
                for size in packers[group].add(Item(row.key, row.tokens, row.nbytes, row.inputs)):
                    made += self._add_shard(group, buffers[group][:size]) is not None
                    del buffers[group][:size]
            for group, window in windows.items():
                while window and group not in waiting:
                    cut = self._cut(group, window, left)
                    if cut is None:
                        waiting.add(group)
                    made += bool(cut)
            for group, packer in packers.items():
                for size in packer.finish():
                    made += self._add_shard(group, buffers[group][:size]) is not None
                    del buffers[group][:size]
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
        """A poll saw batches move: uncut tail requests may now have room (plan again)."""
        if self.tail_waiting:
            self.dirty = True

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
        if self.pipeline > 1 and remaining <= TAIL_WAVES * working:
            free = working - self.in_flight(model)[0] - self.unsent_tokens(model)
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
