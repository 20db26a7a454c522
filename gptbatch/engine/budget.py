"""Queue budgets and refusals: working budgets, learned limits as evidence, and what a refusal does.

A refusal lowers the working budget and teaches a limit with when and where it was stated;
completions grow the budget back and age what was learned, so an old limit is re-probed
(`Budget`). `queue_limits` shows the limits in force (status, plan); `unqueueable` finds
requests no queue can hold before anything is sent; `take_refusal` settles a refused shard.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gptbatch.config.spec import Spec
from gptbatch.engine.batches import TERMINAL_BATCH_STATUSES, Refusal
from gptbatch.errors import Problem
from gptbatch.inputs.over_limit import over_limit_problem
from gptbatch.report import Reporter
from gptbatch.state.rows import ShardRow
from gptbatch.state.store import Store


def refusal_delay(initial: float, maximum: float, attempt: int, rng: random.Random) -> float:
    """Exponential backoff with full jitter over its upper half: attempt 0 -> [i/2, i]."""
    ceiling = min(maximum, initial * 2 ** min(attempt, 16))
    return ceiling * (0.5 + 0.5 * rng.random())


# --- budgets ---------------------------------------------------------------------------------


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
            return f"from {setting} in the config" if self.value is not None else "none configured"
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
        alone, and only a refusal at its size makes it unqueueable (take_refusal).
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


# --- the limits in force, for status and plan ----------------------------------------------


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


# --- over the limit: requests no queue can hold --------------------------------------------


def unqueueable(spec: Spec, store: Store, report: Reporter, keep_going: bool) -> list[Problem]:
    """Requests over their model's enqueued-token limit: no queue can ever hold them.

    Known offline, so the build stops before submitting anything; with keep_going (as
    make -k) they are recorded as failed for good and the rest is built.
    """
    budget = Budget(spec, store)
    problems = []
    for model in store.open_models():  # only requests with no final result are refused
        limit = budget.hard_limit(model)
        if limit is None:
            continue
        for row in store.requests_over(model, limit):
            problem = over_limit_problem(
                row.path,
                row.line,
                row.custom_id,
                model,
                row.tokens,
                limit,
                also=" (--keep-going builds the rest and records it as failed)",
            )
            if keep_going:
                store.record_result(row.key, state="failed", error=str(problem), attempt=False)
                report.event("too_large", message=str(problem))
            else:
                problems.append(problem)
    return problems


# --- refusals -------------------------------------------------------------------------------


def take_refusal(budget: Budget, refusal: Refusal, report: Reporter, *, learn: bool = True) -> None:
    """The API had no queue room for a shard: lower the budget, let the shard wait.

    Nothing was processed, so the shard keeps its uploaded file and goes again once
    room appears (repacked smaller if it no longer fits the lowered budget). learn=False:
    the build sent it counting on room not yet freed (an early release, scheduler.py), so
    the refusal says nothing of the limit: the budget stays, the shard just waits.
    """
    store, shard, unit, stated = budget.store, refusal.shard, refusal.unit, refusal.stated
    polling = budget.spec.polling
    delay = min(polling.max_seconds, polling.initial_seconds * 2 ** min(shard.refusals, 10))
    with store.transaction():
        change = None
        if learn:
            change = budget.lower(
                shard.model,
                unit=unit,
                stated=stated,
                submitted_at=refusal.sized_at,
                shard_tokens=shard.tokens,
                where=refusal.batch,
            )
        if refusal.collected:
            store.mark_collected(refusal.collected)
        # A lone request refused at its own size: the learned limit was not stale.
        failed = (
            learn
            and unit == "tokens"
            and stated is not None
            and refused_at_its_size(store, report, shard, stated, refusal.batch)
        )
        if not failed:
            store.update_shard(
                shard.id,
                state="waiting",
                batch_id=None,
                refusals=shard.refusals + 1,
                not_before=time.time() + delay,
                note=refusal.message,
            )
    report.event(
        "refused",
        shard=shard.id[:12],
        batch=refusal.batch,
        code=refusal.code,
        wait=round(delay, 2),
    )
    report_budget(report, shard.model, change, "the API refused work for lack of queue room")


def refused_at_its_size(
    store: Store, report: Reporter, shard: ShardRow, stated: int, batch: str
) -> bool:
    """A lone request refused at a size over the limit the API states: failed for good.

    It was tried because the learned limit may have been stale; the refusal at its
    own size says it was not.
    """
    if shard.requests != 1 or shard.tokens <= stated:
        return False
    ((key, custom_id),) = store.members(shard.id)
    row = store.locate(key)
    place = f"{row.path}:{row.line}: " if row is not None else ""
    why = (
        f"{place}request {custom_id!r} has ~{shard.tokens:,} prompt tokens, over the "
        f"enqueued-token limit of {stated:,} for {shard.model} that the API stated when "
        f"it refused it ({batch}): it can never be queued; split it into smaller requests "
        "(`gptbatch build --retry-failed` tries it again once your limit is higher)"
    )
    store.record_result(key, state="failed", error=why, attempt=False)
    store.update_shard(shard.id, state="dropped", note=why)
    report.event("too_large", message=why)
    return True


def report_budget(
    report: Reporter, model: str | None, change: tuple[int | None, int] | None, reason: str
) -> None:
    """Say that a model's working budget moved (a change from Budget.lower or raise_)."""
    if change:
        report.event("budget", model=model, old=change[0], new=change[1], reason=reason)
