"""vLLM's general plugin (entry point ``vllm.general_plugins``: ``tierkv``).

vLLM loads it in every process (API server, engine core, workers) before it builds
anything. It

1. registers ``TierKVConnector`` with vLLM's connector factory, so an installed
   package is used by name alone::

       --kv-transfer-config '{"kv_connector":"TierKVConnector","kv_role":"kv_both"}'

   (``kv_connector_module_path`` still works and takes precedence);
2. with ``TIERKV_VLLM_POOL=shadow``, has vLLM's KV cache coordinator build a
   ``pool.ShadowBlockPool`` (vLLM's pool, every operation mirrored into tierkv's
   and compared) instead of its ``BlockPool``. It refuses, with a log line saying
   why, and leaves vLLM untouched, for a vLLM version other than the ones tested
   (``TESTED_VLLM``) and for engines whose pool use tierkv does not mirror: hybrid
   models (several KV cache groups), partial-block prefix caching
   (``hash_block_size`` below the block size), decode or prefill context
   parallelism. ``TIERKV_VLLM_POOL=rust`` (tierkv's pool deciding) is not
   available yet: it is refused the same way.

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
# vLLM versions the pool shadow was run against (tests/e2e, TIERKV_VLLM_POOL=shadow).
TESTED_VLLM = ("0.32.0",)
POOL_MODES = ("off", "shadow", "rust")

_log = logging.getLogger("vllm.tierkv")
_lock = threading.Lock()
_pool_installed = False
# The coordinator being built, while it is built (its pool is a shadow).
_building = threading.local()


def register() -> None:
    _register_connector()
    mode = os.environ.get("TIERKV_VLLM_POOL", "off").strip().lower() or "off"
    if mode == "off":
        return
    if mode not in POOL_MODES:
        _log.error("tierkv: TIERKV_VLLM_POOL=%r is not one of %s; vLLM's pool is used", mode, "/".join(POOL_MODES))
        return
    if mode == "rust":
        _log.error(
            "tierkv: TIERKV_VLLM_POOL=rust (tierkv's pool deciding) is not available in this version; "
            "vLLM's pool is used (TIERKV_VLLM_POOL=shadow compares the two)"
        )
        return
    _install_shadow()


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


def refusal(kv_cache_config: Any, hash_block_size: int, dcp_world_size: int, pcp_world_size: int) -> str | None:
    """Why this engine's pool cannot be shadowed (``None``: it can)."""
    groups = kv_cache_config.kv_cache_groups
    if len(groups) != 1:
        return f"{len(groups)} KV cache groups (hybrid model)"
    block_size = groups[0].kv_cache_spec.block_size
    if hash_block_size != block_size:
        return f"partial-block prefix caching (hash_block_size {hash_block_size} != block size {block_size})"
    if dcp_world_size > 1 or pcp_world_size > 1:
        return "decode/prefill context parallelism"
    return None


def _install_shadow() -> None:
    global _pool_installed
    with _lock:
        if _pool_installed:
            return
        try:
            import vllm
            from vllm.v1.core import kv_cache_coordinator, kv_cache_manager
        except Exception as e:
            _log.error("tierkv: pool shadow not installed: %s", e)
            return
        version = getattr(vllm, "__version__", "?")
        if version not in TESTED_VLLM:
            _log.error(
                "tierkv: pool shadow refused: vLLM %s was not tested with it (tested: %s); vLLM's pool is used as is",
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
            why = refusal(config, a["hash_block_size"], a.get("dcp_world_size", 1), a.get("pcp_world_size", 1))
            if why is not None:
                _log.error("tierkv: pool shadow refused: %s; vLLM's pool is used as is", why)
                return original_get(*args, **kwargs)
            _building.config = config
            try:
                return original_get(*args, **kwargs)
            finally:
                _building.config = None

        def block_pool(*args, **kwargs):
            config = getattr(_building, "config", None)
            if config is None:
                return original_pool(*args, **kwargs)
            from .pool import ShadowBlockPool

            return ShadowBlockPool(*args, tkv_factory=_tierkv_for(config), **kwargs)

        kv_cache_manager.get_kv_cache_coordinator = get_kv_cache_coordinator
        kv_cache_coordinator.BlockPool = block_pool
        _pool_installed = True
        _log.info("tierkv: pool shadow installed (TIERKV_VLLM_POOL=shadow, vLLM %s)", version)


def _tierkv_for(kv_cache_config: Any):
    """A factory of the tierkv manager holding the shadow pool: it joins the
    engine's store (same block size as the connector's), exports nothing (the
    connector's worker does) and never writes the disk tier."""

    def make(num_blocks: int):
        from .connector.layouts import _block_bytes
        from .lib import TierKV

        return TierKV(
            block_tokens=kv_cache_config.kv_cache_groups[0].kv_cache_spec.block_size,
            block_bytes=_block_bytes(kv_cache_config),
            namespace="tierkv-pool-shadow",
            pool_blocks=num_blocks,
            exporter=False,
            disk_reader=True,
        )

    return make
