"""Where a method's greedy generation leaves full attention's, and why: the
first differing step's most likely tokens under full attention and under the
method, with their probabilities (a near-tie that the method tips, or a real
loss of context).

Same model, documents, storage and selections as ``pq_quality.py`` (SmolLM2-135M
fp32 in transformers; the prompt's K and V stored as tierkv blocks and the PQ
index built from them through the C ABI). Besides PQ at PQCache's codes
(``pq``: 2 sub-spaces of 64 centroids), ``--codes`` adds PQ indexes of other
shapes (``pq4x8``: 4 sub-spaces of 256 centroids), to tell a coarse-code miss
from a budget that is simply too small.

Run (the vLLM environment has torch and transformers):
    TIERKV_LIB=target/release/libtierkv.so $VENV/bin/python \\
        integration/bench/pq_fork.py --model $VENV/smollm2 --length 8192
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pq_quality as Q  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--length", type=int, default=8192)
    ap.add_argument("--doc", type=int, default=0, help="which document (as pq_quality.py --docs N orders them)")
    ap.add_argument("--docs", type=int, default=1, help="pq_quality.py's --docs, to pick the same documents")
    ap.add_argument("--cont", type=int, default=48, help="pq_quality.py's --cont (the prompt is length - cont)")
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--budget", type=float, default=0.2)
    ap.add_argument("--methods", default="oracle,pq,sink_local,random")
    ap.add_argument("--codes", default="4x8", help="extra PQ shapes, SUBSPACESxBITS, comma-separated ('' for none)")
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    from transformers import AttentionInterface, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(a.model)
    holder: dict[str, Q.Run] = {}
    AttentionInterface.register("tierkv_eval", lambda *x, **kw: holder["run"].attention(*x, **kw))
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, attn_implementation="tierkv_eval")
    model.eval()
    cfg = model.config
    layers, kv_heads, d = cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim
    os.environ["TIERKV_STORE_NAME"] = f"pq-fork-{os.getpid()}"
    os.environ.setdefault("TIERKV_CPU_BYTES", "2GiB")
    tkv = Q.TierKV(block_tokens=Q.BT, block_bytes=layers * kv_heads * 2 * d * Q.BT * 4, exporter=False)
    rp = getattr(cfg, "rope_parameters", None) or {}
    base = float(getattr(cfg, "rope_theta", None) or rp.get("rope_theta", 10000.0))

    doc = Q.documents(tok, a.length, a.docs)[a.doc]
    P = a.length - a.cont
    ids = torch.tensor([doc])
    run = Q.Run(P)
    holder["run"] = run
    t0 = time.perf_counter()
    # One prefill in full: it records the prompt's keys and values and leaves
    # the cache every generation starts from.
    with torch.no_grad():
        pre = model(ids[:, :P], use_cache=True)
    print(f"prefill of {P} tokens: {time.perf_counter() - t0:.0f} s", flush=True)
    keys = np.stack([run.keys[l][:, :P].numpy() for l in range(layers)]).astype(np.float32)
    values = np.stack([run.values[l][:, :P].numpy() for l in range(layers)]).astype(np.float32)
    blocks = Q.Blocks(tkv, keys, values, doc, base, salt=a.length * 1000 + a.doc + 1)
    indexes = {"pq": tkv.pq_build_blocks(blocks.hashes, P, params={"sink": Q.SINK})}
    for shape in filter(None, a.codes.split(",")):
        m, b = (int(x) for x in shape.split("x"))
        indexes[f"pq{m}x{b}"] = tkv.pq_build_blocks(blocks.hashes, P, params={"sink": Q.SINK, "subspaces": m, "bits": b})
    past, first = pre.past_key_values, int(pre.logits[0, -1].argmax())

    def restrict(method: str):
        if method == "full":
            return None
        base = "pq" if method.startswith("pq") else method
        return Q.restriction(base, keys, indexes.get(method), a.budget, kv_heads, P)

    def top(method: str, prefix: list[int], n: int = 4) -> list[tuple[str, float]]:
        """The most likely next tokens after `prefix` (generated), under `method`."""
        run.mode, run.select = "generate", restrict(method)
        cache = copy.deepcopy(past)
        with torch.no_grad():
            for t in prefix:
                out = model(torch.tensor([[t]]), past_key_values=cache, use_cache=True)
        p = out.logits[0, -1].softmax(-1)
        v, i = p.topk(n)
        return [(tok.decode([int(x)]), round(float(y), 3)) for x, y in zip(i, v)]

    def generate(method: str) -> list[int]:
        run.mode, run.select = "generate", restrict(method)
        return Q.generate(model, past, first, a.gen)

    full = generate("full")
    print(f"document {a.doc} of {a.length} tokens, budget {a.budget}")
    print(f"  text     : {tok.decode(doc[P : P + a.gen])!r}")
    print(f"  full     : {tok.decode(full)!r}")
    names = [m for m in a.methods.split(",") if m] + [k for k in indexes if k != "pq"]
    for m in names:
        gen = generate(m)
        fork = next((i for i, (x, y) in enumerate(zip(gen, full)) if x != y), None)
        print(f"  {m:<9}: {tok.decode(gen)!r}")
        if fork is None:
            print("             follows full attention for every token")
            continue
        print(f"             leaves it at token {fork + 1} of {a.gen}, after {tok.decode(full[:fork])!r}:")
        print(f"             full attention {top('full', full[:fork])}")
        print(f"             {m:<14} {top(m, full[:fork])}", flush=True)


if __name__ == "__main__":
    main()
