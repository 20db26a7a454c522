"""Load time of each exact counter in a fresh process, and rs-bpe's counts beside tiktoken's.

    python bench/counter_load.py [--repeat 5] [--corpus FILE]

Why: a cold split loads its counter before its workers fork, so the load is serial time:
tiktoken's o200k_base, built as gptbatch builds it on a first run (no rank snapshot), is
~0.25-0.3 s of a ~1.5 s cold split of 50 MB on 2 cores. This prints, per encoding, the load
(import and tables) of tiktoken, of fastokens (the `fast` extra) and of rs-bpe (PyPI rs-bpe,
not a dependency of gptbatch), each in its own process, best of --repeat, and the time of
one count of a short word (what the words' memo asks for, gptbatch.inputs.tokens.words).

With --corpus (a JSONL of chat requests, e.g. the one bench/offline_throughput.py writes),
also how many of its distinct space-separated words (alone and after a space) and of its
texts (the first 3,000) rs-bpe counts differently from tiktoken's encode_ordinary.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)  # the repository, not bench/ (whose queue.py would shadow the stdlib's)
ENCODINGS = ("o200k_base", "cl100k_base")

# Each prints "<load seconds> <microseconds per count of a short word>".
_TIMER = """
import sys, time, timeit
started = time.perf_counter()
{load}
loaded = time.perf_counter() - started
per_count = timeit.timeit(lambda: count(" omquiphavel"), number=20000) / 20000
print(loaded, per_count * 1e6)
"""
LOADERS = {
    "tiktoken": (
        "from gptbatch.inputs.encodings import get_encoding\n"
        "enc = get_encoding({name!r})\n"
        "count = lambda text: len(enc.encode_ordinary(text))"
    ),
    "fastokens": (
        "from gptbatch.inputs import fast_counter\n"
        "tokenizer = fast_counter.raw_tokenizer({name!r})\n"
        "count = lambda text: len(tokenizer.encode_ordinary(text))"
    ),
    "rs-bpe": (
        "from rs_bpe import openai\n"
        "tokenizer = getattr(openai, {name!r})()\n"
        "count = tokenizer.count"
    ),
}


def load_time(counter: str, name: str, repeat: int) -> tuple[float, float] | str:
    """(best load seconds, microseconds per word count) in fresh processes, or why not."""
    best: tuple[float, float] | None = None
    for _ in range(repeat):
        with tempfile.TemporaryDirectory(prefix="gptbatch-load-") as cache:
            path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
            env = {**os.environ, "PYTHONPATH": path, "GPTBATCH_CACHE_DIR": cache}
            code = _TIMER.format(load=LOADERS[counter].format(name=name))
            done = subprocess.run(
                [sys.executable, "-c", code], env=env, capture_output=True, text=True
            )
        if done.returncode:
            last = (done.stderr.strip().splitlines() or ["failed"])[-1]
            return "not available: " + last
        loaded, per_count = map(float, done.stdout.split())
        if best is None or loaded < best[0]:
            best = (loaded, per_count)
    assert best is not None
    return best


def compare(corpus: Path) -> None:
    """Print rs-bpe's mismatches with tiktoken on the corpus' words and texts."""
    try:
        from rs_bpe import openai
    except ImportError:
        print("# rs-bpe is not installed (pip install rs-bpe): no comparison")
        return
    from gptbatch.inputs.encodings import get_encoding

    texts: list[str] = []
    with corpus.open("rb") as f:
        for line in f:
            for message in json.loads(line)["body"]["messages"]:
                texts.append(message["content"])
    words = sorted({w for text in texts for w in text.split(" ")})
    for name in ENCODINGS:
        reference, fast = get_encoding(name), getattr(openai, name)()
        wrong = [
            w
            for w in words
            for piece in (w, " " + w)
            if fast.count(piece) != len(reference.encode_ordinary(piece))
        ]
        sample = texts[:3000]
        wrong_texts = sum(fast.count(t) != len(reference.encode_ordinary(t)) for t in sample)
        print(
            f"# {name}: rs-bpe differs from tiktoken on {len(wrong)} of {2 * len(words):,} "
            f"words (alone and after a space) and {wrong_texts} of {len(sample):,} texts"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--corpus", type=Path)
    args = parser.parse_args()
    print(
        f"# load in a fresh process (best of {args.repeat}), load average {os.getloadavg()[0]:.1f}"
    )
    for name in ENCODINGS:
        for counter in LOADERS:
            result = load_time(counter, name, args.repeat)
            if isinstance(result, str):
                print(f"{name:<12} {counter:<10} {result}")
            else:
                print(
                    f"{name:<12} {counter:<10} load {result[0]:6.3f} s   "
                    f"{result[1]:5.2f} us per short word"
                )
    if args.corpus:
        compare(args.corpus)


if __name__ == "__main__":
    main()
