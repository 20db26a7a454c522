"""Worker processes end with the build that started them, even one killed outright."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gptbatch import processes


def _alive(pid: int) -> bool:
    """Is the process running (a zombie nobody reaped has ended)?"""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return state != "Z"


# The build's two kinds of worker: the read-ahead's and the input scanner's pool.
STARTERS = {
    "read_ahead": """
        from gptbatch.engine.prepared import ReadAhead
        ahead = ReadAhead()
        ahead.start("pid", os.getpid)
        print(ahead.take("pid"), flush=True)
    """,
    "scanner": """
        from gptbatch.inputs.scan import ScanOptions, _start_pool
        pool = _start_pool(1, (ScanOptions(), "test", None))
        print(pool.submit(os.getpid).result(), flush=True)
    """,
    # macOS starts workers from a fork server, whose children they are: such a worker
    # stays while the build lives (three checks here), and ends with it.
    "forkserver": """
        import multiprocessing, time
        from concurrent.futures import ProcessPoolExecutor
        from gptbatch.processes import PARENT_CHECK_SECONDS, start_worker
        pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("forkserver"),
                                   initializer=start_worker, initargs=(os.getpid(),))
        pool.submit(os.getpid).result()
        time.sleep(3 * PARENT_CHECK_SECONDS)
        print(pool.submit(os.getpid).result(), flush=True)
    """,
}


@pytest.mark.skipif(os.name != "posix", reason="worker processes fork on POSIX only")
@pytest.mark.parametrize("kind", sorted(STARTERS))
def test_a_worker_exits_once_its_build_is_killed_outright(
    kind: str, tmp_path: Path, monkeypatch
) -> None:
    script = "import os, signal\n" + textwrap.dedent(STARTERS[kind])
    script += "os.kill(os.getpid(), signal.SIGKILL)\n"
    monkeypatch.delenv("GPTBATCH_WORKERS", raising=False)
    out = tmp_path / "out.txt"
    with open(out, "w") as f:  # not a pipe: a worker left alive would hold it open
        code = subprocess.run([sys.executable, "-c", script], stdout=f, stderr=f).returncode
    assert code == -9, out.read_text()
    worker = int(out.read_text().split()[0])
    assert worker > 0
    deadline = time.monotonic() + 10 * processes.PARENT_CHECK_SECONDS + 5
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = _alive(worker)
    if alive:
        os.kill(worker, 9)
    assert not alive, f"worker {worker} outlived its build"
