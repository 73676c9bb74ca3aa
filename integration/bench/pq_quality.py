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
and the continuation's perplexity is reported, with full attention's.

Run (the vLLM environment has torch and transformers):
    TIERKV_LIB=target/release/libtierkv.so $VENV/bin/python \\
        integration/bench/pq_quality.py --model $VENV/smollm2 --json out.json
"""

from __future__ import annotations

import argparse
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

SINK = 32
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


class Run:
    """Attention hooks: capture keys/values/queries, or restrict continuation rows."""

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
    tkv = TierKV(block_tokens=16, block_bytes=4096)
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
            # The index: every layer's prompt keys, [layer][kv_head][token][d].
            keys = np.stack([run.keys[l][:, :P].numpy() for l in range(layers)]).astype(np.float32)
            t0 = time.perf_counter()
            pq = tkv.pq_build(np.ascontiguousarray(keys), layers, kv_heads, P, d, params={"sink": SINK})
            build_s = time.perf_counter() - t0
            row = {"length": length, "doc": di, "prompt": P, "full_ppl": full_ppl, "build_s": build_s, "budgets": {}}
            for f in budgets:
                rng = np.random.default_rng(1234 + di)
                per_method = {}
                sels = {}
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
                    def select(layer, qcont, m=m):
                        qn = qcont.detach().numpy()
                        s = selections(m, layer, qn, keys[layer], pq, f, np.random.default_rng(99 + layer))
                        H, T = qn.shape[0], qn.shape[1]
                        g = H // kv_heads
                        allowed = torch.zeros(H, T, P, dtype=torch.bool)
                        for t in range(T):
                            for h in range(kv_heads):
                                allowed[h * g : (h + 1) * g, t, torch.from_numpy(s[t][h])] = True
                        return allowed

                    run.mode, run.select = "restrict", select
                    with torch.no_grad():
                        per_method[m]["ppl"] = math.exp(nll(model(ids).logits[0]))
                    run.mode = "capture"
                row["budgets"][str(f)] = per_method
                print(
                    f"L={length} doc={di} budget={f}: "
                    + "  ".join(
                        f"{m}: mass {per_method[m]['mass_recall']:.3f} err {per_method[m]['output_error']:.3f} "
                        f"ppl {per_method[m]['ppl']:.3f}"
                        for m in METHODS
                    )
                    + f"  recall@k {per_method['pq']['recall_at_k']:.3f}  full ppl {full_ppl:.3f}",
                    flush=True,
                )
            pq.close()
            results.append(row)
    summarize(results, budgets)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))


def summarize(results: list[dict], budgets: list[float]) -> None:
    """Means over documents, per length and budget; the share of the gap from
    sink + local to the oracle that PQ closes (attention mass, perplexity)."""
    print("\nlength budget method      mass   out_err   ppl      recall@k")
    for length in sorted({r["length"] for r in results}):
        rows = [r for r in results if r["length"] == length]
        full = np.mean([r["full_ppl"] for r in rows])
        for f in budgets:
            mean = lambda m, key: float(np.mean([r["budgets"][str(f)][m][key] for r in rows]))  # noqa: E731
            for m in METHODS:
                rk = f"{mean(m, 'recall_at_k'):.3f}" if m == "pq" else ""
                print(
                    f"{length:>6} {f:>6} {m:<10} {mean(m, 'mass_recall'):.3f}  {mean(m, 'output_error'):.3f}"
                    f"    {mean(m, 'ppl'):>7.3f}  {rk}"
                )
            gap_mass = (mean("pq", "mass_recall") - mean("sink_local", "mass_recall")) / max(
                mean("oracle", "mass_recall") - mean("sink_local", "mass_recall"), 1e-9
            )
            gap_ppl = (mean("sink_local", "ppl") - mean("pq", "ppl")) / max(
                mean("sink_local", "ppl") - mean("oracle", "ppl"), 1e-9
            )
            layers = np.mean([r["budgets"][str(f)]["pq"]["per_layer_recall_at_k"] for r in rows], axis=0)
            print(
                f"{length:>6} {f:>6} full ppl {full:.3f}; PQ closes {gap_mass:.2f} of the sink+local-to-oracle gap "
                f"in attention mass, {gap_ppl:.2f} in perplexity; recall@k by layer "
                f"min {layers.min():.3f} (layer {int(layers.argmin())}) max {layers.max():.3f}"
            )


if __name__ == "__main__":
    main()
