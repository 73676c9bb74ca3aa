"""KV events of tierkv's tiers, published through vLLM's own KV-event publisher.

When vLLM's KV events are on (``--kv-events-config '{"enable_kv_cache_events":
true, "publisher": "zmq", ...}'``), vLLM publishes its GPU blocks itself and the
connector adds tierkv's tiers to the same batches: ``BlockStored`` /
``BlockRemoved`` with ``medium="CPU"`` for the host tier and ``medium="STORAGE"``
for the disk tier, the tier named in ``ownership`` (``tierkv:host``,
``tierkv:disk``), under vLLM's own block hashes so that a router matches them with
the GPU events (docs/events.md).

Workflow:
1. The scheduler puts, for every block the worker stores or loads in a step, the
   block's vLLM hash (``request.block_hashes``, as vLLM's events carry it) and its
   parent's into the step's metadata (``names``); it remembers each block's tokens.
2. The worker names those blocks in tierkv (``tierkv_name_blocks``) before its
   loads and stores; tierkv keeps the name with the block in every tier, so an
   eviction later, by whichever process, carries it too.
3. After the step the worker takes tierkv's events (msgpack in vLLM's wire format,
   decoded with vLLM's own ``KVEventBatch``) and returns them in the step's
   ``kv_cache_events``; the scheduler adds the tokens it knows to stored events
   and hands them to vLLM's publisher from ``take_events``.

Events need vLLM's 64-bit integer block hashes (``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES``,
on by default); with byte hashes the connector publishes none and says so.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from vllm.distributed.kv_events import BlockStored, KVCacheEvent, KVConnectorKVEvents

from .common import logger

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.v1.request import Request

# Token lists remembered for stored events (oldest forgotten first).
_TOKENS_KEPT = 1 << 16


def events_wanted(vllm_config: "VllmConfig") -> bool:
    """Whether vLLM publishes KV events and tierkv can name its blocks in them."""
    cfg = getattr(vllm_config, "kv_events_config", None)
    if cfg is None or not getattr(cfg, "enable_kv_cache_events", False):
        return False
    import vllm.envs as envs

    if not envs.VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES:
        logger.warning(
            "tierkv: KV events of the host and disk tiers are off: they need vLLM's integer block "
            "hashes (VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1, the default)"
        )
        return False
    return True


def block_key(request: "Request", position: int) -> int:
    """vLLM's published hash of block ``position`` of ``request`` (0: not hashed yet)."""
    from vllm.v1.core.kv_cache_utils import maybe_convert_block_hash

    hashes = getattr(request, "block_hashes", None) or ()
    if position < 0 or position >= len(hashes):
        return 0
    key = maybe_convert_block_hash(hashes[position])
    return key if isinstance(key, int) else 0


class TierKVEvents(KVConnectorKVEvents):
    """The events of one step, worker to scheduler (one worker: tp = pp = 1)."""

    def __init__(self, events: list[KVCacheEvent] | None = None, workers: int = 1):
        self._events: list[KVCacheEvent] = list(events or [])
        self._workers = workers

    def add_events(self, events: list[KVCacheEvent]) -> None:
        self._events.extend(events)

    def aggregate(self) -> "TierKVEvents":
        return self

    def increment_workers(self, count: int = 1) -> None:
        self._workers += count

    def get_all_events(self) -> list[KVCacheEvent]:
        return list(self._events)

    def get_number_of_workers(self) -> int:
        return self._workers

    def clear_events(self) -> None:
        self._events.clear()
        self._workers = 1

    def __repr__(self) -> str:
        return f"<TierKVEvents events={len(self._events)}>"


def decode_batches(batches: list[bytes]) -> list[KVCacheEvent]:
    """tierkv's batches, decoded by vLLM's own decoder and classes."""
    import msgspec
    from vllm.distributed.kv_events import KVEventBatch

    out: list[KVCacheEvent] = []
    for b in batches:
        out.extend(msgspec.msgpack.decode(b, type=KVEventBatch).events)
    return out


class EventNames:
    """Scheduler side: names for the worker, tokens for the stored events."""

    def __init__(self, block_size: int):
        self._bs = block_size
        # vLLM block hash -> the block's tokens (parents travel with the names).
        self._tokens: OrderedDict[int, tuple[int, ...]] = OrderedDict()
        self._pending: list[KVCacheEvent] = []

    def name(self, request: "Request", positions: list[int], hashes: bytes, names: list) -> None:
        """Appends ``(hashes, keys, parents)`` of ``positions`` of ``request`` to a
        step's ``names`` and remembers their tokens."""
        keys = [block_key(request, p) for p in positions]
        parents = [block_key(request, p - 1) if p > 0 else 0 for p in positions]
        tokens = request.all_token_ids
        for p, k in zip(positions, keys):
            if k:
                self._tokens[k] = tuple(tokens[p * self._bs : (p + 1) * self._bs])
                self._tokens.move_to_end(k)
        while len(self._tokens) > _TOKENS_KEPT:
            self._tokens.popitem(last=False)
        names.append((hashes, keys, parents))

    def collect(self, connector_output: Any) -> None:
        """The worker's events of a step, with the tokens this scheduler knows."""
        got = getattr(connector_output, "kv_cache_events", None)
        if not isinstance(got, TierKVEvents):
            return
        for ev in got.get_all_events():
            if isinstance(ev, BlockStored) and not ev.token_ids:
                known = [self._tokens.get(k) for k in ev.block_hashes]
                if all(t is not None and len(t) == self._bs for t in known):
                    ev.token_ids = [tok for t in known for tok in t]  # type: ignore[union-attr]
            self._pending.append(ev)

    def take(self) -> list[KVCacheEvent]:
        out, self._pending = self._pending, []
        return out
