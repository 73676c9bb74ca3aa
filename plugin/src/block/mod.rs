//! Engine block slots (G1): ids, reference counts, the free list and the prefix index.
//!
//! Core types: [`BlockId`], [`BlockPool`] (allocate / free / fork / copy-on-write /
//! register / lookup / acquire), [`Insufficient`] (an expected shortage, returned as a
//! value) and [`PoolError`] (a caller bug such as an unknown id).
//!
//! The pool knows nothing of engines or tiers: it tracks which of the engine's KV slots
//! are in use, which hold the KV of an identified full block, and which to reuse next.

mod pool;
mod report;

pub use pool::{BlockId, BlockPool, Clock, CowOutcome, Insufficient, PoolError, PoolStats};

/// A `BuildHasher` for keys that are already uniformly distributed hashes
/// ([`crate::prefix::BlockHash`]): it uses their low 64 bits as they are.
#[derive(Debug, Clone, Copy, Default)]
pub struct IdentityHash;

/// The hasher built by [`IdentityHash`].
#[derive(Debug, Clone, Copy, Default)]
pub struct IdentityHasher(u64);

impl std::hash::BuildHasher for IdentityHash {
    type Hasher = IdentityHasher;
    fn build_hasher(&self) -> IdentityHasher {
        IdentityHasher(0)
    }
}

impl std::hash::Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(b);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 ^= v as u64;
    }
}
