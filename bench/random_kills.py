"""Kill `gptbatch build` with SIGKILL at random moments, many times, then finish; print figures.

    python bench/random_kills.py [--kills 100] [--requests 2000] [--seed 0]

One long build (REQUESTS requests in batches of 10, up to three batches in flight, against
the simulator on a slowish clock) is started, killed a random 0..MOST seconds after its
first API call, and restarted, KILLS times; then it runs to completion. Prints the kills
that landed, duplicates found (requests the simulator billed more than once), results
lost (requests without a result in the output, or a result line that is not whole and in
input order) and the wall time. The figures are in docs/reliability.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from gptbatch.simulator import SimConfig, Simulator, request_digest


def request(i: int) -> dict:
    text = f"r{i:05d}: " + "word " * 20
    return {
        "custom_id": f"r{i:05d}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]},
    }


def write_project(root: Path, n: int) -> tuple[Path, list[dict]]:
    reqs = [request(i) for i in range(n)]
    (root / "inputs").mkdir(parents=True)
    with open(root / "inputs" / "requests.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in reqs)
    config = root / "batch.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "version": 1,
                "inputs": ["inputs/requests.jsonl"],
                "output_dir": "out",
                "project": "bench-random-kills",
                "limits": {
                    "enqueued_tokens": 1000,
                    "safety_margin": 0,
                    "max_requests_per_batch": 10,
                },
                "polling": {"initial_seconds": 0.02, "max_seconds": 0.2, "factor": 1.5},
            },
            sort_keys=False,
        )
    )
    return config, reqs


def build(config: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "gptbatch", "build", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def lost_results(out: Path, reqs: list[dict]) -> int:
    """Requests with no whole result line in the output (or with one out of input order)."""
    by_id = {r["custom_id"]: r for r in reqs}
    found: list[str] = []
    if out.exists():
        for raw in out.read_text().splitlines():
            try:
                line = json.loads(raw)
                req = by_id[line["custom_id"]]
            except (ValueError, KeyError):
                continue
            if line["response"]["status_code"] == 200 and request_digest(req["body"]) in json.dumps(
                line["response"]["body"]
            ):
                found.append(line["custom_id"])
    in_order = found == [c for c in by_id if c in set(found)]
    return len(reqs) - len(set(found)) if in_order else len(reqs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--time-scale", type=float, default=20.0)
    parser.add_argument("--most", type=float, default=1.0, help="latest kill, s after 1st call")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory() as tmp,
        Simulator(SimConfig.fast(time_scale=args.time_scale)) as sim,
    ):
        # A killed build resets its connections; the server's default handler prints each.
        sim._httpd.handle_error = lambda request, address: None  # type: ignore[method-assign]
        root = Path(tmp)
        config, reqs = write_project(root, args.requests)
        env = {
            **os.environ,
            "OPENAI_BASE_URL": sim.base_url,
            "OPENAI_API_KEY": "sk-bench",
            "GPTBATCH_LOCK_DIR": str(root / "locks"),
        }
        landed = 0
        for _ in range(args.kills):
            calls = len(sim.journal.calls)
            proc = build(config, env)
            deadline = time.monotonic() + 60
            while len(sim.journal.calls) <= calls and proc.poll() is None:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, args.most))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                landed += 1
            proc.wait()
        before_final = len(sim.journal.billed)
        final = subprocess.run(
            [sys.executable, "-m", "gptbatch", "build", str(config)],
            env=env,
            capture_output=True,
            text=True,
        )
        counts = sim.journal.billed_counts()
        duplicates = sum(n - 1 for n in counts.values() if n > 1)
        lost = lost_results(root / "out" / "requests.jsonl", reqs)
        temps = [p for p in (root / "out").rglob(".*.tmp")]
        batches = len(sim.service.batches())
    wall = time.monotonic() - started
    print(f"requests:          {args.requests}")
    print(f"kills:             {landed} of {args.kills} landed (seed {args.seed})")
    print(f"billed before the final run: {before_final}")
    print(f"final run exit:    {final.returncode}")
    print(f"batches created:   {batches}")
    print(f"duplicates found:  {duplicates}")
    print(f"results lost:      {lost}")
    print(f"temp files left:   {len(temps)}")
    print(f"wall time:         {wall:.1f} s")
    ok = final.returncode == 0 and duplicates == 0 and lost == 0 and not temps
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
