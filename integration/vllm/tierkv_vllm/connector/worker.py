"""The worker half of the connector: registers vLLM's KV tensors, loads planned
blocks before the forward pass (synchronously, layer by layer, or on a loader
thread for disk hits), stores finished blocks after it, and reports what failed
(see the package docstring)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from ..lib import (
    DTYPE_BF16,
    DTYPE_F16,
    DTYPE_F32,
    LOAD_LOADED,
    OP_LOAD,
    OP_OTHER,
    OP_STORE,
    STORE_DEFERRED,
    STORE_FAILED,
    STORE_NO_SPACE,
    TierKV,
    TierKVError,
    _rope,
)
from .common import Degrader, TierKVMetadata, TierKVWorkerMetadata, logger
from .events import TierKVEvents, decode_batches
from .layouts import kv_regions

if TYPE_CHECKING:
    from vllm.config import VllmConfig


class TierKVConnectorWorker:
    """The connector's worker-side state and calls (``KVConnectorRole.WORKER``)."""

    def __init__(
        self,
        tkv: TierKV,
        vllm_config: "VllmConfig",
        num_blocks: int,
        rope: tuple[int, int, float] | None,
        semantic: bool,
        layerwise: bool,
        degrade: Degrader,
        events: bool = False,
    ):
        self._tkv = tkv
        self._vllm_config = vllm_config
        self._num_blocks = num_blocks
        self._rope = rope
        self._semantic = semantic
        self._degrade = degrade
        self._load_errors: set[int] = set()
        # Blocks whose store did not happen, reported after the step.
        self._unstored: dict[str, list[int]] = {}
        # The loader thread and what it finished (request id, failed blocks).
        self._loader: ThreadPoolExecutor | None = None
        self._loads_done: list[tuple[str, set[int]]] = []
        self._loads_lock = threading.Lock()
        # KV in GPU memory: the device, each layer's index, and the layer-by-layer
        # loads of the current forward pass.
        self._device: int | None = None
        self._layerwise = layerwise
        self._layer_index: dict[str, int] = {}
        self._layer_loads: list[Any] = []
        # KV events of the tiers (this process's stores, loads and evictions).
        self._events = events
        if events:
            tkv.events_start()

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

    def start_load_kv(self, meta: TierKVMetadata) -> None:
        """Starts this step's loads: synchronous ones before returning (or queued
        per layer), disk hits on the loader thread."""
        self._name_blocks(meta)
        if self._device is not None and (meta.loads or meta.async_loads or meta.demotes):
            # vLLM may still zero or write these blocks on its stream.
            self._sync_engine_stream()
        # Victims of tierkv's pool (TIERKV_VLLM_POOL=rust) first: this step's loads
        # and forward pass are about to overwrite them.
        for hashes, block_ids in meta.demotes:
            try:
                self._tkv.store_blocks(hashes, block_ids)
            except Exception as e:  # not demoted: recomputed when needed again
                self._degrade(OP_STORE, "demotion", e)
        for hashes, block_ids in meta.loads:
            try:
                if self._device is not None and self._layerwise:
                    results, load = self._tkv.load_blocks_layerwise(hashes, block_ids, len(self._layer_index))
                    self._layer_loads.append(load)
                else:
                    results = self._tkv.load_blocks(hashes, block_ids)
            except Exception as e:  # every block of the call recomputed
                self._degrade(OP_LOAD, "load", e)
                results = [None] * len(block_ids)
            for block_id, r in zip(block_ids, results):
                if r != LOAD_LOADED:
                    self._load_errors.add(block_id)
        for srcs, token_map, block_ids in meta.semantic_loads:
            try:
                results = self._tkv.load_tokens(srcs, token_map, block_ids)
            except Exception as e:  # every block recomputed, never a wrong one
                self._degrade(OP_LOAD, "semantic load", e)
                results = [None] * len(block_ids)
            for block_id, r in zip(block_ids, results):
                if r != LOAD_LOADED:
                    self._load_errors.add(block_id)
        for req_id, hashes, block_ids in meta.async_loads:
            if self._loader is None:
                self._loader = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tierkv-load")
            self._loader.submit(self._load_async, req_id, hashes, block_ids)

    def _name_blocks(self, meta: TierKVMetadata) -> None:
        """KV events on: names the step's blocks before they move (once per step)."""
        if not (self._events and meta.names):
            return
        names, meta.names = meta.names, []
        for hashes, keys, parents in names:
            try:
                self._tkv.name_blocks(hashes, keys, parents)
            except Exception as e:  # their events go unreported (counted as unnamed)
                self._degrade(OP_OTHER, "naming blocks for KV events", e)

    def get_kv_connector_kv_cache_events(self) -> TierKVEvents | None:
        """This step's KV events of the tiers, decoded with vLLM's classes."""
        if not self._events:
            return None
        try:
            events = decode_batches(self._tkv.take_events())
        except Exception as e:  # events are lost, never the step
            self._degrade(OP_OTHER, "taking KV events", e)
            return None
        return TierKVEvents(events) if events else None

    def _load_async(self, req_id: str, hashes: bytes, block_ids: list[int]) -> None:
        """Loader thread: the ctypes call releases the GIL while tierkv reads."""
        failed: set[int] = set()
        try:
            results = self._tkv.load_blocks(hashes, block_ids)
            failed = {b for b, r in zip(block_ids, results) if r != LOAD_LOADED}
        except Exception as e:  # report every block failed: vLLM recomputes them
            self._degrade(OP_LOAD, f"async load of request {req_id}", e)
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

    def wait_for_save(self, meta: TierKVMetadata | None) -> None:
        """Releases this step's layer loads and stores the finished blocks of
        ``meta`` (none without metadata)."""
        # The forward pass is queued, not done: its layers' waits are in the
        # stream, so the loads' staging can be released (waits for the copies).
        loads, self._layer_loads = self._layer_loads, []
        for load in loads:
            load.close()
        if meta is None:
            return
        self._name_blocks(meta)
        if self._device is not None and meta.stores:
            self._sync_engine_stream()  # the forward's writes before the copies out
        for req_id, positions, hashes, block_ids in meta.stores:
            try:
                results = self._tkv.store_blocks(hashes, block_ids)
            except Exception as e:  # not cached now; planned again by the scheduler
                self._degrade(OP_STORE, "store", e)
                results = [STORE_FAILED] * len(block_ids)
            missed = [p for p, r in zip(positions, results) if r in (STORE_DEFERRED, STORE_NO_SPACE, STORE_FAILED)]
            if missed:
                self._unstored.setdefault(req_id, []).extend(missed)

    def get_block_ids_with_load_errors(self) -> set[int]:
        errors, self._load_errors = self._load_errors, set()
        return errors

    def build_connector_worker_meta(self) -> TierKVWorkerMetadata | None:
        """The blocks whose store did not happen this step, for the scheduler."""
        if not self._unstored:
            return None
        unstored, self._unstored = self._unstored, {}
        return TierKVWorkerMetadata(unstored=unstored)

    def shutdown(self) -> None:
        """Waits for the loader thread's loads in flight."""
        if self._loader is not None:
            self._loader.shutdown(wait=True)
