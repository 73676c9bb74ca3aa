//! G2: the host-memory tier over a shared [`Arena`].
//!
//! Workflow of a store (engine -> host):
//! 1. Under the arena lock: skip if the identity is present (or being written by a
//!    live writer within its deadline; an abandoned write is reclaimed at once);
//!    for an engine's store when the arena is full, ask the policy's admission
//!    (`hazard` refuses a block less likely to be used again than its victim, and
//!    the next block of a refused chain; LRU admits everything); then take a free
//!    slot or evict the store's policy's victim among the
//!    unpinned blocks (`hazard` or LRU, `TIERKV_EVICTION`), and mark the slot
//!    `Writing` (indexed, so a concurrent store of the same block skips), getting a
//!    [`WriteTicket`].
//! 2. Without the lock: copy the segments in, checksumming in the same pass
//!    ([`FusedHasher`], keyed by the identity).
//! 3. Under the lock: if the ticket still holds (same slot generation, same
//!    writer), record checksum and length, mark `Ready`, put it on the policy's
//!    list (the store a use of block `depth` of a chain);
//!    otherwise the store is lost and reported as not stored.
//!
//! Workflow of a load (host -> engine):
//! 1. Under the lock: find the identity `Ready`, pin it (a pin count on the slot,
//!    and the slot in this mapping's lease, so a dead reader's pins are dropped)
//!    and count the use for the policy ([`HostTier::load_at`]: an engine's load;
//!    [`HostTier::load`]: the library's own read, which `hazard` does not count).
//! 2. Without the lock: copy out, checksumming the very words delivered.
//! 3. Under the lock: unpin; on a mismatch drop the block and report
//!    [`LoadOutcome::Corrupt`] (the caller recomputes; nothing wrong is served).
//!
//! A lock that is not free within [`super::arena::LOCK_WAIT`] makes the operation a
//! miss (lookup: no hit, load: [`LoadOutcome::Busy`], store: not stored), counted
//! in `tierkv_lock_timeouts_total`, never a stall of the engine.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use super::arena::SharedStats;
use super::arena::{Arena, ArenaError, ArenaSpec, Arrival, Locked, Refused, SlotState, WriteTicket};
use super::checksum::FusedHasher;
use super::shared_file::Sharing;
use super::{BlockCtx, LoadOutcome, StoreOutcome, Tier, TierId, TierStatus};
use crate::events::{EventKind, EventLog, EventTier};
use crate::evict::SlotAccess;
use crate::prefix::BlockHash;

/// How many LRU entries a store inspects for an unpinned victim before giving up.
const EVICTION_SCAN: usize = 64;

/// Errors of the host tier.
#[derive(Debug, thiserror::Error)]
pub enum TierError {
    /// The arena could not be opened.
    #[error(transparent)]
    Arena(#[from] ArenaError),
    /// The caller's buffers do not add up to one block.
    #[error("segments hold {got} bytes but a block is {want} bytes")]
    SizeMismatch {
        /// Sum of segment lengths.
        got: u64,
        /// Block bytes.
        want: u64,
    },
}

/// The host tier of one manager.
pub struct HostTier {
    arena: Arena,
    block_tokens: u64,
    events: Arc<EventLog>,
    /// Chains (engine calls) this mapping started, for the eviction policy.
    chains: AtomicU64,
    /// The chain and depth of the last block admission refused: the next block
    /// of that chain is refused without asking.
    refused: Mutex<Option<(u64, u32)>>,
    /// The eviction policy's clock ([`Locked::now_ms`]; tests set their own).
    clock: fn() -> u64,
}

impl HostTier {
    /// Opens the shared arena named by `cfg` for blocks of `block_bytes` bytes and
    /// `block_tokens` tokens.
    pub fn open(cfg: &HostSettings, block_bytes: u64, block_tokens: u64) -> Result<Self, TierError> {
        let path: PathBuf = super::store::arena_path(&cfg.shm_dir, &cfg.store_name);
        let spec = ArenaSpec {
            slot_bytes: block_bytes,
            capacity: cfg.capacity,
            timeout: cfg.lock_timeout,
            sharing: Sharing { group: cfg.share_group },
            eviction: cfg.eviction,
        };
        let arena = Arena::open(&path, spec)?;
        let reclaimed = arena.lock()?.sweep_dead();
        if reclaimed > 0 {
            arena
                .stats()
                .dead_writer_reclaims
                .fetch_add(u64::from(reclaimed), Ordering::Relaxed);
            tracing::warn!(reclaimed, "reclaimed host-tier slots of writers that died");
        }
        let g = arena.geometry();
        tracing::info!(path = %path.display(), blocks = g.n_slots, block_bytes, eviction = arena.eviction().name(), "host tier open");
        Ok(Self {
            arena,
            block_tokens,
            events: Arc::new(EventLog::new()),
            chains: AtomicU64::new(0),
            refused: Mutex::new(None),
            clock: Locked::now_ms,
        })
    }

    /// Replaces the eviction policy's clock (tests: time that moves as they say).
    #[cfg(test)]
    pub(crate) fn set_clock(&mut self, clock: fn() -> u64) {
        self.clock = clock;
    }

    /// The arena (geometry, path, stats).
    pub fn arena(&self) -> &Arena {
        &self.arena
    }

    /// Shared counters.
    pub fn stats(&self) -> &SharedStats {
        self.arena.stats()
    }

    /// Payload bytes of one block.
    pub fn block_bytes(&self) -> u64 {
        self.arena.geometry().slot_bytes
    }

    /// Blocks currently held.
    pub fn block_count(&self) -> Result<u64, TierError> {
        Ok(u64::from(self.arena.lock()?.ready_count()))
    }

    /// Number of leading `hashes` held (ready to load). Counts hit and miss blocks
    /// and tokens.
    pub fn lookup(&self, hashes: &[BlockHash]) -> Result<usize, TierError> {
        let n = self.lookup_run(hashes)?;
        self.record_lookup(n as u64, (hashes.len() - n) as u64);
        Ok(n)
    }

    /// Number of leading `hashes` held, without counting anything.
    pub fn lookup_run(&self, hashes: &[BlockHash]) -> Result<usize, TierError> {
        let Some(mut l) = self.lock_or_miss()? else {
            return Ok(0);
        };
        Ok(hashes
            .iter()
            .take_while(|&&h| l.find(h).is_some_and(|s| l.meta(s).state == SlotState::Ready as u32))
            .count())
    }

    /// Counts one lookup that found `hit` blocks here and `miss` blocks nowhere.
    pub fn record_lookup(&self, hit: u64, miss: u64) {
        let s = self.stats();
        s.lookups.fetch_add(1, Ordering::Relaxed);
        s.hit_blocks.fetch_add(hit, Ordering::Relaxed);
        s.miss_blocks.fetch_add(miss, Ordering::Relaxed);
        s.hit_tokens.fetch_add(hit * self.block_tokens, Ordering::Relaxed);
        s.miss_tokens.fetch_add(miss * self.block_tokens, Ordering::Relaxed);
    }

    fn check_len(&self, got: u64) -> Result<(), TierError> {
        let want = self.block_bytes();
        if got == want {
            Ok(())
        } else {
            Err(TierError::SizeMismatch { got, want })
        }
    }

    /// Takes the index lock; `None` when it timed out (the caller misses).
    fn lock_or_miss(&self) -> Result<Option<Locked<'_>>, TierError> {
        match self.arena.lock() {
            Ok(l) => Ok(Some(l)),
            Err(ArenaError::LockTimeout(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Records this tier's KV events (stores, evictions, removals) in `log`.
    pub fn with_events(mut self, log: Arc<EventLog>) -> Self {
        self.events = log;
        self
    }

    /// Stores one block given as segments (their concatenation is the payload),
    /// a chain of its own for the eviction policy.
    pub fn store(&self, hash: BlockHash, segs: &[&[u8]]) -> Result<StoreOutcome, TierError> {
        Tier::begin_request(self);
        self.store_keyed(hash, 0, 0, self.access(false), None, segs)
    }

    /// A use in the current chain ([`Tier::begin_request`]), `last` when it ends
    /// the chain, as the eviction policy sees it. Chain numbers carry this
    /// mapping's lease, so two processes' chains never mix.
    fn access(&self, last: bool) -> SlotAccess {
        let n = self.chains.load(Ordering::Relaxed);
        let lease = u64::from(self.arena.owner().index_plus_one);
        SlotAccess {
            request: lease << 48 | (n & ((1 << 48) - 1)),
            last,
            now_ms: (self.clock)(),
        }
    }

    /// [`HostTier::store`] of a block the engine calls `key` (its parent `parent`;
    /// 0: none): the key is kept with the block and names it in KV events.
    /// `depth`: the block's place in an engine call, whose stores pass the
    /// policy's admission (`None`: the library's own store, always admitted).
    fn store_keyed(
        &self,
        hash: BlockHash,
        key: u64,
        parent: u64,
        access: SlotAccess,
        depth: Option<u32>,
        segs: &[&[u8]],
    ) -> Result<StoreOutcome, TierError> {
        self.check_len(segs.iter().map(|s| s.len() as u64).sum())?;
        let start = Instant::now();
        let ticket = match self.reserve(hash, key, access, depth)? {
            Ok(t) => t,
            Err(outcome) => return Ok(outcome),
        };
        let dst = self.arena.payload_ptr(ticket.slot);
        let mut hasher = FusedHasher::new(seed(hash));
        let mut off = 0usize;
        for seg in segs {
            // SAFETY: our Writing slot (no reader, no other writer) of block_bytes, which
            // the segments fill exactly (checked above); engine memory is not the arena.
            unsafe { hasher.copy_raw(dst.add(off), seg.as_ptr(), seg.len()) };
            off += seg.len();
        }
        let committed = match self.lock_or_miss()? {
            Some(mut l) => l.commit_write(ticket, hasher.digest(), off as u64, access),
            // The slot stays Writing until its deadline; then it is reclaimed.
            None => false,
        };
        let s = self.stats();
        if !committed {
            s.writes_lost.fetch_add(1, Ordering::Relaxed);
            return Ok(StoreOutcome::NoSpace);
        }
        s.stored_blocks.fetch_add(1, Ordering::Relaxed);
        s.stored_bytes.fetch_add(off as u64, Ordering::Relaxed);
        s.store_latency.observe_ns(start.elapsed().as_nanos() as u64);
        self.events.record(EventKind::Stored, EventTier::Host, key, parent);
        Ok(StoreOutcome::Stored)
    }

    /// Step 1 of a store: a reserved slot, or the outcome that ends the store
    /// (a lock that timed out, or admission's refusal, ends it as not stored).
    fn reserve(
        &self,
        hash: BlockHash,
        key: u64,
        access: SlotAccess,
        depth: Option<u32>,
    ) -> Result<Result<WriteTicket, StoreOutcome>, TierError> {
        let Some(mut l) = self.lock_or_miss()? else {
            return Ok(Err(StoreOutcome::NoSpace));
        };
        if let Some(slot) = l.find(hash) {
            if !l.reclaim_if_abandoned(slot) {
                drop(l);
                self.stats().store_dedup.fetch_add(1, Ordering::Relaxed);
                return Ok(Err(StoreOutcome::AlreadyPresent));
            }
            self.stats().dead_writer_reclaims.fetch_add(1, Ordering::Relaxed);
        }
        // Admission (an engine's store): the chain and depth of this process's
        // last refusal tell whether this block comes right after it.
        let mut last_refusal = self.refused.lock();
        let arrival = depth.map(|d| Arrival {
            key: hash.fold64(),
            access,
            after_refusal: *last_refusal == Some((access.request, d.wrapping_sub(1))),
        });
        let now = access.now_ms;
        let taken = match l.take_slot(EVICTION_SCAN, now, arrival) {
            Ok(None) => {
                let reclaimed = l.sweep_dead();
                self.stats()
                    .dead_writer_reclaims
                    .fetch_add(u64::from(reclaimed), Ordering::Relaxed);
                l.take_slot(EVICTION_SCAN, now, arrival)
            }
            t => t,
        };
        let taken = taken.unwrap_or_else(|Refused| {
            *last_refusal = depth.map(|d| (access.request, d));
            None
        });
        drop(last_refusal);
        let Some((slot, evicted)) = taken else {
            drop(l);
            self.stats().store_rejected.fetch_add(1, Ordering::Relaxed);
            return Ok(Err(StoreOutcome::NoSpace));
        };
        let evicted_key = evicted.map(|_| l.meta(slot).key);
        let ticket = l.begin_write(slot, hash, key);
        drop(l);
        if let Some(k) = evicted_key {
            self.stats().evictions.fetch_add(1, Ordering::Relaxed);
            self.events.record(EventKind::Removed, EventTier::Host, k, 0);
        }
        Ok(Ok(ticket))
    }

    /// Loads one block into `segs` and verifies it, for the library's own use (the
    /// hazard policy does not count it as a use; see [`HostTier::load_at`]). On
    /// [`LoadOutcome::Corrupt`] the destination holds unverified bytes and must be
    /// recomputed.
    pub fn load(&self, hash: BlockHash, segs: &mut [&mut [u8]]) -> Result<LoadOutcome, TierError> {
        self.load_with(hash, segs, None)
    }

    /// [`HostTier::load`] of block `i` of an engine call of `n` blocks (its chain
    /// begun by [`Tier::begin_request`]): a use the eviction policy learns from.
    pub fn load_at(
        &self,
        hash: BlockHash,
        segs: &mut [&mut [u8]],
        i: usize,
        n: usize,
    ) -> Result<LoadOutcome, TierError> {
        let a = self.access(i + 1 == n);
        self.load_with(hash, segs, Some(a))
    }

    fn load_with(
        &self,
        hash: BlockHash,
        segs: &mut [&mut [u8]],
        a: Option<SlotAccess>,
    ) -> Result<LoadOutcome, TierError> {
        self.check_len(segs.iter().map(|s| s.len() as u64).sum())?;
        let start = Instant::now();
        let (slot, want_sum, len) = {
            let Some(mut l) = self.lock_or_miss()? else {
                return Ok(LoadOutcome::Busy);
            };
            let Some(slot) = l.find(hash).filter(|&s| l.meta(s).state == SlotState::Ready as u32) else {
                drop(l);
                self.stats().load_misses.fetch_add(1, Ordering::Relaxed);
                return Ok(LoadOutcome::Miss);
            };
            if !l.pin(slot, a) {
                return Ok(LoadOutcome::Busy);
            }
            let m = l.meta(slot);
            (slot, m.checksum, m.len)
        };
        let src = self.arena.payload_ptr(slot);
        let mut hasher = FusedHasher::new(seed(hash));
        let mut off = 0usize;
        for seg in segs.iter_mut() {
            // SAFETY: the slot is pinned (it cannot be evicted or rewritten while
            // pinned) and holds block_bytes bytes, which the segments add up to.
            unsafe { hasher.copy_raw(seg.as_mut_ptr(), src.add(off), seg.len()) };
            off += seg.len();
        }
        let ok = hasher.digest() == want_sum && len == off as u64;
        self.unpin(slot, hash, ok)?;
        let s = self.stats();
        if !ok {
            s.checksum_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                hash = format_args!("{:032x}", hash.0),
                "host-tier block failed verification; dropped"
            );
            return Ok(LoadOutcome::Corrupt);
        }
        s.loaded_blocks.fetch_add(1, Ordering::Relaxed);
        s.loaded_bytes.fetch_add(off as u64, Ordering::Relaxed);
        s.load_latency.observe_ns(start.elapsed().as_nanos() as u64);
        Ok(LoadOutcome::Loaded)
    }

    /// Drops this mapping's pin on `slot` (and the slot too when its bytes failed
    /// verification). The outcome of the read stands whatever happens to the lock
    /// now (the bytes were read without it); a pin that cannot be dropped after
    /// three waits stays until this mapping's lease is given back.
    fn unpin(&self, slot: u32, hash: BlockHash, ok: bool) -> Result<(), TierError> {
        for _ in 0..3 {
            match self.arena.lock() {
                Ok(mut l) => {
                    l.unpin(slot);
                    if !ok {
                        if let Some(k) = l.discard(slot, hash) {
                            drop(l);
                            self.events.record(EventKind::Removed, EventTier::Host, k, 0);
                        }
                    }
                    break;
                }
                Err(ArenaError::LockTimeout(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Copies bytes `offset..offset + dst.len()` of block `hash` into `dst` (the
    /// slot pinned meanwhile) and returns their digest ([`FusedHasher`] seeded
    /// with `seed`); `None` when the block is not here or the index is busy.
    /// The bytes are NOT verified against the block's checksum (that needs the
    /// whole block): the caller must hold a digest of this range taken from a
    /// verified load, and compare (PQ gathers read one layer of a block so).
    pub fn read_range(
        &self,
        hash: BlockHash,
        offset: usize,
        dst: &mut [u8],
        seed: u64,
    ) -> Result<Option<u64>, TierError> {
        let end = offset.checked_add(dst.len());
        if end.is_none_or(|e| e as u64 > self.block_bytes()) {
            return Err(TierError::SizeMismatch {
                got: end.unwrap_or(usize::MAX) as u64,
                want: self.block_bytes(),
            });
        }
        let slot = {
            let Some(mut l) = self.lock_or_miss()? else {
                return Ok(None);
            };
            let Some(slot) = l.find(hash).filter(|&s| l.meta(s).state == SlotState::Ready as u32) else {
                return Ok(None);
            };
            if !l.pin(slot, None) {
                return Ok(None);
            }
            slot
        };
        let mut hasher = FusedHasher::new(seed);
        // SAFETY: the slot is pinned (it cannot be evicted or rewritten while
        // pinned) and holds block_bytes bytes; the range lies inside (checked).
        unsafe { hasher.copy_raw(dst.as_mut_ptr(), self.arena.payload_ptr(slot).add(offset), dst.len()) };
        self.unpin(slot, hash, true)?;
        Ok(Some(hasher.digest()))
    }

    /// Identities in eviction order, first victim first.
    pub fn eviction_order(&self) -> Result<Vec<BlockHash>, TierError> {
        Ok(self.arena.lock()?.eviction_order())
    }
}

impl Tier for HostTier {
    fn id(&self) -> TierId {
        TierId::Host
    }

    fn lookup_run(&self, hashes: &[BlockHash]) -> Result<usize, TierError> {
        HostTier::lookup_run(self, hashes)
    }

    fn record_hits(&self, blocks: u64) {
        self.record_lookup(blocks, 0);
    }

    fn writable(&self) -> bool {
        true
    }

    fn begin_request(&self) {
        self.chains.fetch_add(1, Ordering::Relaxed);
    }

    fn store(&self, hash: BlockHash, ctx: BlockCtx, segs: &[&[u8]]) -> Result<StoreOutcome, TierError> {
        self.store_keyed(hash, ctx.key, ctx.parent, self.access(ctx.last), Some(ctx.depth), segs)
    }

    fn load_into(
        &self,
        hashes: &[BlockHash],
        _namespace: u64,
        dsts: &mut [Vec<&mut [u8]>],
        outcomes: &mut [LoadOutcome],
    ) -> Result<(), TierError> {
        Tier::begin_request(self);
        let n = hashes.len();
        for (i, ((&h, dst), o)) in hashes.iter().zip(dsts).zip(outcomes).enumerate() {
            *o = self.load_at(h, dst, i, n)?;
        }
        Ok(())
    }

    fn remove(&self, hash: BlockHash) -> Result<bool, TierError> {
        let Some(mut l) = self.lock_or_miss()? else {
            return Ok(false);
        };
        let Some(slot) = l.find(hash).filter(|&s| l.meta(s).state == SlotState::Ready as u32) else {
            return Ok(false);
        };
        if let Some(k) = l.discard(slot, hash) {
            drop(l);
            self.events.record(EventKind::Removed, EventTier::Host, k, 0);
        }
        Ok(true)
    }

    fn status(&self) -> TierStatus {
        let g = self.arena.geometry();
        // A lock that cannot be taken (timed out, or a broken arena) is reported as
        // the problem; the tier keeps serving what it can.
        let (blocks, free, problem) = match self.arena.lock() {
            Ok(l) => (u64::from(l.ready_count()), u64::from(l.free_count()), None),
            Err(e) => (0, 0, Some(e.to_string())),
        };
        TierStatus {
            up: true,
            problem,
            writable: true,
            blocks,
            capacity_blocks: u64::from(g.n_slots),
            capacity_bytes: g.file_len,
            free_blocks: free,
            consistent: true,
            ..TierStatus::default()
        }
    }

    fn report(&self, r: &mut crate::metrics::Report) {
        HostTier::report(self, r);
    }
}

fn seed(hash: BlockHash) -> u64 {
    let [lo, hi] = hash.to_parts();
    lo ^ hi.rotate_left(29)
}

mod report;
mod settings;

pub use settings::HostSettings;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod trust_tests;
