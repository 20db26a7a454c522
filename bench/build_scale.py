"""Benchmark `gptbatch build` at scale against the simulator; prints figures.

    python bench/build_scale.py [--requests 100000]

Measures, each as a separate `gptbatch build` process (wall time and peak RSS):
the first build, a no-op rebuild, a rebuild after a one-line edit, and a rebuild after
appending 1% more requests. The simulator runs in its own process on a fast clock.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

WORDS = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa")


def request(i: int, rng: random.Random) -> dict:
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 120)))
    return {
        "custom_id": f"req-{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]},
    }


def write_input(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps(request(i, rng)) + "\n")


def start_simulator() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gptbatch",
            "simulator",
            "--port",
            "0",
            "--quiet",
            "--time-scale",
            "100000",
            "--tokens-per-second",
            "5000000",
            "--total-tokens-per-second",
            "0",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    return proc, line.rsplit(" ", 1)[-1].strip()


def timed_build(config: Path, env: dict[str, str]) -> tuple[float, float, int]:
    """(seconds, peak RSS MiB of the build process, exit code)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "gptbatch", "build", str(config)],
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if done.returncode != 0:
        print(done.stdout, done.stderr, file=sys.stderr)
    # ru_maxrss of children is the max over all children so far: report it when it grew.
    return seconds, max(peak, before) / 1024, done.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    args = parser.parse_args()
    sim, url = start_simulator()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            (root / "inputs").mkdir()
            data = root / "inputs" / "big.jsonl"
            write_input(data, args.requests)
            config = root / "batch.yaml"
            config.write_text(
                yaml.safe_dump(
                    {
                        "inputs": ["inputs/big.jsonl"],
                        "output_dir": "out",
                        "limits": {"enqueued_tokens": {"gpt-4o-mini": 20_000_000}},
                        "polling": {"initial_seconds": 0.2, "max_seconds": 1.0},
                    }
                )
            )
            env = {**os.environ, "OPENAI_BASE_URL": url, "OPENAI_API_KEY": "sk-bench"}
            size = data.stat().st_size / 2**20
            print(f"input: {args.requests:,} requests, {size:.1f} MiB")
            rows = [("first build", *timed_build(config, env))]
            rows.append(("no-op rebuild", *timed_build(config, env)))
            lines = data.read_text().splitlines()
            edited = json.loads(lines[len(lines) // 2])
            edited["body"]["messages"][0]["content"] += " edited"
            lines[len(lines) // 2] = json.dumps(edited)
            data.write_text("\n".join(lines) + "\n")
            rows.append(("one-line edit", *timed_build(config, env)))
            rng = random.Random(1)
            with open(data, "a") as f:
                for i in range(args.requests, args.requests + args.requests // 100):
                    f.write(json.dumps(request(i, rng)) + "\n")
            rows.append(("append 1%", *timed_build(config, env)))
            for name, seconds, rss, code in rows:
                print(
                    f"{name:>15}: {seconds:7.2f} s   peak RSS so far {rss:7.1f} MiB   exit {code}"
                )
            out = root / "out" / "big.jsonl"
            with open(out) as f:
                lines_out = sum(1 for _ in f)
            print(f"output: {lines_out:,} lines, {out.stat().st_size / 2**20:.1f} MiB")
    finally:
        sim.terminate()
        sim.wait()


if __name__ == "__main__":
    main()
