"""The scheduler half of the connector: per request, how many tokens tierkv holds
beyond vLLM's own hit (exact, or an approximate prefix from a near-duplicate), and
per step, what the worker loads and stores (see the package docstring)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from collections import OrderedDict

from ..lib import HASH_BYTES, OP_HASH, OP_LOOKUP, OP_OTHER, TIER_DISK, TIER_REMOTE, TOKEN_SOURCE_BYTES, TierKV
from .. import pool as engine_pool
from .common import Degrader, TierKVMetadata, TierKVWorkerMetadata, logger
from .events import EventNames, block_key

if TYPE_CHECKING:
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.request import Request

# Times a block's store is planned again after it did not happen.
_STORE_RETRIES = 3
# Seconds a request may wait for the remote tier's probe before it takes the
# blocks found so far (a probe ends within about TIERKV_REMOTE_TIMEOUT; this
# bounds the wait even if it did not).
MAX_REMOTE_WAIT_S = 5.0
# TIERKV_VLLM_POOL=rust: vLLM block hashes remembered for demotion (the oldest
# forgotten first: such a block is recomputed when needed again, never wrong).
_DEMOTION_MAP_MAX = 1 << 18


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
    mapped: int = 0  # TIERKV_VLLM_POOL=rust: leading blocks in the demotion map
    remote_wait_since: float | None = None  # first "ask again later" (remote probe)


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


class TierKVConnectorScheduler:
    """The connector's scheduler-side state and calls (``KVConnectorRole.SCHEDULER``)."""

    def __init__(
        self,
        tkv: TierKV,
        block_size: int,
        store_decode: bool,
        rehash_from_start: bool,
        semantic: bool,
        degrade: Degrader,
        events: bool = False,
    ):
        self._tkv = tkv
        self._bs = block_size
        self._store_decode = store_decode
        # sha256_cbor identities cannot be continued from a truncated parent.
        self._rehash_from_start = rehash_from_start
        self._semantic = semantic
        self._degrade = degrade
        self._reqs: dict[str, _ReqState] = {}
        # Async loads planned in update_state_after_alloc, sent with the next step.
        self._async_planned: list[tuple[str, bytes, list[int]]] = []
        # KV events: block names for the worker (sent with the next step), and the
        # events the worker reported, for vLLM's publisher.
        self._events = EventNames(block_size) if events else None
        self._names: list[tuple[bytes, list[int], list[int]]] = []
        # TIERKV_VLLM_POOL=rust: vLLM block hash -> (identity, event key, parent
        # key) of the blocks cached in G1, and the victims to demote this step.
        self._ident: OrderedDict[bytes, tuple[bytes, int, int]] = OrderedDict()
        self._demotes: list[tuple[bytes, int, int, int]] = []
        engine_pool.set_demotion_sink(self._on_victims)

    def _state(self, request: "Request") -> _ReqState:
        st = self._reqs.get(request.request_id)
        if st is None:
            prompt = request.prompt_token_ids or []
            st = _ReqState(request=request, prompt_len=len(prompt), cacheable=_cacheable(request))
            if st.cacheable:
                try:
                    st.hashes = self._tkv.hash_tokens(prompt)
                except Exception as e:  # the request bypasses the cache
                    self._degrade(OP_HASH, "hashing a prompt", e)
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
            # From the end of vLLM's own (G1) hit: one prefix hit spans G1 then the
            # tiers (with TIERKV_VLLM_POOL=rust, G1's blocks are not in the host
            # tier until evicted). vLLM asks again for a waiting request: only its
            # first lookup counts as a request in tierkv's lookup metrics.
            tiers, pending = self._tkv.lookup_pending(
                st.hashes[start * HASH_BYTES : max_blocks * HASH_BYTES], repeat=st.looked_up
            )
        except Exception as e:  # a failed lookup is a miss
            self._degrade(OP_LOOKUP, "lookup", e)
            return 0, False
        if pending:
            now = time.monotonic()
            if st.remote_wait_since is None:
                st.remote_wait_since = now
            if now - st.remote_wait_since < MAX_REMOTE_WAIT_S:
                # The remote tier is asking its store (never on this path): vLLM
                # keeps the request waiting and asks again next step.
                return None, False
        st.looked_up = True
        hits = start + len(tiers)
        pending_async = TIER_DISK in tiers or TIER_REMOTE in tiers
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
            hashes = st.hashes[start * HASH_BYTES : end * HASH_BYTES]
            self._async_planned.append((request.request_id, hashes, st.block_ids[start:end]))
            self._name(st, list(range(start, end)), hashes)
            st.stored = max(st.stored, end)
            st.pending_load = None
            st.pending_async = False

    def build_connector_meta(self, scheduler_output: "SchedulerOutput") -> TierKVMetadata:
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
        if self._take_demotes(meta):
            # The worker's start_load_kv must run before this step's forward pass
            # (vLLM defers it past the forward when no load is synchronous): the
            # forward overwrites the victims.
            so.has_sync_kv_loads = True
        meta.names, self._names = self._names, []
        return meta

    def _on_victims(self, victims: list[tuple[bytes, int, bool]]) -> None:
        """tierkv's pool evicted these cached G1 blocks (``(vLLM hash with group,
        block id, last holder)``) in this step's allocation: the worker stores the
        ones it knows before the step's loads and forward pass reuse them."""
        from vllm.v1.core.kv_cache_utils import get_block_hash

        for h, block_id, last in victims:
            vh = get_block_hash(h)
            entry = self._ident.pop(vh, None) if last else self._ident.get(vh)
            if entry is not None:
                ident, key, parent = entry
                self._demotes.append((ident, block_id, key, parent))

    def _take_demotes(self, meta: TierKVMetadata) -> bool:
        """Adds this step's demotions to ``meta``; whether there are any."""
        if not self._demotes:
            return False
        demotes, self._demotes = self._demotes, []
        hashes = b"".join(d[0] for d in demotes)
        meta.demotes.append((hashes, [d[1] for d in demotes]))
        if self._events is not None:
            self._names.append((hashes, [d[2] for d in demotes], [d[3] for d in demotes]))
        return True

    def _map_blocks(self, st: _ReqState, computed_tokens: int) -> None:
        """TIERKV_VLLM_POOL=rust: remembers the identities of the request's newly
        full blocks by vLLM block hash (vLLM caches them in G1); nothing is copied
        until tierkv's pool evicts one of them."""
        vhashes = getattr(st.request, "block_hashes", None) or ()
        n_full = self._full_blocks(st, computed_tokens, len(vhashes), st.mapped)
        if n_full is None:
            return
        positions = list(range(st.mapped, n_full))
        if self._events is not None:
            # Remembers the blocks' tokens for the stored events of a demotion.
            self._events.name(st.request, positions, b"", [])
        for p in positions:
            key = block_key(st.request, p) if self._events is not None else 0
            parent = block_key(st.request, p - 1) if self._events is not None and p > 0 else 0
            self._ident[vhashes[p]] = (st.hashes[p * HASH_BYTES : (p + 1) * HASH_BYTES], key, parent)
            self._ident.move_to_end(vhashes[p])
        while len(self._ident) > _DEMOTION_MAP_MAX:
            self._ident.popitem(last=False)
        st.mapped = n_full

    def _name(self, st: _ReqState, positions: list[int], hashes: bytes) -> None:
        """KV events on: the worker names these blocks before moving them."""
        if self._events is not None and positions:
            self._events.name(st.request, positions, hashes, self._names)

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
            self._degrade(OP_HASH, "hashing tokens", e)
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
            hashes = st.hashes[start * HASH_BYTES : end * HASH_BYTES]
            meta.loads.append((hashes, st.block_ids[start:end]))
            self._name(st, list(range(start, end)), hashes)
        st.stored = max(st.stored, end)
        st.pending_load = None

    def _plan_stores(self, st: _ReqState, computed_tokens: int, meta: TierKVMetadata) -> None:
        if not st.cacheable or st.approximate:
            return
        if engine_pool.pool_demotes():
            self._map_blocks(st, computed_tokens)
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
                self._name(st, again, hashes)
        n_full = self._full_blocks(st, computed_tokens, len(st.block_ids), st.stored)
        if n_full is None:
            return
        positions = list(range(st.stored, n_full))
        hashes = st.hashes[st.stored * HASH_BYTES : n_full * HASH_BYTES]
        meta.stores.append((st.request.request_id, positions, hashes, st.block_ids[st.stored : n_full]))
        self._name(st, positions, hashes)
        st.stored = n_full

    def _full_blocks(self, st: _ReqState, computed_tokens: int, cap: int, done: int) -> int | None:
        """How many leading blocks of the request are full, computed, to be kept
        (the prompt's, and decode's with ``TIERKV_STORE_DECODE``), at most ``cap``,
        and hashed; ``None`` when that is not beyond ``done``. Only blocks whose
        identities exist count (async scheduling: the last tokens may still be in
        flight); the rest comes in a later step, never skipped."""
        limit = computed_tokens if self._store_decode else min(computed_tokens, st.prompt_len)
        n_full = min(limit // self._bs, cap)
        if n_full <= done or not self._hash_upto(st, n_full):
            return None
        n_full = min(n_full, len(st.hashes) // HASH_BYTES)
        return n_full if n_full > done else None

    def update_connector_output(self, connector_output: Any) -> None:
        """Scheduler: blocks the worker could not store are planned again (at most
        ``_STORE_RETRIES`` times each) while their request still holds them; the
        worker's KV events wait for vLLM's publisher (``take_events``)."""
        if self._events is not None:
            self._events.collect(connector_output)
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

    def take_events(self) -> list[Any]:
        """The tiers' KV events reported since the last call."""
        return self._events.take() if self._events is not None else []

    def request_finished(self, request: "Request", block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        st = self._reqs.pop(request.request_id, None)
        if self._semantic and st is not None and st.cacheable and not st.approximate and (st.stored or st.mapped):
            # Its prompt blocks are stored: a later near-duplicate may reuse them.
            try:
                self._tkv.semantic_insert(request.prompt_token_ids)
            except Exception as e:
                self._degrade(OP_OTHER, "semantic insert", e)
        return False, None
