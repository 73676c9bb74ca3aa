"""``TierKVConnector``: vLLM's KV connector (``KVConnectorBase_V1``) over tierkv.

One instance runs in the scheduler process and one in each worker process. They
share no Python state: both open the same tierkv store (a shared-memory arena named
by ``TIERKV_STORE_NAME``), so what a worker stores, the scheduler finds.

Scheduler side, per request:
1. ``get_num_new_matched_tokens`` hashes the prompt's full blocks and asks tierkv for
   the longest run it holds beyond what vLLM has locally.
2. ``update_state_after_alloc`` records which engine blocks receive those blocks.
3. ``build_connector_meta`` (each step) sends the worker the loads to do now, and the
   blocks that become full and computed in this step (prompt and, with
   ``TIERKV_STORE_DECODE``, decode) to store after it.

Worker side, per step:
1. ``start_load_kv`` copies the planned blocks into vLLM's KV tensors, verifying
   each; a block that fails (evicted since the lookup, or corrupt) is reported by
   ``get_block_ids_with_load_errors`` and vLLM recomputes it. A hit that reaches
   into the disk tier is loaded asynchronously: ``get_num_new_matched_tokens``
   answers ``(n, True)``, vLLM parks the request (``WAITING_FOR_REMOTE_KVS``) and
   keeps running the others, a loader thread reads the blocks from disk (verified)
   into the request's engine blocks, and ``get_finished`` reports it done, with any
   failed blocks reported in the same step. Host-only hits load synchronously (a
   memory copy is cheaper than a scheduling round trip).
2. ``wait_for_save`` copies the finished blocks out, by pointer, once the forward
   pass has written every layer. Blocks whose store did not happen (deferred by the
   offload budget, no room, a failed call) go back to the scheduler in
   ``build_connector_worker_meta``; its ``update_connector_output`` plans them
   again (at most three times) while the request still holds them.

Library errors never reach vLLM's step loop: a failed load reports its blocks
failed (recomputed), a failed lookup is a miss, a failed store is retried as above,
a failed hash makes the request bypass the cache; each is counted
(``tierkv_adapter_errors_total``) and logged at most once a minute.

KV in GPU memory (vLLM's CUDA backends; libtierkv.so built with ``--features
cuda``): ``register_kv_caches`` registers the tensors as a device layout, and
loads and stores go through tierkv's pinned staging (docs/gpu.md). Before a device
load or store the worker waits for its current CUDA stream, so that tierkv's copy
stream never races vLLM's own work on those blocks (block zeroing before the
forward, the forward's writes before a store). With ``kv_connector_extra_config``
``{"layerwise": true}``, synchronous loads go layer by layer: each attention
layer's ``wait_for_layer_load`` makes the compute stream wait for that layer's
copies only, so layer l computes while layer l + 1 is in flight; the connector
then asks vLLM for PIECEWISE CUDA graphs (those waits cannot be captured).

Semantic sharing (``TIERKV_SEMANTIC``, docs/semantic.md): when the exact hit of a
prompt is short, the scheduler asks tierkv for a reuse plan from a cached
near-duplicate and turns it into an *approximate prefix*: the blocks after the
exact hit that can be built from the near-duplicate's KV (keys re-rotated to their
new positions), up to the first difference the policy does not allow. vLLM loads
them as if they were a prefix hit and computes the rest. Such a request's KV is
not exact, so it is never stored or indexed, and semantic sharing needs vLLM's own
prefix cache off (``enable_prefix_caching=False``): vLLM would otherwise register
the approximate blocks under the prompt's exact identity.

Token positions and blocks (block_size 4 here)::

    prompt:   [t0 t1 t2 t3][t4 t5 t6 t7][t8 t9]      hashes h0, h1 (t8.. partial)
    lookup:   at most (len(prompt) - 1) // block_size blocks: the last prompt
              token is always computed by vLLM, so it can produce logits.
    loads:    blocks [num_computed // bs, hits)
    stores:   blocks [stored, (num_computed + num_scheduled) // bs) after the step
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vllm.logger import init_logger
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
    KVConnectorWorkerMetadata,
)

from . import identity
from .lib import (
    DTYPE_BF16,
    DTYPE_F16,
    DTYPE_F32,
    HASH_BYTES,
    LOAD_LOADED,
    OP_HASH,
    OP_LOAD,
    OP_LOOKUP,
    OP_OTHER,
    OP_STORE,
    STORE_DEFERRED,
    STORE_FAILED,
    STORE_NO_SPACE,
    TIER_DISK,
    TOKEN_SOURCE_BYTES,
    TierKV,
    TierKVError,
    _rope,
)

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.request import Request

# Under vLLM's logger so that its handlers and level apply.
logger = init_logger("vllm.tierkv")


@dataclass
class TierKVMetadata(KVConnectorMetadata):
    """What the worker does this step: (hashes, engine block ids) pairs."""

    loads: list[tuple[bytes, list[int]]] = field(default_factory=list)
    # (request id, the blocks' positions in the request, hashes, engine block ids).
    stores: list[tuple[str, list[int], bytes, list[int]]] = field(default_factory=list)
    # (request id, hashes, engine block ids): loaded off the forward path.
    async_loads: list[tuple[str, bytes, list[int]]] = field(default_factory=list)
    # (source identities, token map, engine block ids): built from a near-duplicate.
    semantic_loads: list[tuple[bytes, bytes, list[int]]] = field(default_factory=list)


@dataclass
class TierKVWorkerMetadata(KVConnectorWorkerMetadata):
    """Worker -> scheduler after a step: blocks whose store did not happen
    (deferred by the offload budget, no room, or a failed call), by request and
    block position, so the scheduler plans them again."""

    unstored: dict[str, list[int]] = field(default_factory=dict)

    def aggregate(self, other: "KVConnectorWorkerMetadata") -> "KVConnectorWorkerMetadata":
        if isinstance(other, TierKVWorkerMetadata):
            for req, pos in other.unstored.items():
                self.unstored.setdefault(req, []).extend(pos)
        return self


# Times a block's store is planned again after it did not happen.
_STORE_RETRIES = 3


@dataclass
class _ReqState:
    request: Any
    prompt_len: int
    hashes: bytes = b""  # identities of the hashed full blocks, in order
    block_ids: list[int] = field(default_factory=list)
    stored: int = 0  # leading blocks already in tierkv (stored or loaded)
    pending_load: tuple[int, int] | None = None  # (first block, end block)
    pending_async: bool = False  # the pending load reaches the disk tier
    cacheable: bool = True
    # (first block, end block, source identities, token map) of a semantic load.
    semantic: tuple[int, int, bytes, bytes] | None = None
    approximate: bool = False  # KV built from a near-duplicate: never stored
    looked_up: bool = False  # the first lookup was counted (re-asks are not)
    retry: set[int] = field(default_factory=set)  # block positions to store again
    retries: dict[int, int] = field(default_factory=dict)  # position -> times retried


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


def _cacheable(request: "Request") -> bool:
    """Whether a request's KV is a function of its token ids alone. A LoRA adapter,
    a cache salt, multimodal inputs (placeholder tokens stand for different images)
    or prompt embeddings change the KV of the same tokens: such requests are neither
    looked up nor stored, rather than risk serving another request's KV."""
    return not (
        getattr(request, "lora_request", None)
        or getattr(request, "cache_salt", None)
        or getattr(request, "mm_features", None)
        or getattr(request, "prompt_embeds", None) is not None
    )


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


class TierKVConnector(KVConnectorBase_V1):
    """vLLM KV connector backed by libtierkv.so."""

    @classmethod
    def requires_piecewise_for_cudagraph(cls, extra_config: dict[str, Any]) -> bool:
        # Layer-by-layer loads wait per attention layer: not capturable.
        return bool((extra_config or {}).get("layerwise", False))

    def __init__(
        self,
        vllm_config: "VllmConfig",
        role: KVConnectorRole,
        kv_cache_config: "KVCacheConfig",
    ):
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        tp = vllm_config.parallel_config.tensor_parallel_size
        pp = vllm_config.parallel_config.pipeline_parallel_size
        if tp != 1 or pp != 1:
            raise ValueError(
                f"tierkv: tensor_parallel_size={tp}, pipeline_parallel_size={pp}: only 1 and 1 are supported"
            )
        if len(kv_cache_config.kv_cache_groups) != 1:
            raise ValueError(
                f"tierkv: {len(kv_cache_config.kv_cache_groups)} KV cache groups (hybrid attention) "
                "are not supported yet; models with one attention type are"
            )
        self._bs = vllm_config.cache_config.block_size
        self._num_blocks = kv_cache_config.num_blocks
        # Everything that changes the bytes of a block for the same tokens is part of
        # its identity (identity.py): the model and a fingerprint of its weights,
        # revision, quantization, overrides, RoPE, dtypes, block size, device,
        # attention backend and KV layout, tierkv's identity format, and the
        # operator's namespace (tenant, salt). Same-size dtypes never share.
        namespace = identity.namespace(vllm_config)
        logger.info("tierkv namespace: %s", namespace)
        is_scheduler = role == KVConnectorRole.SCHEDULER
        self._tkv = TierKV(
            block_tokens=self._bs,
            block_bytes=_block_bytes(kv_cache_config),
            namespace=namespace,
            # The worker stores and loads, so it owns the disk tier and serves the
            # metrics (host-tier counters are store-wide; disk-tier counters belong
            # to the process that does the I/O). The scheduler only looks blocks up,
            # through the owner's shared directory.
            exporter=not is_scheduler,
            disk_reader=is_scheduler,
        )
        info = self._tkv.info()
        self._rope = _rope_params(vllm_config)
        self._semantic = self._tkv.semantic_enabled()
        if self._semantic and vllm_config.cache_config.enable_prefix_caching:
            logger.warning(
                "tierkv: semantic sharing is off: it needs enable_prefix_caching=False "
                "(vLLM would cache KV built from a near-duplicate under the prompt's exact identity)"
            )
            self._semantic = False
        if self._semantic and self._rope is None:
            logger.warning("tierkv: semantic sharing is off: this model's rotary embedding is not plain RoPE")
            self._semantic = False
        self._store_decode = bool(info["store_decode"])
        # sha256_cbor identities cannot be continued from a truncated parent.
        self._rehash_from_start = info["hash_algo"] == 1
        self._reqs: dict[str, _ReqState] = {}
        self._last_logged: dict[tuple[int, int], float] = {}
        self._load_errors: set[int] = set()
        # Worker: blocks whose store did not happen, reported after the step.
        self._unstored: dict[str, list[int]] = {}
        # Scheduler: async loads planned in update_state_after_alloc, sent next step.
        self._async_planned: list[tuple[str, bytes, list[int]]] = []
        # Worker: the loader thread and what it finished (request id, failed blocks).
        self._loader: ThreadPoolExecutor | None = None
        self._loads_done: list[tuple[str, set[int]]] = []
        self._loads_lock = threading.Lock()
        # Worker, KV in GPU memory: the device, each layer's index, and the
        # layer-by-layer loads of the current forward pass.
        self._device: int | None = None
        self._layerwise = bool(self._kv_transfer_config.kv_connector_extra_config.get("layerwise", False))
        self._layer_index: dict[str, int] = {}
        self._layer_loads: list[Any] = []
        if is_scheduler and self._kv_transfer_config.kv_load_failure_policy != "recompute":
            # A block that fails verification must be recomputed, never fail the
            # request: tierkv's loads are best effort by design.
            logger.info("tierkv: setting kv_load_failure_policy='recompute'")
            self._kv_transfer_config.kv_load_failure_policy = "recompute"
        logger.info(
            "tierkv connector (%s): block_size=%d block_bytes=%d host blocks=%d",
            role.name,
            self._bs,
            info["block_bytes"],
            info["host_capacity_blocks"],
        )

    # ---------------------------------------------------------- degrading errors

    def _degraded(self, op: int, what: str, exc: BaseException) -> None:
        """A library call failed: count it (``tierkv_adapter_errors_total``) and log
        it at most once per minute per (operation, status); the caller degrades
        (recompute, miss, skip). The engine never sees the exception."""
        code = exc.code if isinstance(exc, TierKVError) else 8  # INTERNAL
        try:
            self._tkv.record_error(op, code)
        except Exception:  # counting is best effort
            pass
        key = (op, code)
        now = time.monotonic()
        if now - self._last_logged.get(key, -1e9) >= 60.0:
            self._last_logged[key] = now
            logger.warning("tierkv: %s failed (%s); degrading (further ones counted, logged once a minute)", what, exc)

    # ------------------------------------------------------------------ worker side

    def register_kv_caches(self, kv_caches: dict[str, Any]) -> None:
        regions = kv_regions(kv_caches, self._num_blocks)
        devices = {t.device.type for t in kv_caches.values()}
        if devices == {"cuda"}:
            index = next(iter(kv_caches.values())).device.index or 0
            try:
                self._tkv.register_device_layout(regions, self._num_blocks, index)
            except TierKVError as e:
                raise RuntimeError(
                    f"tierkv: vLLM's KV cache is in GPU memory but libtierkv.so cannot reach it ({e}); "
                    "build the library with `cargo build --release -p tierkv --features cuda`"
                ) from e
            self._device = index
            self._layer_index = {name: i for i, name in enumerate(kv_caches)}
            logger.info("tierkv: KV in GPU memory (device %d), layer-by-layer loads %s", index, self._layerwise)
        elif devices == {"cpu"}:
            self._tkv.register_layout(regions, self._num_blocks)
        else:
            raise ValueError(f"tierkv: KV cache on devices {sorted(devices)}: one device type is supported")
        if self._semantic:
            self._register_token_rows(kv_caches)

    def _register_token_rows(self, kv_caches: dict[str, Any]) -> None:
        """Where each token's K and V rows lie, for blocks built from a near-duplicate.
        Only layouts checked against the model's own KV (tests/e2e/test_semantic_e2e.py)
        are described; any other turns semantic sharing off."""
        import torch

        head_dim, rot_dim, base = self._rope
        isa = None
        try:
            from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

            t0 = next(iter(kv_caches.values()))
            isa = _get_attn_isa(t0.dtype, t0.shape[2], head_dim, self._vllm_config.cache_config.cache_dtype)
        except Exception:  # not the CPU backend, or another vLLM version
            isa = None
        rows = []
        for region, t in enumerate(kv_caches.values()):
            item = t.element_size()
            dtype = {torch.float32: DTYPE_F32, torch.float16: DTYPE_F16, torch.bfloat16: DTYPE_BF16}.get(t.dtype)
            row = head_dim * item
            cpu = t.shape[0] == self._num_blocks and t.dim() == 4 and t.shape[3] == 2 * head_dim
            if not (cpu and isa == "vec" and dtype is not None):
                logger.warning(
                    "tierkv: semantic sharing is off: KV layout %s (attention ISA %s) is not one whose "
                    "token rows were checked against the model",
                    tuple(t.shape),
                    isa,
                )
                self._semantic = False
                return
            # CPU `vec` ISA: per (block, head) the keys transposed ([head][block_size]),
            # then the value rows.
            heads, bs = t.shape[1], t.shape[2]
            rows.append((region, 1, 0, item, 2 * bs * row, heads, row, bs * item))
            rows.append((region, 0, bs * row, row, 2 * bs * row, heads, row, 0))
        self._tkv.register_token_layout(rows, _rope(dtype, head_dim, rot_dim, base, True))

    def start_load_kv(self, forward_context: Any, **kwargs: Any) -> None:
        if not self.has_connector_metadata():
            return
        meta = self._get_connector_metadata()
        assert isinstance(meta, TierKVMetadata)
        if self._device is not None and (meta.loads or meta.async_loads):
            # vLLM may still zero or write these blocks on its stream.
            self._sync_engine_stream()
        for hashes, block_ids in meta.loads:
            try:
                if self._device is not None and self._layerwise:
                    results, load = self._tkv.load_blocks_layerwise(hashes, block_ids, len(self._layer_index))
                    self._layer_loads.append(load)
                else:
                    results = self._tkv.load_blocks(hashes, block_ids)
            except Exception as e:  # every block of the call recomputed
                self._degraded(OP_LOAD, "load", e)
                results = [None] * len(block_ids)
            for block_id, r in zip(block_ids, results):
                if r != LOAD_LOADED:
                    self._load_errors.add(block_id)
        for srcs, token_map, block_ids in meta.semantic_loads:
            try:
                results = self._tkv.load_tokens(srcs, token_map, block_ids)
            except Exception as e:  # every block recomputed, never a wrong one
                self._degraded(OP_LOAD, "semantic load", e)
                results = [None] * len(block_ids)
            for block_id, r in zip(block_ids, results):
                if r != LOAD_LOADED:
                    self._load_errors.add(block_id)
        for req_id, hashes, block_ids in meta.async_loads:
            if self._loader is None:
                self._loader = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tierkv-load")
            self._loader.submit(self._load_async, req_id, hashes, block_ids)

    def _load_async(self, req_id: str, hashes: bytes, block_ids: list[int]) -> None:
        """Loader thread: the ctypes call releases the GIL while tierkv reads."""
        failed: set[int] = set()
        try:
            results = self._tkv.load_blocks(hashes, block_ids)
            failed = {b for b, r in zip(block_ids, results) if r != LOAD_LOADED}
        except Exception as e:  # report every block failed: vLLM recomputes them
            self._degraded(OP_LOAD, f"async load of request {req_id}", e)
            failed = set(block_ids)
        with self._loads_lock:
            self._loads_done.append((req_id, failed))

    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str] | None, set[str] | None]:
        with self._loads_lock:
            done, self._loads_done = self._loads_done, []
        if not done:
            return None, None
        # Failed blocks must be reported no later than the step that reports the
        # request finished: get_block_ids_with_load_errors runs right after this.
        for _, failed in done:
            self._load_errors |= failed
        return None, {req_id for req_id, _ in done}

    def _sync_engine_stream(self) -> None:
        import torch

        torch.cuda.current_stream(self._device).synchronize()

    def wait_for_layer_load(self, layer_name: str) -> None:
        if not self._layer_loads:
            return
        import torch

        # A layer not registered (none expected): wait for every layer.
        layer = self._layer_index.get(layer_name, len(self._layer_index) - 1)
        stream = torch.cuda.current_stream(self._device).cuda_stream
        for load in self._layer_loads:
            load.wait_stream(layer, stream)

    def save_kv_layer(self, layer_name: str, kv_layer: Any, attn_metadata: Any, **kwargs: Any) -> None:
        # Whole blocks are copied once every layer is written (wait_for_save).
        return

    def wait_for_save(self) -> None:
        # The forward pass is queued, not done: its layers' waits are in the
        # stream, so the loads' staging can be released (waits for the copies).
        loads, self._layer_loads = self._layer_loads, []
        for load in loads:
            load.close()
        if not self.has_connector_metadata():
            return
        meta = self._get_connector_metadata()
        assert isinstance(meta, TierKVMetadata)
        if self._device is not None and meta.stores:
            self._sync_engine_stream()  # the forward's writes before the copies out
        for req_id, positions, hashes, block_ids in meta.stores:
            try:
                results = self._tkv.store_blocks(hashes, block_ids)
            except Exception as e:  # not cached now; planned again by the scheduler
                self._degraded(OP_STORE, "store", e)
                results = [STORE_FAILED] * len(block_ids)
            missed = [p for p, r in zip(positions, results) if r in (STORE_DEFERRED, STORE_NO_SPACE, STORE_FAILED)]
            if missed:
                self._unstored.setdefault(req_id, []).extend(missed)

    def get_block_ids_with_load_errors(self) -> set[int]:
        errors, self._load_errors = self._load_errors, set()
        return errors

    def build_connector_worker_meta(self) -> KVConnectorWorkerMetadata | None:
        """The blocks whose store did not happen this step, for the scheduler."""
        if not self._unstored:
            return None
        unstored, self._unstored = self._unstored, {}
        return TierKVWorkerMetadata(unstored=unstored)

    def update_connector_output(self, connector_output: Any) -> None:
        """Scheduler: blocks the worker could not store are planned again (at most
        ``_STORE_RETRIES`` times each) while their request still holds them."""
        meta = getattr(connector_output, "kv_connector_worker_meta", None)
        if not isinstance(meta, TierKVWorkerMetadata):
            return
        for req_id, positions in meta.unstored.items():
            st = self._reqs.get(req_id)
            if st is None:
                continue
            for p in positions:
                if st.retries.get(p, 0) < _STORE_RETRIES:
                    st.retries[p] = st.retries.get(p, 0) + 1
                    st.retry.add(p)

    def shutdown(self) -> None:
        if self._loader is not None:
            self._loader.shutdown(wait=True)
        # Queued disk writes finish before the store is closed: nothing is lost on a
        # planned shutdown.
        self._tkv.disk_flush(30.0)
        self._tkv.close()

    # --------------------------------------------------------------- scheduler side

    def _state(self, request: "Request") -> _ReqState:
        st = self._reqs.get(request.request_id)
        if st is None:
            prompt = request.prompt_token_ids or []
            st = _ReqState(request=request, prompt_len=len(prompt), cacheable=_cacheable(request))
            if st.cacheable:
                try:
                    st.hashes = self._tkv.hash_tokens(prompt)
                except Exception as e:  # the request bypasses the cache
                    self._degraded(OP_HASH, "hashing a prompt", e)
                    st.cacheable = False
            self._reqs[request.request_id] = st
        return st

    def get_num_new_matched_tokens(self, request: "Request", num_computed_tokens: int) -> tuple[int | None, bool]:
        st = self._state(request)
        st.pending_load = None
        st.pending_async = False
        st.semantic = None
        if not st.cacheable:
            return 0, False
        # All known tokens: the prompt, plus the output so far for a request that
        # resumes after preemption (its decode blocks were stored too).
        max_blocks = max(len(request.all_token_ids) - 1, 0) // self._bs
        if not self._hash_upto(st, max_blocks):
            return 0, False
        max_blocks = min(max_blocks, len(st.hashes) // HASH_BYTES)
        start = num_computed_tokens // self._bs
        if max_blocks <= start:
            return 0, False
        try:
            # vLLM asks again for a waiting request: only its first lookup counts
            # as a request in tierkv's lookup metrics.
            tiers = self._tkv.lookup_tiers(st.hashes[: max_blocks * HASH_BYTES], repeat=st.looked_up)
        except Exception as e:  # a failed lookup is a miss
            self._degraded(OP_LOOKUP, "lookup", e)
            return 0, False
        st.looked_up = True
        hits = max(len(tiers), start)
        pending_async = TIER_DISK in tiers[start:hits]
        end = hits
        if self._semantic and not pending_async and num_computed_tokens == 0 and not st.approximate:
            try:
                end = self._semantic_plan(st, request, hits)
            except Exception:  # a failed lookup is a miss, never a failed request
                logger.exception("tierkv: semantic lookup failed for request %s", request.request_id)
                st.semantic = None
        if end <= start:
            return 0, False
        st.pending_load = (start, hits)
        st.pending_async = pending_async
        return (end - start) * self._bs, st.pending_async

    def _semantic_plan(self, st: _ReqState, request: "Request", hits: int) -> int:
        """End block of an approximate prefix after ``hits`` exact blocks (a fresh
        prompt only), recording the token map in ``st.semantic``."""
        if len(request.all_token_ids) != st.prompt_len:
            return hits
        plan, _ = self._tkv.semantic_lookup(request.prompt_token_ids, hits * self._bs)
        if plan is None:
            return hits
        end = plan.approximate_prefix(hits * self._bs, st.prompt_len - 1) // self._bs
        if end <= hits:
            return hits
        srcs, token_map = plan.token_map(hits, end - hits)
        st.semantic = (hits, end, srcs, token_map)
        return end

    def update_state_after_alloc(self, request: "Request", blocks: "KVCacheBlocks", num_external_tokens: int) -> None:
        st = self._reqs.get(request.request_id)
        if st is None:
            return
        if num_external_tokens == 0 or st.pending_load is None:
            st.pending_load = None  # vLLM chose not to load: plan nothing
            st.semantic = None
            return
        start, end = st.pending_load
        # vLLM may accept fewer external tokens than offered: load only those.
        accepted = start + num_external_tokens // self._bs
        end = min(end, accepted)
        st.pending_load = (start, end)
        if st.semantic is not None:
            first, s_end, srcs, token_map = st.semantic
            s_end = min(s_end, accepted)
            st.semantic = None
            if s_end > first:
                n = (s_end - first) * self._bs * TOKEN_SOURCE_BYTES
                st.semantic = (first, s_end, srcs, token_map[:n])
                # Built from a near-duplicate: this request's KV is never stored.
                st.approximate = True
        st.block_ids = list(blocks.get_block_ids()[0])
        if st.pending_async:
            # The request waits (not scheduled) until the worker reports the load.
            self._async_planned.append(
                (request.request_id, st.hashes[start * HASH_BYTES : end * HASH_BYTES], st.block_ids[start:end])
            )
            st.stored = max(st.stored, end)
            st.pending_load = None
            st.pending_async = False

    def build_connector_meta(self, scheduler_output: "SchedulerOutput") -> KVConnectorMetadata:
        meta = TierKVMetadata()
        meta.async_loads, self._async_planned = self._async_planned, []
        so = scheduler_output
        for new_req in so.scheduled_new_reqs:
            st = self._reqs.get(new_req.req_id)
            if st is None:
                continue
            st.block_ids = list(new_req.block_ids[0])
            self._plan_load(st, meta)
            done = new_req.num_computed_tokens + so.num_scheduled_tokens.get(new_req.req_id, 0)
            self._plan_stores(st, done, meta)
        cached = so.scheduled_cached_reqs
        for i, req_id in enumerate(cached.req_ids):
            st = self._reqs.get(req_id)
            if st is None:
                continue
            new_ids = cached.new_block_ids[i]
            if req_id in cached.resumed_req_ids:
                # Back from preemption: a new block table, and possibly a new load
                # planned by get_num_new_matched_tokens.
                st.block_ids = list(new_ids[0]) if new_ids else []
                st.stored = 0
                st.retry.clear()  # a new block table: everything is re-planned
                if st.pending_load is not None:
                    logger.info(
                        "tierkv: request %s resumed after preemption; loading %d blocks",
                        req_id,
                        st.pending_load[1] - st.pending_load[0],
                    )
                self._plan_load(st, meta)
            elif new_ids:
                st.block_ids.extend(new_ids[0])
            done = cached.num_computed_tokens[i] + so.num_scheduled_tokens.get(req_id, 0)
            self._plan_stores(st, done, meta)
        return meta

    def _hash_upto(self, st: _ReqState, n_blocks: int) -> bool:
        """Extends st.hashes towards the first n_blocks full blocks of the request,
        hashing only tokens that exist: under async scheduling vLLM counts tokens
        still in flight as computed, and they are not in ``all_token_ids`` yet (so
        st.hashes may end up shorter than asked). False when hashing failed (the
        request then bypasses the cache)."""
        have = len(st.hashes) // HASH_BYTES
        tokens = st.request.all_token_ids
        n_blocks = min(n_blocks, len(tokens) // self._bs)
        if n_blocks <= have:
            return True
        try:
            if self._rehash_from_start:
                st.hashes = self._tkv.hash_tokens(list(tokens[: n_blocks * self._bs]))
            else:
                parent = st.hashes[-HASH_BYTES:] if have else None
                st.hashes += self._tkv.hash_tokens(list(tokens[have * self._bs : n_blocks * self._bs]), parent)
        except Exception as e:
            self._degraded(OP_HASH, "hashing tokens", e)
            st.cacheable = False
            return False
        return True

    def _plan_load(self, st: _ReqState, meta: TierKVMetadata) -> None:
        if st.semantic is not None:
            first, end, srcs, token_map = st.semantic
            meta.semantic_loads.append((srcs, token_map, st.block_ids[first:end]))
            st.stored = max(st.stored, end)
            st.semantic = None
        if st.pending_load is None:
            return
        start, end = st.pending_load
        if end > start:
            meta.loads.append((st.hashes[start * HASH_BYTES : end * HASH_BYTES], st.block_ids[start:end]))
        st.stored = max(st.stored, end)
        st.pending_load = None

    def _plan_stores(self, st: _ReqState, computed_tokens: int, meta: TierKVMetadata) -> None:
        if not st.cacheable or st.approximate:
            return
        if st.retry:
            # Blocks the worker could not store: the request still holds them (a
            # resumed request's retries were cleared with its old block table).
            limit = min(st.stored, len(st.block_ids), len(st.hashes) // HASH_BYTES)
            again = sorted(p for p in st.retry if p < limit)
            st.retry.clear()
            if again:
                hashes = b"".join(st.hashes[p * HASH_BYTES : (p + 1) * HASH_BYTES] for p in again)
                meta.stores.append((st.request.request_id, again, hashes, [st.block_ids[p] for p in again]))
        limit = computed_tokens if self._store_decode else min(computed_tokens, st.prompt_len)
        n_full = min(limit // self._bs, len(st.block_ids))
        if n_full <= st.stored or not self._hash_upto(st, n_full):
            return
        # Only blocks whose identities exist (async scheduling: the last tokens may
        # still be in flight); the rest is stored in a later step, never skipped.
        n_full = min(n_full, len(st.hashes) // HASH_BYTES)
        if n_full <= st.stored:
            return
        meta.stores.append(
            (
                st.request.request_id,
                list(range(st.stored, n_full)),
                st.hashes[st.stored * HASH_BYTES : n_full * HASH_BYTES],
                st.block_ids[st.stored : n_full],
            )
        )
        st.stored = n_full

    def request_finished(self, request: "Request", block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        st = self._reqs.pop(request.request_id, None)
        if self._semantic and st is not None and st.cacheable and not st.approximate and st.stored > 0:
            # Its prompt blocks are stored: a later near-duplicate may reuse them.
            try:
                self._tkv.semantic_insert(request.prompt_token_ids)
            except Exception as e:
                self._degraded(OP_OTHER, "semantic insert", e)
        return False, None
