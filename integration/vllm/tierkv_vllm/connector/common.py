"""What both halves of the connector share: the per-step metadata, and degrading
library errors (counted, logged at most once a minute, never raised into vLLM)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorMetadata, KVConnectorWorkerMetadata
from vllm.logger import init_logger

from ..lib import TierKV, TierKVError

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
    # KV events on: (hashes, vLLM block hashes, their parents') of every block
    # stored or loaded, named in tierkv before the loads and stores.
    names: list[tuple[bytes, list[int], list[int]]] = field(default_factory=list)
    # TIERKV_VLLM_POOL=rust: (hashes, engine block ids) of cached blocks tierkv's
    # pool evicted this step, stored before anything else touches them.
    demotes: list[tuple[bytes, list[int]]] = field(default_factory=list)


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


class Degrader:
    """A library call failed: count it (``tierkv_adapter_errors_total``) and log it
    at most once per minute per (operation, status); the caller degrades
    (recompute, miss, skip). The engine never sees the exception."""

    def __init__(self, tkv: TierKV):
        self._tkv = tkv
        self.last_logged: dict[tuple[int, int], float] = {}

    def __call__(self, op: int, what: str, exc: BaseException) -> None:
        code = exc.code if isinstance(exc, TierKVError) else 8  # INTERNAL
        try:
            self._tkv.record_error(op, code)
        except Exception:  # counting is best effort
            pass
        key = (op, code)
        now = time.monotonic()
        if now - self.last_logged.get(key, -1e9) >= 60.0:
            self.last_logged[key] = now
            logger.warning("tierkv: %s failed (%s); degrading (further ones counted, logged once a minute)", what, exc)
