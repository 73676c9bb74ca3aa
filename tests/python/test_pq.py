"""PQ retrieval through the Python binding: an index of keys, the tokens of a
decode step per KV head, appends, and bad arguments refused."""

from __future__ import annotations

import array
import random
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "integration" / "vllm"))

from tierkv_vllm import TierKV  # noqa: E402
from tierkv_vllm.lib import TierKVError  # noqa: E402

LAYERS, HEADS, DIM, GROUP = 2, 3, 32, 3


def keys(n: int, planted: int, seed: int = 1) -> array.array:
    r = random.Random(seed)
    k = array.array("f", (r.uniform(-0.5, 0.5) for _ in range(LAYERS * HEADS * n * DIM)))
    for lh in range(LAYERS * HEADS):
        at = (lh * n + planted) * DIM
        for d in range(DIM):
            k[at + d] = 3.0
    return k


def test_an_index_selects_the_planted_token_with_sinks_and_window(env, monkeypatch):
    monkeypatch.setenv("TIERKV_PQ_SINK", "8")
    t = TierKV(block_tokens=16, block_bytes=4096)
    assert t.pq_params()["sink"] == 8
    n = 500
    ix = t.pq_build(keys(n, 321), LAYERS, HEADS, n, DIM)
    assert ix.info["tokens"] == n and ix.info["kv_heads"] == HEADS
    q = array.array("f", [1.0] * (HEADS * GROUP * DIM))
    for layer in range(LAYERS):
        sel = ix.topk(layer, q, GROUP)
        assert len(sel) == HEADS
        for s in sel:
            assert s == sorted(s) and len(s) == 8 + 100
            assert 321 in s and all(i in s for i in range(8)) and n - 1 in s
    assert len(ix.topk(0, q, GROUP, budget=0.1)[0]) == 8 + 50
    ix.append(keys(4, 0, seed=2), 4)
    assert ix.info["tokens"] == n + 4
    # Other parameters for one index: a sub-space count that does not divide.
    with pytest.raises(TierKVError):
        t.pq_build(keys(n, 1), LAYERS, HEADS, n, DIM, params={"subspaces": 3})
    with pytest.raises(TierKVError):
        ix.topk(LAYERS, q, GROUP)
    with pytest.raises(TierKVError):
        t.pq_build(keys(n, 1)[:-1], LAYERS, HEADS, n, DIM)
    assert "tierkv_pq_builds_total 1" in t.metrics_text()
    ix.close()
    ix.close()
    t.close()
