"""bf16 greedy outputs of set B (tests/e2e/prompts.py) with no cache, with vLLM's own
prefix cache (set A run first in the same engine) and with tierkv (set A stored by
another engine process): how many of the prompts' outputs agree, pairwise.

Run from the repository root with the vLLM environment's python and TIERKV_LIB set:
    TIERKV_LIB=target/release/libtierkv.so TIERKV_VLLM_PYTHON=$VENV/bin/python \
        $VENV/bin/python integration/bench/bf16_compare.py [--max-tokens N]
"""

import argparse
import json
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, "tests/e2e")
import prompts as P  # noqa: E402
from test_vllm_e2e import run  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--max-tokens", type=int, default=16)
a = ap.parse_args()
tmp = Path(tempfile.mkdtemp())
BF = ("--dtype", "bfloat16", "--max-tokens", str(a.max_tokens))
warm = tmp / "warm.json"
warm.write_text(json.dumps(P.set_a()))
none = run(tmp, "none", P.set_b(), None, BF)
own = run(tmp, "prefix", P.set_b(), None, (*BF, "--warm", str(warm)))
name = f"bf16-{uuid.uuid4().hex[:6]}"
try:
    run(tmp, "tierkv", P.set_a(), name, BF)
    t = run(tmp, "tierkv", P.set_b(), name, BF)
finally:
    Path(f"/dev/shm/tierkv-{name}.arena").unlink(missing_ok=True)


def same(x, y):
    return sum(p == q for p, q in zip(x["outputs"], y["outputs"]))


print(json.dumps({
    "prompts": len(none["outputs"]),
    "max_tokens": a.max_tokens,
    "tierkv_vs_none": same(t, none),
    "own_prefix_cache_vs_none": same(own, none),
    "tierkv_vs_own_prefix_cache": same(t, own),
}))
