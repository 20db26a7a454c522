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


class JsonReporter:
    """One JSON object per event, one per line: for machines."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout

    def event(self, kind: str, **fields: Any) -> None:
        record = {"event": kind, "time": round(time.time(), 3), **fields}
        self.stream.write(json.dumps(record, sort_keys=True, default=str) + "\n")
        self.stream.flush()


def shown(path: str) -> str:
    """A path relative to the working directory when it is under it."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def _n(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


class Progress:
    """What a build has done so far in this run, tallied from its events."""

    def __init__(self) -> None:
        self.batches: dict[str, str] = {}  # in-flight batch -> status
        self.ok = self.failed = self.retry = 0

    def update(self, kind: str, f: dict[str, Any]) -> None:
        if kind in ("submitted", "adopted"):
            self.batches[f["batch"]] = f.get("status", "validating")
        elif kind == "status" and f["batch"] in self.batches:
            self.batches[f["batch"]] = f["status"]
        elif kind in ("collected", "refused", "batch_failed"):
            self.batches.pop(f["batch"], None)
            self.ok += f.get("ok", 0)
            self.failed += f.get("failed", 0)
            self.retry += f.get("retry", 0)

    def line(self) -> str:
        if not self.batches and not (self.ok or self.failed or self.retry):
            return ""
        states: dict[str, int] = {}
        for status in self.batches.values():
            states[status] = states.get(status, 0) + 1
        detail = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
        return (
            f"[{len(self.batches)} batches in flight{': ' + detail if detail else ''}] "
            f"collected {self.ok:,} ok, {self.failed:,} failed, {self.retry:,} to retry"
        )


class ConsoleReporter:
    """Plain lines for people and CI logs; `verbose` adds the per-input and per-shard chatter."""

    def __init__(self, stream: TextIO | None = None, *, verbose: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.verbose = verbose
        self.tty = self.stream.isatty()
        self.progress = Progress()
        self.status_shown = False

    def say(self, text: str) -> None:
        stamp = "" if self.tty else time.strftime("%H:%M:%S ")
        self.clear_status()
        self.stream.write(f"{stamp}{text}\n")
        self.stream.flush()

    def clear_status(self) -> None:
        if self.status_shown:
            self.stream.write("\r\x1b[K")
            self.status_shown = False

    def event(self, kind: str, **f: Any) -> None:
        self.progress.update(kind, f)
        text = self.render(kind, f)
        if text:
            self.say(text)
        if self.tty:  # a live status line on a terminal; CI logs get plain lines only
            line = self.progress.line() if kind != "summary" else ""
            self.clear_status()
            if line:
                self.stream.write(line)
                self.status_shown = True
            self.stream.flush()

    def render(self, kind: str, f: dict[str, Any]) -> str | None:
        if kind == "input":
            if not self.verbose and f["state"].startswith("unchanged"):
                return None
            extra = (
                f" ({_n(f['requests'])} requests, {_n(f['new'])} new or changed)"
                if "requests" in f
                else ""
            )
            return f"input {shown(f['path'])}: {f['state']}{extra}"
        if kind == "planned":
            return (
                f"planned shard {f['shard']}: {f['model']} {f['url']}, "
                f"{_n(f['requests'])} requests, ~{_n(f['tokens'])} tokens"
                if self.verbose
                else None
            )
        if kind == "uploaded":
            return f"uploaded shard {f['shard']} as {f['file']}" if self.verbose else None
        if kind == "submitted":
            return (
                f"submitted {f['batch']} (shard {f['shard']}): {f['model']}, "
                f"{_n(f['requests'])} requests, ~{_n(f['tokens'])} tokens"
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
        if kind == "batch_failed":
            lines = [f"{f['batch']}: failed validation at the API"]
            lines += [f"  {p}" for p in f["problems"]]
            return "\n".join(lines)
        if kind == "summary":
            return None  # the CLI prints the summary itself
        return f"{kind}: {f}" if self.verbose else None
