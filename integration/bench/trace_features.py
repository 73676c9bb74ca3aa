"""What an online cache can know about a block when it first sees it, against
whether the block is ever used again: the signals an admission or eviction policy
could use, measured on a JSONL request trace (the Mooncake format that
``tierkv-replay`` reads, ``../shared/traces/README.md``).

Run:
    python3 integration/bench/trace_features.py ../shared/traces/mooncake-conversation-head.jsonl

Prints, for the blocks each request brings in for the first time, the share that is
used again later, by: depth in the request's chain, whether the block ends the
prompt, the conversation turn (0: the request extends no earlier one), prompt length
and output length; then the chance of one more use after k uses and the gaps
between uses; then the share of requests that get a next turn (a later request
extending their chain), by turn, prompt length and output length, and its delay. Hit ratios of policies and bounds (Belady, perfect admission) on the
same trace: ``tierkv-replay``.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter, defaultdict


def load(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def share(table: dict) -> str:
    return ", ".join(f"{k}: {v[1] / v[0]:.3f} ({v[0]})" for k, v in sorted(table.items()))


def first_use_features(reqs: list[dict], uses: Counter) -> None:
    seen: dict[int, int] = {}  # block -> turn of the request that brought it
    tables = {name: defaultdict(lambda: [0, 0]) for name in ("depth", "last", "turn", "prompt", "output")}
    for r in reqs:
        chain = r["hash_ids"]
        hit = 0
        while hit < len(chain) and chain[hit] in seen:
            hit += 1
        turn = seen[chain[hit - 1]] + 1 if hit > 1 else 0
        for d, b in enumerate(chain):
            if b in seen:
                continue
            again = uses[b] > 1
            keys = {
                "depth": min(d, 16),
                "last": d == len(chain) - 1,
                "turn": min(turn, 4),
                "prompt": min(len(chain) // 8, 6) * 8,
                "output": 2 ** min(int(math.log2(r["output_length"] + 1)), 10),
            }
            for name, key in keys.items():
                tables[name][key][0] += 1
                tables[name][key][1] += again
        for b in chain:
            seen.setdefault(b, turn)
    print("share of first-seen blocks used again, by")
    for name, t in tables.items():
        print(f"  {name}: {share(t)}")


def reuse_history(reqs: list[dict], uses: Counter) -> None:
    count: Counter = Counter()
    more = defaultdict(lambda: [0, 0])
    last: dict[int, float] = {}
    gaps = []
    for r in reqs:
        for b in r["hash_ids"]:
            count[b] += 1
            k = min(count[b], 6)
            more[k][0] += 1
            more[k][1] += uses[b] > count[b]
            if b in last:
                gaps.append((r["timestamp"] - last[b]) / 1000)
            last[b] = r["timestamp"]
    gaps.sort()
    q = [gaps[int(p * (len(gaps) - 1))] for p in (0.1, 0.25, 0.5, 0.75, 0.9)] if gaps else []
    print(f"chance of one more use after k uses: {share(more)}")
    print("seconds between uses of a block, p10 p25 p50 p75 p90: " + " ".join(f"{x:.0f}" for x in q))


def next_turns(reqs: list[dict]) -> None:
    """Whether a request gets a next turn (a later request extends its chain past its
    first block), by what the cache knows when the request arrives, and how long the
    next turn takes: the hits of a conversation trace come from these."""
    seen: dict[int, int] = {}  # block -> the request that brought it
    turn = [0] * len(reqs)
    child = [False] * len(reqs)
    gaps = []
    for i, r in enumerate(reqs):
        chain = r["hash_ids"]
        hit = 0
        while hit < len(chain) and chain[hit] in seen:
            hit += 1
        if hit > 1:
            p = seen[chain[hit - 1]]
            turn[i] = turn[p] + 1
            if not child[p]:
                gaps.append((r["timestamp"] - reqs[p]["timestamp"]) / 1000)
            child[p] = True
        for b in chain:
            seen.setdefault(b, i)
    tables = {name: defaultdict(lambda: [0, 0]) for name in ("turn", "prompt blocks", "output")}
    for i, r in enumerate(reqs):
        keys = {
            "turn": min(turn[i], 6),
            "prompt blocks": min(len(r["hash_ids"]) // 8, 6) * 8,
            "output": 2 ** min(int(math.log2(r["output_length"] + 1)), 10),
        }
        for name, key in keys.items():
            tables[name][key][0] += 1
            tables[name][key][1] += child[i]
    print(f"share of requests with a next turn: {sum(child) / len(reqs):.3f}, by")
    for name, t in tables.items():
        print(f"  {name}: {share(t)}")
    gaps.sort()
    q = [gaps[int(p * (len(gaps) - 1))] for p in (0.1, 0.25, 0.5, 0.75, 0.9)] if gaps else []
    print("seconds to the next turn, p10 p25 p50 p75 p90: " + " ".join(f"{x:.0f}" for x in q))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    args = ap.parse_args()
    reqs = load(args.trace)
    uses = Counter(b for r in reqs for b in r["hash_ids"])
    total = sum(uses.values())
    print(f"{len(reqs)} requests, {total} block accesses, {len(uses)} distinct blocks, "
          f"{sum(1 for v in uses.values() if v == 1) / len(uses):.3f} of them used once; "
          f"an infinite cache hits {(total - len(uses)) / total:.3f}")
    first_use_features(reqs, uses)
    reuse_history(reqs, uses)
    next_turns(reqs)


if __name__ == "__main__":
    main()
