//! [`PolicyOrder`]: which cached free block an allocation evicts, when an eviction
//! policy decides instead of the engine's release order (`TIERKV_POOL_EVICTION`
//! other than `lru`).
//!
//! The policy (one of [`crate::evict`]'s, the same code the disk tier runs) sees
//! the identities the pool's index finds, keyed by [`BlockHash::fold64`], with their
//! uses (prefix hits, registrations) on the pool's own clock; a block is evictable
//! when no request holds it. The map from a key to its block is checked on every
//! use: two identities that fold to one key (which a hostile caller could arrange)
//! only leave the second untracked, and a block the policy cannot name (every
//! candidate it looks at is held) is taken in release order as before. The pool's
//! correctness (counts, index, free list) never depends on the policy: it only
//! picks which free block goes first.

use std::sync::Arc;
use std::time::Instant;

use super::{BlockId, Slot};
use crate::evict::{Access, KeyMap, Policy, PolicyKind};
use crate::prefix::BlockHash;

/// A clock in milliseconds (a replay's trace time).
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// An eviction policy over the pool's findable identities.
pub(super) struct PolicyOrder {
    kind: PolicyKind,
    capacity: usize,
    policy: Box<dyn Policy>,
    /// The block each tracked key names (the index's holder of its identity).
    blocks: KeyMap<BlockId>,
    start: Instant,
    /// The clock in ms (`None`: time since the pool was made).
    clock: Option<Clock>,
    /// Calls so far: each is one chain for the policy.
    calls: u64,
    /// Allocations that found no victim through the policy and took the free
    /// list's head.
    pub(super) fallbacks: u64,
    /// Registrations the policy refused (their blocks go first once free).
    pub(super) refused: u64,
}

impl std::fmt::Debug for PolicyOrder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyOrder")
            .field("policy", &self.policy.name())
            .field("tracked", &self.blocks.len())
            .field("fallbacks", &self.fallbacks)
            .finish()
    }
}

/// Where one call's uses are in its chain (see [`PolicyOrder::chain`]).
pub(super) struct ChainPos {
    request: u64,
    depth: u32,
    now_ms: u64,
}

impl PolicyOrder {
    /// `kind` over a pool of `capacity` blocks.
    pub(super) fn new(kind: PolicyKind, capacity: usize) -> Self {
        Self {
            kind,
            capacity,
            policy: kind.build(capacity.max(1)),
            blocks: KeyMap::default(),
            start: Instant::now(),
            clock: None,
            calls: 0,
            fallbacks: 0,
            refused: 0,
        }
    }

    /// The policy's name.
    pub(super) fn name(&self) -> &'static str {
        self.policy.name()
    }

    /// Starts the uses of one call (a prefix hit, a registration batch).
    pub(super) fn chain(&mut self) -> ChainPos {
        self.calls += 1;
        ChainPos {
            request: self.calls,
            depth: 0,
            now_ms: match &self.clock {
                Some(c) => c(),
                None => self.start.elapsed().as_millis() as u64,
            },
        }
    }

    /// Identity `hash` is no longer found at `id` (evicted, forgotten, rewritten).
    pub(super) fn dropped(&mut self, hash: BlockHash, id: BlockId) {
        let key = hash.fold64();
        if self.blocks.get(&key) == Some(&id) {
            self.blocks.remove(&key);
            self.policy.on_remove(key);
        }
    }

    /// Identity `hash`, found at `from`, is now found at `to` (a later holder took
    /// over); tracked anew if the policy had let it go.
    pub(super) fn moved(&mut self, hash: BlockHash, from: BlockId, to: BlockId, slots: &[Slot]) {
        let key = hash.fold64();
        let held = slots[to as usize].ref_cnt > 0;
        match self.blocks.get_mut(&key) {
            Some(b) if *b == from => {
                *b = to;
                self.policy.set_held(key, held);
            }
            Some(_) => {}
            None => {
                let mut at = self.chain();
                self.used(&mut at, hash, to, true, held);
            }
        }
    }

    /// The block `id`, which holds `hash`, is now held by a request (`held`) or
    /// free: the policy searches victims among free blocks only.
    pub(super) fn held(&mut self, hash: BlockHash, id: BlockId, held: bool) {
        let key = hash.fold64();
        if self.blocks.get(&key) == Some(&id) {
            self.policy.set_held(key, held);
        }
    }

    /// The free block the policy evicts first, untracked from now on; `None` when
    /// none of the candidates it looked at is free.
    pub(super) fn victim(&mut self, slots: &[Slot]) -> Option<BlockId> {
        let key = self.policy.evict(&mut evictable(&self.blocks, slots));
        match key.and_then(|k| self.blocks.remove(&k)) {
            Some(id) => Some(id),
            None => {
                self.fallbacks += 1;
                None
            }
        }
    }

    /// Uses `clock` instead of the time since the pool was made.
    pub(super) fn set_clock(&mut self, clock: Clock) {
        self.clock = Some(clock);
    }

    /// Forgets everything (the engine's weights changed): a new policy.
    pub(super) fn reset(&mut self) {
        let fresh = Self::new(self.kind, self.capacity);
        let (fallbacks, refused, clock) = (self.fallbacks, self.refused, self.clock.take());
        *self = Self {
            fallbacks,
            refused,
            clock,
            ..fresh
        };
    }

    /// The access of `hash` next in the chain `at`.
    fn access(at: &mut ChainPos, hash: BlockHash, last: bool) -> Access {
        let a = Access {
            key: hash.fold64(),
            request: at.request,
            depth: at.depth,
            last,
            now_ms: at.now_ms,
        };
        at.depth = at.depth.saturating_add(1);
        a
    }

    /// Identity `hash` newly found at `id` (its registration), next in the chain
    /// `at`: when the pool is `full` (no free block without identity), the
    /// policy's admission decides whether it is worth a free block the policy
    /// would evict for it. Returns `false` when it is not (the policy
    /// remembers it as departed; its block should go first once free).
    pub(super) fn registered(
        &mut self,
        at: &mut ChainPos,
        hash: BlockHash,
        id: BlockId,
        last: bool,
        full: bool,
        slots: &[Slot],
    ) -> bool {
        let a = Self::access(at, hash, last);
        if self.blocks.contains_key(&a.key) {
            // Another identity with the same key (or a stale entry): untracked.
            return true;
        }
        if full && !self.policy.admit(a, &mut evictable(&self.blocks, slots)) {
            self.refused += 1;
            return false;
        }
        self.blocks.insert(a.key, id);
        self.policy.on_insert(a);
        self.policy.set_held(a.key, true); // registered blocks are held
        true
    }

    /// A use of identity `hash`, found at `id` (a prefix hit; a later holder taking
    /// over), next in the chain `at`; `last`: it ends the chain; `held`: a request
    /// holds the block now (one lookup for both).
    pub(super) fn used(&mut self, at: &mut ChainPos, hash: BlockHash, id: BlockId, last: bool, held: bool) {
        let a = Self::access(at, hash, last);
        let key = a.key;
        match self.blocks.get(&key) {
            Some(&b) if b == id => self.policy.on_hit(a),
            // Another identity with the same key (or a stale entry): untracked.
            Some(_) => return,
            None => {
                self.blocks.insert(key, id);
                self.policy.on_insert(a);
            }
        }
        self.policy.set_held(key, held);
    }
}

/// Whether the policy's key `k` names a free block (the victim searches' filter).
fn evictable<'a>(blocks: &'a KeyMap<BlockId>, slots: &'a [Slot]) -> impl FnMut(u64) -> bool + 'a {
    |k| blocks.get(&k).is_some_and(|&b| slots[b as usize].ref_cnt == 0)
}
