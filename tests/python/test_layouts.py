"""vLLM's KV tensors as tierkv regions (``connector.kv_regions``), checked on CPU
tensors in the layouts of vLLM's attention backends (FlashAttention NHD and HND,
FlashInfer, CPU, MLA) and through the built library: blocks stored from one layout
come back byte for byte. Also: the GPU-only calls fail clearly without a GPU."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "integration" / "vllm"))

from tierkv_vllm import TierKV, TierKVError  # noqa: E402
from tierkv_vllm.connector import TierKVConnector, kv_regions  # noqa: E402
from tierkv_vllm.lib import LOAD_LOADED, STORE_STORED  # noqa: E402

NB, B, H, D = 6, 4, 2, 8  # blocks, block size, KV heads, head size


def flash_nhd(layers=3):
    return {f"layer.{i}": torch.randn(2, NB, B, H, D) for i in range(layers)}


def flash_hnd(layers=3):
    # Allocated [2, nb, H, B, D], seen as [2, nb, B, H, D] (vLLM's stride order).
    return {f"layer.{i}": torch.randn(2, NB, H, B, D).permute(0, 1, 3, 2, 4) for i in range(layers)}


def flashinfer(layers=3):
    return {f"layer.{i}": torch.randn(NB, 2, B, H, D) for i in range(layers)}


def test_regions_of_each_backend_layout():
    item = 4
    per_block = B * H * D * item
    caches = flash_nhd()
    regions = kv_regions(caches, NB)
    assert len(regions) == 6
    t = caches["layer.1"]
    assert regions[2] == (t.data_ptr(), per_block, per_block)
    assert regions[3] == (t.data_ptr() + NB * per_block, per_block, per_block)

    caches = flash_hnd()
    assert not caches["layer.0"].is_contiguous()
    regions = kv_regions(caches, NB)
    assert len(regions) == 6
    t = caches["layer.0"]
    assert regions[:2] == [(t.data_ptr(), per_block, per_block), (t.data_ptr() + NB * per_block, per_block, per_block)]

    regions = kv_regions(flashinfer(), NB)
    assert len(regions) == 3 and regions[0][1:] == (2 * per_block, 2 * per_block)

    cpu = {"a": torch.randn(NB, H, B, 2 * D)}  # vLLM's CPU backend
    mla = {"a": torch.randn(NB, B, 576, dtype=torch.bfloat16)}  # latent + rope dims
    assert kv_regions(cpu, NB) == [(cpu["a"].data_ptr(), per_block * 2, per_block * 2)]
    assert kv_regions(mla, NB) == [(mla["a"].data_ptr(), B * 576 * 2, B * 576 * 2)]


def test_layouts_that_split_a_block_are_refused_with_the_tensor_named():
    # Block dimension inside: one block's elements are strided over the tensor.
    inner = {"model.layers.0.attn": torch.randn(16, NB, 4).transpose(0, 1)}
    with pytest.raises(ValueError, match="model.layers.0.attn"):
        kv_regions(inner, NB)
    with pytest.raises(ValueError, match="unsupported KV cache layout"):
        kv_regions({"x": torch.randn(3, NB, 4)}, NB)
    mixed = {"a": torch.randn(2, NB, B, H, D), "b": torch.randn(NB, 2, B, H, D)}
    with pytest.raises(ValueError, match="different KV layouts"):
        kv_regions(mixed, NB)


@pytest.mark.parametrize("make", [flash_nhd, flash_hnd, flashinfer], ids=["nhd", "hnd", "flashinfer"])
def test_blocks_round_trip_through_the_library_in_each_layout(env, make):
    caches = make()
    regions = kv_regions(caches, NB)
    block_bytes = sum(r[2] for r in regions)
    tkv = TierKV(block_tokens=B, block_bytes=block_bytes, namespace=f"layout-{make.__name__}")
    tkv.register_layout(regions, NB)
    hashes = tkv.hash_tokens(list(range(2 * B + 1)))
    assert tkv.store_blocks(hashes, [0, 1]) == [STORE_STORED, STORE_STORED]
    before = {k: v.clone() for k, v in caches.items()}
    assert tkv.load_blocks(hashes, [4, 2]) == [LOAD_LOADED, LOAD_LOADED]
    for name, t in caches.items():
        kv_first = t.shape[0] == 2
        block = (lambda x, b: x[:, b]) if kv_first else (lambda x, b: x[b])
        assert torch.equal(block(t, 4), block(before[name], 0)), name
        assert torch.equal(block(t, 2), block(before[name], 1)), name
        for untouched in (0, 1, 3, 5):
            assert torch.equal(block(t, untouched), block(before[name], untouched)), name
    tkv.close()


def test_gpu_calls_fail_clearly_without_a_gpu(env):
    tkv = TierKV(block_tokens=B, block_bytes=4096, namespace="gpu")
    with pytest.raises(TierKVError) as e:
        tkv.register_device_layout([(1 << 40, 4096, 4096)], 8, 0)
    assert e.value.status == "UNAVAILABLE"
    assert "--features cuda" in str(e.value) or "libcuda" in str(e.value)
    with pytest.raises(TierKVError) as e:
        tkv.load_blocks_layerwise(tkv.hash_tokens(list(range(B))), [0], 1)
    # The default build has no GPU code; a `cuda` build has no device layout here.
    assert e.value.status in ("UNAVAILABLE", "STATE"), e.value
    tkv.close()


def test_layerwise_loads_ask_vllm_for_piecewise_cuda_graphs():
    assert TierKVConnector.requires_piecewise_for_cudagraph({"layerwise": True})
    assert not TierKVConnector.requires_piecewise_for_cudagraph({})
    assert not TierKVConnector.requires_piecewise_for_cudagraph(None)
