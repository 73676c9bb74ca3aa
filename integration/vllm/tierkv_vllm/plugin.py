"""vLLM's general plugin (entry point ``vllm.general_plugins``: ``tierkv``).

vLLM loads it in every process (API server, engine core, workers) before it builds
anything. It

1. registers ``TierKVConnector`` with vLLM's connector factory, so an installed
   package is used by name alone::

       --kv-transfer-config '{"kv_connector":"TierKVConnector","kv_role":"kv_both"}'

   (``kv_connector_module_path`` still works and takes precedence);
2. with ``TIERKV_VLLM_POOL=shadow``, has vLLM's KV cache coordinator build a
   ``pool.ShadowBlockPool`` (vLLM's pool, every operation mirrored into tierkv's
   and compared) instead of its ``BlockPool``; with ``TIERKV_VLLM_POOL=rust``, a
   ``pool.RustBlockPool`` (tierkv's pool deciding free order, eviction victims
   and prefix hits; victims demoted to the host tier by the connector). It
   refuses, with a log line saying why, and leaves vLLM untouched, for a vLLM
   version other than the ones tested (``TESTED_VLLM``) and for engines whose
   pool use tierkv does not follow: hybrid models (several KV cache groups),
   partial-block prefix caching (``hash_block_size`` below the block size),
   decode or prefill context parallelism, and (``rust``) any attention type but
   full attention (Mamba's copy-on-write and HiSparse change block counts
   outside the pool).

Registration is idempotent (vLLM may load plugins more than once per process) and
never fails the engine.
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
from typing import Any

CONNECTOR_NAME = "TierKVConnector"
# vLLM versions the pool modes were run against (tests/e2e with TIERKV_VLLM_POOL=shadow and rust).
TESTED_VLLM = ("0.32.0",)
POOL_MODES = ("off", "shadow", "rust")

_log = logging.getLogger("vllm.tierkv")
_lock = threading.Lock()
_pool_installed = False
# The coordinator being built, while it is built (its pool is tierkv-backed).
_building = threading.local()


def register() -> None:
    _register_connector()
    mode = os.environ.get("TIERKV_VLLM_POOL", "off").strip().lower() or "off"
    if mode == "off":
        return
    if mode not in POOL_MODES:
        _log.error("tierkv: TIERKV_VLLM_POOL=%r is not one of %s; vLLM's pool is used", mode, "/".join(POOL_MODES))
        return
    _install_pool(mode)


def _register_connector() -> None:
    try:
        from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory
    except Exception as e:  # another vLLM layout: the module path still works
        _log.info("tierkv: connector not registered by name (%s); use kv_connector_module_path", e)
        return
    try:
        KVConnectorFactory.register_connector(CONNECTOR_NAME, "tierkv_vllm.connector", "TierKVConnector")
    except ValueError:  # already registered: plugins may load more than once
        return


def refusal(
    kv_cache_config: Any, hash_block_size: int, dcp_world_size: int, pcp_world_size: int, mode: str = "shadow"
) -> str | None:
    """Why this engine's pool cannot be shadowed (``mode="shadow"``) or replaced
    (``"rust"``); ``None``: it can."""
    groups = kv_cache_config.kv_cache_groups
    if len(groups) != 1:
        return f"{len(groups)} KV cache groups (hybrid model)"
    block_size = groups[0].kv_cache_spec.block_size
    if hash_block_size != block_size:
        return f"partial-block prefix caching (hash_block_size {hash_block_size} != block size {block_size})"
    if dcp_world_size > 1 or pcp_world_size > 1:
        return "decode/prefill context parallelism"
    spec = type(groups[0].kv_cache_spec).__name__
    if mode == "rust" and spec != "FullAttentionSpec":
        return f"attention type {spec} (only full attention keeps every block count inside the pool)"
    if mode == "rust" and getattr(kv_cache_config, "needs_kv_cache_zeroing", False):
        return "KV cache zeroing (mixed precision): vLLM zeroes new blocks before a victim could be demoted"
    return None


def _install_pool(mode: str) -> None:
    global _pool_installed
    with _lock:
        if _pool_installed:
            return
        try:
            import vllm
            from vllm.v1.core import kv_cache_coordinator, kv_cache_manager
        except Exception as e:
            _log.error("tierkv: pool %s not installed: %s", mode, e)
            return
        version = getattr(vllm, "__version__", "?")
        if version not in TESTED_VLLM:
            _log.error(
                "tierkv: pool %s refused: vLLM %s was not tested with it (tested: %s); vLLM's pool is used as is",
                mode,
                version,
                ", ".join(TESTED_VLLM),
            )
            return
        original_get = kv_cache_manager.get_kv_cache_coordinator
        original_pool = kv_cache_coordinator.BlockPool
        signature = inspect.signature(original_get)

        def get_kv_cache_coordinator(*args, **kwargs):
            a = signature.bind(*args, **kwargs).arguments
            config = a["kv_cache_config"]
            why = refusal(config, a["hash_block_size"], a.get("dcp_world_size", 1), a.get("pcp_world_size", 1), mode)
            if why is not None:
                _log.error("tierkv: pool %s refused: %s; vLLM's pool is used as is", mode, why)
                return original_get(*args, **kwargs)
            _building.config = config
            try:
                coordinator = original_get(*args, **kwargs)
            finally:
                _building.config = None
            if mode == "rust":
                _batch_lookups(coordinator)
            return coordinator

        def block_pool(*args, **kwargs):
            config = getattr(_building, "config", None)
            if config is None:
                return original_pool(*args, **kwargs)
            from .pool import RustBlockPool, ShadowBlockPool

            cls = RustBlockPool if mode == "rust" else ShadowBlockPool
            return cls(*args, tkv_factory=_tierkv_for(config, mode), **kwargs)

        kv_cache_manager.get_kv_cache_coordinator = get_kv_cache_coordinator
        kv_cache_coordinator.BlockPool = block_pool
        _pool_installed = True
        _log.info("tierkv: pool %s installed (TIERKV_VLLM_POOL=%s, vLLM %s)", mode, mode, version)


def _batch_lookups(coordinator: Any) -> None:
    """Runs the coordinator's prefix lookups inside ``RustBlockPool.lookahead``, so
    vLLM's block-by-block questions cost a few ctypes crossings per request."""
    from .pool import RustBlockPool

    pool = getattr(coordinator, "block_pool", None)
    find = getattr(coordinator, "find_longest_cache_hit", None)
    groups = getattr(getattr(coordinator, "kv_cache_config", None), "kv_cache_groups", None)
    if not isinstance(pool, RustBlockPool) or find is None or not groups:
        return
    block_size = groups[0].kv_cache_spec.block_size

    def find_longest_cache_hit(block_hashes, max_cache_hit_length, *args, **kwargs):
        with pool.lookahead(block_hashes, max_cache_hit_length // block_size):
            return find(block_hashes, max_cache_hit_length, *args, **kwargs)

    coordinator.find_longest_cache_hit = find_longest_cache_hit


def _tierkv_for(kv_cache_config: Any, mode: str):
    """A factory of the tierkv manager holding the engine pool: it joins the
    engine's store (same block size as the connector's), exports nothing (the
    connector's worker does) and never writes the disk tier."""

    def make(num_blocks: int):
        from .connector.layouts import _block_bytes
        from .lib import TierKV

        return TierKV(
            block_tokens=kv_cache_config.kv_cache_groups[0].kv_cache_spec.block_size,
            block_bytes=_block_bytes(kv_cache_config),
            namespace=f"tierkv-pool-{mode}",
            pool_blocks=num_blocks,
            exporter=False,
            disk_reader=True,
            # A shadow is compared with vLLM's pool call by call: vLLM's order.
            pool_engine_order=mode == "shadow",
        )

    return make
