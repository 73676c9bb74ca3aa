//! The engine block pool: the semantics of vLLM v1's `BlockPool`, without its
//! per-block Python objects.
//!
//! Core types: [`BlockPool`], [`BlockId`], [`CowOutcome`].
//!
//! Workflow (one request):
//! 1. [`BlockPool::acquire_cached`] takes the longest run of the request's leading
//!    block identities that the pool still holds (a prefix hit), referencing them.
//! 2. [`BlockPool::allocate`] takes the rest, all or nothing, from the head of the
//!    free list; a free block that still held an identified block is evicted then
//!    (that is the LRU eviction: the free list is ordered by release time).
//! 3. As blocks fill, [`BlockPool::register`] records their identity in the index.
//!    Two blocks may hold one identity (two requests computed it at once): both are
//!    indexed, the first registered is the one found, the next takes over when it
//!    leaves (vLLM's `BlockHashToBlockMap`).
//! 4. [`BlockPool::free`] releases them; a block whose count drops to zero goes to the
//!    tail of the free list and stays findable by identity until it is reused, or,
//!    when it holds no identity, to the head (reused first: vLLM's LIFO reuse of
//!    blocks that can never be hit).
//!
//! ```text
//!   free list:  head [reuse first] 3 <-> 4 <-> 9 <-> 1 <-> 7 [released last] tail
//!               (3: no identity, freed last; 4, 9, 1, 7 in release order)
//!   index:      h(a)->9, h(b)->7         (cached and free: reusable on a hit)
//!   in use:     2 (ref 1), 5 (ref 2: forked)
//! ```
//!
//! Every operation has the outcome vLLM 0.32's `BlockPool` has for the same calls:
//! `tests/python/test_pool_vs_vllm.py` drives both with the same random operations,
//! and the vLLM plugin's shadow mode (`TIERKV_VLLM_POOL=shadow`) compares them on
//! every call of a real engine.

use std::collections::HashMap;

use super::IdentityHash;
use crate::evict::list::{ListEnds, NIL};
use crate::evict::PolicyKind;
use crate::prefix::BlockHash;

mod order;
pub use order::Clock;
use order::PolicyOrder;

/// Index of one of the engine's KV block slots.
pub type BlockId = u32;

/// Not enough free blocks: nothing was changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("insufficient free blocks: requested {requested}, available {available}")]
pub struct Insufficient {
    /// Blocks asked for.
    pub requested: usize,
    /// Blocks free (cached ones included).
    pub available: usize,
}

/// A call that breaks the pool's contract; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// The id is not below the pool size.
    #[error("block id {id} is out of range (pool has {num_blocks} blocks)")]
    UnknownBlock {
        /// The id.
        id: BlockId,
        /// Pool size.
        num_blocks: usize,
    },
    /// The block (or one more reference to it) is not held.
    #[error("block {id} is not allocated (or freed more times than it was referenced)")]
    NotAllocated {
        /// The id.
        id: BlockId,
    },
    /// The block is already registered under another identity.
    #[error("block {id} already holds another block identity")]
    AlreadyRegistered {
        /// The id.
        id: BlockId,
    },
    /// A copy was needed and no block was free.
    #[error(transparent)]
    Insufficient(#[from] Insufficient),
    /// One more reference would overflow the block's reference count.
    #[error("block {id} has the most references a block can have")]
    TooManyReferences {
        /// The id.
        id: BlockId,
    },
    /// The pool's bookkeeping could not be allocated.
    #[error("cannot allocate the bookkeeping of {num_blocks} blocks (about {bytes} bytes)")]
    OutOfMemory {
        /// Blocks asked for.
        num_blocks: usize,
        /// Bytes needed.
        bytes: usize,
    },
}

/// The result of [`BlockPool::copy_on_write`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CowOutcome {
    /// The caller holds the only reference: write in place.
    Exclusive(BlockId),
    /// The block was shared: the caller now holds `dst` instead of `src` and must
    /// copy the KV of `src` into `dst` before writing.
    Copied {
        /// The shared block (one reference fewer).
        src: BlockId,
        /// The new, exclusively held block.
        dst: BlockId,
    },
}

/// Counters of one pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Blocks handed out by `allocate`.
    pub allocated: u64,
    /// References released by `free`.
    pub freed: u64,
    /// Blocks reused by identity (`acquire_cached`).
    pub hits: u64,
    /// Cached blocks evicted to satisfy an allocation.
    pub evictions: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    ref_cnt: u32,
    hash: Option<BlockHash>,
    /// The eviction policy refused its identity: once free it goes first, as a
    /// block without identity does (findable until then).
    refused: bool,
}

/// A pool of `num_blocks` engine KV slots. Not thread-safe by itself: the manager
/// wraps it in a lock.
#[derive(Debug)]
pub struct BlockPool {
    slots: Vec<Slot>,
    links: Vec<(u32, u32)>,
    free: ListEnds,
    /// The block found for each identity (the first registered still holding it).
    index: HashMap<BlockHash, BlockId, IdentityHash>,
    /// Later holders of an identity, in registration order.
    dups: HashMap<BlockHash, Vec<BlockId>, IdentityHash>,
    /// Slots holding an identity (index plus duplicates).
    n_cached: usize,
    stats: PoolStats,
    /// The eviction policy deciding which cached free block goes first; `None`:
    /// the engine's order (least recently released first, vLLM's).
    order: Option<PolicyOrder>,
}

impl BlockPool {
    /// A pool of `num_blocks` free slots, ids `0..num_blocks` in allocation order.
    /// `num_blocks` must be below `u32::MAX`.
    ///
    /// # Panics
    /// When the bookkeeping cannot be allocated; [`BlockPool::try_new`] returns an
    /// error instead.
    pub fn new(num_blocks: usize) -> Self {
        Self::try_new(num_blocks).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`BlockPool::new`], with an allocation failure (a host under a memory limit)
    /// as an error rather than an abort.
    pub fn try_new(num_blocks: usize) -> Result<Self, PoolError> {
        if num_blocks >= NIL as usize {
            return Err(PoolError::UnknownBlock { id: NIL, num_blocks });
        }
        let per_block = std::mem::size_of::<Slot>() + 8 + 2 * std::mem::size_of::<(BlockHash, BlockId)>();
        let oom = || PoolError::OutOfMemory {
            num_blocks,
            bytes: num_blocks.saturating_mul(per_block),
        };
        let mut links = Vec::new();
        links.try_reserve_exact(num_blocks).map_err(|_| oom())?;
        links.resize(num_blocks, (NIL, NIL));
        let mut slots = Vec::new();
        slots.try_reserve_exact(num_blocks).map_err(|_| oom())?;
        slots.resize(num_blocks, Slot::default());
        let mut index = HashMap::with_hasher(IdentityHash);
        index.try_reserve(num_blocks).map_err(|_| oom())?;
        let mut free = ListEnds::new();
        for id in 0..num_blocks as u32 {
            free.push_back(&mut links, id);
        }
        Ok(Self {
            slots,
            links,
            free,
            index,
            dups: HashMap::with_hasher(IdentityHash),
            n_cached: 0,
            stats: PoolStats::default(),
            order: None,
        })
    }

    /// [`BlockPool::try_new`] whose cached free blocks are evicted by `policy`
    /// (`TIERKV_POOL_EVICTION`): [`PolicyKind::Lru`] keeps the engine's order
    /// (least recently released first, exactly vLLM's); any other asks that policy,
    /// fed with the pool's prefix hits and registrations, which free block to evict.
    pub fn try_with_policy(num_blocks: usize, policy: PolicyKind) -> Result<Self, PoolError> {
        let mut p = Self::try_new(num_blocks)?;
        if policy != PolicyKind::Lru {
            p.order = Some(PolicyOrder::new(policy, num_blocks));
        }
        Ok(p)
    }

    /// The policy's clock becomes `clock` (ms; it must never go back) instead of the
    /// time since the pool was made: a trace replayed at its own arrival times.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        if let Some(o) = &mut self.order {
            o.set_clock(clock);
        }
        self
    }

    /// The eviction policy's name (`lru`: the engine's release order).
    pub fn policy(&self) -> &'static str {
        self.order.as_ref().map_or("lru", PolicyOrder::name)
    }

    /// Allocations for which the policy named no free block (every candidate it
    /// looked at was held), so the least recently released one was taken.
    pub fn policy_fallbacks(&self) -> u64 {
        self.order.as_ref().map_or(0, |o| o.fallbacks)
    }

    /// Registrations the policy refused (not worth a block it would evict for
    /// them): their blocks are released to the head of the free list, so they go
    /// first, while a prefix hit before then still finds them.
    pub fn policy_refusals(&self) -> u64 {
        self.order.as_ref().map_or(0, |o| o.refused)
    }

    /// Whether the policy refused the identity `id` holds (tests).
    #[cfg(test)]
    fn refused(&self, id: BlockId) -> bool {
        self.slots[id as usize].refused
    }

    /// Number of slots.
    pub fn num_blocks(&self) -> usize {
        self.slots.len()
    }

    /// Free slots, cached ones included.
    pub fn num_free(&self) -> usize {
        self.free.len as usize
    }

    /// Slots holding an identified block (in use or free; duplicates included).
    pub fn num_cached(&self) -> usize {
        self.n_cached
    }

    /// Drops the identity `id` holds, if any, from the index (the next holder of
    /// the identity, if any, becomes the one found). Returns whether it held one.
    fn unindex(&mut self, id: BlockId) -> bool {
        self.slots[id as usize].refused = false;
        let Some(h) = self.slots[id as usize].hash.take() else {
            return false;
        };
        self.n_cached -= 1;
        if self.index.get(&h) == Some(&id) {
            match self.dups.get_mut(&h) {
                Some(later) => {
                    let next = later.remove(0);
                    if later.is_empty() {
                        self.dups.remove(&h);
                    }
                    self.index.insert(h, next);
                    if let Some(o) = &mut self.order {
                        o.moved(h, id, next, &self.slots);
                    }
                }
                None => {
                    self.index.remove(&h);
                    if let Some(o) = &mut self.order {
                        o.dropped(h, id);
                    }
                }
            }
        } else if let Some(later) = self.dups.get_mut(&h) {
            later.retain(|&d| d != id);
            if later.is_empty() {
                self.dups.remove(&h);
            }
        }
        true
    }

    /// Counters.
    pub fn stats(&self) -> PoolStats {
        self.stats
    }

    /// Reference count of `id` (0 when free).
    pub fn ref_count(&self, id: BlockId) -> Result<u32, PoolError> {
        self.check_id(id).map(|_| self.slots[id as usize].ref_cnt)
    }

    /// Identity registered for `id`, if any.
    pub fn block_hash(&self, id: BlockId) -> Result<Option<BlockHash>, PoolError> {
        self.check_id(id).map(|_| self.slots[id as usize].hash)
    }

    fn check_id(&self, id: BlockId) -> Result<(), PoolError> {
        if (id as usize) < self.slots.len() {
            Ok(())
        } else {
            Err(PoolError::UnknownBlock {
                id,
                num_blocks: self.slots.len(),
            })
        }
    }

    /// Appends `n` newly referenced blocks to `out`, or returns [`Insufficient`] and
    /// changes nothing. Cached free blocks are evicted from the index as they are
    /// taken, least recently released first.
    pub fn allocate(&mut self, n: usize, out: &mut Vec<BlockId>) -> Result<(), Insufficient> {
        let available = self.num_free();
        if n > available {
            return Err(Insufficient {
                requested: n,
                available,
            });
        }
        out.reserve(n);
        for _ in 0..n {
            let id = match self.policy_victim() {
                Some(id) => id,
                None => match self.free.pop_front(&mut self.links) {
                    Some(id) => id,
                    None => unreachable!("free list shorter than its length"),
                },
            };
            if self.unindex(id) {
                self.stats.evictions += 1;
            }
            self.slots[id as usize].ref_cnt = 1;
            out.push(id);
        }
        self.stats.allocated += n as u64;
        Ok(())
    }

    /// With a policy deciding: the free block it evicts, taken off the free list
    /// (`None`: take the head, which is what the engine's order does, and what a
    /// block without identity at the head or a policy naming none falls back to).
    fn policy_victim(&mut self) -> Option<BlockId> {
        let o = self.order.as_mut()?;
        let head = self.free.head;
        if head == NIL || self.slots[head as usize].hash.is_none() || self.slots[head as usize].refused {
            return None; // a block nothing can hit (or the policy refused) goes first
        }
        let id = o.victim(&self.slots)?;
        self.free.remove(&mut self.links, id);
        Some(id)
    }

    /// Releases one reference to each block in `ids`. Blocks that reach zero and
    /// hold an identity join the tail of the free list in the order given, so pass a
    /// request's blocks from last to first to have its tail evicted before its prefix
    /// (as vLLM does); blocks that reach zero without an identity go to the head, in
    /// the order given (reused first: nothing can hit them). Validates every id
    /// first: on error nothing is changed.
    pub fn free(&mut self, ids: &[BlockId]) -> Result<(), PoolError> {
        let mut first = Vec::new();
        let mut last = Vec::new();
        for (i, &id) in ids.iter().enumerate() {
            let held = (id as usize) < self.slots.len() && self.slots[id as usize].ref_cnt > 0;
            if !held {
                for &done in ids[..i].iter().rev() {
                    self.slots[done as usize].ref_cnt += 1;
                }
                self.check_id(id)?;
                return Err(PoolError::NotAllocated { id });
            }
            let slot = &mut self.slots[id as usize];
            slot.ref_cnt -= 1;
            if slot.ref_cnt == 0 {
                if slot.hash.is_some() && !slot.refused {
                    last.push(id);
                } else {
                    first.push(id);
                }
            }
        }
        for &id in first.iter().rev() {
            self.free.push_front(&mut self.links, id);
        }
        for &id in &last {
            self.free.push_back(&mut self.links, id);
            if let (Some(o), Some(h)) = (&mut self.order, self.slots[id as usize].hash) {
                o.held(h, id, false);
            }
        }
        self.stats.freed += ids.len() as u64;
        Ok(())
    }

    /// Adds one reference to each block in `ids` (sharing a prefix with a forked
    /// sequence). Every block must already be held.
    pub fn fork(&mut self, ids: &[BlockId]) -> Result<(), PoolError> {
        self.check_more_refs(ids, true)?;
        for &id in ids {
            self.slots[id as usize].ref_cnt += 1;
        }
        Ok(())
    }

    /// References exactly the blocks in `ids` (a prefix hit on blocks the caller
    /// found with [`BlockPool::find`]): a free block leaves the free list, a held one
    /// gains a reference, as vLLM's `BlockPool.touch`. Validates every id first: on
    /// error nothing is changed.
    pub fn touch(&mut self, ids: &[BlockId]) -> Result<(), PoolError> {
        self.check_more_refs(ids, false)?;
        let mut chain = self.order.as_mut().map(PolicyOrder::chain);
        for &id in ids {
            let slot = &mut self.slots[id as usize];
            if slot.ref_cnt == 0 {
                self.free.remove(&mut self.links, id);
            }
            if let Some(h) = slot.hash {
                self.stats.hits += 1;
                slot.refused = false;
                if let (Some(o), Some(at)) = (&mut self.order, &mut chain) {
                    o.used(at, h, id, false, true);
                }
            }
            slot.ref_cnt += 1;
        }
        Ok(())
    }

    /// Prepares `id` for writing. An exclusively held block is written in place
    /// (and forgets its identity, since its content will change); a shared one is
    /// replaced by a fresh block that the caller fills with a copy.
    pub fn copy_on_write(&mut self, id: BlockId) -> Result<CowOutcome, PoolError> {
        self.check_held(id)?;
        if self.slots[id as usize].ref_cnt == 1 {
            self.unindex(id);
            return Ok(CowOutcome::Exclusive(id));
        }
        let mut out = Vec::with_capacity(1);
        self.allocate(1, &mut out)?;
        self.slots[id as usize].ref_cnt -= 1;
        self.stats.freed += 1;
        Ok(CowOutcome::Copied { src: id, dst: out[0] })
    }

    /// Records that held block `id` now holds the full, computed block `hash`.
    /// Returns whether `id` is the block found for `hash`: `Ok(false)` when another
    /// block registered it first (that one stays the one found; `id` is found once
    /// it leaves).
    pub fn register(&mut self, id: BlockId, hash: BlockHash) -> Result<bool, PoolError> {
        let mut at = self.order.as_mut().map(PolicyOrder::chain);
        self.register_at(id, hash, at.as_mut().map(|at| (at, true)))
    }

    /// [`BlockPool::register`] for a run of blocks of one request in chain order
    /// (`ids[i]` holds `hashes[i]`; one chain for the eviction policy): appends
    /// whether each is the block found to `out`, stopping at the first error (the
    /// blocks before it stay registered).
    pub fn register_many(
        &mut self,
        ids: &[BlockId],
        hashes: &[BlockHash],
        out: &mut Vec<bool>,
    ) -> Result<(), PoolError> {
        let mut at = self.order.as_mut().map(PolicyOrder::chain);
        for (i, (&id, &h)) in ids.iter().zip(hashes).enumerate() {
            let last = i + 1 == ids.len();
            out.push(self.register_at(id, h, at.as_mut().map(|at| (at, last)))?);
        }
        Ok(())
    }

    /// [`BlockPool::register`], a use at `at` in a chain (and whether it ends it)
    /// when a policy decides.
    fn register_at(
        &mut self,
        id: BlockId,
        hash: BlockHash,
        at: Option<(&mut order::ChainPos, bool)>,
    ) -> Result<bool, PoolError> {
        self.check_held(id)?;
        match self.slots[id as usize].hash {
            Some(h) if h == hash => return Ok(self.index.get(&hash) == Some(&id)),
            Some(_) => return Err(PoolError::AlreadyRegistered { id }),
            None => {}
        }
        self.slots[id as usize].hash = Some(hash);
        self.n_cached += 1;
        if self.index.contains_key(&hash) {
            self.dups.entry(hash).or_default().push(id);
            return Ok(false);
        }
        self.index.insert(hash, id);
        if let (Some(o), Some((at, last))) = (&mut self.order, at) {
            // Admission only under pressure: while a free block holds no identity
            // (it sits at the head), the next allocation evicts nothing.
            let head = self.free.head;
            let full = head == NIL || self.slots[head as usize].hash.is_some();
            let admitted = o.registered(at, hash, id, last, full, &self.slots);
            self.slots[id as usize].refused = !admitted;
        }
        Ok(true)
    }

    /// The block found for each of `hashes` (`None`: not held), changing nothing.
    pub fn find(&self, hashes: &[BlockHash], out: &mut Vec<Option<BlockId>>) {
        out.extend(hashes.iter().map(|h| self.index.get(h).copied()));
    }

    /// Drops the identity of each of `ids` that holds one (the engine found their
    /// KV unusable, e.g. a failed load); held blocks stay held, free ones stay where
    /// they are in the free list (with a policy deciding, they go to its head).
    /// Returns how many identities were dropped.
    pub fn forget(&mut self, ids: &[BlockId]) -> Result<usize, PoolError> {
        for &id in ids {
            self.check_id(id)?;
        }
        let mut n = 0;
        for &id in ids {
            if self.unindex(id) {
                n += 1;
                // With a policy deciding, a free block nothing can hit goes first
                // (the engine's order leaves it where it is, as vLLM does).
                if self.order.is_some() && self.slots[id as usize].ref_cnt == 0 {
                    self.free.remove(&mut self.links, id);
                    self.free.push_front(&mut self.links, id);
                }
            }
        }
        Ok(n)
    }

    /// Number of leading `hashes` held by the pool. Changes nothing.
    pub fn lookup(&self, hashes: &[BlockHash]) -> usize {
        hashes.iter().take_while(|h| self.index.contains_key(h)).count()
    }

    /// References the blocks of the longest leading run of `hashes` that the pool
    /// holds, appends their ids to `out`, and returns how many.
    pub fn acquire_cached(&mut self, hashes: &[BlockHash], out: &mut Vec<BlockId>) -> usize {
        let mut n = 0;
        let mut at = self.order.as_mut().map(PolicyOrder::chain);
        for h in hashes {
            let Some(&id) = self.index.get(h) else { break };
            let slot = &mut self.slots[id as usize];
            if slot.ref_cnt == u32::MAX {
                break; // one more reference would wrap: the rest is a miss
            }
            if slot.ref_cnt == 0 {
                self.free.remove(&mut self.links, id);
            }
            slot.ref_cnt += 1;
            slot.refused = false;
            out.push(id);
            n += 1;
            if let (Some(o), Some(at)) = (&mut self.order, &mut at) {
                o.used(at, *h, id, n == hashes.len(), true);
            }
        }
        self.stats.hits += n as u64;
        n
    }

    /// Forgets every identity (for example after the engine's weights changed).
    /// Returns how many were dropped. Held blocks stay held.
    pub fn reset_prefix_cache(&mut self) -> usize {
        let n = self.n_cached;
        if let Some(o) = &mut self.order {
            o.reset();
        }
        self.index.clear();
        self.dups.clear();
        self.n_cached = 0;
        for s in &mut self.slots {
            s.hash = None;
            s.refused = false;
        }
        n
    }

    /// Checks that one more reference to each of `ids` (an id may repeat) fits its
    /// count, and with `held` that each is held.
    fn check_more_refs(&self, ids: &[BlockId], held: bool) -> Result<(), PoolError> {
        let mut extra: HashMap<BlockId, u32> = HashMap::new();
        for &id in ids {
            if held {
                self.check_held(id)?;
            } else {
                self.check_id(id)?;
            }
            let e = extra.entry(id).or_insert(0);
            *e += 1;
            if self.slots[id as usize].ref_cnt.checked_add(*e).is_none() {
                return Err(PoolError::TooManyReferences { id });
            }
        }
        Ok(())
    }

    /// Checks that `id` is held.
    fn check_held(&self, id: BlockId) -> Result<(), PoolError> {
        self.check_id(id)?;
        if self.slots[id as usize].ref_cnt == 0 {
            return Err(PoolError::NotAllocated { id });
        }
        Ok(())
    }

    /// Asserts the pool's invariants (tests and debug builds).
    pub fn check_invariants(&self) {
        let free: Vec<u32> = self.free.iter(&self.links).collect();
        assert_eq!(free.len(), self.free.len as usize);
        for (id, s) in self.slots.iter().enumerate() {
            assert!(s.hash.is_some() || !s.refused, "block {id}: refused without identity");
            let in_free = free.contains(&(id as u32));
            assert_eq!(in_free, s.ref_cnt == 0, "block {id}: free-list membership vs ref count");
            if let Some(h) = s.hash {
                let id = id as u32;
                let found = self.index.get(&h) == Some(&id) || self.dups.get(&h).is_some_and(|d| d.contains(&id));
                assert!(found, "block {id} index entry");
            }
        }
        for (h, &id) in &self.index {
            assert_eq!(self.slots[id as usize].hash, Some(*h));
        }
        for (h, later) in &self.dups {
            assert!(
                !later.is_empty() && self.index.contains_key(h),
                "duplicates of an unindexed identity"
            );
            for &id in later {
                assert_eq!(self.slots[id as usize].hash, Some(*h));
            }
        }
        let listed = self.index.len() + self.dups.values().map(Vec::len).sum::<usize>();
        assert_eq!(listed, self.n_cached);
        assert_eq!(self.slots.iter().filter(|s| s.hash.is_some()).count(), self.n_cached);
    }
}

#[cfg(test)]
mod tests;
