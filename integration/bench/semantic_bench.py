"""Semantic sharing in real vLLM (CPU, SmolLM2-135M fp32): tokens served from cache
with prefix sharing only versus prefix + semantic, and the quality of the outputs
against full computation, per kind of near-duplicate prompt.

Run (inside the vLLM environment, with TIERKV_LIB set or the connector installed):
    python integration/bench/semantic_bench.py --model DIR --corpus DIR [--pairs 10] [--suite wide]

``--suite wide`` runs semantic_wide.py's kinds on two corpora instead (the policy
chosen on the chatterbot half, reported on Python's own documentation).

``--corpus`` is the ``chatterbot_corpus/data`` folder of the PyPI package
``chatterbot-corpus`` 1.3.3 (``pip download --no-deps chatterbot-corpus==1.3.3`` and
unzip the wheel): real questions and answers, English, 19 categories.

Workload (every prompt built from the corpus; pairs of a source, run first, and a
target, run after it):
  entity_swap         a support template whose first line names the customer and
                      an account number; the target has another name and number
  reordered_docs      four passages (Q&A of four categories) and a question; the
                      target has the passages in another order
  paraphrased_system  another wording of the system prompt before the same
                      reference answers and question
  fork                a multi-turn chat; the target continues it with another
                      question (a fork of the conversation)

Configurations (one fresh engine process and store each; vLLM's own prefix cache
off so that hits come from tierkv):
  full        no cache: the reference outputs
  prefix      tierkv, exact prefix sharing only
  semantic    tierkv with TIERKV_SEMANTIC=1 and the default policy (in vLLM: no
              substituted token and no shifted KV, so nothing past the exact hit)
  semantic-sub8  the default until 2026-11-30: substitute up to 8 differing tokens
              in spans of at most 8, serve shifted KV (TIERKV_SEMANTIC_PREFIX_SHIFT)
  semantic-shift  shifted KV served (deleted or inserted text), no substitution
  semantic-all  every reuse allowed: TIERKV_SEMANTIC_MOVES=1, SUBSTITUTE=64,
              SUBSTITUTE_SPAN=64, PREFIX_SHIFT=4096 (what the default refuses, measured)

Reports per kind and configuration: the fraction of target prompt tokens served
from cache (vLLM's num_cached_tokens), its ratio to prefix-only, and against full
computation the exact-match rate of greedy outputs, ROUGE-L (F, over tokens) and
BLEU-4 (smoothed, over tokens).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import socket
import subprocess
import sys
import tempfile
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
KINDS = ["entity_swap", "reordered_docs", "paraphrased_system", "fork"]
# The `semantic-all` configuration: every reuse the policy can refuse, allowed.
ALL_ALLOWED = {
    "TIERKV_SEMANTIC": "1",
    "TIERKV_SEMANTIC_MOVES": "1",
    "TIERKV_SEMANTIC_SUBSTITUTE": "64",
    "TIERKV_SEMANTIC_SUBSTITUTE_SPAN": "64",
    "TIERKV_SEMANTIC_PREFIX_SHIFT": "4096",
}
# The default policy until the wide suite (semantic_wide.py) was measured: up to 8
# substituted tokens in spans of 8, shifted KV served.
SUB8 = {"TIERKV_SEMANTIC": "1", "TIERKV_SEMANTIC_SUBSTITUTE": "8", "TIERKV_SEMANTIC_SUBSTITUTE_SPAN": "8",
        "TIERKV_SEMANTIC_PREFIX_SHIFT": "4096"}
# Shifted KV served (text inserted or deleted before it), no substituted token.
SHIFT = {"TIERKV_SEMANTIC": "1", "TIERKV_SEMANTIC_PREFIX_SHIFT": "4096"}
# Every configuration: (engine mode, environment).
CONFIGS = {
    "full": ("none", {}),
    "prefix": ("tierkv", {"TIERKV_SEMANTIC": "0"}),
    "semantic": ("tierkv", {"TIERKV_SEMANTIC": "1"}),
    "semantic-sub8": ("tierkv", SUB8),
    "semantic-shift": ("tierkv", SHIFT),
    "semantic-all": ("tierkv", ALL_ALLOWED),
}
NAMES = ["Alice Martin", "Bob Chen", "Carla Diaz", "David Okafor", "Emma Larsen", "Farid Haddad",
         "Grace Kim", "Hugo Silva", "Ines Novak", "Jonas Weber", "Keiko Sato", "Liam Walsh"]
SYSTEMS = [
    "You are a helpful assistant. Answer the question briefly, using the reference answers below.",
    "You're a friendly helper. Keep your reply short and base it on the reference answers that follow.",
]


def load_categories(corpus: Path) -> dict[str, list[tuple[str, str]]]:
    """English Q&A pairs by category (first two lines of each conversation)."""
    import yaml

    out = {}
    for f in sorted((corpus / "english").glob("*.yml")):
        try:
            doc = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError:
            continue
        pairs = [(str(c[0]).strip(), str(c[1]).strip()) for c in doc.get("conversations") or [] if len(c) >= 2]
        if len(pairs) >= 12:
            out[f.stem] = pairs
    return out


def refs(pairs: list[tuple[str, str]]) -> str:
    return "\n".join(f"Q: {q}\nA: {a}" for q, a in pairs)


def workload(corpus: Path, n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    cats = load_categories(corpus)
    names = sorted(cats)
    items = []
    for i in range(n):
        cat = cats[names[i % len(names)]]
        sample = rng.sample(cat, 12)
        q = rng.choice(sample)[0]
        body = f"{refs(sample)}\n\nQuestion: {q}\nAnswer:"
        # Entity swap: the customer line comes first, as templates do.
        a, b = rng.sample(NAMES, 2)
        na, nb = rng.randrange(10**5, 10**6), rng.randrange(10**5, 10**6)
        def ticket(name: str, number: int) -> str:
            return f"Support ticket for customer {name}, account number {number}.\n{SYSTEMS[0]}\n\n{body}"

        items.append({"kind": "entity_swap", "source": ticket(a, na), "target": ticket(b, nb)})
        # Reordered documents: four passages from four categories.
        four = rng.sample(names, 4)
        passages = [refs(rng.sample(cats[c], 5)) for c in four]
        q4 = rng.choice(cats[four[0]])[0]
        order = [1, 3, 0, 2]
        head = "Answer the question using the passages.\n\n"
        tail = f"\n\nQuestion: {q4}\nAnswer:"
        items.append({
            "kind": "reordered_docs",
            "source": head + "\n\n".join(f"Passage:\n{p}" for p in passages) + tail,
            "target": head + "\n\n".join(f"Passage:\n{passages[k]}" for k in order) + tail,
        })
        # Paraphrased system prompt.
        items.append({"kind": "paraphrased_system", "source": SYSTEMS[0] + "\n\n" + body,
                      "target": SYSTEMS[1] + "\n\n" + body})
        # A chat that forks: the same history, another last question.
        hist = rng.sample(cat, 14)
        chat = "\n".join(f"User: {u}\nAssistant: {r}" for u, r in hist[:12])
        items.append({"kind": "fork", "source": f"{chat}\nUser: {hist[12][0]}\nAssistant:",
                      "target": f"{chat}\nUser: {hist[13][0]}\nAssistant:"})
    for it in items:
        it["corpus"] = "chatterbot"
    return items


def suite(name: str, corpus: Path, pairs: int) -> tuple[list[dict], list[str]]:
    """The pairs of a suite (``bench``: the four kinds above; ``wide``:
    semantic_wide.py's kinds on two corpora) and its kinds in report order."""
    if name == "bench":
        return workload(corpus, pairs), KINDS
    import semantic_wide

    return semantic_wide.wide(pairs, corpus), semantic_wide.KINDS


def groups(items: list[dict], kinds: list[str]):
    """``(corpus, kind, indices)`` of the items, corpus by corpus in order of first
    appearance, kinds in report order."""
    for corpus in dict.fromkeys(it["corpus"] for it in items):
        for kind in kinds:
            idx = [i for i, it in enumerate(items) if it["kind"] == kind and it["corpus"] == corpus]
            if idx:
                yield corpus, kind, idx


def select(configs: dict, wanted: str) -> dict:
    """``full``, ``prefix`` and the comma-separated ``wanted`` configurations, in
    ``configs``' order."""
    keep = {"full", "prefix", *wanted.split(",")}
    return {k: v for k, v in configs.items() if k in keep}


# ------------------------------------------------------------------ quality scores

def lcs(a: list[int], b: list[int]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(cand: list[int], ref: list[int]) -> float:
    if not cand and not ref:
        return 1.0
    m = lcs(cand, ref)
    if m == 0:
        return 0.0
    p, r = m / len(cand), m / len(ref)
    return 2 * p * r / (p + r)


def bleu4(cand: list[int], ref: list[int]) -> float:
    """Sentence BLEU-4 with add-one smoothing of the higher orders (Lin & Och)."""
    if not cand:
        return 1.0 if not ref else 0.0
    logs = []
    for n in range(1, 5):
        c = Counter(tuple(cand[i:i + n]) for i in range(len(cand) - n + 1))
        r = Counter(tuple(ref[i:i + n]) for i in range(len(ref) - n + 1))
        hit, total = sum(min(v, r[k]) for k, v in c.items()), max(sum(c.values()), 0)
        if n > 1:
            hit, total = hit + 1, total + 1
        if hit == 0 or total == 0:
            return 0.0
        logs.append(math.log(hit / total))
    bp = 1.0 if len(cand) >= len(ref) else math.exp(1 - len(ref) / len(cand))
    return bp * math.exp(sum(logs) / 4)


def quality(outputs: list[list[int]], ref: list[list[int]], idx: list[int]) -> tuple[float, float, float]:
    """Exact-match rate, mean ROUGE-L and mean BLEU-4 of ``outputs[i]`` against
    ``ref[i]`` over the items ``idx``."""
    n = len(idx)
    return (
        sum(outputs[i] == ref[i] for i in idx) / n,
        sum(rouge_l(outputs[i], ref[i]) for i in idx) / n,
        sum(bleu4(outputs[i], ref[i]) for i in idx) / n,
    )


# ------------------------------------------------------------------ one engine

def run_engine(args) -> None:
    """One vLLM engine: every source (batched), then each target alone."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    data = json.load(open(args.prompts))
    kv = None
    if args.mode == "tierkv":
        kv = {"kv_connector": "TierKVConnector", "kv_connector_module_path": "tierkv_vllm", "kv_role": "kv_both"}
    llm = LLM(model=args.model, enable_prefix_caching=False, kv_transfer_config=kv, block_size=32,
              kv_cache_memory_bytes=1 << 30, max_model_len=2048, max_num_seqs=8, enforce_eager=True,
              dtype="float32", seed=0)
    one = SamplingParams(temperature=0.0, max_tokens=1)
    greedy = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
    llm.generate([TokensPrompt(prompt_token_ids=p["source"]) for p in data], one, use_tqdm=False)
    outs, cached = [], []
    for p in data:
        o = llm.generate([TokensPrompt(prompt_token_ids=p["target"])], greedy, use_tqdm=False)[0]
        outs.append(list(o.outputs[0].token_ids))
        cached.append(o.num_cached_tokens or 0)
    metrics = None
    if args.mode == "tierkv" and os.environ.get("TIERKV_METRICS_ADDR"):
        import urllib.request

        with urllib.request.urlopen(f"http://{os.environ['TIERKV_METRICS_ADDR']}/metrics", timeout=5) as r:
            metrics = r.read().decode()
    json.dump({"outputs": outs, "cached": cached, "metrics": metrics}, open(args.out, "w"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def engine(model: str, mode: str, prompts: Path, tmp: Path, env_extra: dict, max_tokens: int) -> dict:
    out = tmp / f"{mode}-{uuid.uuid4().hex[:6]}.json"
    # The connector from this checkout, ahead of any installed copy.
    path = os.pathsep.join(filter(None, [str(ROOT / "integration" / "vllm"), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_CPU_OMP_THREADS_BIND="0", PYTHONPATH=path, **env_extra)
    cmd = [sys.executable, __file__, "--engine", "--model", model, "--mode", mode, "--prompts", str(prompts),
           "--out", str(out), "--max-tokens", str(max_tokens)]
    with open(tmp / "engines.log", "a") as log:
        log.write(f"\n=== {env_extra} {' '.join(cmd)}\n")
        log.flush()
        subprocess.run(cmd, env=env, check=True, stdout=log, stderr=subprocess.STDOUT)
    return json.loads(out.read_text())


def metric(text: str | None, name: str) -> float:
    for line in (text or "").splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--corpus", help="chatterbot_corpus/data")
    ap.add_argument("--pairs", type=int, default=10, help="pairs per kind (per corpus with --suite wide)")
    ap.add_argument("--suite", choices=["bench", "wide"], default="bench",
                    help="bench: the four kinds above; wide: semantic_wide.py's kinds on two corpora")
    ap.add_argument("--configs", default="semantic,semantic-sub8,semantic-shift,semantic-all",
                    help="comma-separated configurations to run besides full and prefix")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--keep", help="keep prompts, engine logs and raw results in this folder")
    ap.add_argument("--engine", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--prompts", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.engine:
        run_engine(args)
        return
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.model)
    tmp = Path(args.keep or tempfile.mkdtemp(prefix="tierkv-semantic-"))
    tmp.mkdir(parents=True, exist_ok=True)
    items, kinds = suite(args.suite, Path(args.corpus), args.pairs)
    configs = select(CONFIGS, args.configs)
    data = [{"kind": it["kind"], "corpus": it["corpus"],
             "source": tok(it["source"])["input_ids"], "target": tok(it["target"])["input_ids"]} for it in items]
    prompts = tmp / "prompts.json"
    prompts.write_text(json.dumps(data))
    store = f"sem-{uuid.uuid4().hex[:8]}"
    results = {}
    for name, (mode, extra) in configs.items():
        env = dict(extra, TIERKV_STORE_NAME=f"{store}-{len(results)}", TIERKV_CPU_BYTES="2GiB",
                   TIERKV_METRICS_ADDR=f"127.0.0.1:{free_port()}")
        results[name] = engine(args.model, mode, prompts, tmp, env, args.max_tokens)
        Path(f"/dev/shm/tierkv-{env['TIERKV_STORE_NAME']}.arena").unlink(missing_ok=True)
        Path(f"/dev/shm/tierkv-{env['TIERKV_STORE_NAME']}.g3dir").unlink(missing_ok=True)
    (tmp / "results.json").write_text(json.dumps(results))

    ref = results["full"]["outputs"]
    lens = [len(d["target"]) for d in data]
    print(f"{args.pairs} pairs per kind, target prompts {min(lens)}-{max(lens)} tokens; SmolLM2-135M fp32, "
          f"vLLM 0.32 CPU, block 32, greedy {args.max_tokens} tokens")
    print(f"{'corpus':11}{'kind':22}{'config':15}{'from cache':>11}{'vs prefix':>10}{'exact':>7}{'ROUGE-L':>9}"
          f"{'BLEU-4':>8}")
    tierkv = [name for name in configs if name != "full"]
    for corpus, kind, idx in groups(data, kinds):
        total = sum(lens[i] for i in idx)
        base = sum(results["prefix"]["cached"][i] for i in idx)
        for name in tierkv:
            r = results[name]
            got = sum(r["cached"][i] for i in idx)
            exact, rl, bl = quality(r["outputs"], ref, idx)
            ratio = f"{got / base:.2f}x" if base else ("from 0" if got else "1.00x")
            print(f"{corpus:11}{kind:22}{name:15}{got / total:>11.3f}{ratio:>10}{exact:>7.2f}{rl:>9.3f}{bl:>8.3f}")
    loaded, failed = 'tierkv_semantic_load_blocks_total{result="loaded"}', 'tierkv_semantic_load_blocks_total{result="failed"}'
    for name in tierkv[1:]:
        m = results[name]["metrics"]
        print(f"{name}: blocks built from near-duplicates {metric(m, loaded):.0f}, failed {metric(m, failed):.0f}")
    print(f"\nraw results: {tmp / 'results.json'}")


if __name__ == "__main__":
    main()
