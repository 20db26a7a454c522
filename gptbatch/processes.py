"""Worker processes: how they start (fork where it is safe) and how they end with the build.

A build killed outright (kill -9, a CI runner stopped) cannot stop its workers: a worker of a
ProcessPoolExecutor waits on its call queue for ever, and it holds that queue's write end
itself, so it never reads an end of file. Each worker therefore watches its parent and exits
once the process that started it is gone.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from typing import Any

PARENT_CHECK_SECONDS = 0.5


def worker_context() -> Any:
    """The start method for worker processes (the scanner's, the build's read-ahead)."""
    methods = multiprocessing.get_all_start_methods()
    # fork starts in milliseconds and shares the parent's imports; elsewhere forkserver.
    name = "fork" if "fork" in methods and os.name == "posix" else "spawn"
    if name == "fork" and "darwin" in os.uname().sysname.lower():  # pragma: no cover
        name = "forkserver" if "forkserver" in methods else "spawn"
    return multiprocessing.get_context(name)


def start_worker(parent: int) -> None:
    """In a new worker: leave Ctrl-C to the build (it stops us), and end with the build.

    parent: the build's process id, taken where the pool is made (a build that died before
    the worker ran this is then seen gone at once). A forkserver's worker is the server's
    child, not the build's: it asks after the build's process id instead.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    direct = os.getppid() == parent  # fork and spawn; not forkserver, nor a dead build

    def alive() -> bool:
        if direct:
            return os.getppid() == parent
        if os.name != "posix":  # there os.kill would end the process, not ask after it
            return False
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # pragma: no cover - another user's process took the id
            return False
        return True

    def watch() -> None:
        while alive():
            time.sleep(PARENT_CHECK_SECONDS)
        os._exit(1)  # the build is gone: nobody will take what this worker makes

    threading.Thread(target=watch, name="gptbatch-parent-watch", daemon=True).start()
