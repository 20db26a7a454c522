"""`gptbatch cancel`: stop this project's in-flight batches; the next build resumes the work."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from gptbatch.cli.common import add_simulate_flag
from gptbatch.config.rehearsal import simulated_output_dir
from gptbatch.config.spec import load_spec


def register(sub: Any) -> None:
    p = sub.add_parser(
        "cancel",
        epilog="example: gptbatch cancel batch.yaml  (then `gptbatch build` resubmits the rest)",
        help="cancel this project's in-flight batches",
        description="Cancel every batch of this project still running at the API: those the "
        "build state knows, and any the API lists with this project's metadata. Finished "
        "results are kept; the next `gptbatch build` collects them and resubmits the rest. "
        "Needs the API key; waits for no build (exit 5 if one is running).",
    )
    p.add_argument("config", nargs="?", default=None, help="batch.yaml (default: ./batch.yaml)")
    p.add_argument("--json", action="store_true", help="print what was cancelled as JSON")
    add_simulate_flag(
        p, "cancel the batches of the `build --simulate` rehearsal (its simulator; no key)"
    )
    p.set_defaults(
        func=run,
        interrupted="interrupted: the batches cancelled so far stay cancelled; the rest keep "
        "running at the API: run `gptbatch cancel` again to cancel them (`gptbatch status` "
        "lists what is running)",
    )


def run(args: argparse.Namespace) -> int:
    from gptbatch.api.connect import connect, remote_for
    from gptbatch.commands.cancel import cancel_in_flight

    spec = load_spec(args.config, simulate=args.simulate)
    if args.simulate:
        if not simulated_output_dir(spec).exists():  # no rehearsal: start no simulator
            done = []
        else:
            # The rehearsal's own simulator, restored from its state beside the rehearsal.
            with remote_for(spec, True) as (spec, remote):
                done = cancel_in_flight(spec, remote)
    else:
        remote = connect(spec, "cancel")
        try:
            done = cancel_in_flight(spec, remote)
        finally:
            remote.close()
    again = "gptbatch build --simulate" if args.simulate else "gptbatch build"
    if args.json:
        print(json.dumps([dataclasses.asdict(c) for c in done], indent=2, sort_keys=True))
        return 0
    if not done:
        print(f"nothing to cancel: no batch of project {spec.project} is in flight")
        return 0
    for c in done:
        origin = "" if c.known else " (found at the API by its metadata)"
        print(f"{c.batch_id}{origin}: {c.status}; {c.note}")
    stopped = sum(c.status in ("cancelling", "cancelled") for c in done)
    print(
        f"cancelled {stopped} batch{'es' if stopped != 1 else ''}: run `{again}` "
        "to collect what finished and resubmit the rest"
    )
    return 0
