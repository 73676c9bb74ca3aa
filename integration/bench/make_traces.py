"""Writes block-access traces for ``tierkv-replay`` (format: integration/replay/src/lib.rs).

* ``chat``: multi-turn conversations, many active at once and interleaved (a turn of
  one conversation, then turns of others, then its next turn), each request being
  the whole conversation so far; a few shared system prompts.
* ``docs``: repeated long documents (retrieval or summarisation traffic): each
  request is one document, chosen with a Zipf-like popularity, plus a short unique
  question.

Lengths are drawn from fixed distributions with a fixed seed (not real text): turn
lengths log-normal (user median 60 tokens, reply median 220), turns per
conversation geometric (mean 4).

* ``realchat`` (with ``--corpus``): the same interleaving, over real conversations:
  the 7,644 conversations of ``chatterbot-corpus`` 1.3.3 (PyPI; 28 languages; one to
  nineteen turns each), tokenized with SmolLM2's tokenizer (``--tokenizer``, a
  ``tokenizer.json``), one of four shared system prompts (real text from the corpus)
  in front, and block identities chained over the real token ids, so conversations
  that open the same way share blocks as they would in an engine. Needs ``pyyaml``
  and ``tokenizers`` (the vLLM environment has both).

Usage:

    python3 integration/bench/make_traces.py OUT_DIR [--active 1024]
        [--corpus chatterbot_corpus/data --tokenizer smollm2/tokenizer.json]
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


def load_conversations(corpus: Path) -> list[list[str]]:
    """Every conversation of a chatterbot-corpus data directory, in a fixed order."""
    import yaml

    convs = []
    for f in sorted(corpus.glob("*/*.yml")):
        try:
            doc = yaml.safe_load(f.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError):
            continue  # a few files of the corpus do not parse; skipped, counted below
        for c in (doc or {}).get("conversations") or []:
            lines = [str(x) for x in c if x is not None]
            if lines:
                convs.append(lines)
    return convs


def realchat(
    rng: random.Random, active: int, corpus: Path, tokenizer: Path
) -> list[tuple[str, list[int]]]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer))
    enc = lambda text: tok.encode(text, add_special_tokens=False).ids  # noqa: E731
    convs = load_conversations(corpus)
    # Four system prompts of real text: the first lines of four corpus files, ~500
    # tokens each.
    systems = []
    for k in range(4):
        words = " ".join(" ".join(c) for c in convs[k * 40 : k * 40 + 40])
        systems.append(enc("You are a helpful assistant. " + words)[:512])
    order = list(range(len(convs)))
    rng.shuffle(order)
    out = []
    live: list[dict] = []
    nxt = 0

    def new_conv():
        nonlocal nxt
        c = convs[order[nxt]]
        nxt += 1
        return {"id": nxt, "lines": c, "tokens": list(systems[rng.randrange(4)]), "turn": 0}

    while nxt < min(active, len(convs)):
        live.append(new_conv())
    while live:
        i = rng.randrange(len(live))
        c = live[i]
        t = c["turn"]
        c["tokens"] += enc("\nUser: " + c["lines"][2 * t])
        out.append((f"r{c['id']}/t{t}", block_ids(c["tokens"])))
        if 2 * t + 1 < len(c["lines"]):
            c["tokens"] += enc("\nAssistant: " + c["lines"][2 * t + 1])
        c["turn"] += 1
        if 2 * c["turn"] >= len(c["lines"]):
            live.pop(i)
            if nxt < len(convs):
                live.append(new_conv())
    print(f"realchat: {len(convs)} conversations, {len(out)} requests")
    return out


def block_ids(tokens: list[int]) -> list[int]:
    """Chained identities of the full blocks of `tokens` (as an engine hashes them)."""
    ids, parent = [], 0
    for b in range(len(tokens) // BLOCK):
        parent = hash((parent, tuple(tokens[b * BLOCK : (b + 1) * BLOCK]))) & (2**64 - 1)
        ids.append(parent)
    return ids


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
    ap.add_argument("--corpus", type=Path, help="chatterbot_corpus/data directory")
    ap.add_argument("--tokenizer", type=Path, help="tokenizer.json (SmolLM2's)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write(out / "chat.trace", chat(random.Random(1), args.active, args.conversations))
    write(out / "chat-sequential.trace", chat(random.Random(1), 1, args.conversations // 8))
    write(out / "docs.trace", docs(random.Random(2), 200, 6000))
    if args.corpus:
        if not args.tokenizer:
            ap.error("--corpus needs --tokenizer")
        write(out / "realchat.trace", realchat(random.Random(3), args.active, args.corpus, args.tokenizer))
    print(f"traces written to {out}")


if __name__ == "__main__":
    main()
