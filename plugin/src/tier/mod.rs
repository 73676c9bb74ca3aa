//! Tiers below the engine: where a block identity can be found, and how blocks move.
//!
//! Core types: [`TierId`], [`HostTier`] (G2, a shared host-memory arena).
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

pub use host::{HostSettings, HostTier, LoadOutcome, StoreOutcome, TierError};

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

/// The histogram family of block copies, one series per `src`/`dst` pair; every
/// tier adds its own.
pub const TRANSFER_SECONDS: &str = "tierkv_transfer_seconds";
/// Its help text.
pub const TRANSFER_HELP: &str = "Latency of one block copy with its checksum.";
