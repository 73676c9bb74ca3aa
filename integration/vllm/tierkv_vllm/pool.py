"""tierkv's engine block pool inside vLLM: the shadow mode (``ShadowBlockPool``,
below) and the rust mode (``RustBlockPool``, at the end of this module: tierkv's
pool decides, vLLM's block objects follow).

With ``TIERKV_VLLM_POOL=shadow`` the vLLM plugin (``plugin.py``) has vLLM build a
``ShadowBlockPool`` instead of its ``BlockPool``: vLLM's pool still decides
everything, and every operation is mirrored into tierkv's pool (the C library's
``tierkv_pool_*``, vLLM v1 ``BlockPool`` semantics) and the two outcomes compared:

| vLLM call | tierkv | compared |
|---|---|---|
| ``__init__`` (takes the null block) | ``pool_allocate(1)`` | the id (0) |
| ``get_new_blocks(n)`` | ``pool_allocate(n)`` | the ids, in order; how many cached blocks were evicted |
| ``free_blocks(blocks)`` | ``pool_free(ids)`` | the free count |
| ``touch(blocks)`` (prefix hit) | ``pool_acquire_cached`` / ``pool_fork`` | the block found for each identity |
| ``cache_full_blocks`` | ``pool_register_many`` (the new full blocks) | which block is found for each identity |
| ``get_cached_block`` | ``pool_find`` | the block found |
| ``evict_blocks(ids)`` (failed loads) | ``pool_forget(ids)`` | how many identities were dropped |
| ``reset_prefix_cache`` | ``pool_reset_prefix_cache`` | the free count |

Every mutating call also compares the free counts. A disagreement is counted by
kind (allocated ids, eviction victims, prefix hits, free counts) and the first
few are logged with what each pool said. The counts reach the arena's store-wide
counters once per scheduler step (``take_events``), so the engine's metrics
endpoint (``TIERKV_METRICS_ADDR``, served by the connector's worker) shows
``tierkv_pool_shadow_ops_total`` and ``tierkv_pool_shadow_disagreements_total``
although the pool runs in the scheduler process.

Identities: vLLM's ``BlockHashWithGroupId`` (block hash and group id) folded to
tierkv's 16-byte identity with BLAKE2b.

Calls that reach into pool internals tierkv does not mirror (``unpin_blocks`` of
HiSparse, ``move_block_hashes`` of copy-on-write partial hits,
``cache_partial_block`` of partial-block prefix caching) end the shadow for that
pool with a warning naming the feature; vLLM's pool goes on unchanged.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from typing import Any

from vllm.v1.core.block_pool import BlockPool

from .lib import POOL_DISAGREEMENT_KINDS, TierKV

_log = logging.getLogger("vllm.tierkv")

ALLOCATED_IDS, EVICTION_VICTIMS, PREFIX_HITS, FREE_COUNT = range(4)
# Disagreements logged with their details (the rest are counted).
_EXAMPLES = 5


def identity(block_hash_with_group: bytes) -> bytes:
    """tierkv's 16-byte identity for vLLM's ``BlockHashWithGroupId``."""
    return hashlib.blake2b(bytes(block_hash_with_group), digest_size=16).digest()


def _pool_key(block_hash: bytes, group: int) -> bytes:
    """The rust mode's key for vLLM's ``BlockHash`` in group ``group``: vLLM's
    hashes are 16 (xxh3_128) or 32 bytes (sha256) of a cryptographic or 128-bit
    hash, so their first 16 bytes serve as they are in group 0 (the only group the
    rust mode accepts); anything else is folded by ``identity``. The keys live in
    this engine's pool only (the tiers use tierkv's token identities)."""
    if group == 0 and len(block_hash) >= 16:
        return bytes(block_hash[:16])
    from vllm.v1.core.kv_cache_utils import make_block_hash_with_group_id

    return identity(make_block_hash_with_group_id(block_hash, group))


_GROUP_0 = (0).to_bytes(4, "big")


def _pool_key_with_group(block_hash_with_group: bytes) -> bytes:
    """``_pool_key`` of a ``BlockHashWithGroupId`` (4-byte big-endian group last)."""
    h = block_hash_with_group
    if len(h) >= 20 and h[-4:] == _GROUP_0:  # group 0: the hash's first 16 bytes
        return bytes(h[:16])
    return _pool_key(h[:-4], int.from_bytes(h[-4:], "big"))


def pool_policy(tkv: TierKV) -> str:
    """The eviction policy of `tkv`'s pool (``TIERKV_POOL_EVICTION``; ``lru``:
    vLLM's order), as its metrics report it."""
    for line in tkv.metrics_text().splitlines():
        if line.startswith('tierkv_engine_pool_eviction_policy{policy="') and line.endswith(" 1"):
            return line.split('"')[1]
    return "unknown"


class ShadowBlockPool(BlockPool):
    """vLLM's ``BlockPool``, every operation mirrored into tierkv's pool."""

    def __init__(self, *args: Any, tkv_factory: Callable[[int], TierKV], **kwargs: Any):
        self._shadow = False
        self._victims: list[int] = []
        super().__init__(*args, **kwargs)
        self._tkv = tkv_factory(self.num_gpu_blocks)
        self._ops = 0
        self._pending_ops = 0
        self._pending = [0] * len(POOL_DISAGREEMENT_KINDS)
        self.disagreements = [0] * len(POOL_DISAGREEMENT_KINDS)
        self._logged = 0
        # tierkv's eviction count as of its last state read (every mutating call
        # reads the state to compare free counts).
        self._evictions = 0
        self._shadow = True
        policy = pool_policy(self._tkv)
        if policy != "lru":
            # The plugin's factory asks for vLLM's order (pool_engine_order).
            self._stop(f"tierkv's pool evicts by {policy}, not in vLLM's order")
        # vLLM's first block is its null block, never freed.
        null = self._mirror(ALLOCATED_IDS, "the null block", lambda: self._tkv.pool_allocate(1))
        if self._shadow:
            self._compare(ALLOCATED_IDS, [self.null_block.block_id], null, "the null block")
            self._compare_free("init")

    # ---------------------------------------------------------------- comparing

    def _compare(self, kind: int, vllm: Any, tierkv: Any, what: str) -> None:
        self._ops += 1
        self._pending_ops += 1
        if vllm == tierkv:
            return
        self.disagreements[kind] += 1
        self._pending[kind] += 1
        if self._logged < _EXAMPLES:
            self._logged += 1
            _log.warning(
                "tierkv pool shadow: %s disagree on %s: vLLM %r, tierkv %r%s",
                POOL_DISAGREEMENT_KINDS[kind],
                what,
                vllm,
                tierkv,
                " (further ones counted, not logged)" if self._logged == _EXAMPLES else "",
            )

    def _compare_free(self, what: str) -> dict | None:
        st = self._mirror(FREE_COUNT, "pool_state", self._tkv.pool_state)
        if st is not None:
            self._compare(FREE_COUNT, self.get_num_free_blocks(), st["free"], f"free blocks after {what}")
            self._evictions = st["evictions"]
        return st

    def _mirror(self, kind: int, what: str, call: Callable[[], Any]) -> Any:
        """Runs one tierkv call of the mirror; a failure (tierkv refused an
        operation vLLM's pool accepted) is a disagreement and ends the shadow,
        never an error in vLLM."""
        try:
            return call()
        except Exception as e:
            self._compare(kind, "accepted", f"refused: {e}", what)
            self._stop(f"tierkv's pool refused {what}, so the two pools no longer match")
            return None

    def _stop(self, why: str) -> None:
        if self._shadow:
            self._shadow = False
            _log.warning("tierkv pool shadow stopped: %s; vLLM's pool goes on unchanged", why)

    def flush(self) -> None:
        """Adds the counts since the last flush to the store-wide counters."""
        if not (self._pending_ops or any(self._pending)):
            return
        try:
            self._tkv.pool_shadow_record(self._pending_ops, self._pending)
        except Exception as e:  # counting is best effort; the engine goes on
            _log.warning("tierkv pool shadow: recording counts failed: %s", e)
            return
        self._pending_ops = 0
        self._pending = [0] * len(POOL_DISAGREEMENT_KINDS)

    # ------------------------------------------------------------ vLLM's calls

    def _maybe_evict_cached_block(self, block):  # type: ignore[override]
        evicted = super()._maybe_evict_cached_block(block)
        if evicted:
            self._victims.append(block.block_id)
        return evicted

    def get_new_blocks(self, num_blocks: int):  # type: ignore[override]
        self._victims = []
        ret = super().get_new_blocks(num_blocks)
        if not self._shadow:
            return ret
        what = f"get_new_blocks({num_blocks})"
        before = self._evictions
        ids = self._mirror(ALLOCATED_IDS, what, lambda: self._tkv.pool_allocate(num_blocks))
        if ids is None:
            return ret
        self._compare(ALLOCATED_IDS, [b.block_id for b in ret], ids, what)
        after = self._compare_free("get_new_blocks")
        if after is not None:
            self._compare(EVICTION_VICTIMS, len(self._victims), after["evictions"] - before, what)
        return ret

    def free_blocks(self, ordered_blocks: Iterable):  # type: ignore[override]
        blocks = list(ordered_blocks)
        super().free_blocks(blocks)
        if not self._shadow:
            return
        ids = [b.block_id for b in blocks if not b.is_null and (b.pool is None or b.pool is self)]
        if ids:
            self._mirror(FREE_COUNT, f"free_blocks({len(ids)})", lambda: self._tkv.pool_free(ids))
        if self._shadow:
            self._compare_free(f"free_blocks({len(ids)})")

    def touch(self, blocks: Sequence):  # type: ignore[override]
        super().touch(blocks)
        if not self._shadow:
            return
        for b in blocks:
            if b.is_null:
                continue
            if b.block_hash is not None:
                key = identity(b.block_hash)
                got = self._mirror(PREFIX_HITS, "touch", lambda: self._tkv.pool_acquire_cached(key))
                self._compare(PREFIX_HITS, [b.block_id], got, "touch of a cached block")
            else:
                self._mirror(FREE_COUNT, "touch of an uncached block", lambda: self._tkv.pool_fork([b.block_id]))
            if not self._shadow:
                return
        self._compare_free("touch")

    def cache_full_blocks(self, request, blocks, num_cached_blocks, num_full_blocks, *args, **kwargs):  # type: ignore[override]
        if not self._shadow:
            return super().cache_full_blocks(request, blocks, num_cached_blocks, num_full_blocks, *args, **kwargs)
        window = blocks[num_cached_blocks:num_full_blocks]
        before = [b.block_hash for b in window]
        super().cache_full_blocks(request, blocks, num_cached_blocks, num_full_blocks, *args, **kwargs)
        ids, keys, firsts = [], [], []
        for b, old in zip(window, before):
            if b.is_null or b.block_hash is None or b.block_hash == old:
                continue
            first = self.cached_block_hash_to_block.get_one_block(b.block_hash)
            ids.append(b.block_id)
            keys.append(identity(b.block_hash))
            firsts.append(first is not None and first.block_id == b.block_id)
        if not ids:
            return
        indexed = self._mirror(
            PREFIX_HITS, "cache_full_blocks", lambda: self._tkv.pool_register_many(ids, b"".join(keys))
        )
        if indexed is not None:
            self._compare(PREFIX_HITS, firsts, indexed, f"blocks {ids} found first for their identities")

    def get_cached_block(self, block_hash, kv_cache_group_ids):  # type: ignore[override]
        got = super().get_cached_block(block_hash, kv_cache_group_ids)
        if not self._shadow:
            return got
        from vllm.v1.core.kv_cache_utils import make_block_hash_with_group_id

        keys = b"".join(identity(make_block_hash_with_group_id(block_hash, g)) for g in kv_cache_group_ids)
        found = self._mirror(PREFIX_HITS, "get_cached_block", lambda: self._tkv.pool_find(keys))
        if found is None:
            return got
        want = [b.block_id for b in got] if got is not None else None
        theirs = found if all(f is not None for f in found) else None
        self._compare(PREFIX_HITS, want, theirs, "get_cached_block")
        return got

    def evict_blocks(self, block_ids: set[int]) -> None:  # type: ignore[override]
        self._victims = []
        super().evict_blocks(block_ids)
        if not self._shadow:
            return
        dropped = self._mirror(EVICTION_VICTIMS, "evict_blocks", lambda: self._tkv.pool_forget(sorted(block_ids)))
        if dropped is not None:
            self._compare(EVICTION_VICTIMS, len(self._victims), dropped, f"evict_blocks({len(block_ids)})")

    def reset_prefix_cache(self) -> bool:  # type: ignore[override]
        ok = super().reset_prefix_cache()
        if ok and self._shadow:
            self._mirror(PREFIX_HITS, "reset_prefix_cache", self._tkv.pool_reset_prefix_cache)
            if self._shadow:
                self._compare_free("reset_prefix_cache")
        return ok

    def take_events(self):  # type: ignore[override]
        # Once per scheduler step: the counts reach the store-wide counters.
        self.flush()
        return super().take_events()

    # Features that reach into pool internals: the shadow ends, vLLM goes on.

    def unpin_blocks(self, *args: Any, **kwargs: Any):  # type: ignore[override]
        self._stop("unpin_blocks (HiSparse) reaches into pool internals tierkv does not mirror")
        return super().unpin_blocks(*args, **kwargs)

    def move_block_hashes(self, *args: Any, **kwargs: Any):  # type: ignore[override]
        self._stop("move_block_hashes (copy-on-write of a partial prefix hit) is not mirrored")
        return super().move_block_hashes(*args, **kwargs)

    def cache_partial_block(self, *args: Any, **kwargs: Any):  # type: ignore[override]
        self._stop("cache_partial_block (partial-block prefix caching) is not mirrored")
        return super().cache_partial_block(*args, **kwargs)


# ---------------------------------------------------------------------- rust mode

# The scheduler process's consumer of G1 victims (the connector's scheduler half
# registers itself): ``None`` when no connector runs, and then nothing is kept.
_demotion_sink: Callable[[list[tuple[bytes, int, bool]]], None] | None = None
# RustBlockPools with prefix caching on built in this process: the connector then
# demotes G1 victims instead of storing every block after every step (with
# caching off nothing stays in G1, so the connector stores as it always did).
_demoting_pools = 0


def pool_demotes() -> bool:
    """Whether tierkv's pool decides for vLLM here and keeps blocks cached in G1
    (the connector copies a block to the host tier only when it is evicted)."""
    return _demoting_pools > 0


def set_demotion_sink(sink: Callable[[list[tuple[bytes, int, bool]]], None] | None) -> None:
    """Registers the callable that receives, at each allocation that evicted cached
    blocks, ``(vLLM block hash, block id, last holder)`` of every victim, before
    the engine may write them (see ``RustBlockPool``)."""
    global _demotion_sink
    _demotion_sink = sink


class RustBlockPool(BlockPool):
    """vLLM's ``BlockPool`` interface with tierkv's pool deciding
    (``TIERKV_VLLM_POOL=rust``).

    tierkv's pool (``tierkv_pool_*``) decides which block each allocation gets
    (free order, so which cached block is evicted) and which block a prefix hit
    finds. vLLM's Python objects stay vLLM's view of those decisions, kept in step
    in the same call:

    - ``KVCacheBlock.ref_cnt``: vLLM's managers read it (``is_block_writable``,
      asserts) and vLLM's own code in this class changes it exactly where tierkv's
      pool changes its count (allocate: 1; touch: +1; free: -1), so the two counts
      are equal after every call. Nothing outside the pool writes it in vLLM 0.32
      (the managers call ``touch``/``free_blocks``; HiSparse's ``unpin_blocks`` is
      refused below).
    - ``free_block_queue``: only its membership and count are kept (a block is in
      it exactly when its count is 0), for ``get_num_free_blocks`` and
      ``get_usage``; its order is never used to choose a block.
    - ``cached_block_hash_to_block`` and ``block.block_hash``: updated by vLLM's
      own code (``cache_full_blocks``, ``_maybe_evict_cached_block``) so vLLM's
      KV events, metrics and the connector see what they always saw. Lookups
      (``get_cached_block``) ask tierkv's index, not this map.

    Every allocated block that still holds a hash is a victim of tierkv's
    eviction: vLLM's view drops it (``_maybe_evict_cached_block``: BlockRemoved
    event as before) and it goes to the demotion sink, so the connector copies
    it to the host tier before the step's forward pass overwrites it.

    Calls that reach into pool internals (``unpin_blocks``, ``move_block_hashes``,
    ``cache_partial_block``) are refused when the pool is installed (see
    ``plugin.refusal``); reaching one anyway raises, since vLLM's and tierkv's
    counts would part.
    """

    def __init__(self, *args: Any, tkv_factory: Callable[[int], TierKV], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._tkv = tkv_factory(self.num_gpu_blocks)
        # vLLM's constructor took block 0 as its null block: tierkv's pool does too.
        null = self._tkv.pool_allocate(1)
        if null != [self.null_block.block_id]:
            raise RuntimeError(f"tierkv's pool gave block {null} as the null block, vLLM has block 0")
        _log.info("tierkv: pool of %d blocks, eviction %s", self.num_gpu_blocks, self.policy())
        self.victims = 0
        # Lookahead of a prefix lookup (``lookahead``): the request's block hashes,
        # how many may hit, the next position vLLM asks for, and the block found
        # for each position fetched so far (one tierkv_pool_find per chunk).
        self._ahead: Sequence | None = None
        self._ahead_n = 0
        self._ahead_pos = 0
        self._ahead_found: list[int | None] = []
        if self.enable_caching:
            global _demoting_pools
            _demoting_pools += 1

    def get_new_blocks(self, num_blocks: int):  # type: ignore[override]
        if num_blocks > self.get_num_free_blocks():
            raise ValueError(f"Cannot get {num_blocks} free blocks from the pool")
        ids = self._tkv.pool_allocate(num_blocks)
        blocks = self.blocks
        queue = self.free_block_queue
        ret = [blocks[i] for i in ids]
        if self._reuse_watchers:
            self._notify_reuse(ret)
        victims: list[tuple[bytes, int, bool]] = []
        for block in ret:
            assert block.ref_cnt == 0, f"tierkv allocated block {block.block_id} that vLLM counts as held"
            queue.remove(block)
            h = block.block_hash
            if self.enable_caching and self._maybe_evict_cached_block(block) and h is not None:
                last = self.cached_block_hash_to_block.get_one_block(h) is None
                victims.append((h, block.block_id, last))
            block.ref_cnt = 1
            if self.metrics_collector:
                self.metrics_collector.on_block_allocated(block)
        if victims:
            self.victims += len(victims)
            if _demotion_sink is not None:
                _demotion_sink(victims)
        return ret

    def free_blocks(self, ordered_blocks: Iterable):  # type: ignore[override]
        ids: list[int] = []
        other_pools: dict[BlockPool, list] = {}
        released = []
        for block in ordered_blocks:
            if block.pool is not None and block.pool is not self:
                other_pools.setdefault(block.pool, []).append(block)
                continue
            if block.is_null:
                block.ref_cnt -= 1  # not maintained, but moved as vLLM moves it
                continue
            ids.append(block.block_id)
        if ids:
            # tierkv orders the free list (vLLM's rule: unhashed to the head,
            # hashed to the tail in the order given); it validates every id first.
            self._tkv.pool_free(ids)
            blocks = self.blocks
            for i in ids:
                block = blocks[i]
                block.ref_cnt -= 1
                if block.ref_cnt == 0:
                    released.append(block)
            self.free_block_queue.append_n(released)
        for pool, blocks in other_pools.items():
            pool.free_blocks(blocks)

    def touch(self, blocks: Sequence):  # type: ignore[override]
        ids = [b.block_id for b in blocks if not b.is_null]
        if ids:
            self._tkv.pool_touch(ids)
        queue = self.free_block_queue
        for block in blocks:
            if block.ref_cnt == 0 and not block.is_null:
                queue.remove(block)
            block.ref_cnt += 1
            if self.metrics_collector:
                self.metrics_collector.on_block_accessed(block)

    def cache_full_blocks(self, request, blocks, num_cached_blocks, num_full_blocks, *args, **kwargs):  # type: ignore[override]
        # Only blocks without a hash can gain one (vLLM never re-hashes a block).
        fresh = [b for b in blocks[num_cached_blocks:num_full_blocks] if b.block_hash is None and not b.is_null]
        super().cache_full_blocks(request, blocks, num_cached_blocks, num_full_blocks, *args, **kwargs)
        ids, keys = [], []
        for b in fresh:
            h = b.block_hash
            if h is not None:
                ids.append(b.block_id)
                keys.append(_pool_key_with_group(h))
        if ids:
            self._tkv.pool_register_many(ids, b"".join(keys))

    def policy(self) -> str:
        """The eviction policy of tierkv's pool (``TIERKV_POOL_EVICTION``)."""
        return pool_policy(self._tkv)

    @contextmanager
    def lookahead(self, block_hashes: Sequence, max_blocks: int):
        """vLLM asks for a request's prefix block by block (``get_cached_block``
        until the first miss); within this context those questions are answered
        from ``tierkv_pool_find`` calls over chunks of ``block_hashes`` (16 blocks,
        then doubling), so a prefix costs a few crossings instead of one per block.
        The plugin wraps the coordinator's ``find_longest_cache_hit`` in it."""
        self._ahead, self._ahead_n, self._ahead_pos, self._ahead_found = block_hashes, max_blocks, 0, []
        try:
            yield
        finally:
            self._ahead, self._ahead_found = None, []

    def _from_lookahead(self, block_hash, kv_cache_group_ids) -> tuple[bool, Any]:
        ahead, pos = self._ahead, self._ahead_pos
        if ahead is None or pos >= self._ahead_n or len(kv_cache_group_ids) != 1 or ahead[pos] != block_hash:
            return False, None
        found = self._ahead_found
        if pos >= len(found):
            g = kv_cache_group_ids[0]
            n = min(max(16, len(found)), self._ahead_n - pos)
            keys = b"".join(_pool_key(h, g) for h in ahead[pos : pos + n])
            found.extend(self._tkv.pool_find(keys))
        self._ahead_pos = pos + 1
        i = found[pos]
        return True, None if i is None else [self.blocks[i]]

    def get_cached_block(self, block_hash, kv_cache_group_ids):  # type: ignore[override]
        hit, got = self._from_lookahead(block_hash, kv_cache_group_ids)
        if hit:
            return got
        keys = b"".join(_pool_key(block_hash, g) for g in kv_cache_group_ids)
        found = self._tkv.pool_find(keys)
        if any(i is None for i in found):
            return None
        return [self.blocks[i] for i in found]  # type: ignore[index]

    def evict_blocks(self, block_ids: set[int]) -> None:  # type: ignore[override]
        # Failed loads: their KV is unusable, so never demoted.
        self._tkv.pool_forget(sorted(block_ids))
        super().evict_blocks(block_ids)

    def reset_prefix_cache(self) -> bool:  # type: ignore[override]
        ok = super().reset_prefix_cache()
        if ok:
            self._tkv.pool_reset_prefix_cache()
        return ok

    def unpin_blocks(self, *args: Any, **kwargs: Any):  # type: ignore[override]
        raise NotImplementedError("tierkv's pool (TIERKV_VLLM_POOL=rust) does not support unpin_blocks (HiSparse)")

    def move_block_hashes(self, *args: Any, **kwargs: Any):  # type: ignore[override]
        raise NotImplementedError("tierkv's pool (TIERKV_VLLM_POOL=rust) does not support move_block_hashes")

    def cache_partial_block(self, *args: Any, **kwargs: Any):  # type: ignore[override]
        raise NotImplementedError("tierkv's pool (TIERKV_VLLM_POOL=rust) does not support partial-block caching")
