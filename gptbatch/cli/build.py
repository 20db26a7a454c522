"""`gptbatch build`: turn batch.yaml's inputs into outputs, doing only what is missing."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gptbatch.api.connect import remote_for
from gptbatch.cli.common import add_simulate_flag
from gptbatch.config.spec import Spec, load_spec
from gptbatch.engine.usage import Usage
from gptbatch.errors import EXIT_FAILED_REQUESTS, EXIT_OK, EXIT_PENDING, Interrupted, UsageError
from gptbatch.pricing import usd
from gptbatch.report import ConsoleReporter, JsonReporter, Reporter, plural, shown

if TYPE_CHECKING:  # the engine imports the openai SDK: only `build` pays for it
    from gptbatch.engine.steps import Loader
    from gptbatch.engine.summary import BuildSummary


def register(sub: Any) -> None:
    p = sub.add_parser(
        "build",
        epilog="examples:\n"
        "  gptbatch build                       # ./batch.yaml, wait until done\n"
        "  gptbatch build ci.yaml --no-wait     # for a CI schedule: exit 3 while pending\n"
        "  gptbatch build --simulate            # rehearse offline, no key, no cost",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="submit what is missing, collect results, write outputs",
        description="Build every request of CONFIG's inputs that has no result yet: pack "
        "them into shards that fit the queue, submit, poll, collect, retry, and write "
        "<output_dir>/<input>.jsonl in input order. Safe to stop and rerun at any time.",
    )
    p.add_argument("config", nargs="?", default=None, help="batch.yaml (default: ./batch.yaml)")
    p.add_argument(
        "targets",
        nargs="*",
        metavar="INPUT",
        help="build only these of the config's inputs (default: all)",
    )
    p.add_argument(
        "-B",
        "--force",
        action="store_true",
        help="send every request again, results or not (as make -B); costs money",
    )
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="give requests that failed for good another round of attempts",
    )
    p.add_argument(
        "--max-cost",
        type=float,
        metavar="USD",
        help="stop submitting before this run's estimated spend passes USD (instead of "
        "limits.max_cost, which caps the project's committed spend)",
    )
    p.add_argument(
        "--sample",
        type=int,
        metavar="N",
        help="build only N rows of each data target, the same N every time (spread over the "
        "table); a full build later reuses their results",
    )
    p.add_argument(
        "--no-wait",
        action="store_true",
        help="submit what fits, collect what finished, then exit (for CI schedules)",
    )
    add_simulate_flag(
        p,
        "rehearse against the built-in Batch API simulator on a fast clock "
        "(no API key, no cost); writes to <output_dir>-simulated",
    )
    p.add_argument(
        "-k",
        "--keep-going",
        action="store_true",
        help="build the rest when some requests can never be queued (as make -k); they are "
        "recorded as failed",
    )
    p.add_argument(
        "--new-project",
        action="store_true",
        help="anthropic and gemini targets, first build only: no batch already at the API "
        "is this project's, so do not wait for unknown batches in progress (a state with "
        "nothing in it cannot tell a new project from a lost state, and waits by default)",
    )
    p.add_argument("--json", action="store_true", help="print events as JSON lines on stdout")
    p.add_argument("-v", "--verbose", action="store_true", help="report every input and shard")
    p.set_defaults(func=run)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C, so a stopped CI job saves state the same way."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (tests calling main() from a thread)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def run(args: argparse.Namespace) -> int:
    config, targets = args.config, list(args.targets)
    if config is not None and (
        config.endswith(".jsonl")  # `gptbatch build in/a.jsonl`
        # `gptbatch build sentiment`: a data target's name, not a config file
        or (not config.endswith((".yaml", ".yml")) and not os.path.exists(config))
    ):
        config, targets = None, [config, *targets]
    sample = getattr(args, "sample", None)
    if sample is not None and sample < 1:
        raise UsageError(f"--sample {sample}: give a number of rows, e.g. --sample 20")
    # Steps build in dependency order: a round builds every target, then a step whose
    # upstream answers changed renders again from them and the next round builds it.
    # -B and --retry-failed act on one depth of steps a round (engine/tables.step_depths).
    forcing = bool(getattr(args, "force", False) or getattr(args, "retry_failed", False))
    flags = (getattr(args, "force", False), getattr(args, "retry_failed", False))
    # A plain waiting build of steps builds in passes instead (engine/steps.py): a step's
    # rows go as their upstream answers arrive. A spend cap stays per build, over rounds.
    passes = not forcing and not args.no_wait and args.max_cost is None
    rounds = 0
    while True:
        spec = load_spec(
            config, sample=sample, simulate=bool(getattr(args, "simulate", False)), build=True
        )
        from gptbatch.engine.tables import stale_steps, step_depths

        args.only = chosen_inputs(spec, targets) if targets else None
        if passes and rounds == 0:
            from gptbatch.engine.steps import has_steps

            if has_steps(spec, args.only):
                return _build_in_passes(spec, args, config, targets)
        depths = step_depths(spec, args.only) if forcing else []
        args.forced = depths[rounds] if rounds < len(depths) else ()
        args.force, args.retry_failed = flags if args.forced else (False, False)
        code = _build_once(spec, args, targets)
        rounds += 1
        args.new_project = False  # the next round's state holds this one's shards
        stale = stale_steps(spec, sample, args.only)
        unforced = [p for d in depths[rounds:] for p in d]
        if (not stale and not unforced) or code not in (EXIT_OK, EXIT_FAILED_REQUESTS):
            return code
        if args.no_wait or args.max_cost is not None or rounds > len(spec.data_targets):
            if stale:
                print(
                    f"steps {', '.join(stale)}: their upstream answers changed; run "
                    f"`{resume_command(args)}` again to build them",
                    file=sys.stderr,
                )
            if unforced:
                names = {p: n for n, p in spec.targets.items()}
                steps = [names.get(p, str(p)) for p in unforced]
                flag = "-B" if flags[0] else "--retry-failed"
                print(
                    f"steps {', '.join(steps)}: not forced (a step is forced in a round of its "
                    "own, after its upstream's, and this build stops after one round); run "
                    f"`{resume_command(args)}` to finish, then `{resume_command(args)} {flag} "
                    f"{' '.join(steps)}` if they should still be sent again (running this "
                    f"forced build again would send the upstream again)",
                    file=sys.stderr,
                )
            return EXIT_PENDING  # as any build that left work to do
        print(
            f"steps {', '.join(stale or [n for n, p in spec.targets.items() if p in unforced])}"
            + (
                ": their upstream answers changed: building them"
                if stale
                else ": forcing them now that their upstream is built"
            ),
            file=sys.stderr,
        )


def _build_once(spec: Spec, args: argparse.Namespace, targets: list[str]) -> int:
    """One build of a loaded spec, as the arguments say."""
    # A subset build works on these inputs only (args.only, from chosen_inputs); the spec
    # keeps them all, so the others are neither taken for removed from batch.yaml nor forgotten.
    if args.max_cost is not None:
        if not math.isfinite(args.max_cost) or args.max_cost < 0:
            raise UsageError(
                f"--max-cost {args.max_cost}: give a dollar amount, e.g. --max-cost 20"
            )
        spec = dataclasses.replace(
            spec,
            limits=dataclasses.replace(
                spec.limits, max_cost=args.max_cost, max_cost_from="--max-cost"
            ),
        )
    return execute(spec, args)[0]


def _build_in_passes(
    spec: Spec, args: argparse.Namespace, config: str | None, targets: list[str]
) -> int:
    """Build a spec with steps in passes (engine/steps.py), loading batch.yaml again between."""
    sample, simulate = getattr(args, "sample", None), bool(getattr(args, "simulate", False))

    def load() -> tuple[Spec, tuple[Path, ...] | None]:
        loaded = load_spec(config, sample=sample, simulate=simulate, build=True)
        return loaded, chosen_inputs(loaded, targets) if targets else None

    code, _ = execute(spec, args, load=load)
    return code


def chosen_inputs(spec: Spec, targets: list[str]) -> tuple[Path, ...]:
    """The config's inputs named on the command line, in config order; UsageError if not.

    A target is a data target's name, or a path from the working directory or, failing that,
    from the config's.
    """
    known = {os.path.realpath(p) for p in spec.inputs}
    wanted = {}
    for t in targets:
        real = os.path.realpath(spec.targets.get(t, t))
        if real not in known and os.path.realpath(spec.root / t) in known:
            real = os.path.realpath(spec.root / t)
        wanted[real] = t
    missing = [t for real, t in wanted.items() if real not in known]
    if missing:
        raise UsageError(
            f"{', '.join(missing)}: not an input of {spec.path.name}; targets must be among its "
            f"inputs ({len(spec.inputs)} files; `gptbatch validate` lists them)"
        )
    return tuple(p for p in spec.inputs if os.path.realpath(p) in wanted)


def execute(spec: Spec, args: argparse.Namespace, load: Loader | None = None) -> tuple[int, Spec]:
    """Build a loaded spec as the arguments say; return the exit code and the spec used.

    load: build in passes (a spec with steps, engine/steps.py), loading batch.yaml again
    with it between passes.
    """
    from gptbatch.engine.build import run_build

    reporter: Reporter = (
        JsonReporter(sys.stdout) if args.json else ConsoleReporter(sys.stderr, verbose=args.verbose)
    )
    again = resume_command(args)
    stale: list[str] = []

    def say(names: list[str]) -> None:
        text = f"steps {', '.join(names)}: their upstream answers changed: building them"
        if isinstance(reporter, ConsoleReporter):
            reporter.say(text)  # clears the live display first
        else:
            print(text, file=sys.stderr)

    try:
        with sigterm_as_interrupt(), remote_for(spec, args.simulate) as (spec, remote):
            if args.simulate and not args.json:
                print(f"simulating: outputs go to {shown(str(spec.output_dir))}", file=sys.stderr)
            if load is not None:
                from gptbatch.engine.steps import build_in_passes

                summary, stale = build_in_passes(
                    spec,
                    getattr(args, "only", None),
                    load,
                    remote,
                    reporter,
                    sample=getattr(args, "sample", None),
                    keep_going=getattr(args, "keep_going", False),
                    new_project=getattr(args, "new_project", False),
                    on_stale=say,
                )
            else:
                summary = run_build(
                    spec,
                    remote,
                    reporter,
                    wait=not args.no_wait,
                    keep_going=getattr(args, "keep_going", False),
                    force=getattr(args, "force", False),
                    retry_failed=getattr(args, "retry_failed", False),
                    only=getattr(args, "only", None),
                    forced=getattr(args, "forced", None),
                    new_project=getattr(args, "new_project", False),
                )
    except KeyboardInterrupt:
        if again == "gptbatch build":
            raise  # the CLI's own message names this command
        # A plain `gptbatch build` would not resume a rehearsal (or a manager run): name
        # the command that does.
        raise Interrupted(
            "interrupted: state is saved and batches already submitted keep running"
            + (" in the rehearsal's simulator" if args.simulate else " at the API")
            + f"; `{again}` picks up where this stopped"
            + (
                " (`gptbatch cancel --simulate` stops them)"
                if again.startswith("gptbatch ")
                else ""
            )
        ) from None
    finally:
        if isinstance(reporter, JsonReporter):
            reporter.close()  # events held for `start`, from a build that never started
    if not args.json:
        forced = "-B" if getattr(args, "force", False) else None
        if forced is None and getattr(args, "retry_failed", False):
            forced = "--retry-failed"
        print_summary(summary, spec, again=again, forced=forced)
    if stale:  # a build in passes gave up on them (their upstream kept changing)
        print(
            f"steps {', '.join(stale)}: their upstream answers changed; run `{again}` again "
            "to build them",
            file=sys.stderr,
        )
        return EXIT_PENDING, spec
    return summary.exit_code, spec


def resume_command(args: argparse.Namespace) -> str:
    """The command that continues this build: a rehearsal resumes only with --simulate."""
    base = getattr(args, "resume_command", None) or "gptbatch build"
    if getattr(args, "sample", None):
        base += f" --sample {args.sample}"
    return f"{base} --simulate" if args.simulate else base


def _cost(u: Usage) -> str:
    if u.cost is None:
        return f"unknown (no price for {', '.join(u.unpriced)}: add it under prices: in batch.yaml)"
    return usd(u.cost)


def usage_line(label: str, u: Usage) -> str:
    """Tokens and cost of some results, as the summary shows them."""
    return (
        f"{label}: {plural(u.requests, 'result')}, {plural(u.input, 'input token')} "
        f"({u.cached:,} cached), "
        f"{u.output:,} output ({u.reasoning:,} reasoning); cost {_cost(u)}"
    )


def print_summary(
    s: BuildSummary, spec: Spec, *, again: str = "gptbatch build", forced: str | None = None
) -> None:
    out = sys.stdout
    state = "done" if not s.pending else "not done"
    print(
        f"{state}: {s.ok:,} of {plural(s.total, 'request')} "
        f"{'has a result' if s.total == 1 else 'have results'}, {s.failed:,} failed for good, "
        f"{s.pending:,} pending; {plural(s.submitted, 'batch')} submitted, {s.adopted:,} "
        f"adopted, {s.refusals:,} refused for queue room; {s.seconds:.1f} s",
        file=out,
    )
    print("  " + usage_line("this run", s.usage_run), file=out)
    print(
        "  "
        + usage_line("project so far", s.usage_total)
        + " (estimated before submitting: "
        + ("unknown" if s.cost_committed is None else usd(s.cost_committed))
        + ": prompts, plus outputs where requests cap them)",
        file=out,
    )
    for o in s.outputs:
        line = f"  {shown(o.path)}: {plural(o.written, 'result')}"
        if o.failed:
            line += f", {plural(o.failed, 'failure')} in {shown(o.errors_path)}"
        if o.missing:
            line += f", {o.missing:,} still missing"
        print(line, file=out)
    for t in s.tables:
        if t.skipped:
            print(
                f"  {shown(t.path)}: not written: its data was rendered again by another "
                "command during this build; the next build writes it",
                file=out,
            )
            continue
        line = f"  {shown(t.path)}: {plural(t.rows, 'row')}, {t.answered:,} answered"
        if t.invalid:
            line += f", {plural(t.invalid, 'invalid answer')} (reasons in the errors file)"
        print(line, file=out)
    if s.stopped_by_cost:
        print(f"stopped: {s.stopped_by_cost}", file=out)
    if s.stopped_by_cost and forced:
        # A plain build would not continue a forced one: what it did not send keeps its
        # old result, which is up to date.
        print(
            f"the requests this {forced} run did not send keep their earlier results; run "
            f"`{again} {forced}` with a larger --max-cost to send them again",
            file=out,
        )
    elif s.pending:
        print(
            f"run `{again}` again to continue; `gptbatch status --explain"
            + (" --simulate" if again.endswith("--simulate") else "")
            + "` says why each request is pending",
            file=out,
        )
