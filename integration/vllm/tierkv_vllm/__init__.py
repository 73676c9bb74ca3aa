"""tierkv for vLLM: a KV connector backed by ``libtierkv.so``.

Use it with::

    --kv-transfer-config '{"kv_connector":"TierKVConnector",
                           "kv_connector_module_path":"tierkv_vllm",
                           "kv_role":"kv_both"}'

``TierKV`` (the ctypes binding) works without vLLM installed.
"""

from .lib import TierKV, TierKVError, find_library

__all__ = ["TierKV", "TierKVError", "TierKVConnector", "find_library"]


def __getattr__(name):
    # Import the connector (and vLLM) only when it is asked for.
    if name == "TierKVConnector":
        from .connector import TierKVConnector

        return TierKVConnector
    raise AttributeError(name)
