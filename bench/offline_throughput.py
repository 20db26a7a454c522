"""Throughput of the offline commands (split, tokens, plan) against a floor and the original tool.

Generates a chat corpus of --size-mb (default 50) and, with --big-mb (default 1024), a big
one made by repeating it with new custom_ids, in a temporary directory. Runs each command
in a fresh child process with an empty token cache directory (cold: as on a first run,
without the tokenizer's rank snapshot either) and again with the cache filled (warm), and
prints MB/s, CPU seconds and CPU/wall (user+sys of the whole process tree), and peak
memory: ru_maxrss of the largest process of the command's tree, and the peak sum of PSS
over the tree (sampled every 20 ms from /proc: the command plus its workers), taken from one
more run of the same kind: the timed runs are not sampled (sampling slows a run that uses
every core). The original tool runs right after each cold run, and the ratio of the two is
printed beside the cold figure.

Also measured on the small corpus:
- the floor: read + json.loads + tiktoken on every message, in one process, on one core;
- counting alone: tiktoken's encode_ordinary on the texts a count sees (no parsing), and
  gptbatch's count of them by words (gptbatch.inputs.tokens.words); each rate times the
  cores bounds a cold run that counts that way;
- the original tool, gpt-batch-splitter 1.0.1 (PyPI package gpt-batch-manager==1.0.1,
  which estimates len/4 and never tokenizes), installed into its own virtual environment
  under --venv-dir; skipped with a note if pip cannot reach the index;
- with --before REV, this repository's code at git revision REV (e.g. 92ee9ff), cold, each
  run interleaved with one of the current code's cold runs.

The load average is printed with every figure: other processes on the machine slow it.
gptbatch runs (this checkout's and --before's) use bytecode compiled beforehand into the
temporary directory (PYTHONPYCACHEPREFIX), as an installed package has its .pyc files and
as the original tool's virtual environment has its own.

    python bench/offline_throughput.py [--size-mb 50] [--big-mb 1024] [--before 92ee9ff]
                                       [--repeat 3] [--corpus FILE] [--only split]
                                       [--counters tiktoken,fastokens] [--skip-floor]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

LIMIT = "1900000"
ROOT = Path(__file__).resolve().parent.parent  # the checkout whose gptbatch is measured
_SYLLABLE_TEXT = "ka lo mi ne tor san vel dre qui om ash fen gli bru pha zen cor tis ul mar"
SYLLABLES = _SYLLABLE_TEXT.split()
_COMMON_TEXT = (
    "the of and to in is was for on are with as his they at be this from have or one had by "
    "word but not what all were we when your can said there use an each which she do how "
    "their if will up other about out many then them these so some her would make like him "
    "into time has look two more write go see number no way could people my than first water"
)
COMMON = _COMMON_TEXT.split()
SYSTEM_PROMPTS = [
    "You are a careful assistant that classifies customer reviews. Answer with one word: "
    "positive, negative or mixed. Consider sarcasm, hedging and comparisons with other "
    "products. If the review is not about a product, answer 'other'. " * 2,
    "You extract structured data. Return JSON with the keys name, date (ISO 8601), amount "
    "(a number in US dollars) and currency. Use null for anything the text does not state. "
    "Never invent values; never add keys.",
    "Summarise the following support ticket for an engineer in at most three sentences. "
    "Keep product names, error codes and version numbers exactly as written.",
]


def vocabulary(rng: random.Random) -> list[str]:
    """Common English words and 3,000 made-up words of 1-4 syllables (rare to tiktoken)."""
    made = ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(3000)]
    return COMMON * 20 + made


def paragraph(rng: random.Random, words: list[str], count: int) -> str:
    out = []
    for i in range(count):
        word = rng.choice(words)
        if i == 0 or out[-1].endswith("."):
            word = word.capitalize()
        roll = rng.random()
        if roll < 0.06:
            word += "."
        elif roll < 0.1:
            word += ","
        elif roll < 0.11:
            word = str(rng.randint(1, 99999))
        out.append(word)
    return " ".join(out) + "."


def chat_bodies(count: int, seed: int) -> list[str]:
    """JSON bodies of chat requests: a shared system prompt, one or two user turns."""
    rng = random.Random(seed)
    words = vocabulary(rng)
    bodies = []
    for _ in range(count):
        messages = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}]
        for turn in range(1 if rng.random() < 0.8 else 2):
            length = min(4000, max(5, int(rng.lognormvariate(5.3, 0.8))))
            messages.append({"role": "user", "content": paragraph(rng, words, length)})
            if turn == 0 and len(messages) == 2 and rng.random() < 0.2:
                messages.append({"role": "assistant", "content": paragraph(rng, words, 20)})
        body = {"model": "gpt-4o-mini", "messages": messages, "max_tokens": 200}
        bodies.append(json.dumps(body, ensure_ascii=False))
    return bodies


def line(custom_id: str, body: str) -> str:
    return (
        f'{{"custom_id": "{custom_id}", "method": "POST", "url": "/v1/chat/completions", '
        f'"body": {body}}}\n'
    )


def write_corpus(path: Path, megabytes: int, base: list[str]) -> int:
    """Lines of base bodies, repeated with new custom_ids, up to megabytes; the byte size."""
    target = megabytes * 1_000_000
    size = 0
    with path.open("w", encoding="utf-8") as f:
        round_ = 0
        while size < target:
            for i, body in enumerate(base):
                text = line(f"r{round_}-{i}", body)
                f.write(text)
                size += len(text.encode())
                if size >= target:
                    break
            round_ += 1
    return path.stat().st_size


def base_bodies(megabytes: int) -> list[str]:
    """Enough distinct bodies for a corpus of megabytes (about 2 KB each)."""
    return chat_bodies(max(100, megabytes * 1_000_000 // 2100), seed=1)


@dataclass(frozen=True)
class Run:
    """One measured child process (tree)."""

    wall: float
    cpu: float
    maxrss_mib: float
    tree_pss_mib: float
    code: int
    first_line: str


def _tree_pss(root: int) -> int:
    """Sum of PSS (KiB) of root and its descendants now."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
                children.setdefault(int(fields[1]), []).append(int(entry))
            except OSError:
                continue
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, ()))
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for text in f:
                    if text.startswith("Pss:"):
                        total += int(text.split()[1])
                        break
        except OSError:
            continue
    return total


# A fresh, small launcher per run: ru_maxrss of a forked child starts at its parent's size,
# so the command is started from this launcher, not from the (larger) benchmark process.
_LAUNCHER = """
import json, os, subprocess, sys
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
out, err = child.communicate()
usage = __import__("resource").getrusage(__import__("resource").RUSAGE_CHILDREN)
sys.stdout.buffer.write(out)
sys.stderr.buffer.write(err)
print(json.dumps([child.returncode, usage.ru_utime + usage.ru_stime, usage.ru_maxrss]))
"""


def measure(argv: list[str], env: dict[str, str], cwd: Path, *, sample: bool = False) -> Run:
    """Run argv: wall, CPU and ru_maxrss of its process tree; with sample, its peak PSS.

    Sampling /proc every 20 ms takes ~15% of a core: on 2 cores it slowed the multi-process
    runs (which use both) more than the one-process original (which leaves one free), so
    timed runs are not sampled and the PSS comes from a run of its own (with_memory).
    """
    started = time.perf_counter()
    launcher = subprocess.Popen(
        [sys.executable, "-c", _LAUNCHER, *argv],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    peak = [0]
    done = threading.Event()

    def sample_pss() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], _tree_pss(launcher.pid))

    sampler = threading.Thread(target=sample_pss, daemon=True)
    if sample:
        sampler.start()
    out, err = launcher.communicate()
    wall = time.perf_counter() - started
    done.set()
    if sample:
        sampler.join()
    lines = out.decode(errors="replace").splitlines()
    code, cpu, maxrss = json.loads(lines[-1])
    if code:
        sys.stderr.write(err.decode(errors="replace")[-2000:])
    return Run(wall, cpu, maxrss / 1024, peak[0] / 1024, code, (lines[:-1] or [""])[0])


def floor(path: Path) -> tuple[float, float]:
    """(seconds, CPU seconds) to read, json.loads and tokenize every message, in-process."""
    import tiktoken  # noqa: F401 - loaded before timing, as a warm process would have it

    from gptbatch.inputs.encodings import get_encoding

    enc = get_encoding("o200k_base")
    started, cpu = time.perf_counter(), time.process_time()
    tokens = 0
    with path.open("rb") as f:
        for raw in f:
            request = json.loads(raw)
            for message in request["body"]["messages"]:
                tokens += len(enc.encode_ordinary(message["content"])) + 4
    return time.perf_counter() - started, time.process_time() - cpu


def counting_alone(path: Path) -> tuple[float, float, float]:
    """(tiktoken seconds, by-words seconds, CPU seconds of both) on the texts a count sees.

    The texts are parsed beforehand, and a text is skipped where gptbatch's counting memo
    (gptbatch.inputs.tokens: texts of at most 8192 characters, 1024 at a time) would have it.
    tiktoken: encode_ordinary on each whole text, what gptbatch did before counting by
    words. By words: text_len as gptbatch counts now (gptbatch.inputs.tokens.words: each
    text the sum of its words' counts, each distinct word encoded once, from an empty memo).
    Either rate times the cores bounds a cold run that counts that way. Parsed a block of
    lines at a time, so memory stays small.
    """
    from gptbatch.inputs.encodings import get_encoding
    from gptbatch.inputs.tokens import words
    from gptbatch.inputs.tokens.text import text_len

    enc = get_encoding("o200k_base")
    words.clear()
    memo: set[str] = set()
    whole = by_words = cpu = 0.0
    with path.open("rb") as f:
        while block := f.readlines(8 << 20):
            texts = []
            for raw in block:
                for message in json.loads(raw)["body"]["messages"]:
                    text = message["content"]
                    if text in memo:
                        continue
                    if len(text) <= 8192:
                        if len(memo) >= 1024:
                            memo.clear()
                        memo.add(text)
                    texts.append(text)
            started, started_cpu = time.perf_counter(), time.process_time()
            expected = [len(enc.encode_ordinary(text)) for text in texts]
            middle = time.perf_counter()
            got = [text_len(enc, text)[0] for text in texts]
            whole += middle - started
            by_words += time.perf_counter() - middle
            cpu += time.process_time() - started_cpu
            assert got == expected, "counting by words differs from tiktoken"
    return whole, by_words, cpu


def original_tool(venv: Path) -> Path | None:
    """gpt-batch-splitter 1.0.1 in its own virtual environment; None if it cannot be had."""
    exe = venv / "bin" / "gpt-batch-splitter"
    if exe.exists():
        return exe
    print(f"# installing gpt-batch-manager==1.0.1 (gpt-batch-splitter) into {venv}")
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", "gpt-batch-manager==1.0.1"],
            check=True,
            capture_output=True,
            timeout=600,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        print(f"# the original tool is not available ({exc}); its column is skipped")
        return None
    return exe if exe.exists() else None


def before_source(rev: str, into: Path) -> Path:
    """This repository's gptbatch package at revision rev, unpacked under into."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "gptbatch"], check=True, capture_output=True
    ).stdout
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def compiled(env: dict[str, str], prefix: Path, trees: list[Path]) -> dict[str, str]:
    """env with bytecode for the measured trees, compiled beforehand under prefix.

    An installed gptbatch has its .pyc files (pip compiles them), as the original tool's
    virtual environment has; a checkout run with PYTHONDONTWRITEBYTECODE=1 (as on the shared
    machine) compiled every module from source on every run, ~30 ms of each start.
    """
    env = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(prefix)
    for tree in trees:
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree)], env=env, check=True)
    print(f"# measured trees compiled beforehand (PYTHONPYCACHEPREFIX={prefix})")
    return env


def best(argv: list[str], env: dict[str, str], cwd: Path, repeat: int) -> Run:
    """The fastest of repeat runs (the others were slowed by something else)."""
    return min((measure(argv, env, cwd) for _ in range(repeat)), key=lambda r: r.wall)


def fastest(runs: list[Run]) -> Run:
    return min(runs, key=lambda r: r.wall)


def with_memory(run: Run, argv: list[str], env: dict[str, str], cwd: Path) -> Run:
    """run, with the peak tree PSS of one more run of argv, sampled."""
    return replace(run, tree_pss_mib=measure(argv, env, cwd, sample=True).tree_pss_mib)


def report(label: str, size: int, run: Run) -> None:
    load = os.getloadavg()[0]
    ok = "" if run.code == 0 else f"  EXIT {run.code}"
    print(
        f"{label:<30} {size / 1e6 / run.wall:6.1f} MB/s  wall {run.wall:6.2f} s  "
        f"CPU {run.cpu:6.2f} s  CPU/wall {run.cpu / run.wall:4.2f}  "
        f"maxrss {run.maxrss_mib:4.0f} MiB  tree PSS "
        f"{f'{run.tree_pss_mib:4.0f}' if run.tree_pss_mib else '   -'} MiB  "
        f"load {load:4.1f}{ok}",
        flush=True,
    )


def commands(corpus: Path, work: Path) -> dict[str, list[str]]:
    config = work / f"{corpus.stem}.yaml"
    config.write_text(
        f"version: 1\ninputs: [{corpus}]\noutput_dir: {work / 'plan-out'}\n"
        "limits:\n  enqueued_tokens:\n    gpt-4o-mini: 2000000\n"
    )
    gptbatch = [sys.executable, "-m", "gptbatch"]
    return {
        "split": [*gptbatch, "split", LIMIT, str(corpus), "--out-dir", str(work / "shards")],
        "tokens": [*gptbatch, "tokens", str(corpus)],
        "plan": [*gptbatch, "plan", str(config)],
    }


def bench_corpus(
    corpus: Path,
    work: Path,
    env: dict[str, str],
    ours: dict[str, str],
    before: Path | None,
    orig: Path | None,
    repeat: int,
    only: list[str] | None = None,
    counters: list[str] | None = None,
) -> None:
    size = corpus.stat().st_size
    print(f"\n## {corpus.name}: {size / 1e6:,.0f} MB, {sum(1 for _ in corpus.open('rb')):,} lines")
    runs = [
        (f"{name} [{counter}]" if counter else name, argv, counter)
        for counter in counters or [""]
        for name, argv in commands(corpus, work).items()
        if not only or name in only
    ]
    orig_dir = work / "orig-shards"
    orig_dir.mkdir(exist_ok=True)
    originals: list[Run] = []
    for name, argv, counter in runs:
        cache = work / f"cache-{corpus.stem}-{name.replace(' ', '')}"
        # Our runs import this checkout's gptbatch (not whatever is installed); "auto" leaves
        # the choice of counter to gptbatch (fastokens only where it repays its load).
        base = {**ours, "PYTHONPATH": str(ROOT)}
        base.pop("GPTBATCH_COUNTER", None)
        if counter and counter != "auto":
            base["GPTBATCH_COUNTER"] = counter
        run_env = {**base, "GPTBATCH_CACHE_DIR": f"{cache}-0"}
        # Each cold run gets its own empty cache; the first one's is then the warm cache.
        # The code at --before runs cold too, each run right after one of ours, so both
        # meet the same load; with a cache of its own, a revision that has one writes it.
        # The original tool runs right after each cold run too, so that the ratio compares
        # runs that met the same load.
        cold, old, beside = [], [], []
        for n in range(repeat):
            cold.append(measure(argv, {**run_env, "GPTBATCH_CACHE_DIR": f"{cache}-{n}"}, work))
            if before is not None:
                old_env = {**base, "PYTHONPATH": str(before), "GPTBATCH_CACHE_DIR": f"{cache}-b{n}"}
                old.append(measure(argv, old_env, work))
            if orig is not None:
                beside.append(measure([str(orig), LIMIT, str(corpus)], env, orig_dir))
        memory_env = {**run_env, "GPTBATCH_CACHE_DIR": f"{cache}-m"}  # cold as well
        report(f"{name} (cold cache)", size, with_memory(fastest(cold), argv, memory_env, work))
        if beside:
            originals += beside
            ratios = sorted(o.wall / c.wall for o, c in zip(beside, cold, strict=True))
            print(
                f"  cold / original, runs side by side: best "
                f"{fastest(beside).wall / fastest(cold).wall:.2f}x, median "
                f"{ratios[len(ratios) // 2]:.2f}x (original best "
                f"{size / 1e6 / fastest(beside).wall:.1f} MB/s)",
                flush=True,
            )
        if old:
            report(f"{name} (before, cold)", size, fastest(old))
        warm = best(argv, run_env, work, repeat)
        report(f"{name} (warm cache)", size, with_memory(warm, argv, run_env, work))
    if orig is not None:
        orig_argv = [str(orig), LIMIT, str(corpus)]
        run = fastest(originals + [measure(orig_argv, env, orig_dir) for _ in range(repeat)])
        report("original gpt-batch-splitter", size, with_memory(run, orig_argv, env, orig_dir))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=50)
    parser.add_argument("--big-mb", type=int, default=1024, help="0 to skip the big corpus")
    parser.add_argument("--corpus", type=Path, help="measure this file instead of generating")
    parser.add_argument("--before", metavar="REV", help="also run the code at git revision REV")
    parser.add_argument("--repeat", type=int, default=1, help="report the fastest of N runs")
    parser.add_argument(
        "--only", help="comma-separated commands to run (split, tokens, plan); default all"
    )
    parser.add_argument(
        "--counters",
        help="comma-separated GPTBATCH_COUNTER values (tiktoken, fastokens; auto: unset, "
        "gptbatch chooses), each run in turn",
    )
    parser.add_argument(
        "--skip-floor", action="store_true", help="skip the in-process floor and tiktoken-alone"
    )
    parser.add_argument(
        "--venv-dir",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        / "gptbatch-bench"
        / "gpt-batch-manager-1.0.1",
    )
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))  # the floors, measured here, import this checkout's gptbatch
    print("# " + shlex.join([sys.executable, *sys.argv]))
    print(f"# {os.cpu_count()} cores, python {sys.version.split()[0]}, split LIMIT {LIMIT}")
    print(f"# gptbatch measured from {ROOT}")
    orig = original_tool(args.venv_dir)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    with tempfile.TemporaryDirectory(prefix="gptbatch-bench-") as tmp:
        work = Path(tmp)
        before = before_source(args.before, work / "before") if args.before else None
        ours = compiled(env, work / "pycache", [ROOT / "gptbatch", *([before] if before else [])])
        if args.corpus:
            corpora = [args.corpus]
        else:
            base = base_bodies(args.size_mb)
            corpora = [work / f"chat-{args.size_mb}mb.jsonl"]
            write_corpus(corpora[0], args.size_mb, base)
            if args.big_mb:
                corpora.append(work / f"chat-{args.big_mb}mb.jsonl")
                write_corpus(corpora[1], args.big_mb, base)
        small = corpora[0]
        only = args.only.split(",") if args.only else None
        counters = args.counters.split(",") if args.counters else None

        def bench_all() -> None:
            for n, corpus in enumerate(corpora):
                bench_corpus(
                    corpus,
                    work,
                    env,
                    ours,
                    before if n == 0 else None,
                    orig,
                    args.repeat,
                    only,
                    counters,
                )

        if args.skip_floor:
            bench_all()
            return
        seconds, cpu = floor(small)
        size = small.stat().st_size
        print(
            f"\n# floor on {small.name} (read + json.loads + tiktoken encode_ordinary, one "
            f"core, in-process, encoding preloaded): {size / 1e6 / seconds:.1f} MB/s, "
            f"{seconds:.2f} s, CPU/wall {cpu / seconds:.2f}"
        )
        whole, by_words, _ = counting_alone(small)
        cores = os.cpu_count() or 1
        print(
            f"# counting alone on {small.name}, one core (the texts a count sees, parsed "
            f"beforehand): tiktoken on whole texts {size / 1e6 / whole:.1f} MB/s ({whole:.2f} s), "
            f"by words {size / 1e6 / by_words:.1f} MB/s ({by_words:.2f} s); the cold ceiling "
            f"on {cores} cores with nothing else done: {size / 1e6 / whole * cores:.1f} and "
            f"{size / 1e6 / by_words * cores:.1f} MB/s"
        )
        bench_all()
    print(f"\n(this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB)")


if __name__ == "__main__":
    main()
