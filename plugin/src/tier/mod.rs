//! Tiers below the engine: where a block identity can be found, each behind one
//! shape, [`Tier`]. Moving blocks between them is `crate::movement`'s work; a tier
//! only stores, finds, loads (verified) and drops what it is given.
//!
//! Core types: [`Tier`] (the contract), [`TierId`], [`StoreOutcome`] and
//! [`LoadOutcome`] (the one outcome vocabulary), [`TierStatus`], [`BlockCtx`];
//! [`HostTier`] (G2, a shared host-memory arena), [`disk`] (G3), [`remote`] (G4, a
//! Redis/Valkey cluster shared by a fleet), [`layout`] (the engine's KV memory as
//! regions).
//!
//! Workflow of a block: the engine computes it (G1) -> [`HostTier::store`] copies it
//! out, checksummed -> a later lookup finds its identity -> [`HostTier::load`] copies
//! it back into an engine slot and verifies it; a mismatch is a miss, never served.

pub mod arena;
pub mod checksum;
#[cfg(feature = "cuda")]
pub mod device;
pub mod disk;
mod host;
pub mod layout;
pub mod remote;
pub mod shared_file;
pub mod store;
#[cfg(test)]
pub(crate) mod test_util;

pub use host::{HostSettings, HostTier, TierError};

use std::time::Duration;

use crate::metrics::Report;
use crate::prefix::BlockHash;

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
    /// G4: a remote store shared by many machines.
    Remote = 4,
}

impl TierId {
    /// The `tier` label of metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Engine => "engine",
            Self::Host => "host",
            Self::Disk => "disk",
            Self::Remote => "remote",
        }
    }
}

/// Result of a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOutcome {
    /// Written and published (a write-behind tier: accepted, on its way).
    Stored,
    /// Already present or being written by someone else: nothing to do.
    AlreadyPresent,
    /// Not stored: every block is pinned, the tier is full or down, or admission
    /// said no (a tier is never grown).
    NoSpace,
    /// Not stored now: over the offload budget while the engine saturates the
    /// PCIe link (GPU layouts only); the engine may store it later.
    Deferred,
}

/// Result of a load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadOutcome {
    /// Copied and verified.
    Loaded,
    /// Not present (never stored, or evicted since a lookup).
    Miss,
    /// Present but failed verification: dropped, the destination must be recomputed.
    Corrupt,
    /// Not read now (this process pins too many blocks at once, or the index lock
    /// was not free in time): treat as a miss.
    Busy,
    /// Reading it failed (disk I/O error): dropped, recompute.
    IoError,
}

/// One block of a store, as a lower tier records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockCtx {
    /// Digest of the namespace: written with the block and checked on every load.
    pub namespace: u64,
    /// Position of the block in the caller's batch (eviction policies that keep
    /// chains use it; see [`crate::evict::Chat`]).
    pub depth: u32,
    /// Whether the block is the last of the caller's batch (a chain's end).
    pub last: bool,
    /// The engine's key for the block (its KV-event name; 0: none), kept with it.
    pub key: u64,
    /// The engine's key of the block before it (0: none), for the store event.
    pub parent: u64,
}

/// A tier as a status call sees it (fields a tier has no notion of stay zero).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TierStatus {
    /// Serving now.
    pub up: bool,
    /// Why it is not serving (failed to open, went down); `None` when it serves.
    pub problem: Option<String>,
    /// This process may store into it (up, and the writer of its storage).
    pub writable: bool,
    /// Blocks held.
    pub blocks: u64,
    /// Capacity in blocks.
    pub capacity_blocks: u64,
    /// Capacity in bytes, metadata included.
    pub capacity_bytes: u64,
    /// Stores accepted and not yet written (write-behind queue).
    pub pending_writes: u64,
    /// Blocks being written now (the writer's view).
    pub writing_blocks: u64,
    /// Free slots (the writer's view).
    pub free_blocks: u64,
    /// Every slot accounted for exactly once (always true where the tier keeps no
    /// slot accounting of its own).
    pub consistent: bool,
    /// I/O bypasses the page cache (O_DIRECT).
    pub direct_io: bool,
    /// Blocks the start-up recovery kept.
    pub recovered_blocks: u64,
    /// Blocks the start-up recovery dropped (did not verify).
    pub recovery_dropped: u64,
}

/// The one shape of a tier below the engine. The host tier (G2) and every lower
/// tier (G3 disk, G4 remote, ...) implement it; [`crate::movement`] moves blocks
/// between them and is the only caller that knows more than one tier.
///
/// Contract:
/// - Nothing unverified is ever returned: a block that fails its checks on the
///   way back is [`LoadOutcome::Corrupt`] (and dropped), never `Loaded`.
/// - Capacity is a hard limit: a full tier evicts by its policy or answers
///   [`StoreOutcome::NoSpace`]; it never grows.
/// - A failure of the tier as a whole (disk full, server gone) makes it answer
///   misses and `NoSpace` and report `up: false`, never an error to the engine;
///   `Err` is for a caller bug (a block of the wrong size) or shared state that
///   cannot be read.
/// - No call blocks on the network or the disk except [`Tier::load_into`] (the
///   caller's loader thread) and [`Tier::wait_idle`]; stores may be write-behind.
pub trait Tier: Send + Sync {
    /// Which tier this is.
    fn id(&self) -> TierId;
    /// Number of leading `hashes` held, ready to load (counts nothing).
    fn lookup_run(&self, hashes: &[BlockHash]) -> Result<usize, TierError>;
    /// Whether the tier is still finding out if it holds `hash` (the block after a
    /// [`Tier::lookup_run`] run): the caller should ask again later rather than
    /// take a miss. Never waits.
    fn pending(&self, hash: BlockHash) -> bool {
        let _ = hash;
        false
    }
    /// Whether a store of `hash` would be a no-op: held, or on its way.
    fn holds(&self, hash: BlockHash) -> bool {
        self.lookup_run(&[hash]).is_ok_and(|n| n == 1)
    }
    /// Counts `blocks` lookup hits served from this tier.
    fn record_hits(&self, blocks: u64);
    /// Whether a store could land now (up, and this process writes the tier).
    fn writable(&self) -> bool;
    /// Starts a new chain of blocks (one engine call), for eviction policies.
    fn begin_request(&self) {}
    /// Stores one block given as segments (their concatenation is the payload).
    fn store(&self, hash: BlockHash, ctx: BlockCtx, segs: &[&[u8]]) -> Result<StoreOutcome, TierError>;
    /// Loads `hashes[i]` into the segments `dsts[i]`, verified against
    /// `namespace`, writing `outcomes[i]`. A destination of a block that is not
    /// `Loaded` may hold unverified bytes and must be recomputed.
    fn load_into(
        &self,
        hashes: &[BlockHash],
        namespace: u64,
        dsts: &mut [Vec<&mut [u8]>],
        outcomes: &mut [LoadOutcome],
    ) -> Result<(), TierError>;
    /// Drops `hash` if held. Returns whether it was dropped (a block being read
    /// now may stay until the read is done, or be dropped when the read ends).
    fn remove(&self, hash: BlockHash) -> Result<bool, TierError>;
    /// Waits until accepted stores are written, up to `timeout`; whether it got there.
    fn wait_idle(&self, timeout: Duration) -> bool {
        let _ = timeout;
        true
    }
    /// A snapshot for status calls.
    fn status(&self) -> TierStatus;
    /// Adds the tier's series to a scrape.
    fn report(&self, r: &mut Report);
}

/// The histogram family of block copies, one series per `src`/`dst` pair; every
/// tier adds its own.
pub const TRANSFER_SECONDS: &str = "tierkv_transfer_seconds";
/// Its help text.
pub const TRANSFER_HELP: &str = "Latency of one block copy with its checksum.";
