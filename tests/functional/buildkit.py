"""Helpers for functional tests: a project on disk, and the real CLI run against the simulator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable
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
        return read_jsonl(self.out / f"{name}.errors.jsonl")

    def build(self, *args: str) -> int:
        """Run `gptbatch build` in-process; return its exit code."""
        return main(["build", str(self.config), *args])

    def cli(self, *args: str) -> int:
        return main([*args, str(self.config)])

    def build_process(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 120
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
