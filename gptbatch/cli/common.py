"""What several commands share on the command line: the --simulate flag and the spec it picks."""

from __future__ import annotations

import argparse
from typing import Any

from gptbatch.config.rehearsal import rehearsal
from gptbatch.config.spec import Spec, load_spec


def add_simulate_flag(parser: Any, help: str) -> None:
    """--simulate, with the command's own words for what it does to the rehearsal."""
    parser.add_argument("--simulate", action="store_true", help=help)


def load_chosen_spec(args: argparse.Namespace) -> Spec:
    """The config args names; under --simulate, the rehearsal's (<output_dir>-simulated)."""
    spec = load_spec(args.config, simulate=bool(getattr(args, "simulate", False)))
    return rehearsal(spec) if args.simulate else spec
