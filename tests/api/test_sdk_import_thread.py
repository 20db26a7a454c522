"""The SDK imported on a thread during sync: a fork waits for it, never inherits it half-done."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import multiprocessing, sys
assert "openai" not in sys.modules
from gptbatch.api.connect import import_sdk_in_background
import_sdk_in_background("openai")
ctx = multiprocessing.get_context("fork")
# the child imports modules of its own right after the fork: with a lock left held by a
# half-done import in the parent's thread, it would hang here
p = ctx.Process(target=lambda: __import__("openai.types.batch") and None)
p.start(); p.join(60)
print("child", p.exitcode, "openai" in sys.modules)
"""


def test_a_fork_during_the_background_import_waits_for_it() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["child", "0", "True"]  # the import had finished by the fork
