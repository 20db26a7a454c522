"""Helpers for functional tests: a project on disk, and the real CLI run against the simulator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gptbatch.cli import main

REPO = Path(__file__).resolve().parents[2]


def chat(custom_id: str, text: str | None = None, model: str = "gpt-4o-mini") -> dict[str, Any]:
    """A chat completion request line."""
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": model,
            "messages": [{"role": "user", "content": text or f"Say something about {custom_id}."}],
        },
    }


def embedding(custom_id: str, text: str | None = None) -> dict[str, Any]:
    """An embeddings request line."""
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {"model": "text-embedding-3-small", "input": text or f"text of {custom_id}"},
    }


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


@dataclass
class Project:
    """A batch.yaml with its inputs in a temp directory."""

    root: Path
    config: Path

    @property
    def out(self) -> Path:
        return self.root / "out"

    def input(self, name: str = "requests.jsonl") -> Path:
        return self.root / "inputs" / name

    def output(self, name: str = "requests") -> list[dict[str, Any]]:
        return read_jsonl(self.out / f"{name}.jsonl")

    def errors(self, name: str = "requests") -> list[dict[str, Any]]:
        """The errors file's records; none when it does not exist (nothing failed)."""
        path = self.out / f"{name}.errors.jsonl"
        return read_jsonl(path) if path.exists() else []

    def build(self, *args: str) -> int:
        """Run `gptbatch build` in-process; return its exit code."""
        return main(["build", str(self.config), *args])

    def cli(self, *args: str) -> int:
        return main([*args, str(self.config)])

    def build_process(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run `gptbatch build` as a separate process (for kill -9 and concurrency)."""
        full_env = {**os.environ, **(env or {})}
        return subprocess.run(
            [sys.executable, "-m", "gptbatch", "build", str(self.config), *args],
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO,
        )


def make_project(
    tmp_path: Path,
    inputs: dict[str, list[dict[str, Any]]],
    **config: Any,
) -> Project:
    """Write inputs/<name> files and a batch.yaml with fast polling; extra keys merge in."""
    for name, rows in inputs.items():
        write_jsonl(tmp_path / "inputs" / name, rows)
    doc: dict[str, Any] = {
        "version": 1,
        "inputs": [f"inputs/{name}" for name in inputs],
        "output_dir": "out",
        "project": f"test-{tmp_path.name}",
        "polling": {"initial_seconds": 0.02, "max_seconds": 0.2, "factor": 1.5},
    }
    for key, value in config.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            doc[key] = {**doc[key], **value}
        else:
            doc[key] = value
    path = tmp_path / "batch.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return Project(tmp_path, path)


def billed_ids(sim: Any) -> list[str]:
    """custom_ids the simulator billed, with repeats."""
    return [b.custom_id for b in sim.journal.billed]


def creates(sim: Any) -> int:
    """How many batches.create calls reached the simulator."""
    return sum(1 for c in sim.journal.calls if c.method == "POST" and c.path == "/v1/batches")


def batch_count(sim: Any) -> int:
    """How many batches exist in the simulator."""
    return len(sim.service.batches())


# --- helpers for the fault, scheduling and mode tests (appended) -------------------------------

ACTIVE_BATCH_STATUSES = ("validating", "in_progress", "finalizing", "cancelling")


def padded_chat(custom_id: str, words: int = 90, model: str = "gpt-4o-mini") -> dict[str, Any]:
    """A chat request of roughly `words` + 10 prompt tokens (for budget arithmetic)."""
    return chat(custom_id, f"{custom_id}: " + "word " * words, model=model)


def json_events(stdout: str) -> list[dict[str, Any]]:
    """The events a `--json` build printed, one JSON object per line."""
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def uploads(sim: Any) -> int:
    """How many files.create calls reached the simulator."""
    return sum(1 for c in sim.journal.calls if c.method == "POST" and c.path == "/v1/files")


def batch_members(sim: Any) -> dict[str, list[dict[str, Any]]]:
    """batch id -> the request lines of its uploaded input file, in file order."""
    out: dict[str, list[dict[str, Any]]] = {}
    for b in sim.service.batches():
        data = sim.service.file_content(b["input_file_id"])
        out[b["id"]] = [json.loads(line) for line in data.splitlines() if line.strip()]
    return out


def submissions(sim: Any, custom_id: str) -> int:
    """In how many batches' input files a custom_id was sent."""
    return sum(
        any(r["custom_id"] == custom_id for r in rows) for rows in batch_members(sim).values()
    )


def peak_in_flight(
    sim: Any, weight: Mapping[str, float], holding: tuple[str, ...] = ACTIVE_BATCH_STATUSES
) -> tuple[float, int]:
    """(largest summed weight, largest count) of batches active at once, from the journal.

    A batch is active from its `validating` event until a terminal one (or: while in one of
    `holding`); all events at one simulated instant are applied before measuring.
    """
    status: dict[str, str] = {}
    peak, most = 0.0, 0
    events = sorted(sim.journal.events, key=lambda e: e.at)
    i = 0
    while i < len(events):
        t = events[i].at
        while i < len(events) and events[i].at == t:
            status[events[i].batch_id] = events[i].status
            i += 1
        active = [b for b, s in status.items() if s in holding]
        peak = max(peak, sum(weight.get(b, 0.0) for b in active))
        most = max(most, len(active))
    return peak, most


def start_build(project: Project, *args: str) -> subprocess.Popen[str]:
    """Start `gptbatch build` as a child process (for signals and concurrency); caller waits."""
    return subprocess.Popen(
        [sys.executable, "-m", "gptbatch", "build", str(project.config), *args],
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def wait_until(predicate: Any, timeout: float = 20.0, interval: float = 0.02) -> bool:
    """Poll `predicate()` until it is true or `timeout` real seconds pass; return the last value."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


# --- helpers for the regression tests (appended) -----------------------------------------------


def update_config(project: Project, **config: Any) -> None:
    """Merge keys into the project's batch.yaml (dict values merge one level, like make_project)."""
    doc = yaml.safe_load(project.config.read_text())
    for key, value in config.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            doc[key] = {**doc[key], **value}
        else:
            doc[key] = value
    project.config.write_text(yaml.safe_dump(doc, sort_keys=False))


def billed_twice(sim: Any) -> list[str]:
    """custom_ids the simulator billed more than once."""
    return sorted(k for k, v in sim.journal.billed_counts().items() if v > 1)


# Every crashpoint("...") in gptbatch/, in the order a build passes them
# (test_build_kills.test_every_crash_point_is_listed fails when the engine gains one).
KILL_POINTS = (
    "after_shard_file",
    "before_upload",
    "after_upload",
    "after_uploaded_state",
    "before_create",
    "after_create",
    "after_submitted_state",
    "mid_download",
    "after_download",
    "after_collect",
    "mid_output_write",
    "after_outputs",
)
# The points a provider's own code passes: all but the output writes, which are shared.
PROVIDER_KILL_POINTS = KILL_POINTS[: KILL_POINTS.index("mid_output_write")]


def refused(sim: Any) -> list[str]:
    """Batches the simulator failed for lack of queue room."""
    return [
        b["id"]
        for b in sim.service.batches()
        if b["status"] == "failed"
        and any(
            e["code"] in ("token_limit_exceeded", "request_limit_exceeded")
            for e in (b["errors"] or {}).get("data", [])
        )
    ]


def creations_past(
    sim: Any, weight: Mapping[str, float], budget: float
) -> list[tuple[str, list[str]]]:
    """(created, finalizing): batches created while what was active (validating to
    finalizing, by `weight`) passed `budget`, each with the batches finalizing then. Early
    release (scheduler.py) creates one only while a batch finalizes."""
    status: dict[str, str] = {}
    found = []
    active = ("validating", "in_progress", "finalizing")
    for e in sorted(sim.journal.events, key=lambda e: e.at):
        status[e.batch_id] = e.status
        claimed = sum(weight.get(b, 0.0) for b, s in status.items() if s in active)
        if e.status == "validating" and claimed > budget:
            found.append((e.batch_id, [b for b, s in status.items() if s == "finalizing"]))
    return found


def tail_project(
    tmp_path: Path, simulator_factory: Any, seed: int, limit: int = 2_000, k: int = 4
) -> tuple[Any, list[dict[str, Any]], Project]:
    """(simulator, requests, project): 80 requests of random sizes on a tokens limit held
    from creation, pipelined k ways with a 0.05 margin: a build that reaches a tail."""
    import random

    sim = simulator_factory(token_limits={"gpt-4o-mini": limit}, hold_from_creation=True)
    rng = random.Random(seed)
    reqs = [padded_chat(f"r{i}", words=rng.randint(20, 90)) for i in range(80)]
    project = make_project(
        tmp_path,
        {"requests.jsonl": reqs},
        limits={"enqueued_tokens": limit, "safety_margin": 0.05, "pipeline": k},
    )
    return sim, reqs, project
