"""``TierKVConnector``: vLLM's KV connector (``KVConnectorBase_V1``) over tierkv.

One instance runs in the scheduler process and one in each worker process. They
share no Python state: both open the same tierkv store (a shared-memory arena named
by ``TIERKV_STORE_NAME``), so what a worker stores, the scheduler finds. As vLLM's
own ``NixlConnector``, the class is a thin facade over one half per role:
``scheduler.TierKVConnectorScheduler`` and ``worker.TierKVConnectorWorker``
(``layouts`` turns vLLM's tensors and config into tierkv's terms; ``common`` holds
the per-step metadata and the error degrading both halves share).

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
them as if they were a prefix hit and computes the rest. The default policy allows
no difference (``TIERKV_SEMANTIC_SUBSTITUTE=0``, ``TIERKV_SEMANTIC_PREFIX_SHIFT=0``):
past the exact hit, vLLM cannot recompute the positions a near-duplicate gets
wrong, so semantic sharing stays off in vLLM unless a user accepts approximate KV.
Such a request's KV is not exact, so it is never stored or indexed, and semantic
sharing needs vLLM's own prefix cache off (``enable_prefix_caching=False``): vLLM
would otherwise register the approximate blocks under the prompt's exact identity.

Token positions and blocks (block_size 4 here)::

    prompt:   [t0 t1 t2 t3][t4 t5 t6 t7][t8 t9]      hashes h0, h1 (t8.. partial)
    lookup:   at most (len(prompt) - 1) // block_size blocks: the last prompt
              token is always computed by vLLM, so it can produce logits.
    loads:    blocks [num_computed // bs, hits)
    stores:   blocks [stored, (num_computed + num_scheduled) // bs) after the step
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
    KVConnectorWorkerMetadata,
)

from .. import identity
from ..lib import TierKV
from .common import Degrader, TierKVMetadata, TierKVWorkerMetadata, logger
from .events import TierKVEvents, events_wanted
from .layouts import _block_bytes, _rope_params, kv_regions
from .scheduler import TierKVConnectorScheduler, _cacheable
from .worker import TierKVConnectorWorker

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.request import Request

__all__ = [
    "Degrader",
    "TierKVConnector",
    "TierKVConnectorScheduler",
    "TierKVConnectorWorker",
    "TierKVEvents",
    "TierKVMetadata",
    "TierKVWorkerMetadata",
    "kv_regions",
    "_cacheable",
]


class TierKVConnector(KVConnectorBase_V1):
    """vLLM KV connector backed by libtierkv.so: the half of its role does the work."""

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
        bs = vllm_config.cache_config.block_size
        # Everything that changes the bytes of a block for the same tokens is part of
        # its identity (identity.py): the model and a fingerprint of its weights,
        # revision, quantization, overrides, RoPE, dtypes, block size, device,
        # attention backend and KV layout, tierkv's identity format, and the
        # operator's namespace (tenant, salt). Same-size dtypes never share.
        namespace = identity.namespace(vllm_config)
        logger.info("tierkv namespace: %s", namespace)
        is_scheduler = role == KVConnectorRole.SCHEDULER
        self._tkv = TierKV(
            block_tokens=bs,
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
        rope = _rope_params(vllm_config)
        semantic = self._semantic_allowed(vllm_config, rope)
        events = events_wanted(vllm_config)
        self._degrade = Degrader(self._tkv)
        self._scheduler: TierKVConnectorScheduler | None = None
        self._worker: TierKVConnectorWorker | None = None
        if is_scheduler:
            if self._kv_transfer_config.kv_load_failure_policy != "recompute":
                # A block that fails verification must be recomputed, never fail the
                # request: tierkv's loads are best effort by design.
                logger.info("tierkv: setting kv_load_failure_policy='recompute'")
                self._kv_transfer_config.kv_load_failure_policy = "recompute"
            self._scheduler = TierKVConnectorScheduler(
                self._tkv,
                bs,
                store_decode=bool(info["store_decode"]),
                rehash_from_start=info["hash_algo"] == 1,
                semantic=semantic,
                degrade=self._degrade,
                events=events,
            )
        else:
            layerwise = bool(self._kv_transfer_config.kv_connector_extra_config.get("layerwise", False))
            self._worker = TierKVConnectorWorker(
                self._tkv, vllm_config, kv_cache_config.num_blocks, rope, semantic, layerwise, self._degrade, events
            )
        logger.info(
            "tierkv connector (%s): block_size=%d block_bytes=%d host blocks=%d",
            role.name,
            bs,
            info["block_bytes"],
            info["host_capacity_blocks"],
        )

    def _semantic_allowed(self, vllm_config: "VllmConfig", rope: tuple[int, int, float] | None) -> bool:
        """Semantic sharing on for this namespace, and possible with this engine."""
        if not self._tkv.semantic_enabled():
            return False
        if vllm_config.cache_config.enable_prefix_caching:
            logger.warning(
                "tierkv: semantic sharing is off: it needs enable_prefix_caching=False "
                "(vLLM would cache KV built from a near-duplicate under the prompt's exact identity)"
            )
            return False
        if rope is None:
            logger.warning("tierkv: semantic sharing is off: this model's rotary embedding is not plain RoPE")
            return False
        if self._tkv.semantic_prefix_policy() == (0, 0):
            logger.warning(
                "tierkv: semantic sharing serves nothing in vLLM under this policy: vLLM can only load a prefix, "
                "and past the exact hit every near-duplicate position is a substituted token or shifted KV, which "
                "vLLM cannot recompute (measured to change answers, docs/semantic.md). Set "
                "TIERKV_SEMANTIC_SUBSTITUTE and/or TIERKV_SEMANTIC_PREFIX_SHIFT to accept approximate KV"
            )
            return False
        return True

    def _meta(self) -> TierKVMetadata | None:
        if not self.has_connector_metadata():
            return None
        meta = self._get_connector_metadata()
        assert isinstance(meta, TierKVMetadata)
        return meta

    # ------------------------------------------------------------------ worker side

    def register_kv_caches(self, kv_caches: dict[str, Any]) -> None:
        assert self._worker is not None
        self._worker.register_kv_caches(kv_caches)

    def start_load_kv(self, forward_context: Any, **kwargs: Any) -> None:
        assert self._worker is not None
        meta = self._meta()
        if meta is not None:
            self._worker.start_load_kv(meta)

    def wait_for_layer_load(self, layer_name: str) -> None:
        assert self._worker is not None
        self._worker.wait_for_layer_load(layer_name)

    def save_kv_layer(self, layer_name: str, kv_layer: Any, attn_metadata: Any, **kwargs: Any) -> None:
        # Whole blocks are copied once every layer is written (wait_for_save).
        return

    def wait_for_save(self) -> None:
        assert self._worker is not None
        self._worker.wait_for_save(self._meta())

    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str] | None, set[str] | None]:
        assert self._worker is not None
        return self._worker.get_finished(finished_req_ids)

    def get_kv_connector_kv_cache_events(self) -> TierKVEvents | None:
        assert self._worker is not None
        return self._worker.get_kv_connector_kv_cache_events()

    def get_block_ids_with_load_errors(self) -> set[int]:
        assert self._worker is not None
        return self._worker.get_block_ids_with_load_errors()

    def build_connector_worker_meta(self) -> KVConnectorWorkerMetadata | None:
        assert self._worker is not None
        return self._worker.build_connector_worker_meta()

    # --------------------------------------------------------------- scheduler side

    def get_num_new_matched_tokens(self, request: "Request", num_computed_tokens: int) -> tuple[int | None, bool]:
        assert self._scheduler is not None
        return self._scheduler.get_num_new_matched_tokens(request, num_computed_tokens)

    def update_state_after_alloc(self, request: "Request", blocks: "KVCacheBlocks", num_external_tokens: int) -> None:
        assert self._scheduler is not None
        self._scheduler.update_state_after_alloc(request, blocks, num_external_tokens)

    def build_connector_meta(self, scheduler_output: "SchedulerOutput") -> KVConnectorMetadata:
        assert self._scheduler is not None
        return self._scheduler.build_connector_meta(scheduler_output)

    def update_connector_output(self, connector_output: Any) -> None:
        if self._scheduler is not None:
            self._scheduler.update_connector_output(connector_output)

    def take_events(self) -> Any:
        if self._scheduler is None:
            return ()
        return self._scheduler.take_events()

    def request_finished(self, request: "Request", block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        assert self._scheduler is not None
        return self._scheduler.request_finished(request, block_ids)

    # ------------------------------------------------------------------------ both

    def shutdown(self) -> None:
        if self._worker is not None:
            self._worker.shutdown()
        # Queued disk writes finish before the store is closed: nothing is lost on a
        # planned shutdown.
        self._tkv.disk_flush(30.0)
        self._tkv.close()
