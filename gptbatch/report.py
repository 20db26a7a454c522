"""Reporters: the build emits events; these render them for a terminal, a CI log, or as JSON."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Protocol, TextIO


class Reporter(Protocol):
    """Receives build events; never decides anything."""

    def event(self, kind: str, **fields: Any) -> None: ...


class NullReporter:
    """Drops every event (library use, tests)."""

    def event(self, kind: str, **fields: Any) -> None:
        return None


_BEFORE_START = frozenset({"input", "reset", "warning"})  # what a build says before it starts


class JsonReporter:
    """One JSON object per event, one per line: for machines.

    `start` comes first: what the build reports while it reads its inputs (input, reset,
    warning) is held until it starts, and written whatever happens by close().
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.held: list[dict[str, Any]] | None = []  # None once started

    def event(self, kind: str, **fields: Any) -> None:
        if kind == "tick":  # a redraw for live displays, not an event
            return
        record = {"event": kind, "time": round(time.time(), 3), **fields}
        if self.held is not None and kind in _BEFORE_START:
            self.held.append(record)
            return
        self._write(record)
        if kind == "start":
            self.close()

    def close(self) -> None:
        """Write what was held (a build that stopped before it started still reports it)."""
        held, self.held = self.held or [], None
        for record in held:
            self._write(record)

    def _write(self, record: dict[str, Any]) -> None:
        self.stream.write(json.dumps(record, sort_keys=True, default=str) + "\n")
        self.stream.flush()


def shown(path: str) -> str:
    """A path relative to the working directory when it is under it."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def _n(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def plural(count: Any, noun: str) -> str:
    """ "1 batch", "2 batches", "1,000 requests": a count with its noun, agreeing."""
    if count == 1:
        return f"{_n(count)} {noun}"
    return f"{_n(count)} {noun}{'es' if noun.endswith(('ch', 'sh', 's', 'x')) else 's'}"


class Progress:
    """What a build has done so far, tallied from its events: the live display's model."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self.clock = clock
        self.started = clock()
        self.batches: dict[str, str] = {}  # in-flight batch -> status
        self.batch_model: dict[str, tuple[str | None, int]] = {}  # batch -> (model, tokens)
        self.budgets: dict[str, int | None] = {}
        self.total = self.done = self.failed_total = 0
        self.ok = self.failed = self.retry = 0  # collected in this run

    def update(self, kind: str, f: dict[str, Any]) -> None:
        if kind == "start":
            # A build in passes starts again with every result so far: those it collected
            # itself (self.ok, self.failed) are not counted twice.
            self.total = f["total"]
            self.done, self.failed_total = f["ok"] - self.ok, f["failed"] - self.failed
            self.budgets.update(f.get("budgets") or {})
        elif kind == "budget":
            self.budgets[f["model"]] = f["new"]
        elif kind in ("submitted", "adopted"):
            self.batches[f["batch"]] = f.get("status", "validating")
            self.batch_model[f["batch"]] = (f.get("model"), int(f.get("tokens") or 0))
        elif kind == "status" and f["batch"] in self.batches:
            self.batches[f["batch"]] = f["status"]
            if f["status"] in _TERMINAL:  # its queue room is free; its results come next
                self.batch_model.pop(f["batch"], None)
        elif kind in ("collected", "refused", "batch_failed"):
            self.batches.pop(f["batch"], None)
            self.batch_model.pop(f["batch"], None)
            self.ok += f.get("ok", 0)
            self.failed += f.get("failed", 0)
            self.retry += f.get("retry", 0)

    def line(self) -> str:
        """One plain line: batches in flight by status and what was collected."""
        if not self.batches and not (self.ok or self.failed or self.retry):
            return ""
        detail = self.by_status()
        return (
            f"[{plural(len(self.batches), 'batch')} in flight{': ' + detail if detail else ''}] "
            f"collected {self.ok:,} ok, {self.failed:,} failed, {self.retry:,} to retry"
        )

    def by_status(self) -> str:
        states: dict[str, int] = {}
        for status in self.batches.values():
            states[status] = states.get(status, 0) + 1
        return ", ".join(f"{n} {s}" for s, n in sorted(states.items()))

    def block(self, width: int = 30) -> list[str]:
        """The live display: per model a bar of tokens in flight against the budget, then
        batches by status, requests done / failed / pending, elapsed time and an ETA."""
        lines = []
        flying: dict[str | None, int] = {}
        for model, tokens in self.batch_model.values():
            flying[model] = flying.get(model, 0) + tokens
        for model in sorted({*self.budgets, *flying}, key=str):
            tokens, budget = flying.get(model, 0), self.budgets.get(model)
            if budget:
                filled = min(width, round(width * tokens / budget))
                bar = "#" * filled + "." * (width - filled)
                lines.append(f"{model or '?':<24} [{bar}] {tokens:,} / {budget:,} tokens in flight")
            else:
                lines.append(f"{model or '?':<24} {tokens:,} tokens in flight (no limit set)")
        flying_batches = sum(1 for s in self.batches.values() if s not in _TERMINAL)
        detail = self.by_status() or "none"
        lines.append(f"batches: {flying_batches} in flight ({detail})")
        done, failed = self.done + self.ok, self.failed_total + self.failed
        pending = max(0, self.total - done - failed)
        elapsed = self.clock() - self.started
        rate = (self.ok + self.failed) / elapsed if elapsed > 0 else 0.0
        eta = _clock(pending / rate) if rate > 0 and pending else ("-" if pending else "0:00:00")
        lines.append(
            f"requests: {done:,} done, {failed:,} failed, {pending:,} pending of {self.total:,}"
            f"   elapsed {_clock(elapsed)}   ETA {eta}"
        )
        return lines


_TERMINAL = ("completed", "failed", "expired", "cancelled")


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ConsoleReporter:
    """Plain lines for people and CI logs; `verbose` adds the per-input and per-shard chatter."""

    def __init__(self, stream: TextIO | None = None, *, verbose: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.verbose = verbose
        self.tty = self.stream.isatty()
        self.progress = Progress()
        self.shown = 0  # lines of the live display on screen (below the log lines)

    def say(self, text: str) -> None:
        stamp = "" if self.tty else time.strftime("%H:%M:%S ")
        self.clear_status()
        self.stream.write(f"{stamp}{text}\n")
        self.stream.flush()

    def clear_status(self) -> None:
        """Erase the live display (the cursor sits at the end of its last line)."""
        if self.shown:
            up = f"\x1b[{self.shown - 1}A" if self.shown > 1 else ""
            self.stream.write(f"\r{up}\x1b[J")
            self.shown = 0

    def event(self, kind: str, **f: Any) -> None:
        self.progress.update(kind, f)
        text = self.render(kind, f)
        if text:
            self.say(text)
        # On a terminal, a live display under the log lines; CI logs get plain lines only.
        if self.tty and self.progress.total:
            self.clear_status()
            if kind not in ("summary", "usage"):  # the build is over: the CLI prints the rest
                block = self.progress.block()
                self.stream.write("\n".join(block))
                self.shown = len(block)
            self.stream.flush()

    def render(self, kind: str, f: dict[str, Any]) -> str | None:
        if kind == "input":
            if not self.verbose and f["state"].startswith("unchanged"):
                return None
            extra = (
                f" ({plural(f['requests'], 'request')}, {_n(f['new'])} new or changed)"
                if "requests" in f
                else ""
            )
            return f"input {shown(f['path'])}: {f['state']}{extra}"
        if kind == "planned":
            return (
                f"planned shard {f['shard']}: {f['model']} {f['url']}, "
                f"{plural(f['requests'], 'request')}, ~{plural(f['tokens'], 'token')}"
                if self.verbose
                else None
            )
        if kind == "uploaded":
            return f"uploaded shard {f['shard']} as {f['file']}" if self.verbose else None
        if kind == "submitted":
            return (
                f"submitted {f['batch']} (shard {f['shard']}): {f['model']}, "
                f"{plural(f['requests'], 'request')}, ~{plural(f['tokens'], 'token')}"
            )
        if kind == "adopted":
            return f"adopted existing batch {f['batch']} for shard {f['shard']} ({f['status']})"
        if kind == "status":
            return (
                f"{f['batch']}: {f['status']} "
                f"({_n(f['completed'])}/{_n(f['total'])} done, {_n(f['failed'])} failed)"
            )
        if kind == "collected":
            return (
                f"{f['batch']}: collected {_n(f['ok'])} ok, {_n(f['failed'])} failed for good, "
                f"{_n(f['retry'])} to retry"
            )
        if kind == "refused":
            return (
                f"{f['batch']}: refused by the API ({f['code']}); shard {f['shard']} "
                f"waits {f['wait']}s for queue room (repacked smaller if the budget fell)"
            )
        if kind == "budget":
            return (
                f"working token budget for {f['model']}: "
                f"{_n(f['old']) if f['old'] is not None else 'unset'} -> {_n(f['new'])} "
                f"({f['reason']})"
            )
        if kind == "dropped":
            return f"shard {f['shard']} released: {f['reason']}" if self.verbose else None
        if kind == "too_large":
            return f"failed for good: {f['message']}"
        if kind == "spend_cap":
            return f"not submitting: {f['message']}"
        if kind == "create_uncertain":
            return (
                f"batch creation for shard {f['shard']} got no clear answer ({f['error']}); "
                "checking the API before trying again"
            )
        if kind in ("api_retry", "recover_failed"):
            prefix = f"{f['batch']}: " if f.get("batch") else ""
            return f"{prefix}{f['error']} (will retry)"
        if kind == "unknown_batch":
            return f"{f['batch']}: {f['message']}" if f.get("batch") else f["message"]
        if kind == "file_waiting":
            return f"{f['batch']}: {f['error']}"
        if kind == "file_gone":
            return (
                f"{f['batch']}: file {f['file']} is gone from the API; its requests count as "
                "missing (retried while attempts remain)"
            )
        if kind == "slow_finalizing":
            return (
                f"{f['batch']}: still finalizing after {_n(f['seconds'])}s; it holds its queue "
                "room until it completes (nothing to do but wait)"
            )
        if kind == "warning":
            return f"warning: {f['message']}"
        if kind == "batch_failed":
            lines = [f"{f['batch']}: failed validation at the API"]
            lines += [f"  {p}" for p in f["problems"]]
            return "\n".join(lines)
        if kind in ("summary", "tick", "start", "usage"):
            return None  # the CLI prints the summary itself; the others feed the display
        return f"{kind}: {f}" if self.verbose else None
