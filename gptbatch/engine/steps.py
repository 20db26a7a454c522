"""Steps while their upstream runs: a build in passes, so a step's rows go as answers arrive.

A step's data is its upstream's answers table, and a row renders only once it has an
answer. A waiting build (engine/build.py) reads its inputs once, so it would finish the
whole upstream before the step could render again. A build with steps runs instead in
passes, under one lock and one remote (a rehearsal's simulator keeps running between
them): each pass is a waiting build cut short (`_Cut`) once it collected results while a
step's upstream still has requests pending; between passes the spec is loaded again, which
renders a step whose upstream table changed (its new rows become pending; the rows already
sent keep their content keys, so nothing is sent twice). Once no step can grow (no step's
upstream has a request pending), a pass runs to its end by the waiting build's own rules,
and the build ends when such a pass leaves no step stale.

Each pass's `summary` and `usage` events are held back: the build reports one of each, at
the end, for all its passes; a warning is reported once a build.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from gptbatch.api.remote import Remote
from gptbatch.config.spec import Spec
from gptbatch.engine.build import run_build
from gptbatch.engine.summary import BuildSummary
from gptbatch.engine.tables import stale_steps
from gptbatch.engine.usage import Usage
from gptbatch.report import Reporter
from gptbatch.state.lock import BuildLock
from gptbatch.state.store import state_dir

# batch.yaml loaded again (rendering the steps whose upstream answers changed), with the
# inputs this build works on (None: all)
Loader = Callable[[], tuple[Spec, Sequence[Path] | None]]


def has_steps(spec: Spec, only: Sequence[Path] | None) -> bool:
    """Does this build build a step together with its upstream (so passes pay off)?"""
    built = set(only if only is not None else spec.inputs)
    return any(
        t.upstream is not None
        and spec.targets[t.name] in built
        and spec.targets.get(t.upstream) in built
        for t in spec.data_targets
    )


def upstream_pending(spec: Spec, only: Sequence[Path] | None, summary: BuildSummary) -> bool:
    """Has a step built here an upstream, also built here, with requests still missing?"""
    built = set(only if only is not None else spec.inputs)
    missing = {o.input: o.missing for o in summary.outputs}
    for t in spec.data_targets:
        upstream = spec.targets.get(t.upstream) if t.upstream is not None else None
        if upstream is None or spec.targets[t.name] not in built or upstream not in built:
            continue
        if missing.get(str(upstream), 0) > 0:
            return True
    return False


class _PassReporter:
    """Forwards a pass's events, holding back its summary and usage; a warning once."""

    def __init__(self, inner: Reporter) -> None:
        self.inner = inner
        self.held: dict[str, dict[str, Any]] = {}
        self.warned: set[str] = set()
        self.collected = 0  # batches collected so far (a pass that collected polls soon again)

    def event(self, kind: str, **fields: Any) -> None:
        if kind in ("summary", "usage"):
            self.held[kind] = fields
            return
        if kind == "warning":
            message = str(fields.get("message"))
            if message in self.warned:  # each pass writes the tables and warns again
                return
            self.warned.add(message)
        if kind == "collected":
            self.collected += 1
        self.inner.event(kind, **fields)


class _Cut:
    """until() of one pass: end the waiting build early, once it collected results a step
    may render from, and only after running at least `least` seconds.

    Between two passes the build writes the outputs and tables and loads batch.yaml again
    (a step renders again from its upstream's whole table): `least` is what that took last
    time, so it takes about half the time at most, however fast batches end. Meanwhile the
    waiting build keeps the queue full and polls as it always does.
    """

    def __init__(self, events: _PassReporter, grow: bool, least: float) -> None:
        self.events, self.grow, self.least = events, grow, least
        self.started = time.monotonic()
        self.collected = events.collected
        self.at: float | None = None  # when the pass was cut

    def __call__(self) -> bool:
        now = time.monotonic()
        if not self.grow or self.events.collected == self.collected:
            return False
        if now - self.started < self.least:
            return False
        self.at = now
        return True


def build_in_passes(
    spec: Spec,
    only: Sequence[Path] | None,
    load: Loader,
    remote: Remote,
    reporter: Reporter,
    *,
    sample: int | None = None,
    keep_going: bool = False,
    new_project: bool = False,
    on_stale: Callable[[list[str]], None] | None = None,
) -> tuple[BuildSummary, list[str]]:
    """Build spec (as remote_for yielded it) in passes until nothing is pending and no step
    is stale; the build's summary (all passes) and the steps still stale (a build that
    gave up on them: the next build renders them).

    load() loads batch.yaml again; each loaded spec writes where spec does (a rehearsal's
    output directory) and polls as it does. on_stale(names) hears each step the first time
    its upstream answers change during this build (the CLI says so; core code never prints).
    """
    started = time.monotonic()
    events = _PassReporter(reporter)
    used = spec
    summaries: list[BuildSummary] = []
    announced: set[str] = set()
    grow, least, full = True, spec.polling.initial_seconds, 0
    stale: list[str] = []
    with contextlib.ExitStack() as held, _summary_on_interrupt(events):
        # The lock is held from pass to pass: `clean`, or another build, must not slip in
        # between two passes. A first build's run_build takes it itself, so a first build
        # rejected for bad input still leaves no output directory behind.
        locked = spec.output_dir.exists()
        if locked:
            held.enter_context(BuildLock(spec.output_dir, state_dir(spec.output_dir)))
        while True:
            cut = _Cut(events, grow, least)
            summary = run_build(
                used,
                remote,
                events,
                keep_going=keep_going,
                only=only,
                new_project=new_project and not summaries,
                locked=locked,
                until=cut,
            )
            ended = time.monotonic()
            summaries.append(summary)
            if not locked:
                held.enter_context(BuildLock(spec.output_dir, state_dir(spec.output_dir)))
                locked = True
            stale = stale_steps(used, sample, only)
            _announce(used, summary, stale, announced, on_stale)
            if not stale and not summary.pending:
                break
            if cut.at is None:  # the pass ran to its end: a waiting build's
                full += 1
                # A step still stale renders again; bounded, as rounds are (a step whose
                # upstream kept changing is left for the next build, which says so).
                if not stale or full > len(used.data_targets):
                    break
            # Cut early only while a step can grow: its upstream still has requests to answer.
            grow = not summary.stopped_by_cost and upstream_pending(used, only, summary)
            loaded, only = load()
            if _rendered_dirs(loaded) != _rendered_dirs(spec):
                break  # batch.yaml's output_dir was edited: the next build works there
            used = dataclasses.replace(loaded, output_dir=spec.output_dir, polling=spec.polling)
            # the outputs written after the cut, and batch.yaml loaded again
            between = time.monotonic() - (cut.at if cut.at is not None else ended)
            least = max(spec.polling.initial_seconds, between)
    return _reported(summaries, events, started), stale


def _rendered_dirs(spec: Spec) -> set[Path]:
    """Where the spec's data targets are rendered: in the state of its output directory."""
    return {path.parent for path in spec.targets.values()}


def _announce(
    spec: Spec,
    summary: BuildSummary,
    stale: list[str],
    announced: set[str],
    on_stale: Callable[[list[str]], None] | None,
) -> None:
    """Tell on_stale of the steps newly stale whose upstream has answers (a first pass
    writes the upstream's table before any answer: its step renders again, still empty)."""
    answered = {t.name: t.answered for t in summary.tables}
    upstream = {t.name: t.upstream for t in spec.data_targets}
    fresh = [
        name
        for name in stale
        if name not in announced and answered.get(str(upstream.get(name)), 1) > 0
    ]
    announced.update(fresh)
    if fresh and on_stale is not None:
        on_stale(fresh)


@contextlib.contextmanager
def _summary_on_interrupt(events: _PassReporter) -> Iterator[None]:
    """A build stopped midway (Ctrl-C, an error) reports the summary it wrote its outputs
    with, as a waiting build does."""
    try:
        yield
    except BaseException:
        fields = events.held.pop("summary", None)
        if fields is not None:
            events.inner.event("summary", **fields)
        raise


def _reported(summaries: list[BuildSummary], events: _PassReporter, started: float) -> BuildSummary:
    """The last pass's summary, counting what every pass did; its events, reported once."""
    summary = summaries[-1]
    summary.submitted = sum(s.submitted for s in summaries)
    summary.adopted = sum(s.adopted for s in summaries)
    summary.refusals = sum(s.refusals for s in summaries)
    run = Usage()
    for s in summaries:
        run = run + s.usage_run
    summary.usage_run = run
    summary.seconds = time.monotonic() - started
    fields = events.held.get("summary")
    if fields is not None:
        fields.update(
            submitted=summary.submitted, adopted=summary.adopted, refusals=summary.refusals
        )
        events.inner.event("summary", **fields)
    events.inner.event(
        "usage",
        run=asdict(summary.usage_run),
        total=asdict(summary.usage_total),
        seconds=round(summary.seconds, 3),
    )
    return summary
