"""`gptbatch clean`: remove a project's outputs and build state (and, with --remote, uploads)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gptbatch.cli.common import add_simulate_flag, load_chosen_spec
from gptbatch.commands.clean import (
    SIMULATOR_DIR,
    CleanPlan,
    delete_uploads,
    plan_clean,
    remote_uploads,
    remove_local,
    unrecoverable_results,
)
from gptbatch.errors import EXIT_ERROR, UsageError
from gptbatch.report import shown
from gptbatch.state.lock import BuildLock
from gptbatch.state.store import state_dir


def register(sub: Any) -> None:
    p = sub.add_parser(
        "clean",
        epilog="example: gptbatch clean batch.yaml --yes  (--remote: uploaded files too)",
        help="remove outputs and build state (after confirmation)",
        description="Remove the output and error files gptbatch wrote and the build state. "
        "Inputs, and files gptbatch did not write, are never touched. Batches at the API "
        "stay: a later build adopts and collects them instead of paying again. Asks first "
        "on a terminal; elsewhere pass --yes.",
    )
    p.add_argument("config", nargs="?", default=None, help="batch.yaml (default: ./batch.yaml)")
    p.add_argument(
        "--remote",
        action="store_true",
        help="also delete this project's uploaded input files at the API (needs the key; a "
        "later build can then no longer recover lost batches from them)",
    )
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    add_simulate_flag(p, "clean the `build --simulate` rehearsal instead")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    spec = load_chosen_spec(args)
    if args.simulate and args.remote:
        raise UsageError("--simulate and --remote: a rehearsal uploads nothing to the API")
    remote = None
    if args.remote:
        from gptbatch.api.connect import connect

        remote = connect(spec, "clean --remote")
    try:
        with BuildLock(spec.output_dir, state_dir(spec.output_dir)):
            plan = plan_clean(spec, rehearsal=args.simulate)
            uploads = remote_uploads(spec, remote) if remote else []
            lost = (
                0 if args.simulate else unrecoverable_results(spec, deleting_uploads=bool(uploads))
            )
            if not plan.files and not uploads:
                remove_local(plan)
                print(f"nothing to clean in {shown(str(spec.output_dir))}")
                return 0
            if not args.yes and not sys.stdin.isatty():
                raise UsageError(
                    "clean removes files and asks first: pass --yes when not on a terminal"
                )
            _describe(plan, uploads, state_dir(spec.output_dir))
            if lost:
                _warn_rebuy(lost, removing_state=bool(plan.files), remote=bool(uploads))
            if not args.yes and not _confirmed():
                print("nothing removed")
                return EXIT_ERROR
            deleted = delete_uploads(remote, uploads) if remote else []
            freed = remove_local(plan)
    finally:
        if remote is not None:
            remote.close()
    print(f"removed {len(plan.files)} files ({freed:,} bytes)", end="")
    print(f" and {len(deleted)} uploaded files at the API" if remote else "")
    return 0


def _describe(plan: CleanPlan, uploads: list[str], work: Path) -> None:
    state = [p for p in plan.files if p.is_relative_to(work)]
    for path in plan.files:
        if path not in state:
            print(f"  remove {shown(str(path))}")
    if state:
        simulated = sum(1 for p in state if p.is_relative_to(work / SIMULATOR_DIR))
        extra = f", {simulated} of them the rehearsal's simulator" if simulated else ""
        print(f"  remove {shown(str(work))}/ (build state: {len(state)} files{extra})")
    if uploads:
        print(f"  delete {len(uploads)} uploaded input files at the API: {', '.join(uploads)}")
    for path in plan.kept:
        print(f"  keep   {shown(str(path))} (not written by gptbatch)")
    if plan.in_flight:
        print(
            f"  note: {plan.in_flight} batch(es) still run at the API; a later build adopts "
            "and collects them (`gptbatch cancel` stops them)"
        )


def _warn_rebuy(lost: int, *, removing_state: bool, remote: bool) -> None:
    """Say before asking that this clean makes the next build pay again for these results."""
    why = (
        "this deletes their input files at the API"
        if remote
        else "their input files at the API were deleted after collection (delete_uploads: true)"
    )
    after = (
        "with the build state removed, the next build submits and pays for them again"
        if removing_state
        else "if the build state is ever lost, a build submits and pays for them again"
    )
    print(
        f"  warning: {lost:,} result{'s' if lost != 1 else ''} could not be recovered from the "
        f"API: {why}; {after} (`gptbatch export` keeps a copy of the results)"
    )


def _confirmed() -> bool:
    try:
        answer = input("remove these? [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")
