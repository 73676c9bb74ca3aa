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


def test_an_index_built_from_stored_blocks_equals_one_built_from_the_keys(env):
    """Blocks in vLLM's CPU fp32 layout (per block and KV head: K transposed,
    [head_dim][block_size], then V [block_size][head_dim]), two layers (regions):
    the index read through the token layout selects exactly what the index of the
    same keys given directly selects."""
    import ctypes

    import numpy as np

    from tierkv_vllm.lib import DTYPE_F32, STORE_STORED, _rope

    bt, heads, dim, layers = 16, HEADS, DIM, 2
    slab = 2 * dim * bt * 4  # K then V of one head
    region = heads * slab  # one layer's block
    t = TierKV(block_tokens=bt, block_bytes=layers * region)
    nblocks = 40
    mems = [ctypes.create_string_buffer(region * nblocks) for _ in range(layers)]
    t.register_layout([(ctypes.addressof(m), region, region) for m in mems], nblocks)
    rows = []
    for layer in range(layers):
        # Keys: token stride 4 bytes, element stride bt * 4 (transposed).
        rows.append((layer, 1, 0, 4, slab, heads, dim * 4, bt * 4))
        rows.append((layer, 0, dim * bt * 4, dim * 4, slab, heads, dim * 4, 0))
    t.register_token_layout(rows, _rope(DTYPE_F32, dim, dim, 10000.0, True))
    rng = np.random.default_rng(3)
    n_tok = nblocks * bt - 5  # the last block partly used
    keys = rng.standard_normal((layers, heads, nblocks * bt, dim)).astype(np.float32)
    values = rng.standard_normal((layers, heads, nblocks * bt, dim)).astype(np.float32)
    for layer in range(layers):
        view = np.frombuffer(mems[layer], dtype=np.float32).reshape(nblocks, heads, 2, dim, bt)
        # view[b, h, 0] is K transposed: [dim][bt]; view[b, h, 1] V as [bt][dim].
        view[:, :, 0] = keys[layer].reshape(heads, nblocks, bt, dim).transpose(1, 0, 3, 2)
        vv = view[:, :, 1].reshape(nblocks, heads, bt * dim)
        vv[:] = values[layer].reshape(heads, nblocks, bt * dim).transpose(1, 0, 2)
    tokens = [random.Random(9).randrange(5000) for _ in range(nblocks * bt)]
    hashes = t.hash_tokens(tokens)
    assert t.store_blocks(hashes, list(range(nblocks))) == [STORE_STORED] * nblocks
    # The engine's copy is gone: the index reads the stored blocks.
    for m in mems:
        ctypes.memset(m, 0, len(m))
    from_blocks = t.pq_build_blocks(hashes, n_tok)
    direct = t.pq_build(np.ascontiguousarray(keys[:, :, :n_tok]), layers, heads, n_tok, dim)
    assert from_blocks.info["value_dim"] == dim and direct.info["value_dim"] == 0
    same = ("layers", "kv_heads", "head_dim", "tokens", "bytes")
    assert all(from_blocks.info[k] == direct.info[k] for k in same)
    q = rng.standard_normal((heads, GROUP, dim)).astype(np.float32)
    for layer in range(layers):
        sel = from_blocks.topk(layer, q, GROUP)
        assert sel == direct.topk(layer, q, GROUP)
        # The gather: each selected token's K and V rows, from the stored blocks.
        k, v, rows = from_blocks.gather(layer, sel)
        cap = max(len(x) for x in sel)
        k = np.frombuffer(k, dtype=np.float32).reshape(heads, cap, dim)
        v = np.frombuffer(v, dtype=np.float32).reshape(heads, cap, dim)
        for h in range(heads):
            assert rows[h] == len(sel[h])
            assert np.array_equal(k[h, : rows[h]], keys[layer, h, sel[h]])
            assert np.array_equal(v[h, : rows[h]], values[layer, h, sel[h]])
    # An index of keys has no blocks to gather from.
    with pytest.raises(TierKVError):
        direct.gather(0, sel)
    # Tokens appended after the build are the engine's: they end a head's rows.
    from_blocks.append(np.zeros((layers, heads, 3, dim), dtype=np.float32), 3)
    _, _, rows = from_blocks.gather(1, [[0, 5, n_tok + 1]] * heads)
    assert rows == [2] * heads
    with pytest.raises(TierKVError):  # not ascending
        from_blocks.gather(1, [[5, 0]] * heads)
    text = t.metrics_text()
    assert 'tierkv_pq_block_cache_total{result="hit"}' in text
    assert "tierkv_pq_gathers_total 3" in text
    # More tokens than the blocks hold, or a block not stored: refused.
    with pytest.raises(TierKVError):
        t.pq_build_blocks(hashes, nblocks * bt + 1)
    other = t.hash_tokens([7] * bt)
    with pytest.raises(TierKVError):
        t.pq_build_blocks(other, bt)
    t.close()
