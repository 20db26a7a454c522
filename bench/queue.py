"""Benchmark queue occupancy: how full `gptbatch build` keeps the enqueued-token queue.

    python bench/queue.py [--requests 600] [--limit 30000] [--pipelines 1,2,3,4,8,default]
                          [--before REF] [--time-scale 10] [--repeat 1] [--projects 1]

The simulator holds a batch's tokens from creation to completion (hold_from_creation) and
processes each batch at its own rate (total_tokens_per_second=0: no shared cap), so
splitting work into smaller batches only helps if it keeps the queue full. Each build runs
as a separate `gptbatch build` process polling every 5 simulated seconds. The simulated
clock runs --time-scale times faster than ours, so the build's own work between calls
(tens of milliseconds of SQLite commits and file writes) counts that many times over: at
50 it costs about a second of simulated time per poll, far more than against the real
API, whose batches run for minutes to hours; 10 keeps it small and a run under 6 minutes.
Which batch fits which room depends on such timing, so occupancy varies by about 0.01
between runs: --repeat N reports the median and range. `--before REF`
also runs the engine of a git revision (e.g. the commit before pipelining) on the same
work. Figures, all from the simulator's journal:

  occupancy  time-averaged enqueued tokens (the simulator's own count) / limit, from the
             first batch created to the last one finished (--hold-in-progress: tokens are
             held from in_progress only, so validation after each turnover counts as idle)
  makespan   that span, in simulated seconds
  calls      API calls per batch and per simulated hour (uploads, creates, polls, downloads)
  refused    batches failed with token_limit_exceeded
  turnover   mean simulated seconds from a batch completing to the next batch's creation

--projects N starts N projects (each --requests requests, its own project id and output
directory) as N `gptbatch build` processes at once on one simulator and one limit: the
figures are for the queue they share, and `shared` is the fraction of the span in which
more than one project held tokens.
"""

from __future__ import annotations

import os
import sys

# Run as a script, this file's directory comes first on sys.path, and this file's name
# would shadow the standard library's `queue` (which the HTTP client imports).
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import subprocess  # noqa: E402
import tarfile  # noqa: E402
import tempfile  # noqa: E402
from io import BytesIO  # noqa: E402
from pathlib import Path  # noqa: E402

import yaml  # noqa: E402

from gptbatch.config.spec import Limits  # noqa: E402
from gptbatch.simulator import SimConfig, Simulator  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODEL = "gpt-4o-mini"
WORDS = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa")
TERMINAL = ("completed", "failed", "expired", "cancelled")
# What a batch.yaml without limits.pipeline gets.
DEFAULT_PIPELINE = next(f.default for f in dataclasses.fields(Limits) if f.name == "pipeline")


def requests(n: int, seed: int = 0) -> list[dict]:
    """n chat requests of ~250-550 prompt tokens (~400 on average)."""
    rng = random.Random(seed)
    return [
        {
            "custom_id": f"req-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": MODEL,
                "messages": [
                    {
                        "role": "user",
                        "content": " ".join(
                            rng.choice(WORDS) for _ in range(rng.randint(120, 270))
                        ),
                    }
                ],
            },
        }
        for i in range(n)
    ]


def sim_config(args: argparse.Namespace) -> SimConfig:
    return SimConfig(
        time_scale=args.time_scale,
        tokens_per_second=args.rate,
        total_tokens_per_second=0.0,
        validating_seconds=5.0,
        finalizing_seconds=5.0,
        token_limits={MODEL: args.limit},
        hold_from_creation=not args.hold_in_progress,
    )


def project(root: Path, reqs: list[dict], args: argparse.Namespace, pipeline: int | None) -> Path:
    """A project directory with its inputs and batch.yaml; returns the config's path."""
    (root / "inputs").mkdir(parents=True)
    with open(root / "inputs" / "requests.jsonl", "w") as f:
        for r in reqs:
            f.write(json.dumps(r) + "\n")
    poll = 5.0 / args.time_scale  # 5 simulated seconds
    limits: dict = {"enqueued_tokens": args.limit, "safety_margin": args.margin}
    if pipeline is not None:
        limits["pipeline"] = pipeline
    doc = {
        "version": 1,
        "inputs": ["inputs/requests.jsonl"],
        "output_dir": "out",
        "project": f"bench-{root.name}",
        "limits": limits,
        "polling": {"initial_seconds": poll, "max_seconds": poll, "factor": 1},
    }
    config = root / "batch.yaml"
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    return config


def measure(sim: Simulator, limit: int, holding: tuple[str, ...]) -> dict:
    """Occupancy, makespan, calls and refusals from the simulator's journal."""
    weight, owner = {}, {}
    for b in sim.service.batches():
        owner[b["id"]] = (b["metadata"] or {}).get("gptbatch_project", "")
        data = sim.service.file_content(b["input_file_id"])
        weight[b["id"]] = sum(
            sim.service.prompt_tokens(r["url"], r["body"])
            for r in (json.loads(line) for line in data.splitlines() if line.strip())
        )
    events = sorted(sim.journal.events, key=lambda e: e.at)
    start, end = events[0].at, events[-1].at
    status: dict[str, str] = {}
    area, held, last, shared = 0.0, 0, start, 0.0
    flying: dict[str, int] = {}  # project -> batches in flight
    for e in events:
        area += held * (e.at - last)
        if sum(1 for n in flying.values() if n) > 1:
            shared += e.at - last
        last = e.at
        before = status.get(e.batch_id)
        status[e.batch_id] = e.status
        was = before is not None and before in holding
        now = e.status in holding
        held += weight[e.batch_id] * (int(now) - int(was))
        who = owner[e.batch_id]
        was_flying = before is not None and before not in TERMINAL
        flying[who] = flying.get(who, 0) + int(e.status not in TERMINAL) - int(was_flying)
    span = max(end - start, 1e-9)
    # Turnover: from a batch completing to the next batch created (while any are still made).
    created = sorted(e.at for e in events if e.status == "validating")
    gaps = []
    for e in events:
        if e.status == "completed":
            later = [t for t in created if t >= e.at]
            if later:
                gaps.append(later[0] - e.at)
    batches = sim.service.batches()
    refused = sum(
        1
        for b in batches
        if b["status"] == "failed"
        and any(x["code"] == "token_limit_exceeded" for x in (b["errors"] or {}).get("data", []))
    )
    calls = len(sim.journal.calls)
    return {
        "occupancy": area / (limit * span),
        "makespan": span,
        "shared": shared / span,
        "turnover": sum(gaps) / max(1, len(gaps)),
        "batches": len(batches),
        "refused": refused,
        "calls_per_batch": calls / max(1, len(batches)),
        "calls_per_hour": calls / (span / 3600),
        "billed_twice": sum(1 for v in sim.journal.billed_counts().values() if v > 1),
    }


def run(args: argparse.Namespace, pipeline: int | None, code: Path) -> dict:
    """One measured run: args.projects builds at once on one simulator."""
    with tempfile.TemporaryDirectory() as tmp, Simulator(sim_config(args)) as sim:
        configs = []
        for i in range(args.projects):
            reqs = requests(args.requests, seed=i)
            if i:
                for r in reqs:
                    r["custom_id"] = f"p{i}-{r['custom_id']}"
            configs.append(project(Path(tmp) / f"p{i}", reqs, args, pipeline))
        sim.service.prompt_tokens("/v1/chat/completions", reqs[0]["body"])  # load the tokenizer
        env = {
            **os.environ,
            "OPENAI_BASE_URL": sim.base_url,
            "OPENAI_API_KEY": "sk-bench",
            "PYTHONPATH": str(code),
        }
        builds = [
            subprocess.Popen(
                [sys.executable, "-m", "gptbatch", "build", str(config)],
                env=env,
                cwd=code,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for config in configs
        ]
        for build in builds:
            _, err = build.communicate()
            if build.returncode != 0:
                raise SystemExit(f"build failed ({build.returncode}):\n{err[-2000:]}")
        holding = ("in_progress", "finalizing", "cancelling")
        return measure(
            sim, args.limit, holding + (() if args.hold_in_progress else ("validating",))
        )


def checkout(ref: str, into: Path) -> Path:
    """The gptbatch package of a git revision, extracted under `into`."""
    data = subprocess.run(
        ["git", "archive", "--format=tar", ref, "gptbatch"], cwd=REPO, capture_output=True
    ).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--limit", type=int, default=30_000)
    parser.add_argument("--margin", type=float, default=0.05)
    parser.add_argument("--rate", type=float, default=50.0, help="tokens/s of one batch")
    parser.add_argument(
        "--hold-in-progress",
        action="store_true",
        help="the simulator holds tokens from in_progress, not from creation",
    )
    parser.add_argument("--time-scale", type=float, default=10.0)
    parser.add_argument(
        "--pipelines", default="1,2,3,4,8", help='limits.pipeline per row; "default": none set'
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per row (median shown)")
    parser.add_argument("--before", help="also run this git revision's engine, its defaults")
    parser.add_argument(
        "--projects", type=int, default=1, help="builds started at once on one limit"
    )
    args = parser.parse_args()
    rows: list[tuple[str, list[dict]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.before:
            code = checkout(args.before, Path(tmp))
            runs = [run(args, None, code) for _ in range(args.repeat)]
            rows.append((f"{args.before} (its defaults)", runs))
        for x in args.pipelines.split(","):
            # "default": no limits.pipeline in batch.yaml, as a user's config has none
            k = None if x == "default" else int(x)
            name = f"pipeline k={k}" if k is not None else f"default (k={DEFAULT_PIPELINE})"
            rows.append((name, [run(args, k, REPO) for _ in range(args.repeat)]))
    print(
        f"{args.requests} chat requests, limit {args.limit:,} tokens, margin {args.margin}, "
        f"{args.rate:g} tokens/s per batch, polling every 5 simulated s, time scale "
        f"{args.time_scale:g}, {args.repeat} run(s) per row (median, range), tokens held from "
        + ("in_progress" if args.hold_in_progress else "creation")
        + (f", {args.projects} projects at once on the limit" if args.projects > 1 else "")
    )
    print(
        f"{'run':<28} {'occupancy':>9} {'range':>13} {'makespan s':>10} {'batches':>7} "
        f"{'refused':>7} {'calls/batch':>11} {'calls/hour':>10} {'shared':>6} {'turnover s':>10}"
    )
    for name, runs in rows:
        runs.sort(key=lambda m: m["occupancy"])
        m = runs[len(runs) // 2]
        spread = f"{runs[0]['occupancy']:.3f}-{runs[-1]['occupancy']:.3f}"
        print(
            f"{name:<28} {m['occupancy']:>9.3f} {spread:>13} {m['makespan']:>10,.0f} "
            f"{m['batches']:>7} {sum(r['refused'] for r in runs):>7} "
            f"{m['calls_per_batch']:>11.1f} {m['calls_per_hour']:>10,.0f} {m['shared']:>6.2f} "
            f"{m['turnover']:>10.1f}"
            + ("  BILLED TWICE" if any(r["billed_twice"] for r in runs) else "")
        )


if __name__ == "__main__":
    main()
