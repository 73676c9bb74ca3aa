//! Tiers below the engine: where a block identity can be found, and how blocks move.
//!
//! Core types: [`TierId`], [`HostTier`] (G2, a shared host-memory arena),
//! [`EvictionPolicy`] (the O(1) contract every policy keeps) and [`Lru`].
//!
//! Workflow of a block: the engine computes it (G1) -> [`HostTier::store`] copies it
//! out, checksummed -> a later lookup finds its identity -> [`HostTier::load`] copies
//! it back into an engine slot and verifies it; a mismatch is a miss, never served.

pub mod arena;
pub mod checksum;
pub mod disk;
#[cfg(feature = "cuda")]
pub mod gpu;
mod host;
pub mod layout;
pub mod shared_file;
pub mod store;
#[cfg(test)]
pub(crate) mod test_util;

pub use host::{HostTier, LoadOutcome, StoreOutcome, TierError};

use crate::block::list::{LinkStore, ListEnds, NIL};

/// The tiers, by the names the design uses.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TierId {
    /// G1: the engine's own (GPU) block slots.
    Engine = 1,
    /// G2: host memory.
    Host = 2,
    /// G3: the local disk.
    Disk = 3,
}

/// An eviction policy over slots whose links live in a [`LinkStore`].
///
/// The caller guarantees: a slot is `inserted` once before any `accessed` or
/// `removed`; it is `removed` (or returned by a scan and then removed) before it is
/// inserted again. An implementation must: run every method in O(1), and yield
/// candidates from [`EvictionPolicy::first_candidate`] / [`EvictionPolicy::next_candidate`]
/// best victim first, each slot at most once, without changing state.
pub trait EvictionPolicy {
    /// A slot became evictable.
    fn inserted(&mut self, s: &mut impl LinkStore, slot: u32);
    /// A slot was used.
    fn accessed(&mut self, s: &mut impl LinkStore, slot: u32);
    /// A slot stopped being evictable.
    fn removed(&mut self, s: &mut impl LinkStore, slot: u32);
    /// The best victim, or `NIL`.
    fn first_candidate(&self) -> u32;
    /// The candidate after `slot`, or `NIL`.
    fn next_candidate(&self, s: &impl LinkStore, slot: u32) -> u32;
}

/// Least recently used: a list ordered by last use, head evicted first.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lru(pub ListEnds);

impl EvictionPolicy for Lru {
    fn inserted(&mut self, s: &mut impl LinkStore, slot: u32) {
        self.0.push_back(s, slot);
    }
    fn accessed(&mut self, s: &mut impl LinkStore, slot: u32) {
        self.0.move_to_back(s, slot);
    }
    fn removed(&mut self, s: &mut impl LinkStore, slot: u32) {
        self.0.remove(s, slot);
    }
    fn first_candidate(&self) -> u32 {
        self.0.head
    }
    fn next_candidate(&self, s: &impl LinkStore, slot: u32) -> u32 {
        if slot == NIL {
            NIL
        } else {
            s.links(slot).1
        }
    }
}
