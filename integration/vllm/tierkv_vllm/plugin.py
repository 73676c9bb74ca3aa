"""vLLM's general plugin (entry point ``vllm.general_plugins``: ``tierkv``).

vLLM loads it in every process (API server, engine core, workers) before it builds
anything. It registers ``TierKVConnector`` with vLLM's connector factory, so an
installed package is used by name alone::

    --kv-transfer-config '{"kv_connector":"TierKVConnector","kv_role":"kv_both"}'

(``kv_connector_module_path`` still works and takes precedence.) Registration is
idempotent: vLLM may load plugins more than once per process. It never fails the
engine: a vLLM without the factory API only loses the short name.
"""

from __future__ import annotations

import logging

CONNECTOR_NAME = "TierKVConnector"

_log = logging.getLogger("vllm.tierkv")


def register() -> None:
    try:
        from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory
    except Exception as e:  # another vLLM layout: the module path still works
        _log.info("tierkv: connector not registered by name (%s); use kv_connector_module_path", e)
        return
    registry = getattr(KVConnectorFactory, "_registry", {})
    if CONNECTOR_NAME in registry:
        return
    try:
        KVConnectorFactory.register_connector(CONNECTOR_NAME, "tierkv_vllm.connector", "TierKVConnector")
    except ValueError:  # registered concurrently
        return
