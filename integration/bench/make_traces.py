"""Writes block-access traces for ``tierkv-replay`` (format: plugin/src/offload/replay.rs).

* ``chat``: multi-turn conversations, many active at once and interleaved (a turn of
  one conversation, then turns of others, then its next turn), each request being
  the whole conversation so far; a few shared system prompts.
* ``docs``: repeated long documents (retrieval or summarisation traffic): each
  request is one document, chosen with a Zipf-like popularity, plus a short unique
  question.

Lengths are drawn from fixed distributions with a fixed seed (not real text): turn
lengths log-normal (user median 60 tokens, reply median 220), turns per
conversation geometric (mean 4). Usage:

    python3 integration/bench/make_traces.py OUT_DIR [--active 1024]
"""

from __future__ import annotations

import argparse
import math
import random
from pathlib import Path

BLOCK = 16


def chain(prefix_ids: list[int], n_blocks: int, salt: int) -> list[int]:
    """Block identities of a token sequence: shared prefix, then salted blocks."""
    return prefix_ids + [hash((salt, i)) & (2**64 - 1) for i in range(n_blocks)]


def chat(rng: random.Random, active: int, conversations: int) -> list[tuple[str, list[int]]]:
    systems = [[hash(("sys", s, i)) & (2**64 - 1) for i in range(32)] for s in range(4)]
    out = []
    live: list[dict] = []
    started = 0

    def new_conv():
        nonlocal started
        started += 1
        return {
            "id": started,
            "sys": systems[rng.randrange(len(systems))],
            "tokens": 0,
            "turns_left": 1 + int(rng.expovariate(1 / 3)),
            "turn": 0,
        }

    while started < active:
        live.append(new_conv())
    while live:
        i = rng.randrange(len(live))
        c = live[i]
        user = max(4, int(rng.lognormvariate(math.log(60), 0.8)))
        c["tokens"] += user
        blocks = c["tokens"] // BLOCK
        out.append((f"c{c['id']}/t{c['turn']}", chain(c["sys"], blocks, c["id"])))
        c["tokens"] += max(8, int(rng.lognormvariate(math.log(220), 0.7)))
        c["turn"] += 1
        c["turns_left"] -= 1
        if c["turns_left"] <= 0:
            live.pop(i)
            if started < conversations:
                live.append(new_conv())
    return out


def docs(rng: random.Random, n_docs: int, requests: int) -> list[tuple[str, list[int]]]:
    lengths = [rng.randint(2000, 8000) // BLOCK for _ in range(n_docs)]
    weights = [1 / (k + 1) ** 1.1 for k in range(n_docs)]
    out = []
    for r in range(requests):
        d = rng.choices(range(n_docs), weights)[0]
        blocks = [hash(("doc", d, i)) & (2**64 - 1) for i in range(lengths[d])]
        out.append((f"d{d}/q{r}", blocks))
    return out


def write(path: Path, reqs: list[tuple[str, list[int]]]) -> None:
    with open(path, "w") as f:
        f.write("# label block...\n")
        for label, blocks in reqs:
            f.write(label + " " + " ".join(f"{b:x}" for b in blocks) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--active", type=int, default=1024)
    ap.add_argument("--conversations", type=int, default=8000)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write(out / "chat.trace", chat(random.Random(1), args.active, args.conversations))
    write(out / "chat-sequential.trace", chat(random.Random(1), 1, args.conversations // 8))
    write(out / "docs.trace", docs(random.Random(2), 200, 6000))
    print(f"traces written to {out}")


if __name__ == "__main__":
    main()
