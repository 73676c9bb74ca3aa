"""vLLM's KV tensors and model config as tierkv sees them: regions of the KV
cache, bytes per block, and the RoPE of the keys (for semantic sharing)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.v1.kv_cache_interface import KVCacheConfig

# Models whose rotary embedding pairs dims as rotate-half (vLLM's is_neox_style).
_NEOX_MODELS = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "granite", "olmo2"}


def _rope_params(vllm_config: "VllmConfig") -> tuple[int, int, float] | None:
    """(head_dim, rot_dim, rope_theta) for plain rotate-half RoPE; None otherwise
    (semantic sharing then stays off: re-rotation would be wrong)."""
    hf = vllm_config.model_config.hf_config
    if getattr(hf, "model_type", None) not in _NEOX_MODELS:
        return None
    rp = getattr(hf, "rope_parameters", None) or getattr(hf, "rope_scaling", None) or {}
    if rp.get("rope_type", rp.get("type", "default")) != "default":
        return None
    base = rp.get("rope_theta", getattr(hf, "rope_theta", None))
    heads = getattr(hf, "num_attention_heads", 0)
    head_dim = getattr(hf, "head_dim", None) or (hf.hidden_size // heads if heads else 0)
    partial = rp.get("partial_rotary_factor", getattr(hf, "partial_rotary_factor", 1.0))
    if not base or not head_dim:
        return None
    return int(head_dim), int(head_dim * partial), float(base)


def _block_bytes(kv_cache_config: "KVCacheConfig") -> int:
    total = sum(t.size for t in kv_cache_config.kv_cache_tensors)
    if kv_cache_config.num_blocks <= 0 or total % kv_cache_config.num_blocks:
        raise ValueError(
            f"tierkv: KV cache of {total} bytes does not split into "
            f"{kv_cache_config.num_blocks} equal blocks"
        )
    return total // kv_cache_config.num_blocks


def _dense(sizes: tuple[int, ...], strides: tuple[int, ...]) -> bool:
    """Whether elements with these sizes and strides fill one contiguous range
    without gaps or overlaps, in any dimension order."""
    dims = sorted((st, sz) for sz, st in zip(sizes, strides) if sz != 1)
    expect = 1
    for st, sz in dims:
        if st != expect:
            return False
        expect *= sz
    return True


def kv_regions(kv_caches: dict[str, Any], num_blocks: int) -> list[tuple[int, int, int]]:
    """tierkv regions ``(base, block stride, bytes per block)`` of vLLM's per-layer
    KV tensors, in layer order (the same number per layer).

    Layouts (block dimension outermost, or right after a K/V dimension of 2; any
    order of the dimensions inside a block, e.g. FlashAttention's HND cache layout,
    as long as one block's elements are one contiguous range):
    ``[num_blocks, ...]`` (FlashInfer, CPU, MLA): one region per layer;
    ``[2, num_blocks, ...]`` (FlashAttention, Triton): K and V, two regions."""
    regions: list[tuple[int, int, int]] = []
    per_layer: int | None = None
    for name, t in kv_caches.items():
        item, sizes, strides = t.element_size(), tuple(t.shape), tuple(t.stride())
        if len(sizes) >= 2 and sizes[0] == num_blocks:
            halves, blk = [0], 0
        elif len(sizes) >= 3 and sizes[0] == 2 and sizes[1] == num_blocks:
            halves, blk = [0, strides[0]], 1
        else:
            raise ValueError(
                f"tierkv: unsupported KV cache layout for {name}: shape {sizes}, {num_blocks} blocks"
            )
        inner_sizes, inner_strides = sizes[blk + 1 :], strides[blk + 1 :]
        inner = 1
        for n in inner_sizes:
            inner *= n
        apart = len(halves) == 1 or abs(strides[0]) >= num_blocks * strides[blk]
        if not _dense(inner_sizes, inner_strides) or strides[blk] < inner or not apart:
            raise ValueError(
                f"tierkv: KV cache of {name} (shape {sizes}, strides {strides}) does not keep each "
                "block's elements in one contiguous range"
            )
        for h in halves:
            regions.append((t.data_ptr() + h * item, strides[blk] * item, inner * item))
        if per_layer not in (None, len(halves)):
            raise ValueError("tierkv: layers with different KV layouts are not supported")
        per_layer = len(halves)
    return regions
