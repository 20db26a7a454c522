"""Benchmark `gptbatch build` at scale against the simulator; prints figures.

    python bench/build_scale.py [--requests 100000] [--noop-requests 1000000]

Measures, each as a separate `gptbatch build` process (wall time, CPU time, its peak RSS,
API calls the simulator's journal saw, state size): the first build, a no-op rebuild, a
rebuild after a one-line edit, a rebuild after appending 1% more requests; then a no-op
rebuild of a state of --noop-requests requests built synthetically (rows inserted into a
store directly). The simulator runs in its own process on a fast clock, counting with
fastokens (--fast-counter: tiktoken's counts, faster); its CPU during each build is printed
too, as both share the machine's cores. Builds count with a fresh token cache unless
--warm-cache is given.

    python bench/build_scale.py --requests 1000000 --noop-requests 0 --first-only

The first build at 1M (the issue's target: <= 150 s, peak RSS <= 500 MB, 2 cores).

    python bench/build_scale.py --skip-scale --noop-requests 0 --edit-requests 10000,100000,1000000

Measures a one-line edit at each size (--edit-requests; with --commands, then `status
--explain`, `plan` and a build of the project copied to another directory): the input's
requests are read by gptbatch's own sync in this process (keys, token counts, the input's
state exactly as a build leaves it), every request then gets an ok result by SQL (what a
first build against the simulator would collect, without the simulator holding a million
uploads), a settling build writes the outputs, then a no-op rebuild and a rebuild after
editing one line in the middle (that request goes to the simulator).
Prints edit@10k, edit@100k and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
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


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_simulator(validating: float = 6.0) -> tuple[subprocess.Popen[str], str, list[int]]:
    """The simulator on a fast clock; the list holds how many API calls its journal printed."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gptbatch",
            "simulator",
            "--port",
            "0",
            "--time-scale",
            # Fast, but not so fast that result files expire before they are fetched: at
            # 100000 the 30 days an output file lives were 26 s, and a 1M build (slower
            # than that between a batch's end and its download) lost its results and sent
            # them again. At 1000 they are 43 minutes; a batch still runs in milliseconds.
            "1000",
            "--tokens-per-second",
            "5000000",
            "--total-tokens-per-second",
            "0",
            # The same counts as tiktoken's, faster (the "fast simulator"): the
            # simulator shares the machine's cores with the build it serves.
            "--fast-counter",
            # batches.create answers at once and the input is read meanwhile, as the real
            # API validates after answering: the build's next shard overlaps that reading.
            "--background-validation",
            # Validation lasts 6 s here (100 simulated minutes; the real API takes minutes
            # for a large file). The simulator reads a wave's input files (four of 46k
            # requests at 1M) one after another, 1-2 s each: where validation ends before
            # the reading does, it holds its lock waiting for it, and every upload and
            # create behind it waits too (50 s at 1M with 5 ms, 7-10 s per wave with 3 s).
            "--validating-seconds",
            str(round(validating * 1000)),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    url = line.rsplit(" ", 1)[-1].strip()
    calls = [0]
    stream = proc.stdout

    def count() -> None:
        for text in stream:  # one line per API call ("POST /v1/files -> 200")
            if " -> " in text:
                calls[0] += 1

    threading.Thread(target=count, daemon=True).start()
    return proc, url, calls


def tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# Run from a small parent: a child forked from this (large) process counts its pages. It
# prints the build's peak RSS (KiB) and CPU seconds (user + system): on a shared machine
# the CPU time moves far less with other load than the wall time does.
WRAPPER = (
    "import resource, subprocess, sys; code = subprocess.call(sys.argv[1:],"
    " stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL);"
    " u = resource.getrusage(resource.RUSAGE_CHILDREN);"
    " print(u.ru_maxrss, u.ru_utime + u.ru_stime); sys.exit(code)"
)


# The simulator's process id, set by main: its CPU during a build is printed beside the
# build's own (both compete for the same cores).
SIMULATOR_PID = [0]


def peak_rss_build(config: Path, env: dict[str, str], calls: list[int]) -> dict[str, object]:
    """One `gptbatch build` process: seconds, CPU seconds, peak RSS, API calls, exit code,
    and the CPU seconds the simulator used meanwhile."""
    argv = [sys.executable, "-m", "gptbatch", "build", str(config)]
    before = calls[0]
    sim_before = process_cpu(SIMULATOR_PID[0])
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", WRAPPER, *argv], env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    time.sleep(0.3)  # let the journal reader catch up
    if done.returncode != 0:
        print(done.stderr[-2000:], file=sys.stderr)
    rss, cpu = done.stdout.split()[-2:]
    return {
        "cmd": "gptbatch build " + str(config),
        "seconds": seconds,
        "cpu": float(cpu),
        "rss": int(rss) / 1024,
        "calls": calls[0] - before,
        "code": done.returncode,
        "sim_cpu": process_cpu(SIMULATOR_PID[0]) - sim_before,
        "load": os.getloadavg()[0],
    }


def write_config(root: Path) -> Path:
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
    return config


def show(name: str, row: dict[str, object], root: Path) -> None:
    state = tree_size(root / "out" / ".gptbatch") / 2**20
    print(
        f"{name:>15}: {row['seconds']:7.2f} s  cpu {row['cpu']:6.2f} s  "
        f"peak RSS {row['rss']:7.1f} MiB  "
        f"API calls {row['calls']:5}  state {state:7.1f} MiB  exit {row['code']}  "
        f"simulator cpu {row['sim_cpu']:6.2f} s  load {row['load']:.2f}  "
        f"[{row['cmd']}]",
        flush=True,
    )


def scale_100k(
    n: int, env: dict[str, str], calls: list[int], keep: Path | None, first_only: bool = False
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        (root / "inputs").mkdir()
        data = root / "inputs" / "big.jsonl"
        write_input(data, n)
        config = write_config(root)
        print(f"input: {n:,} requests, {data.stat().st_size / 2**20:.1f} MiB", flush=True)
        show("first build", peak_rss_build(config, env, calls), root)
        if first_only:
            report_outputs(root)
            return
        show("no-op rebuild", peak_rss_build(config, env, calls), root)
        lines = data.read_text().splitlines()
        edited = json.loads(lines[len(lines) // 2])
        edited["body"]["messages"][0]["content"] += " edited"
        lines[len(lines) // 2] = json.dumps(edited)
        data.write_text("\n".join(lines) + "\n")
        del lines
        show("one-line edit", peak_rss_build(config, env, calls), root)
        rng = random.Random(1)
        with open(data, "a") as f:
            for i in range(n, n + n // 100):
                f.write(json.dumps(request(i, rng)) + "\n")
        show("append 1%", peak_rss_build(config, env, calls), root)
        report_outputs(root)


def report_outputs(root: Path) -> None:
    """The outputs' lines and size beside the state's size (the issue: state <= outputs)."""
    out = root / "out" / "big.jsonl"
    with open(out) as f:
        lines_out = sum(1 for _ in f)
    size = out.stat().st_size / 2**20
    state = tree_size(root / "out" / ".gptbatch") / 2**20
    print(f"output: {lines_out:,} lines, {size:.1f} MiB; state {state:.1f} MiB", flush=True)


def synthetic_state(root: Path, n: int) -> Path:
    """A project whose state already holds n requests, all built (rows inserted directly)."""
    import hashlib
    import sqlite3

    from gptbatch.config.spec import config_fingerprint, load_spec
    from gptbatch.state.rows import REQUEST_COLUMNS
    from gptbatch.state.store import Store

    (root / "inputs").mkdir()
    data = root / "inputs" / "big.jsonl"
    config = write_config(root)
    with open(data, "w") as f:
        for i in range(n):
            f.write(json.dumps(request(i, random.Random(i)) | {"body": {}}) + "\n")
    spec = load_spec(str(config))
    store = Store(root / "out" / ".gptbatch")
    store.close()
    db = sqlite3.connect(root / "out" / ".gptbatch" / "state.db")
    st = data.stat()

    def rows() -> object:
        for i in range(n):
            key = hashlib.sha256(str(i).encode()).hexdigest()
            yield (str(data), i, i + 1, 0, 1, key, f"req-{i}", "gpt-4o-mini",
                   "/v1/chat/completions", 30, 200, 1, 0.0, "new", None)  # fmt: skip

    def results() -> object:
        for i in range(n):
            key = hashlib.sha256(str(i).encode()).hexdigest()
            body = {"model": "gpt-4o-mini", "usage": {"prompt_tokens": 30, "completion_tokens": 9}}
            line = json.dumps({"custom_id": f"req-{i}", "response": {"status_code": 200,
                               "body": body}})  # fmt: skip
            yield key, "ok", 1, line, None, "batch_x", 1.0

    with db:
        db.executemany(
            f"INSERT INTO requests({REQUEST_COLUMNS}) VALUES ({','.join('?' * 15)})", rows()
        )
        db.executemany(
            "INSERT INTO results(key, state, attempts, line, error, batch_id, updated_at)"
            " VALUES (?,?,?,?,?,?,?)",
            results(),
        )
        # Results inserted by SQL: their requests' outcomes and the results counter are set
        # here, as write_results does (m011: no per-row triggers).
        db.execute("UPDATE requests SET done=1, result_version=NULL")
        db.execute("UPDATE counters SET value=value+? WHERE name='results'", (n,))
        db.execute(
            "INSERT INTO inputs VALUES (?,?,?,?,?,?,?)",
            (str(data), st.st_size, st.st_mtime_ns, "x", config_fingerprint(spec), n, 1.0),
        )
    db.close()
    return config


def scale_1m(n: int, env: dict[str, str], calls: list[int]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = synthetic_state(root, n)
        print(f"synthetic state: {n:,} requests, all built", flush=True)
        show("settling build", peak_rss_build(config, env, calls), root)
        show("no-op rebuild", peak_rss_build(config, env, calls), root)


def built_state(root: Path, n: int) -> Path:
    """A project of n requests read by gptbatch's sync and given ok results by SQL."""
    import sqlite3

    from gptbatch.config.spec import load_spec
    from gptbatch.engine.sync import sync_inputs
    from gptbatch.report import NullReporter
    from gptbatch.state.store import Store

    (root / "inputs").mkdir()
    write_input(root / "inputs" / "big.jsonl", n)
    config = write_config(root)
    spec = load_spec(str(config))
    store = Store(root / "out" / ".gptbatch")
    try:
        sync_inputs(spec, store, NullReporter())
    finally:
        store.close()
    db = sqlite3.connect(root / "out" / ".gptbatch" / "state.db")
    with db:  # version -1-ordinal: unique, never a results counter value (as m004 does)
        db.execute(
            "INSERT INTO results(key, state, attempts, line, batch_id, updated_at, version)"
            " SELECT key, 'ok', 1, json_object('custom_id', custom_id, 'response',"
            " json_object('status_code', 200, 'body', json_object('model', 'gpt-4o-mini',"
            " 'usage', json_object('prompt_tokens', tokens, 'completion_tokens', 9)))),"
            " 'batch_x', 1.0, -1-ordinal FROM requests"
        )
        # the outcomes write_results would set (m011: no per-row triggers)
        db.execute("UPDATE requests SET done=1, result_version=-1-ordinal")
        db.execute("UPDATE counters SET value=value+(SELECT count(*) FROM results)"
                   " WHERE name='results'")  # fmt: skip
    db.close()
    return config


def edit_middle_line(data: Path) -> None:
    """Append a word to the content of the request in the middle of the file, in place."""
    size = data.stat().st_size
    with open(data, "r+b") as f:
        f.seek(size // 2)
        f.readline()
        start = f.tell()
        line = f.readline()
        rest = f.read()
        edited = json.loads(line)
        edited["body"]["messages"][0]["content"] += " edited"
        f.seek(start)
        f.write(json.dumps(edited).encode() + b"\n" + rest)
        f.truncate()


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of one `gptbatch ...` process (and its children)."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", WRAPPER, sys.executable, "-m", "gptbatch", *argv],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        print(done.stderr[-2000:], file=sys.stderr)
    return time.perf_counter() - start, float(done.stdout.split()[-1])


def other_commands(root: Path, config: Path, env: dict[str, str], calls: list[int]) -> None:
    """After the edit: status --explain and plan on the built project, then the project
    copied to another directory (`cp -a`) and built there (its inputs at new paths)."""
    import shutil

    for argv in (["status", "--explain"], ["plan"]):
        wall, cpu = timed([*argv, str(config)], env)
        print(f"{' '.join(argv):>15}: {wall:7.2f} s  cpu {cpu:6.2f} s", flush=True)
    copy = root.with_name(root.name + "-copy")
    start = time.perf_counter()
    shutil.copytree(root, copy)  # copy2: mtimes kept, other inodes and paths
    print(f"  copied in {time.perf_counter() - start:.1f} s", flush=True)
    try:
        show("copied, build", peak_rss_build(copy / "batch.yaml", env, calls), copy)
    finally:
        shutil.rmtree(copy)


def scale_edit(
    sizes: list[int], env: dict[str, str], calls: list[int], commands: bool = False
) -> None:
    edits: dict[int, float] = {}
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            start = time.perf_counter()
            config = built_state(root, n)
            print(
                f"state of {n:,} requests read by sync, results by SQL:"
                f" {time.perf_counter() - start:.1f} s  load {os.getloadavg()[0]:.2f}",
                flush=True,
            )
            show("settling build", peak_rss_build(config, env, calls), root)
            show("no-op rebuild", peak_rss_build(config, env, calls), root)
            edit_middle_line(root / "inputs" / "big.jsonl")
            row = peak_rss_build(config, env, calls)
            show(f"edit@{n:,}", row, root)
            print(f"  load {os.getloadavg()[0]:.2f}", flush=True)
            edits[n] = float(row["seconds"])  # type: ignore[arg-type]
            if commands:
                other_commands(root, config, env, calls)
    for n, seconds in edits.items():
        print(f"edit@{n:,}: {seconds:.2f} s", flush=True)
    if 10_000 in edits and 100_000 in edits:
        print(f"edit@100k / edit@10k: {edits[100_000] / edits[10_000]:.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--noop-requests", type=int, default=1_000_000, help="0: skip")
    parser.add_argument("--skip-scale", action="store_true", help="only the large no-op")
    parser.add_argument(
        "--first-only", action="store_true", help="only the first build (e.g. --requests 1000000)"
    )
    parser.add_argument("--keep", type=Path, help="build the 100k project here and keep it")
    parser.add_argument(
        "--commands",
        action="store_true",
        help="after each edit: status --explain, plan, and a build of the project copied",
    )
    parser.add_argument(
        "--edit-requests", default="", help="sizes for the one-line edit, e.g. 10000,100000"
    )
    parser.add_argument(
        "--warm-cache",
        action="store_true",
        help="use the user's token-count cache (else a fresh one: a first build counts every"
        " request, as it does for a project never read before)",
    )
    parser.add_argument(
        "--validating-seconds",
        type=float,
        default=6.0,
        help="how long the simulator's validation lasts, in real seconds (default 6)",
    )
    args = parser.parse_args()
    sim, url, calls = start_simulator(args.validating_seconds)
    SIMULATOR_PID[0] = sim.pid
    env = {**os.environ, "OPENAI_BASE_URL": url, "OPENAI_API_KEY": "sk-bench"}
    cache = None if args.warm_cache else tempfile.TemporaryDirectory(prefix="bench-token-cache-")
    if cache is not None:
        # The same inputs are generated every run: a shared cache would hold their counts
        # from the last run, and the "first" build would count nothing.
        env["GPTBATCH_CACHE_DIR"] = cache.name
    try:
        if not args.skip_scale:
            scale_100k(args.requests, env, calls, args.keep, args.first_only)
        if args.noop_requests:
            scale_1m(args.noop_requests, env, calls)
        if args.edit_requests:
            sizes = [int(x) for x in args.edit_requests.split(",")]
            scale_edit(sizes, env, calls, args.commands)
    finally:
        sim.terminate()
        sim.wait()
        if cache is not None:
            cache.cleanup()


if __name__ == "__main__":
    main()
