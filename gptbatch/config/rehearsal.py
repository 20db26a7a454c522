"""A rehearsal's spec: `build --simulate` writes outputs and state to <output_dir>-simulated."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # spec.py imports this module (through input_files) for SIMULATED_SUFFIX
    from gptbatch.config.spec import Spec

SIMULATED_SUFFIX = "-simulated"  # `build --simulate` writes to <output_dir>-simulated


def rehearsal(spec: Spec) -> Spec:
    """The spec as `build --simulate` uses it: outputs and state in <output_dir>-simulated."""
    return dataclasses.replace(spec, output_dir=simulated_output_dir(spec))


def simulated_output_dir(spec: Spec) -> Path:
    """Where --simulate writes: beside the real output directory, never in it."""
    return spec.output_dir.with_name(spec.output_dir.name + SIMULATED_SUFFIX)
