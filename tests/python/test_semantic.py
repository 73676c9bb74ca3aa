"""Semantic sharing through the C ABI: plans, token maps and blocks built from a
near-duplicate, and re-rotated keys checked against vLLM's own rotary embedding
(the implementation SmolLM2 runs with in vLLM)."""

from __future__ import annotations

import ctypes
import json
import random
import struct
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "integration" / "vllm"))

from tierkv_vllm import TierKV  # noqa: E402
from tierkv_vllm.lib import DTYPE_F32, LOAD_LOADED, LOAD_MISS, STORE_STORED, TOKEN_SOURCE_BYTES, _rope, rerotate_keys  # noqa: E402

BT, HEADS, DIM = 4, 2, 8
ROW = DIM * 4
BLOCK = HEADS * 2 * BT * ROW  # vLLM's CPU layout: [heads, 2 * BT, DIM] fp32


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("TIERKV_SHM_DIR", str(tmp_path))
    monkeypatch.setenv("TIERKV_STORE_NAME", f"sem-{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("TIERKV_CPU_BYTES", "4MiB")
    monkeypatch.setenv("TIERKV_SEMANTIC", "1")
    monkeypatch.setenv("TIERKV_SEMANTIC_BLEND", "0")
    monkeypatch.setenv("TIERKV_SEMANTIC_MOVES", "1")
    monkeypatch.setenv("TIERKV_SEMANTIC_SUBSTITUTE", "0")
    # The mechanics of building shifted KV (the default serves vLLM none).
    monkeypatch.setenv("TIERKV_SEMANTIC_PREFIX_SHIFT", "4096")
    return tmp_path


def words(seed: int, n: int) -> list[int]:
    r = random.Random(seed)
    return [r.randrange(5000) for _ in range(n)]


def manager(namespace: str, blocks: int):
    t = TierKV(block_tokens=BT, block_bytes=BLOCK, namespace=namespace)
    mem = ctypes.create_string_buffer(BLOCK * blocks)
    t.register_layout([(ctypes.addressof(mem), BLOCK, BLOCK)], blocks)
    rows = [(0, 1, 0, ROW, 2 * BT * ROW, HEADS, ROW, 0), (0, 0, BT * ROW, ROW, 2 * BT * ROW, HEADS, ROW, 0)]
    t.register_token_layout(rows, _rope(DTYPE_F32, DIM, DIM, 10000.0, True))
    return t, mem


def rows_of(mem, block: int, slot: int, key: bool) -> list[bytes]:
    out = []
    for h in range(HEADS):
        at = block * BLOCK + (h * 2 * BT + (0 if key else BT) + slot) * ROW
        out.append(mem.raw[at : at + ROW])
    return out


def test_a_reordered_prompt_is_built_from_its_near_duplicate(env):
    t, mem = manager("m", 64)
    sys_p, doc_a, doc_b = words(1, 8), words(2, 40), words(3, 24)
    source = sys_p + doc_a + doc_b + words(4, 8)
    target = sys_p + doc_b + doc_a + words(5, 8)
    n_src = len(source) // BT
    for i in range(BLOCK * n_src):
        mem[i] = random.Random(i).randrange(256) & 0x3F  # finite floats
    hashes = t.hash_tokens(source)
    assert t.store_blocks(hashes, list(range(n_src))) == [STORE_STORED] * n_src
    assert t.semantic_insert(source)
    # Unrelated prompts get nothing; the exact prefix (sys, 2 blocks) is not enough.
    assert t.semantic_lookup(words(9, 80), 0) == (None, "no_candidate")
    plan, why = t.semantic_lookup(target, 8)
    assert why == "accepted", why
    runs, recompute = plan.full()
    assert recompute == [(72, 80)], "only the new question is recomputed"
    assert {r[0] - r[1] for r in runs} == {0, -40, 24}, runs
    # vLLM loads [8, 72): doc B then doc A, from the source's blocks.
    end = plan.approximate_prefix(8, len(target) - 1)
    assert end == 72
    srcs, tmap = plan.token_map(2, end // BT - 2)
    dst = list(range(40, 40 + end // BT - 2))
    assert t.load_tokens(srcs, tmap, dst) == [LOAD_LOADED] * len(dst)
    entries = [struct.unpack_from("IIi", tmap, k * TOKEN_SOURCE_BYTES) for k in range(len(tmap) // TOKEN_SOURCE_BYTES)]
    for k, (_, _, delta) in enumerate(entries):
        p = 8 + k
        sp = p - delta
        assert source[sp] == target[p]
        got_v = rows_of(mem, dst[k // BT], k % BT, key=False)
        assert got_v == rows_of(mem, sp // BT, sp % BT, key=False), f"value rows of position {p}"
        keys = bytearray(b"".join(rows_of(mem, sp // BT, sp % BT, key=True)))
        rerotate_keys(keys, [delta] * HEADS, DTYPE_F32, DIM, DIM, 10000.0)
        assert b"".join(rows_of(mem, dst[k // BT], k % BT, key=True)) == bytes(keys), f"keys of {p}"
    # A source that left the host tier fails the block (recompute), never serves garbage.
    other = t.hash_tokens(words(77, 4))
    assert t.load_tokens(other, tmap[: BT * TOKEN_SOURCE_BYTES], [50]) == [LOAD_MISS]
    assert "tierkv_semantic_plans_total{result=\"accepted\"} 1" in t.metrics_text()
    t.close()


def test_two_namespaces_never_share(env):
    a, mem = manager("tenant-a", 32)
    prompt = words(11, 64)
    n = len(prompt) // BT
    assert a.store_blocks(a.hash_tokens(prompt), list(range(n))) == [STORE_STORED] * n
    assert a.semantic_insert(prompt)
    b, _ = manager("tenant-b", 32)
    near = prompt[:30] + [4999] + prompt[31:]
    assert b.semantic_lookup(near, 0) == (None, "no_candidate")
    plan, why = a.semantic_lookup(near, 0)
    assert why == "accepted"
    a.close()
    b.close()


def test_off_by_default(env, monkeypatch):
    monkeypatch.delenv("TIERKV_SEMANTIC")
    t, _ = manager("m", 8)
    assert not t.semantic_enabled()
    assert not t.semantic_insert(words(1, 32))
    assert t.semantic_lookup(words(1, 32), 0) == (None, "not_consulted")
    t.close()


def test_a_prefix_only_engine_is_served_no_approximate_kv_by_default(env, monkeypatch):
    # The default policy: no substituted token, no shifted KV (the vLLM connector
    # then turns semantic sharing off and says why). A swapped name and a deleted
    # turn are still planned for engines that recompute; the approximate prefix is
    # empty until a user accepts approximate KV.
    monkeypatch.delenv("TIERKV_SEMANTIC_SUBSTITUTE")
    monkeypatch.delenv("TIERKV_SEMANTIC_PREFIX_SHIFT")
    t, mem = manager("prefix-only", 64)
    assert t.semantic_prefix_policy() == (0, 0)
    prompt = words(12, 96)
    n = len(prompt) // BT
    assert t.store_blocks(t.hash_tokens(prompt), list(range(n))) == [STORE_STORED] * n
    assert t.semantic_insert(prompt)
    swapped = prompt[:5] + [4998, 4999] + prompt[7:]
    slid = prompt[:4] + prompt[12:]
    for near in (swapped, slid):
        plan, why = t.semantic_lookup(near, 4)
        assert why == "accepted", why
        assert plan.approximate_prefix(4, len(near) - 1) == 0
    t.close()
    monkeypatch.setenv("TIERKV_SEMANTIC_SUBSTITUTE", "8")
    monkeypatch.setenv("TIERKV_SEMANTIC_PREFIX_SHIFT", "4096")
    t, _ = manager("prefix-only-opt-in", 8)
    assert t.semantic_prefix_policy() == (8, 4096)
    t.close()


def test_rerotated_keys_equal_keys_computed_at_the_new_position_by_vllm():
    torch = pytest.importorskip("torch")
    rope_mod = pytest.importorskip("vllm.model_executor.layers.rotary_embedding")
    python = Path(sys.executable)
    model = python.parent.parent / "smollm2" / "config.json"
    if not model.is_file():
        pytest.fail(f"{model} missing (scripts/vllm-env.sh builds it)")
    cfg = json.loads(model.read_text())
    head, heads = cfg["head_dim"], cfg["num_key_value_heads"]
    theta = cfg["rope_parameters"]["rope_theta"]
    # SmolLM2 is LlamaForCausalLM: vLLM builds its rotary embedding exactly so.
    from vllm.config import VllmConfig, set_current_vllm_config

    with set_current_vllm_config(VllmConfig()):
        rope = rope_mod.get_rope(
            head,
            max_position=cfg["max_position_embeddings"],
            rope_parameters=cfg["rope_parameters"],
            is_neox_style=True,
            dtype=torch.float32,
        )
    g = torch.Generator().manual_seed(7)
    n = 256
    raw = torch.randn(n, heads * head, generator=g)
    pos = torch.randint(0, 4096, (n,), generator=g)
    delta = torch.randint(-2048, 2048, (n,), generator=g)
    new = (pos + delta).clamp(0, 8191)
    delta = new - pos
    q = torch.zeros(n, heads * head)
    _, k_old = rope.forward_native(pos, q.clone(), raw.clone())
    _, k_new = rope.forward_native(new, q.clone(), raw.clone())
    buf = bytearray(k_old.contiguous().numpy().tobytes())
    rerotate_keys(buf, [int(d) for d in delta for _ in range(heads)], DTYPE_F32, head, head, float(theta))
    ours = torch.frombuffer(buf, dtype=torch.float32).reshape(n, heads * head)
    err = (ours - k_new).abs().max().item()
    # fp32: vLLM's cos/sin of (p + d) * f against ours of d * f applied to p * f;
    # angles up to ~8K rad carry ~5e-4 absolute rounding.
    assert err < 2e-3, f"max abs difference {err}"
    # Zero delta is the identity, bit for bit.
    same = bytearray(k_old.contiguous().numpy().tobytes())
    rerotate_keys(same, [0] * (n * heads), DTYPE_F32, head, head, float(theta))
    assert bytes(same) == k_old.contiguous().numpy().tobytes()
