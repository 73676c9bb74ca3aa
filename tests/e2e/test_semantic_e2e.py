"""Semantic sharing with SmolLM2 in real vLLM.

1. Blocks built from a near-duplicate's KV hold, in layer 0 (whose keys and values
   depend only on the token and its position), what the model computes for the new
   prompt: the token layout and the key re-rotation match the model's own.
2. The connector serves a near-duplicate as an approximate prefix, and never stores
   the KV of such a request (it is not the exact KV of its tokens).
"""

from __future__ import annotations

import ctypes
import sys
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent.parent / "integration" / "vllm"))
import prompts as prompt_sets  # noqa: E402
from test_vllm_e2e import BLOCK, MODEL, engine_namespace, metric, run  # noqa: E402
from tierkv_vllm import TierKV  # noqa: E402
from tierkv_vllm.lib import DTYPE_F32, LOAD_LOADED, _rope  # noqa: E402

LAYERS, HEADS, HEAD = 30, 3, 64  # SmolLM2-135M
ROW = HEAD * 4
LAYER_BYTES = HEADS * 2 * BLOCK * ROW  # vLLM CPU layout, fp32


def tokens(text: str) -> list[int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(MODEL)(text)["input_ids"]


class Engine:
    """Engine memory in this process laid out as vLLM's CPU backend lays it out."""

    def __init__(self, tkv: TierKV, blocks: int):
        self.bufs = [ctypes.create_string_buffer(LAYER_BYTES * blocks) for _ in range(LAYERS)]
        tkv.register_layout([(ctypes.addressof(b), LAYER_BYTES, LAYER_BYTES) for b in self.bufs], blocks)
        rows = []
        for layer in range(LAYERS):
            # As the connector describes vLLM's CPU (`vec`) layout: keys transposed.
            rows.append((layer, 1, 0, 4, 2 * BLOCK * ROW, HEADS, ROW, BLOCK * 4))
            rows.append((layer, 0, BLOCK * ROW, ROW, 2 * BLOCK * ROW, HEADS, ROW, 0))
        tkv.register_token_layout(rows, _rope(DTYPE_F32, HEAD, HEAD, 100000.0, True))

    def rows(self, layer: int, block: int, key: bool):
        import numpy as np

        raw = np.frombuffer(self.bufs[layer].raw[block * LAYER_BYTES : (block + 1) * LAYER_BYTES], dtype=np.float32)
        kv = raw.reshape(HEADS, 2, BLOCK * HEAD)
        if key:  # [head][block_size] per head
            return kv[:, 0].reshape(HEADS, HEAD, BLOCK).transpose(0, 2, 1)
        return kv[:, 1].reshape(HEADS, BLOCK, HEAD)


def test_built_blocks_hold_the_models_layer0_kv_at_the_new_positions(tmp_path, monkeypatch):
    import numpy as np

    store = f"sem-l0-{uuid.uuid4().hex[:8]}"
    source = tokens(prompt_sets.SYSTEM)
    source = source[: len(source) // BLOCK * BLOCK]
    target = tokens("Note: please reply in plain English, briefly.")[:7] + source  # everything shifted by 7
    assert len(target) == len(source) + 7
    # The engine computes both prompts in full and stores their blocks.
    computed = run(tmp_path, "tierkv", [source, target], store)
    monkeypatch.setenv("TIERKV_STORE_NAME", store)
    monkeypatch.setenv("TIERKV_CPU_BYTES", "512MiB")
    monkeypatch.setenv("TIERKV_SEMANTIC", "1")
    monkeypatch.setenv("TIERKV_SEMANTIC_BLEND", "0")
    # The connector's namespace (identity.py), as the engine logged it.
    tkv = TierKV(
        block_tokens=BLOCK,
        block_bytes=LAYERS * LAYER_BYTES,
        namespace=engine_namespace(computed),
        exporter=False,
    )
    try:
        n = (len(target) - 1) // BLOCK
        exact = tkv.hash_tokens(target)[: n * 16]
        assert tkv.lookup(exact) == n, "the engine stored the target under the namespace used here"
        assert tkv.semantic_insert(source)
        plan, why = tkv.semantic_lookup(target, 0)
        assert why == "accepted", why
        eng = Engine(tkv, 2 * n)
        # Target blocks 1..n lie wholly after the 7 new tokens: built from the source.
        srcs, tmap = plan.token_map(1, n - 1)
        assert tkv.load_tokens(srcs, tmap, list(range(1, n))) == [LOAD_LOADED] * (n - 1)
        assert tkv.load_blocks(exact[16:], list(range(n + 1, 2 * n))) == [LOAD_LOADED] * (n - 1)
        worst_k = worst_v = 0.0
        for b in range(1, n):
            built_k, model_k = eng.rows(0, b, True), eng.rows(0, n + b, True)
            worst_k = max(worst_k, float(np.abs(built_k - model_k).max()))
            worst_v = max(worst_v, float(np.abs(eng.rows(0, b, False) - eng.rows(0, n + b, False)).max()))
        scale = float(np.abs(eng.rows(0, n + 1, True)).max())
        assert worst_v < 1e-4 * max(scale, 1.0), f"layer-0 values differ by {worst_v}"
        assert worst_k < 1e-3 * max(scale, 1.0), f"layer-0 keys differ by {worst_k} (scale {scale})"
        # Deeper layers saw 7 more tokens: their KV differs (the comparison is not vacuous).
        deep = max(float(np.abs(eng.rows(LAYERS - 1, b, True) - eng.rows(LAYERS - 1, n + b, True)).max()) for b in range(1, n))
        assert deep > 10 * worst_k, f"last layer keys differ by only {deep}"
    finally:
        tkv.close()
        Path(f"/dev/shm/tierkv-{store}.arena").unlink(missing_ok=True)
        Path(f"/dev/shm/tierkv-{store}.g3dir").unlink(missing_ok=True)


def test_a_near_duplicate_is_an_approximate_prefix_and_is_never_stored(tmp_path, monkeypatch):
    store = f"sem-vllm-{uuid.uuid4().hex[:8]}"
    a = prompt_sets.QUESTIONS_A[0]
    source = tokens(f"{prompt_sets.SYSTEM}\n\nQuestion: {a}\nAnswer:")
    # Another library's name in the first line: no exact prefix beyond it.
    other = prompt_sets.SYSTEM.replace("Riverside", "Lakeside")
    target = tokens(f"{other}\n\nQuestion: {a}\nAnswer:")
    # One prompt at a time, so the source is stored and indexed before the target.
    # Approximate KV accepted (the default serves vLLM none): a short name
    # substituted, the positions after it shifted if its length differs.
    env = {"TIERKV_SEMANTIC": "1", "TIERKV_SEMANTIC_SUBSTITUTE": "8", "TIERKV_SEMANTIC_PREFIX_SHIFT": "4096"}
    r = run(tmp_path, "tierkv", [source, target], store, args=("--max-tokens", "4", "--one-by-one"), extra_env=env)
    assert metric(r["metrics"], "tierkv_semantic_load_blocks_total", 'result="loaded"') > 0
    assert metric(r["metrics"], "tierkv_semantic_load_blocks_total", 'result="failed"') == 0
    # The index is consulted in the scheduler process; its counters are store-wide,
    # so the worker's exporter shows them too.
    assert metric(r["metrics"], "tierkv_semantic_lookups_total") > 0
    assert metric(r["metrics"], "tierkv_semantic_plans_total", 'result="accepted"') > 0
    monkeypatch.setenv("TIERKV_STORE_NAME", store)
    monkeypatch.setenv("TIERKV_CPU_BYTES", "512MiB")
    # The connector's namespace (identity.py), as the engine logged it.
    tkv = TierKV(
        block_tokens=BLOCK,
        block_bytes=LAYERS * LAYER_BYTES,
        namespace=engine_namespace(r),
        exporter=False,
    )
    try:
        shared = 0
        while source[shared] == target[shared]:
            shared += 1
        n = (len(target) - 1) // BLOCK
        m = (len(source) - 1) // BLOCK
        assert tkv.lookup(tkv.hash_tokens(source)[: m * 16]) == m, "the source is found: same namespace"
        hits = tkv.lookup(tkv.hash_tokens(target)[: n * 16])
        assert hits == shared // BLOCK, f"{hits} target blocks stored: KV built from a near-duplicate leaked"
        assert n > shared // BLOCK + 4
    finally:
        tkv.close()
        Path(f"/dev/shm/tierkv-{store}.arena").unlink(missing_ok=True)
        Path(f"/dev/shm/tierkv-{store}.g3dir").unlink(missing_ok=True)


def test_the_default_policy_serves_vllm_no_approximate_kv_and_says_why(tmp_path):
    # The near-duplicate of the test above, with every default: vLLM could only be
    # served the swapped name's KV (a question about the name would be answered
    # from the other prompt), so the connector keeps semantic sharing off.
    store = f"sem-vllm-default-{uuid.uuid4().hex[:8]}"
    a = prompt_sets.QUESTIONS_A[0]
    source = tokens(f"{prompt_sets.SYSTEM}\n\nQuestion: {a}\nAnswer:")
    target = tokens(f"{prompt_sets.SYSTEM.replace('Riverside', 'Lakeside')}\n\nQuestion: {a}\nAnswer:")
    env = {"TIERKV_SEMANTIC": "1"}
    try:
        r = run(tmp_path, "tierkv", [source, target], store, args=("--max-tokens", "4", "--one-by-one"), extra_env=env)
        assert "semantic sharing serves nothing in vLLM under this policy" in Path(r["log"]).read_text()
        assert metric(r["metrics"], "tierkv_semantic_load_blocks_total", 'result="loaded"') == 0
        assert metric(r["metrics"], "tierkv_semantic_lookups_total") == 0
    finally:
        Path(f"/dev/shm/tierkv-{store}.arena").unlink(missing_ok=True)
        Path(f"/dev/shm/tierkv-{store}.g3dir").unlink(missing_ok=True)
