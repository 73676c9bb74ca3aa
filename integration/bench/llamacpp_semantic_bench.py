"""Semantic sharing in llama.cpp with tierkv's full reuse plans: the near-duplicate
kinds of integration/bench/semantic_bench.py (entity swap, reordered passages,
paraphrased system prompt, fork; same corpus, same pairs), where the llama.cpp host
(integration/llamacpp, ``--semantic``) loads each run of the plan at its new
positions (K re-rotated by llama.cpp) and computes every other position, instead of
vLLM's approximate prefix.

Configurations (one host process each, pairs in order source then target, so the
source is stored and indexed before its target is planned):
  full          tierkv off (``--no-cache``): the reference outputs
  prefix        tierkv, exact prefix sharing only
  semantic      ``TIERKV_SEMANTIC=1`` and the default policy
  semantic-all  every reuse allowed (moves, substitutions up to 64 tokens)

Reports per kind and configuration: the fraction of target prompt tokens served from
cache (exact blocks plus reused tokens), and against full computation the
exact-match rate of greedy outputs, ROUGE-L and BLEU-4 over tokens.

Run:
    python3 integration/bench/llamacpp_semantic_bench.py [--pairs 10] [--corpus DIR]
(``--corpus``: chatterbot_corpus/data of chatterbot-corpus 1.3.3; fetched from PyPI
into ~/.cache/tierkv when not given.)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import uuid
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from llamacpp_bench import build  # noqa: E402
from semantic_bench import ALL_ALLOWED, groups, quality, select, suite  # noqa: E402

SHM = Path(os.environ.get("TIERKV_SHM_DIR", "/dev/shm"))
BLOCK = 32  # the host's default block size (tokens), which these runs use


def corpus_dir() -> Path:
    cache = Path.home() / ".cache" / "tierkv" / "chatterbot-corpus-1.3.3"
    data = cache / "chatterbot_corpus" / "data"
    if not data.is_dir():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(cache), "chatterbot-corpus==1.3.3"],
            check=True,
        )
        wheel = next(cache.glob("chatterbot_corpus-1.3.3-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            z.extractall(cache)
    return data


def run(bin_: Path, model: Path, prompts: list[str], env_extra: dict, *args: str, max_tokens: int) -> list[dict]:
    tmp = Path(tempfile.mkdtemp())
    pf = tmp / "prompts.txt"
    pf.write_text("".join(p.replace("\n", "\\n") + "\n" for p in prompts))
    out = tmp / "out.jsonl"
    store = f"semb-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, TIERKV_STORE_NAME=store, TIERKV_CPU_BYTES="1GiB", **env_extra)
    env.pop("TIERKV_METRICS_ADDR", None)
    cmd = [str(bin_), "--model", str(model), "--prompts", str(pf), "--out", str(out), "--max-tokens", str(max_tokens)]
    subprocess.run([*cmd, *args], env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (SHM / f"tierkv-{store}.arena").unlink(missing_ok=True)
    return [json.loads(line) for line in out.read_text().splitlines()]


def blend(fraction: float) -> dict:
    """The default policy with a larger share of the prompt recomputed after the
    differences (the recompute limit raised to leave room for it)."""
    return {"TIERKV_SEMANTIC": "1", "TIERKV_SEMANTIC_BLEND": f"{fraction}",
            "TIERKV_SEMANTIC_MAX_RECOMPUTE": f"{min(1.0, fraction + 0.2):.2f}"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=10, help="pairs per kind (per corpus with --suite wide)")
    ap.add_argument("--suite", choices=["bench", "wide"], default="bench",
                    help="bench: semantic_bench.py's four kinds; wide: semantic_wide.py's kinds on two corpora")
    ap.add_argument("--configs", default="semantic,semantic-all",
                    help="comma-separated configurations to run besides full and prefix "
                         "(also blend-0.3, blend-0.5)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--corpus", help="chatterbot_corpus/data")
    args = ap.parse_args()
    llama, bin_ = build()
    model = llama / "model.gguf"
    items, kinds = suite(args.suite, Path(args.corpus) if args.corpus else corpus_dir(), args.pairs)
    prompts = [p for it in items for p in (it["source"], it["target"])]
    configs = select({
        "full": ({}, ("--no-cache",)),
        "prefix": ({"TIERKV_SEMANTIC": "0"}, ()),
        "semantic": ({"TIERKV_SEMANTIC": "1"}, ("--semantic",)),
        "blend-0.3": (blend(0.3), ("--semantic",)),
        "blend-0.5": (blend(0.5), ("--semantic",)),
        "semantic-all": (ALL_ALLOWED, ("--semantic",)),
    }, args.configs)
    res = {name: run(bin_, model, prompts, env, *a, max_tokens=args.max_tokens) for name, (env, a) in configs.items()}
    targets = {name: r[1::2] for name, r in res.items()}
    ref = [t["tokens"] for t in targets["full"]]
    lens = [t["prompt_tokens"] for t in targets["full"]]
    print(f"{args.pairs} pairs per kind, target prompts {min(lens)}-{max(lens)} tokens; SmolLM2-135M Q4_1 GGUF, "
          f"llama.cpp (llama-cpp-python 0.3.36), block 32, greedy {args.max_tokens} tokens")
    print(f"{'corpus':11}{'kind':22}{'config':14}{'from cache':>11}{'exact':>7}{'ROUGE-L':>9}{'BLEU-4':>8}")
    for corpus, kind, idx in groups(items, kinds):
        total = sum(lens[i] for i in idx)
        for name in [n for n in configs if n != "full"]:
            t = targets[name]
            got = sum(t[i]["loaded_blocks"] * BLOCK + t[i]["semantic_tokens"] for i in idx)
            exact, rl, bl = quality([x["tokens"] for x in t], ref, idx)
            print(f"{corpus:11}{kind:22}{name:14}{got / total:>11.3f}{exact:>7.2f}{rl:>9.3f}{bl:>8.3f}")
    stored = sum(t["stored_blocks"] for name in configs if name not in ("full", "prefix")
                 for t in targets[name] if t["semantic_tokens"])
    print(f"blocks stored by targets built from near-duplicates: {stored} (must be 0)")


if __name__ == "__main__":
    main()
