"""Peak memory and time of `gptbatch split` on growing inputs: memory must not grow with them.

Writes inputs of 100,000 and 400,000 chat requests into a temporary directory, runs
`python -m gptbatch split` on each in a child process, and prints the child's peak RSS
(resource.getrusage RUSAGE_CHILDREN ru_maxrss, KiB on Linux) and the wall time.

    python bench/split_memory.py [--sizes 100000,400000] [--limit 1900000]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "are",
    "with",
    "as",
    "his",
    "they",
    "at",
    "be",
    "this",
    "from",
    "have",
    "or",
]


def write_input(path: Path, count: int, seed: int) -> int:
    """count chat requests with log-normal prompt lengths; returns the file size."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as f:
        for i in range(count):
            words = min(20_000, max(5, int(rng.lognormvariate(5.9, 0.9))))
            text = " ".join(rng.choice(WORDS) for _ in range(words))
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}
            request = {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions"}
            f.write(json.dumps({**request, "body": body}) + "\n")
    return path.stat().st_size


def run_split(source: Path, out: Path, limit: int) -> tuple[float, int, str]:
    """(seconds, peak RSS in KiB, first line of output) of one split in a fresh child."""
    code = (
        "import resource, subprocess, sys\n"
        "p = subprocess.run([sys.executable, '-m', 'gptbatch', 'split', sys.argv[1], sys.argv[2],"
        " '--out-dir', sys.argv[3]], capture_output=True, text=True)\n"
        "sys.stderr.write(p.stderr)\n"
        "print(p.stdout.splitlines()[0] if p.stdout else '')\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        "sys.exit(p.returncode)\n"
    )
    started = time.perf_counter()
    # A wrapper process per run, so RUSAGE_CHILDREN holds exactly this one split.
    done = subprocess.run(
        [sys.executable, "-c", code, str(limit), str(source), str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    elapsed = time.perf_counter() - started
    summary, peak = done.stdout.splitlines()[-2:]
    return elapsed, int(peak), summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,400000")
    parser.add_argument("--limit", type=int, default=1_900_000)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"split LIMIT={args.limit:,}; peak RSS of the split process (ru_maxrss)")
    with tempfile.TemporaryDirectory() as tmp:
        for n, count in enumerate(sizes):
            source = Path(tmp) / f"requests-{count}.jsonl"
            size = write_input(source, count, seed=n)
            elapsed, peak_kib, summary = run_split(source, Path(tmp) / f"out-{count}", args.limit)
            print(
                f"{count:>9,} requests ({size / 1e6:,.0f} MB): "
                f"peak RSS {peak_kib / 1024:,.0f} MiB, "
                f"{elapsed:,.1f} s  | {summary}"
            )
    print(f"(this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB)")


if __name__ == "__main__":
    main()
