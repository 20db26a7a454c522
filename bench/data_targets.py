"""Benchmark a data target (CSV + template) against the same requests as a JSONL input.

    python bench/data_targets.py [--rows 100000]

Each step is a separate `gptbatch build` process against the simulator (on a fast clock):
a JSONL input of N chat requests asking for a JSON schema; a CSV data target whose template
renders the same N requests (so its build also renders them and writes the answers table);
a no-op rebuild of each; the target after one row is edited. Issue 18 asks the target's
build within 1.5x of the JSONL's and its no-op under 0.5 s.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
from pathlib import Path

import yaml
from build_scale import peak_rss_build, show, start_simulator

SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["sentiment", "score"],
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "negative", "mixed"]},
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
    },
}
BODY = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "Classify the review's sentiment."},
        {"role": "user", "content": "{{ text }}"},
    ],
    "response_format": {
        "type": "json_schema",
        "json_schema": {"name": "s", "strict": True, "schema": SCHEMA},
    },
}
POLLING = {"initial_seconds": 0.2, "max_seconds": 1.0}


def text(i: int) -> str:
    return f"Review {i}: it works, mostly; the lid is loose and the handle gets hot. " * 2


def project(root: Path, rows: int, *, table: bool) -> Path:
    """A JSONL input of the requests, or a CSV data target rendering the same ones."""
    root.mkdir(parents=True)
    (root / "data").mkdir()
    if table:
        with open(root / "data" / "reviews.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["review_id", "text"])
            writer.writerows([f"rv{i}", text(i)] for i in range(rows))
        target = {
            "name": "reviews",
            "data": "data/reviews.csv",
            "id": "review_id",
            "request": {"url": "/v1/chat/completions", "body": BODY},
        }
        inputs: list[object] = [target]
    else:
        with open(root / "data" / "reviews.jsonl", "w", encoding="utf-8") as f:
            for i in range(rows):
                body = json.loads(json.dumps(BODY).replace("{{ text }}", text(i)))
                line = {"custom_id": f"rv{i}", "method": "POST", "url": "/v1/chat/completions"}
                f.write(json.dumps({**line, "body": body}) + "\n")
        inputs = ["data/reviews.jsonl"]
    config = root / "batch.yaml"
    doc = {"inputs": inputs, "output_dir": "out", "polling": POLLING}
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    proc, url, calls = start_simulator()
    env = {**os.environ, "OPENAI_BASE_URL": url, "OPENAI_API_KEY": "sk-bench"}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            figures = {}
            for name, table in (("jsonl input", False), ("csv target", True)):
                root = Path(tmp) / name.replace(" ", "-")
                config = project(root, args.rows, table=table)
                first = peak_rss_build(config, env, calls)
                show(f"{name}: build", first, root)
                noop = peak_rss_build(config, env, calls)
                show(f"{name}: no-op", noop, root)
                figures[name] = (first["seconds"], noop["seconds"])
            data = Path(tmp) / "csv-target" / "data" / "reviews.csv"
            lines = data.read_text(encoding="utf-8").splitlines()
            lines[len(lines) // 2] = lines[len(lines) // 2].replace("works", "broke")
            data.write_text("\n".join(lines) + "\n", encoding="utf-8")
            show("csv target: one row", peak_rss_build(config, env, calls), root)
            ratio = figures["csv target"][0] / figures["jsonl input"][0]
            print(
                f"{args.rows:,} rows: target/JSONL build time {ratio:.2f}x (issue: <= 1.5x); "
                f"target no-op {figures['csv target'][1]:.2f} s (issue: < 0.5 s)",
                flush=True,
            )
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
