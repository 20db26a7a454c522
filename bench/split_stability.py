"""How many shards change when one request is added: gptbatch's packer vs the original splitter.

Generates N synthetic requests (prompt tokens log-normal, like real chat prompts: median ~550,
a long tail to tens of thousands), packs them under LIMIT, then inserts one random request at a
random position, TRIALS times, and counts the shards whose content (shard key) is new. Does the
same for a global first-fit-decreasing + rebalance baseline like the original tool
(binpacking.to_constant_volume, then to_constant_bin_number). Prints the figures.

    python bench/split_stability.py [--requests 100000] [--limit 1900000] [--trials 100]
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import math
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence

from gptbatch.shards import Caps, Item, pack, shard_key


def synthetic_items(rng: random.Random, count: int, mu: float, sigma: float) -> list[Item]:
    """Requests with log-normal prompt tokens (clipped to 20..60,000) and random content keys."""
    items = []
    for _ in range(count):
        tokens = min(60_000, max(20, int(rng.lognormvariate(mu, sigma))))
        key = hashlib.sha256(rng.randbytes(16)).hexdigest()
        items.append(Item(key, tokens, 4 * tokens + 200))
    return items


def ours(items: Sequence[Item], limit: int) -> list[list[int]]:
    """gptbatch: content-defined shards, in input order."""
    return [list(r) for r in pack(items, Caps(limit))]


def original(items: Sequence[Item], limit: int) -> list[list[int]]:
    """The original splitter: first-fit decreasing for the bin count, then rebalance into it."""
    order = sorted(range(len(items)), key=lambda i: -items[i].tokens)  # stable, like binpacking
    free: list[int] = []  # remaining capacity per bin (first fit)
    for i in order:
        tokens = items[i].tokens
        for b, room in enumerate(free):
            if tokens <= room:
                free[b] -= tokens
                break
        else:
            free.append(limit - tokens)
    # to_constant_bin_number: each item, largest first, into the currently lightest bin.
    heap = [(0, b) for b in range(len(free))]
    bins: list[list[int]] = [[] for _ in free]
    for i in order:
        load, b = heapq.heappop(heap)
        bins[b].append(i)
        heapq.heappush(heap, (load + items[i].tokens, b))
    return bins


def keys_of(items: Sequence[Item], shards: list[list[int]]) -> set[str]:
    return {shard_key("m", "/v1/chat/completions", (items[i].key for i in s)) for s in shards}


def measure(
    name: str,
    packer: Callable[[Sequence[Item], int], list[list[int]]],
    items: list[Item],
    limit: int,
    trials: int,
    rng: random.Random,
    mu: float,
    sigma: float,
) -> None:
    started = time.perf_counter()
    base_shards = packer(items, limit)
    elapsed = time.perf_counter() - started
    base = keys_of(items, base_shards)
    total = sum(item.tokens for item in items)
    minimum = math.ceil(total / limit)
    biggest = max(sum(items[i].tokens for i in s) for s in base_shards)
    changed = []
    for _ in range(trials):
        extra = synthetic_items(rng, 1, mu, sigma)[0]
        at = rng.randrange(len(items) + 1)
        edited = [*items[:at], extra, *items[at:]]
        changed.append(len(keys_of(edited, packer(edited, limit)) - base))
    histogram = ", ".join(f"{k}: {v}" for k, v in sorted(Counter(changed).items()))
    print(f"{name}:")
    print(
        f"  shards {len(base_shards)} (minimum ceil(tokens/limit) = {minimum}, "
        f"+{len(base_shards) / minimum - 1:.1%}); fullest shard {biggest:,} tokens "
        f"({biggest / limit:.1%} of the limit); one packing takes {elapsed:.2f} s"
    )
    print(
        f"  changed shards over {trials} single insertions: median {statistics.median(changed)}, "
        f"mean {statistics.mean(changed):.2f}, max {max(changed)}"
    )
    print(f"  histogram (changed shards: trials): {histogram}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--limit", type=int, default=1_900_000)
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--baseline-trials", type=int, default=10, help="the baseline is slow")
    parser.add_argument("--mu", type=float, default=6.3, help="log-normal mu of prompt tokens")
    parser.add_argument("--sigma", type=float, default=0.9, help="log-normal sigma")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--skip-baseline", action="store_true")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    items = synthetic_items(rng, args.requests, args.mu, args.sigma)
    total = sum(item.tokens for item in items)
    print(
        f"{args.requests:,} requests, {total:,} tokens (mean {total / args.requests:,.0f}), "
        f"limit {args.limit:,} tokens per shard, seed {args.seed}"
    )
    measure(
        "gptbatch (content-defined)", ours, items, args.limit, args.trials, rng, args.mu, args.sigma
    )
    if not args.skip_baseline:
        measure(
            "original (first-fit decreasing + rebalance)",
            original,
            items,
            args.limit,
            args.baseline_trials,
            rng,
            args.mu,
            args.sigma,
        )


if __name__ == "__main__":
    main()
