"""Result files read ahead on a worker process: each line parsed, sorted, priced and packed.

Collecting a batch of a first build at scale was a third of the build's time, and half of
that was per-line work that needs nothing from the state: parsing the line, sorting it into
ok, failed or retry, reading its usage, compressing it as stored (zlib against the
project's dictionary). A worker process does that for the next finished batch while the
collector records the one before, whose rows then go to the state packed. The collector's
own rules (which key a line is for, a line given twice, a final result never overwritten,
retries) stay in the collector; the worker only does what `classify`, `usage.result_usage`
and `pack_line` would do in the collector, with the same functions.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from gptbatch.engine import usage
from gptbatch.fastjson import loads_reply
from gptbatch.processes import start_worker, worker_context
from gptbatch.state.lines import pack_line

RETRYABLE_ERROR_CODES = ("batch_expired", "batch_cancelled", "server_error", "rate_limit_exceeded")
# Below this many lines a batch is read in the collector: a worker's start (a fork, a few
# ms) and the hand-over cost more than they save.
PREPARE_MIN_LINES = 4_000

# custom_id, state, error, usage of an ok line (Usage's fields), the line packed
Prepared = tuple[str, str, "str | None", "tuple[Any, ...] | None", bytes]


def classify(obj: dict[str, Any]) -> tuple[str, str | None]:
    """Sort one output/error line into ok, failed (final) or retry."""
    response = obj.get("response") or {}
    error = obj.get("error")
    status = response.get("status_code")
    if status == 200 and not error:
        return "ok", None
    if error:
        code = error.get("code") if isinstance(error, dict) else str(error)
        msg = f"{code}: {error.get('message') if isinstance(error, dict) else ''}"
        return ("retry" if code in RETRYABLE_ERROR_CODES or code is None else "failed"), msg
    body = response.get("body") or {}
    err = body.get("error") if isinstance(body, dict) else None
    detail = err.get("message") if isinstance(err, dict) else None
    msg = f"HTTP {status}: {detail or 'no detail'}"
    if status in (408, 409, 429) or (isinstance(status, int) and status >= 500):
        return "retry", msg
    return "failed", msg


def prepare(
    path: str, zdict: bytes, prices: Mapping[str, Mapping[str, float]] | None
) -> list[Prepared]:
    """Every non-blank line of a result file, as the collector would read it, packed."""
    lookup = usage.price_lookup(prices)
    lines: list[Prepared] = []
    for text, obj in result_lines(path):
        state, error = classify(obj)
        used = usage.result_usage(obj, lookup=lookup).fields() if state == "ok" else None
        lines.append((str(obj.get("custom_id")), state, error, used, pack_line(text, zdict)))
    return lines


def result_lines(path: str | Path) -> Iterator[tuple[str, Any]]:
    """(text, parsed) of each non-blank line of a result file, its line ending cut."""
    with open(path, "rb") as f:
        for raw in f:
            if raw.strip():
                text = raw.decode("utf-8").rstrip("\r\n")
                yield text, loads_reply(text)


class ReadAhead:
    """One worker process doing file work ahead of the build's main thread, a future per job.

    A job is named by a key that says what it did it with (a file and the dictionary it
    packed against, a shard): `take` with the same key gets its answer, or None, when the
    caller must do the work itself: no such job, the job failed, or the worker died. Off with
    GPTBATCH_WORKERS=1 (as the input scanner), or where no process can start.
    """

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self._jobs: dict[Hashable, Future[Any]] = {}
        env = os.environ.get("GPTBATCH_WORKERS", "").strip()
        self.enabled = not (env.isdigit() and int(env) <= 1)

    def start(self, key: Hashable, fn: Callable[..., Any], *args: Any) -> None:
        """Begin fn(*args) on the worker as job `key` (nothing if off, or already begun).

        May be called from one other thread than the one that takes the jobs (collect's
        downloads): a pool that broke meanwhile only means no job."""
        if not self.enabled or key in self._jobs:
            return
        pool = self._pool
        if pool is None:
            try:
                pool = self._pool = ProcessPoolExecutor(
                    1,
                    mp_context=worker_context(),
                    initializer=start_worker,
                    initargs=(os.getpid(),),
                )
            except (OSError, ValueError):
                self.enabled = False
                return
        try:
            self._jobs[key] = pool.submit(fn, *args)
        except RuntimeError:  # broken or shut down meanwhile (a caller on another thread)
            return

    def begun(self, key: Hashable) -> bool:
        return key in self._jobs

    def take(self, key: Hashable) -> Any | None:
        """Job `key`'s answer, waited for; None: do the work yourself.

        A job that failed is not an error here: the caller does the work and meets the
        failure itself, with its own message.
        """
        job = self._jobs.pop(key, None)
        if job is None:
            return None
        try:
            return job.result()
        except BrokenProcessPool:
            self.close()
            self.enabled = False
            return None
        except Exception:
            return None

    def close(self) -> None:
        """Stop the worker, after the job it is doing; jobs not begun are dropped."""
        self._jobs.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
