"""Token counting throughput: tiktoken vs the guarded fastokens counter; prints MB/s.

    python bench/counters.py [--mb 10] [--scan-mb 64] [--seed 1]

On a generated corpus (English prose, code, numbers, mixed scripts, emoji, a few guarded
texts), per encoding, on one core:
- text: text_len over every text: tiktoken on whole texts, tiktoken through the words' memo
  (gptbatch.inputs.tokens.words, from cold), and the guarded fastokens (texts it may not
  count go to tiktoken, as in gptbatch);
- estimate: estimate_request over chat bodies built from the same texts;
and the load time of fastokens. With --scan-mb, also a cold scan (no token cache) of a chat
file of that size through gptbatch.inputs.scan.Scanner on every core, each counter forced
with GPTBATCH_COUNTER in its own process (wall time includes fastokens' load and the fork).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The repository, not bench/ (whose queue.py would shadow the standard library).
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from gptbatch.inputs import fast_counter  # noqa: E402
from gptbatch.inputs.encodings import get_encoding  # noqa: E402
from gptbatch.inputs.tokens import endpoints, estimate_request, words  # noqa: E402
from gptbatch.inputs.tokens.text import text_len  # noqa: E402

PROSE = (  # noqa: SIM905 - prose reads better as prose
    "the of and to in is was for on are with as his they at be this from have or one had by "
    "word but not what all were we when your can said there use an each which she do how their "
    "it's don't we'll they're I'VE"
).split()
CODE = ["def f(x):\n    return x ** 2\n", "for (int i = 0; i < n; ++i) {", "x = {'a': [1, 2]}"]
OTHER = ["東京は晴れ", "данные", "مرحبا", "नमस्ते", "🙂👍🏽", "naïve café", "3.14159 2048 -0", "\r\n"]
LETTERS = "etaoinshrdlcumwfgypbvkjxqz"
GUARDED = [" \u180ea", "a\ud800b"]  # sent to tiktoken by the guard


def corpus(megabytes: float, seed: int) -> list[str]:
    """Texts of 20-2,000 characters totalling about `megabytes` of UTF-8, few repeated."""
    rng = random.Random(seed)
    texts, size = [], 0
    while size < megabytes * 1e6:
        n = rng.choice((20, 80, 300, 2000))
        parts = []
        while sum(map(len, parts)) < n:
            roll = rng.random()
            if roll < 0.45:
                parts.append(rng.choice(PROSE) + " ")
            elif roll < 0.75:  # unseen words: real inputs rarely repeat whole texts
                word = "".join(rng.choices(LETTERS, k=rng.randint(2, 11)))
                parts.append(word.capitalize() + " " if roll < 0.5 else word + " ")
            elif roll < 0.85:
                parts.append(rng.choice(CODE))
            elif roll < 0.9999:
                parts.append(rng.choice(OTHER) + " ")
            else:
                parts.append(rng.choice(GUARDED))
        text = "".join(parts)
        texts.append(text)
        size += len(text.encode("utf-8", "surrogatepass"))
    return texts


def scan_corpus(megabytes: float, seed: int) -> list[str]:
    """corpus() without lone surrogates (a JSON file of them is not valid UTF-8)."""
    return [t.replace("\ud800", "\ufffd") for t in corpus(megabytes, seed)]


def _mb(texts: list[str]) -> float:
    return sum(len(t.encode("utf-8", "surrogatepass")) for t in texts) / 1e6


def _time_text(encoding: str, texts: list[str]) -> tuple[float, int]:
    enc = get_encoding(encoding)
    start = time.perf_counter()
    total = sum(text_len(enc, t)[0] for t in texts)
    return time.perf_counter() - start, total


def _time_estimate(bodies: list[dict]) -> tuple[float, int]:
    endpoints._MEMOS.clear()
    words.clear()
    start = time.perf_counter()
    total = sum(estimate_request("/v1/chat/completions", b).tokens for b in bodies)
    return time.perf_counter() - start, total


def bench_in_process(megabytes: float, seed: int) -> None:
    texts = corpus(megabytes, seed)
    size = _mb(texts)
    print(f"corpus: {len(texts):,} texts, {size:.1f} MB (UTF-8)")
    os.environ["GPTBATCH_COUNTER"] = "fastokens"
    fast_counter.select(0)
    for encoding, model in (("o200k_base", "gpt-4o"), ("cl100k_base", "gpt-4")):
        bodies = [{"model": model, "messages": [{"role": "user", "content": t}]} for t in texts]
        get_encoding(encoding)
        start = time.perf_counter()
        assert fast_counter.load(encoding), fast_counter.status()
        load_s = time.perf_counter() - start
        saved = fast_counter.COUNTERS.pop(encoding)
        by_words = words.ENCODINGS
        words.ENCODINGS = frozenset()  # tiktoken on every whole text
        slow_s, slow_total = _time_text(encoding, texts)
        slow_e, slow_etotal = _time_estimate(bodies)
        words.ENCODINGS = by_words  # tiktoken through the words' memo (from cold)
        words.clear()
        word_s, word_total = _time_text(encoding, texts)
        word_e, word_etotal = _time_estimate(bodies)
        fast_counter.COUNTERS[encoding] = saved
        fast_s, fast_total = _time_text(encoding, texts)
        fast_e, fast_etotal = _time_estimate(bodies)
        totals = {(slow_total, slow_etotal), (word_total, word_etotal), (fast_total, fast_etotal)}
        assert len(totals) == 1, "counts differ"
        print(
            f"{encoding}: fastokens load {load_s:.2f} s | text_len tiktoken "
            f"{size / slow_s:.1f} MB/s, by words {size / word_s:.1f} MB/s "
            f"(x{slow_s / word_s:.1f}), fastokens {size / fast_s:.1f} MB/s "
            f"(x{slow_s / fast_s:.1f}) | estimate_request tiktoken {size / slow_e:.1f} MB/s, "
            f"by words {size / word_e:.1f} MB/s (x{slow_e / word_e:.1f}), "
            f"fastokens {size / fast_e:.1f} MB/s (x{slow_e / fast_e:.1f}) | tokens {fast_total:,}"
        )


_SCAN = """
import sys, time
from gptbatch.inputs.scan import Scanner, ScanOptions
from gptbatch.inputs import fast_counter
start = time.perf_counter()
scanner = Scanner([sys.argv[1]], ScanOptions(use_cache=False))
total = sum(r.tokens for r in scanner.requests())
print(time.perf_counter() - start, total, fast_counter.status()[0])
"""


def bench_scan(megabytes: float, seed: int) -> None:
    texts = scan_corpus(megabytes, seed + 1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "chat.jsonl"
        with path.open("w", encoding="utf-8") as f:
            for i, text in enumerate(texts):
                body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}
                line = {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions"}
                f.write(json.dumps({**line, "body": body}) + "\n")
        size = path.stat().st_size / 1e6
        root = str(Path(__file__).resolve().parent.parent)
        results = {}
        for counter in ("tiktoken", "fastokens"):
            env = {**os.environ, "GPTBATCH_COUNTER": counter, "GPTBATCH_CACHE_DIR": ""}
            env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
            done = subprocess.run(
                [sys.executable, "-c", _SCAN, str(path)], env=env, capture_output=True, text=True
            )
            if done.returncode:
                sys.exit(f"scan with {counter} failed:\n{done.stderr}")
            out = done.stdout.split()
            results[counter] = (float(out[0]), int(out[1]), out[2])
        assert results["tiktoken"][1] == results["fastokens"][1], "scan totals differ"
        (slow, _, a), (fast, _, b) = results["tiktoken"], results["fastokens"]
        print(
            f"cold scan of {size:.1f} MB, {os.cpu_count()} cores: {a} {size / slow:.1f} MB/s "
            f"({slow:.2f} s), {b} {size / fast:.1f} MB/s ({fast:.2f} s, load included), "
            f"x{slow / fast:.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=10.0, help="in-process corpus size")
    parser.add_argument("--scan-mb", type=float, default=0.0, help="cold scan size (0: skip)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    bench_in_process(args.mb, args.seed)
    if args.scan_mb:
        bench_scan(args.scan_mb, args.seed)


if __name__ == "__main__":
    main()
