"""PQ retrieval quality on real keys: SmolLM2-135M (fp32) in transformers, its
post-RoPE keys indexed by tierkv's PQ (through the C ABI), against the oracle
top-k, sink + local window only (StreamingLLM) and random-k at the same budget.

Documents: Python's own long text (``pydoc_data.topics``, about 110k tokens),
cut into consecutive documents of L tokens; the last ``--cont`` tokens of each
are a teacher-forced continuation whose queries select tokens of the first
``L - cont`` (the prompt, indexed once after prefill, as PQCache does).

Per (layer, KV head, continuation position), at each budget (a fraction of the
prompt: half local window, half top-k, plus 32 sinks; the continuation's own
tokens are always attended):
- recall@k: PQ's top-k against the exact top-k (both by the KV group's softmax
  scores summed over its query heads, over the same candidates);
- attention-mass recall: the exact softmax mass the selection covers;
- relative attention-output error: the selection's renormalised attention output
  against the exact one.
Per method and budget, the model is run again with every layer's continuation
rows restricted to the selection (the prompt rows attend fully, as in prefill),
and the continuation's perplexity is reported, with full attention's; then
``--gen`` tokens are generated greedily after the prompt with every decode step
restricted the same way, against full attention's: the share of equal tokens
(greedy match, position by position) and ROUGE-L F1 (longest common
subsequence). ``--json`` keeps the generated tokens too (each method's and full
attention's), to read what a method generated where it left full attention.

The index is built as an engine builds it: the prompt's K and V are stored as
tierkv blocks in vLLM's CPU layout (fp32, 16 tokens a block), the engine's copy
cleared, and ``tierkv_pq_build_blocks`` reads the keys back. PQ's selections
are then gathered (``tierkv_pq_gather``) step by step and layer by layer: each
gathered row must equal the model's key and value (checked), and the replay at
several block-cache sizes gives the LFU hit ratio and the bytes fetched a step.

Run (the vLLM environment has torch and transformers):
    TIERKV_LIB=target/release/libtierkv.so $VENV/bin/python \\
        integration/bench/pq_quality.py --model $VENV/smollm2 --json out.json
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "integration" / "vllm"))

from tierkv_vllm import TierKV  # noqa: E402
from tierkv_vllm.lib import DTYPE_F32, STORE_STORED, _rope  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from semantic_bench import rouge_l  # noqa: E402

SINK = 32
BT = 16  # tokens a block
CACHE_SHARES = (0.0, 0.125, 0.25, 0.5)  # block cache, as a share of the prompt's blocks
METHODS = ("pq", "oracle", "sink_local", "random")


def documents(tok, length: int, count: int) -> list[list[int]]:
    import pydoc_data.topics as topics

    text = "\n\n".join(topics.topics[k] for k in sorted(topics.topics))
    ids = tok(text, add_special_tokens=False)["input_ids"]
    docs = [ids[i * length : (i + 1) * length] for i in range(len(ids) // length)]
    # Spread over the text: every (len(docs) // count)-th document.
    step = max(len(docs) // count, 1)
    return docs[::step][:count]


def budget_of(n: int, fraction: float, sink: int = SINK) -> tuple[int, int, int]:
    """(sink, local, topk) as tierkv's Budget::of computes them."""
    sink = min(sink, n)
    total = min(math.ceil(n * fraction), n - sink)
    local = total // 2
    return sink, local, total - local


def group_softmax_sum(scores: np.ndarray, scale: float) -> np.ndarray:
    """scores [group, n] -> softmax per row (scaled), summed over rows."""
    s = scores * scale
    s = s - s.max(axis=1, keepdims=True)
    e = np.exp(s)
    return (e / e.sum(axis=1, keepdims=True)).sum(axis=0)


class Blocks:
    """The prompt's K and V stored as tierkv blocks in vLLM's CPU layout (per
    layer and block, per KV head: K as [d][BT], then V as [BT][d]); the engine's
    copy is cleared once stored."""

    def __init__(self, tkv: TierKV, keys: np.ndarray, values: np.ndarray, tokens: list[int], base: float, salt: int):
        L, KV, P, d = keys.shape
        self.nb = nb = -(-P // BT)
        slab = 2 * d * BT * 4
        region = KV * slab
        self.block_bytes = L * region
        self.mems = [ctypes.create_string_buffer(region * nb) for _ in range(L)]
        tkv.register_layout([(ctypes.addressof(m), region, region) for m in self.mems], nb)
        rows = []
        for layer in range(L):
            rows.append((layer, 1, 0, 4, slab, KV, d * 4, BT * 4))
            rows.append((layer, 0, d * BT * 4, d * 4, slab, KV, d * 4, 0))
        tkv.register_token_layout(rows, _rope(DTYPE_F32, d, d, base, True))
        pad = ((0, 0), (0, nb * BT - P), (0, 0))
        for layer in range(L):
            view = np.frombuffer(self.mems[layer], dtype=np.float32).reshape(nb, KV, 2, d * BT)
            k = np.pad(keys[layer], pad).reshape(KV, nb, BT, d)
            v = np.pad(values[layer], pad).reshape(KV, nb, BT, d)
            view[:, :, 0] = k.transpose(1, 0, 3, 2).reshape(nb, KV, d * BT)
            view[:, :, 1] = v.transpose(1, 0, 2, 3).reshape(nb, KV, BT * d)
        toks = list(tokens[:P]) + [0] * (nb * BT - P)
        # Each document's blocks their own identities (a salted parent): documents
        # of different lengths may share a prefix, whose KV the model computes
        # with other shapes (last bits differ) and the check below must see.
        self.hashes = tkv.hash_tokens(toks, parent=salt.to_bytes(16, "little"))
        assert tkv.store_blocks(self.hashes, list(range(nb))) == [STORE_STORED] * nb
        for m in self.mems:
            ctypes.memset(m, 0, len(m))


def counter(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def replay(tkv: TierKV, pq, blocks: Blocks, sels: list, keys: np.ndarray, values: np.ndarray, steps: int) -> dict:
    """Gathers PQ's selections (per layer: per step, per KV head) of the first
    `steps` steps, step by step and layer by layer, at each block-cache size;
    checks every row once."""
    layers, T = len(sels), min(len(sels[0]), steps)
    out = {}
    for share in CACHE_SHARES:
        pq.set_cache(0)
        pq.set_cache(int(share * blocks.nb) * blocks.block_bytes)
        m0 = tkv.metrics_text()
        t0 = time.perf_counter()
        for t in range(T):
            for layer in range(layers):
                sel = [s.tolist() for s in sels[layer][t]]
                k, v, rows = pq.gather(layer, sel)
                if share == 0.0:
                    KV, d = keys.shape[1], keys.shape[3]
                    cap = max(len(x) for x in sel)
                    k = np.frombuffer(k, dtype=np.float32).reshape(KV, cap, d)
                    v = np.frombuffer(v, dtype=np.float32).reshape(KV, cap, d)
                    for h in range(KV):
                        assert rows[h] == len(sel[h])
                        assert np.array_equal(k[h, : rows[h]], keys[layer, h, sel[h]]), "gathered keys differ"
                        assert np.array_equal(v[h, : rows[h]], values[layer, h, sel[h]]), "gathered values differ"
        secs = time.perf_counter() - t0
        m1 = tkv.metrics_text()
        d = lambda series: counter(m1, series) - counter(m0, series)  # noqa: E731
        hit, miss = d('tierkv_pq_block_cache_total{result="hit"}'), d('tierkv_pq_block_cache_total{result="miss"}')
        out[str(share)] = {
            "hit_ratio": hit / max(hit + miss, 1),
            "fetched_mib_per_step": d("tierkv_pq_fetched_bytes_total") / T / 2**20,
            "gathered_mib_per_step": d("tierkv_pq_gathered_bytes_total") / T / 2**20,
            "lookups_per_step": (hit + miss) / T,
            "ms_per_step": secs * 1e3 / T,
        }
    out["kv_mib"] = blocks.nb * blocks.block_bytes / 2**20
    return out


def generate(model, past, first: int, n: int) -> list[int]:
    """Greedy decoding of `n` tokens after a prefilled prompt (`past`, copied)."""
    past = copy.deepcopy(past)
    toks = [first]
    with torch.no_grad():
        for _ in range(n - 1):
            out = model(torch.tensor([[toks[-1]]]), past_key_values=past, use_cache=True)
            toks.append(int(out.logits[0, -1].argmax()))
    return toks


class Run:
    """Attention hooks: capture keys/values/queries, restrict continuation rows,
    or generate (prefill in full, each decode step restricted)."""

    def __init__(self, prompt: int):
        self.prompt = prompt
        self.mode = "capture"
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.queries: dict[int, torch.Tensor] = {}
        self.select = None  # (layer, queries [H, T, d]) -> allowed [H, T, prompt] bool

    def attention(self, module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        layer = module.layer_idx
        P = self.prompt
        q, k, v = query[0], key[0], value[0]  # [H, L, d], [KV, L, d]
        H, L, d = q.shape
        g = H // k.shape[0]
        scaling = scaling if scaling is not None else d**-0.5
        kr, vr = k.repeat_interleave(g, 0), v.repeat_interleave(g, 0)
        if self.mode == "generate":
            if q.shape[1] > 1 or self.select is None:  # the prompt's prefill, or full attention
                # (a single query row attends to every key: no causal mask)
                causal = q.shape[1] > 1
                out = torch.nn.functional.scaled_dot_product_attention(q, kr, vr, is_causal=causal, scale=scaling)
                return out.transpose(0, 1).unsqueeze(0), None
            # One decode step: the selection of the prompt, every generated token.
            allowed = torch.ones(H, 1, kr.shape[1], dtype=torch.bool)
            allowed[:, :, :P] = self.select(layer, q)
            scores = torch.einsum("htd,hld->htl", q, kr) * scaling
            w = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
            return torch.einsum("htl,hld->htd", w, vr).transpose(0, 1).unsqueeze(0), None
        if self.mode == "capture":
            self.keys[layer] = k.detach().clone()
            self.values[layer] = v.detach().clone()
            self.queries[layer] = q[:, P:].detach().clone()
            out = torch.nn.functional.scaled_dot_product_attention(q, kr, vr, is_causal=True, scale=scaling)
            return out.transpose(0, 1).unsqueeze(0), None
        # Prompt rows: full causal attention (prefill). Continuation rows: the
        # selection of the prompt, plus every continuation token up to the row.
        head = torch.nn.functional.scaled_dot_product_attention(
            q[:, :P], kr[:, :P], vr[:, :P], is_causal=True, scale=scaling
        )
        allowed_prompt = self.select(layer, q[:, P:])  # [H, T, P]
        T = L - P
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        allowed = torch.cat([allowed_prompt, causal.expand(H, T, T)], dim=2)
        scores = torch.einsum("htd,hld->htl", q[:, P:], kr) * scaling
        scores = scores.masked_fill(~allowed, float("-inf"))
        tail = torch.einsum("htl,hld->htd", scores.softmax(-1), vr)
        out = torch.cat([head, tail], dim=1)
        return out.transpose(0, 1).unsqueeze(0), None


def selections(method: str, layer: int, qs: np.ndarray, keys: np.ndarray, pq, fraction: float, rng) -> list[list[np.ndarray]]:
    """Per continuation step and KV head, the prompt tokens attended.
    qs: [H, T, d] queries; keys: [KV, P, d] prompt keys."""
    KV, P, d = keys.shape
    H, T, _ = qs.shape
    g = H // KV
    sink, local, topk = budget_of(P, fraction)
    cand = np.arange(sink, P - local)
    fixed = np.concatenate([np.arange(sink), np.arange(P - local, P)])
    out = []
    for t in range(T):
        per_head = []
        if method == "pq":
            q = np.ascontiguousarray(qs[:, t, :].reshape(KV, g, d), dtype=np.float32)
            per_head = [np.asarray(s, dtype=np.int64) for s in pq.topk(layer, q, g, budget=fraction)]
        else:
            for h in range(KV):
                if method == "sink_local":
                    sel = np.concatenate([np.arange(sink), np.arange(P - local - topk, P)])
                elif method == "random":
                    sel = np.concatenate([fixed, rng.choice(cand, size=topk, replace=False)])
                else:  # oracle
                    scores = qs[h * g : (h + 1) * g, t, :] @ keys[h, cand].T
                    agg = group_softmax_sum(scores, 1 / math.sqrt(d))
                    best = cand[np.argpartition(-agg, topk - 1)[:topk]] if topk else cand[:0]
                    sel = np.concatenate([fixed, best])
                per_head.append(np.unique(sel))
        out.append(per_head)
    return out


def restriction(method: str, keys: np.ndarray, pq, fraction: float, kv_heads: int, P: int):
    """``Run.select`` for `method`: each layer's queries [H, T, d] select prompt
    tokens (``selections``), returned as the allowed mask [H, T, P]."""

    def select(layer, q):
        qn = q.detach().numpy()
        s = selections(method, layer, qn, keys[layer], pq, fraction, np.random.default_rng(99 + layer))
        H, T = qn.shape[0], qn.shape[1]
        g = H // kv_heads
        allowed = torch.zeros(H, T, P, dtype=torch.bool)
        for t in range(T):
            for h in range(kv_heads):
                allowed[h * g : (h + 1) * g, t, torch.from_numpy(s[t][h])] = True
        return allowed

    return select


def attention_metrics(sel, layer: int, run: Run, P: int, fraction: float, oracle_sel=None) -> dict:
    """Mass recall and relative output error of `sel` (per step, per KV head) on
    the exact run's queries; recall@k against `oracle_sel` when given."""
    k = run.keys[layer].numpy()
    v = run.values[layer].numpy()
    q = run.queries[layer].numpy()
    H, T, d = q.shape
    KV = k.shape[0]
    g = H // KV
    sink, local, topk = budget_of(P, fraction)
    mass, err, rec = [], [], []
    scale = 1 / math.sqrt(d)
    for t in range(T):
        p = P + t  # the query's position: keys 0..p
        for h in range(KV):
            s = sel[t][h]
            idx = np.concatenate([s, np.arange(P, p + 1)])
            sc = q[h * g : (h + 1) * g, t] @ k[h, : p + 1].T * scale  # [g, p + 1]
            w = np.exp(sc - sc.max(axis=1, keepdims=True))
            w /= w.sum(axis=1, keepdims=True)
            o = w @ v[h, : p + 1]  # [g, d]
            ws = w[:, idx]
            m = ws.sum(axis=1)
            mass.extend(m.tolist())
            os_ = (ws / m[:, None]) @ v[h, idx]
            err.extend((np.linalg.norm(os_ - o, axis=1) / np.maximum(np.linalg.norm(o, axis=1), 1e-12)).tolist())
            if oracle_sel is not None and topk:
                mid = lambda x: set(x[(x >= sink) & (x < P - local)].tolist())  # noqa: E731
                rec.append(len(mid(s) & mid(oracle_sel[t][h])) / topk)
    out = {"mass_recall": float(np.mean(mass)), "output_error": float(np.mean(err))}
    if rec:
        out["recall_at_k"] = float(np.mean(rec))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--lengths", default="2048,4096")
    ap.add_argument("--docs", type=int, default=3, help="documents per length")
    ap.add_argument("--cont", type=int, default=48, help="continuation tokens (queries)")
    ap.add_argument("--gen", type=int, default=32, help="tokens generated per method (0: none)")
    ap.add_argument("--replay-steps", type=int, default=16, help="continuation steps whose selections are gathered")
    ap.add_argument("--gather-only", action="store_true", help="PQ's selections and their gathers alone (no quality runs)")
    ap.add_argument("--budgets", default="0.2,0.1")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    from transformers import AttentionInterface, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(a.model)
    holder: dict[str, Run] = {}
    AttentionInterface.register("tierkv_eval", lambda *x, **kw: holder["run"].attention(*x, **kw))
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, attn_implementation="tierkv_eval")
    model.eval()
    cfg = model.config
    layers, kv_heads, d = cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim
    import os

    # A store of this run's own (the prompt's blocks), removed at the end.
    store = f"pq-quality-{os.getpid()}"
    os.environ["TIERKV_STORE_NAME"] = store
    os.environ.setdefault("TIERKV_CPU_BYTES", "2GiB")
    slab = 2 * d * BT * 4
    tkv = TierKV(block_tokens=BT, block_bytes=layers * kv_heads * slab, exporter=False)
    rp = getattr(cfg, "rope_parameters", None) or {}
    base = float(getattr(cfg, "rope_theta", None) or rp.get("rope_theta", 10000.0))
    budgets = [float(b) for b in a.budgets.split(",")]
    results = []
    for length in [int(x) for x in a.lengths.split(",")]:
        for di, doc in enumerate(documents(tok, length, a.docs)):
            P = length - a.cont
            ids = torch.tensor([doc])
            run = Run(P)
            holder["run"] = run
            with torch.no_grad():
                logits = model(ids).logits[0]
            nll = lambda lg: float(  # noqa: E731
                torch.nn.functional.cross_entropy(lg[P - 1 : length - 1], ids[0, P:length]).item()
            )
            full_ppl = math.exp(nll(logits))
            # Every layer's prompt keys and values, [layer][kv_head][token][d],
            # stored as blocks; the index reads the keys back from them.
            keys = np.stack([run.keys[l][:, :P].numpy() for l in range(layers)]).astype(np.float32)
            values = np.stack([run.values[l][:, :P].numpy() for l in range(layers)]).astype(np.float32)
            blocks = Blocks(tkv, keys, values, doc, base, salt=length * 1000 + di + 1)
            t0 = time.perf_counter()
            pq = tkv.pq_build_blocks(blocks.hashes, P, params={"sink": SINK})
            build_s = time.perf_counter() - t0
            row = {"length": length, "doc": di, "prompt": P, "full_ppl": full_ppl, "build_s": build_s, "budgets": {}}
            if a.gen and not a.gather_only:
                # Full attention's greedy continuation, from one prefill of the prompt.
                run.mode, run.select = "generate", None
                with torch.no_grad():
                    pre = model(ids[:, :P], use_cache=True)
                past, first = pre.past_key_values, int(pre.logits[0, -1].argmax())
                full_gen = generate(model, past, first, a.gen)
                row["full_generated"] = full_gen
                run.mode = "capture"
            for f in budgets:
                rng = np.random.default_rng(1234 + di)
                per_method = {}
                sels = {}
                if a.gather_only:
                    sel = [selections("pq", l, run.queries[l].numpy(), keys[l], pq, f, rng) for l in range(layers)]
                    g = replay(tkv, pq, blocks, sel, keys, values, a.replay_steps)
                    row["budgets"][str(f)] = {"pq": {"gather": g}}
                    print(f"L={length} doc={di} budget={f}: " + gather_line([g]), flush=True)
                    continue
                for m in METHODS:
                    sels[m] = [
                        selections(m, l, run.queries[l].numpy(), keys[l], pq, f, rng) for l in range(layers)
                    ]
                for m in METHODS:
                    per_layer = [
                        attention_metrics(sels[m][l], l, run, P, f, sels["oracle"][l] if m == "pq" else None)
                        for l in range(layers)
                    ]
                    per_method[m] = {
                        "mass_recall": float(np.mean([x["mass_recall"] for x in per_layer])),
                        "output_error": float(np.mean([x["output_error"] for x in per_layer])),
                        "per_layer_mass_recall": [x["mass_recall"] for x in per_layer],
                    }
                    if m == "pq":
                        per_method[m]["recall_at_k"] = float(np.mean([x["recall_at_k"] for x in per_layer]))
                        per_method[m]["per_layer_recall_at_k"] = [x["recall_at_k"] for x in per_layer]
                    # Perplexity with every layer restricted to this method's selection
                    # (PQ selects again on the restricted run's own queries).
                    select = restriction(m, keys, pq, f, kv_heads, P)
                    run.mode, run.select = "restrict", select
                    with torch.no_grad():
                        per_method[m]["ppl"] = math.exp(nll(model(ids).logits[0]))
                    if a.gen:
                        run.mode = "generate"
                        gen = generate(model, past, first, a.gen)
                        per_method[m]["greedy_match"] = float(np.mean([x == y for x, y in zip(gen, full_gen)]))
                        per_method[m]["rouge_l"] = rouge_l(gen, full_gen)
                        per_method[m]["generated"] = gen
                    run.mode, run.select = "capture", None
                per_method["pq"]["gather"] = replay(tkv, pq, blocks, sels["pq"], keys, values, a.replay_steps)
                row["budgets"][str(f)] = per_method
                print(
                    f"L={length} doc={di} budget={f}: "
                    + "  ".join(
                        f"{m}: mass {per_method[m]['mass_recall']:.3f} err {per_method[m]['output_error']:.3f} "
                        f"ppl {per_method[m]['ppl']:.3f} match {per_method[m].get('greedy_match', float('nan')):.2f} "
                        f"rouge-L {per_method[m].get('rouge_l', float('nan')):.2f}"
                        for m in METHODS
                    )
                    + f"  recall@k {per_method['pq']['recall_at_k']:.3f}  full ppl {full_ppl:.3f}"
                    + "  "
                    + gather_line([per_method["pq"]["gather"]]),
                    flush=True,
                )
            pq.close()
            results.append(row)
    tkv.close()
    for suffix in ("arena", "g3dir"):
        Path(f"/dev/shm/tierkv-{store}.{suffix}").unlink(missing_ok=True)
    if a.gather_only:
        for length in sorted({r["length"] for r in results}):
            for f in budgets:
                g = [r["budgets"][str(f)]["pq"]["gather"] for r in results if r["length"] == length]
                print(f"{length:>6} {f:>6} " + gather_line(g))
    else:
        summarize(results, budgets)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))


def gather_line(g: list[dict]) -> str:
    """Means over documents of `replay`'s figures, one line."""
    mean = lambda c, key: float(np.mean([x[c][key] for x in g]))  # noqa: E731
    return (
        f"gathers (KV {np.mean([x['kv_mib'] for x in g]):.0f} MiB, "
        f"{mean('0.0', 'lookups_per_step'):.0f} region lookups a step, "
        f"{mean('0.0', 'gathered_mib_per_step'):.1f} MiB of rows a step): "
        + "; ".join(
            f"cache {float(c):.3g} of the KV: hits {mean(c, 'hit_ratio'):.2f}, "
            f"read {mean(c, 'fetched_mib_per_step'):.1f} MiB, {mean(c, 'ms_per_step'):.1f} ms a step"
            for c in (str(x) for x in CACHE_SHARES)
        )
    )


def summarize(results: list[dict], budgets: list[float]) -> None:
    """Means over documents, per length and budget; the share of the gap from
    sink + local to the oracle that PQ closes (attention mass, perplexity)."""
    print("\nlength budget method      mass   out_err   ppl      match  rouge-L  recall@k")
    for length in sorted({r["length"] for r in results}):
        rows = [r for r in results if r["length"] == length]
        full = np.mean([r["full_ppl"] for r in rows])
        for f in budgets:
            mean = lambda m, key: float(np.mean([r["budgets"][str(f)][m][key] for r in rows]))  # noqa: E731
            for m in METHODS:
                rk = f"{mean(m, 'recall_at_k'):.3f}" if m == "pq" else ""
                gen = "greedy_match" in rows[0]["budgets"][str(f)][m]
                gm = f"{mean(m, 'greedy_match'):.3f}  {mean(m, 'rouge_l'):.3f}" if gen else "   -      -  "
                print(
                    f"{length:>6} {f:>6} {m:<10} {mean(m, 'mass_recall'):.3f}  {mean(m, 'output_error'):.3f}"
                    f"    {mean(m, 'ppl'):>7.3f}  {gm}    {rk}"
                )
            gap_mass = (mean("pq", "mass_recall") - mean("sink_local", "mass_recall")) / max(
                mean("oracle", "mass_recall") - mean("sink_local", "mass_recall"), 1e-9
            )
            gap_ppl = (mean("sink_local", "ppl") - mean("pq", "ppl")) / max(
                mean("sink_local", "ppl") - mean("oracle", "ppl"), 1e-9
            )
            layers = np.mean([r["budgets"][str(f)]["pq"]["per_layer_recall_at_k"] for r in rows], axis=0)
            print(f"{length:>6} {f:>6} " + gather_line([r["budgets"][str(f)]["pq"]["gather"] for r in rows]))
            print(
                f"{length:>6} {f:>6} full ppl {full:.3f}; PQ closes {gap_mass:.2f} of the sink+local-to-oracle gap "
                f"in attention mass, {gap_ppl:.2f} in perplexity; recall@k by layer "
                f"min {layers.min():.3f} (layer {int(layers.argmin())}) max {layers.max():.3f}"
            )


if __name__ == "__main__":
    main()
