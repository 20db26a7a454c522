"""Fault injection for tests: die with SIGKILL at a named point when GPTBATCH_CRASH_AT names it.

`GPTBATCH_CRASH_AT=point` kills at the first pass through that point; `point:N` at the N-th.
The kill tests (tests/functional/test_build_kills.py) list every point.
"""

from __future__ import annotations

import os
import signal

_passes: dict[str, int] = {}


def crashpoint(name: str) -> None:
    """Die here with SIGKILL if GPTBATCH_CRASH_AT names this point (and this pass)."""
    target = os.environ.get("GPTBATCH_CRASH_AT")
    if not target:
        return
    point, _, nth = target.partition(":")
    if point != name:
        return
    _passes[name] = _passes.get(name, 0) + 1
    if _passes[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def armed(name: str) -> bool:
    """Is a crash at this point asked for (so a hot loop checks the environment once)?"""
    return os.environ.get("GPTBATCH_CRASH_AT", "").partition(":")[0] == name
