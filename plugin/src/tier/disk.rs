//! G3: the disk tier. One preallocated file per store in `TIERKV_DISK_PATH`,
//! read and written with O_DIRECT by worker threads, every block verified on the
//! way back, and an index rebuilt from the file after a restart or a crash.
//!
//! Core types: [`DiskTier`] (shared by every manager of this process that names
//! the same file; another process holding the file's lock makes it unavailable to
//! this one), [`DiskRead`], [`DiskStats`], [`format`] (the on-disk layout).
//!
//! Workflow of an offload (host -> disk), never on the engine's thread's critical
//! path:
//! 1. [`DiskTier::offload`] (after admission said yes, in [`crate::movement`]):
//!    the block is neither on disk nor queued; its bytes are copied into a staging buffer (so a host-tier eviction
//!    before the write loses nothing) and the job goes to the bounded write queue,
//!    or is dropped (counted) when the queue is full.
//! 2. A worker takes a free slot or evicts one by policy, checksums, and writes
//!    header + payload in one O_DIRECT write.
//! 3. Under the index lock: the slot becomes ready (or free again on an I/O error).
//!
//! Workflow of a load (disk -> caller), on a loader thread:
//! 1. [`DiskTier::load_batch`] pins the ready slots of the asked identities.
//! 2. Workers read them in parallel; each is verified (header, identity,
//!    namespace, checksum over header and payload).
//! 3. Unpin; a block that failed is dropped from the index and its header cleared.
//!
//! Failure rule: an error that concerns the whole file (disk full, read-only, the
//! file removed or truncated underneath) takes the tier down: lookups stop seeing
//! it, loads miss, offloads stop; the host tier keeps serving. Nothing unverified is
//! ever returned.

mod directory;
pub mod format;
mod handle;
mod io;
mod recovery;
mod report;
mod settings;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use self::directory::Directory;
use self::format::BlockHeader;
pub use self::format::{AlignedBuf, DiskGeometry, SECTOR};
pub use self::handle::DiskHandle;
pub use self::io::Fault;
use self::io::{Faults, IoPool};
pub use self::report::report;
pub use self::settings::{DiskSettings, RecoveryMode};
use crate::events::{EventKind, EventLog, EventTier};
use crate::evict::{Access, Policy, PolicyKind};
use crate::metrics::Histogram;
use crate::prefix::BlockHash;
use crate::tier::shared_file::Sharing;
use crate::tier::{BlockCtx, StoreOutcome};

/// Consecutive I/O errors after which the tier is taken down.
const MAX_CONSECUTIVE_ERRORS: u32 = 8;
/// How often offloads check that the file is still the one we opened.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// Why the disk tier could not be opened.
#[derive(Debug, Clone, thiserror::Error)]
#[error("disk tier {path}: {why}")]
pub struct DiskError {
    /// The file or directory concerned.
    pub path: PathBuf,
    /// What went wrong, for the log and the C ABI.
    pub why: String,
}

/// Result of reading one block.
pub enum DiskRead {
    /// Verified; the payload is `buf[SECTOR..SECTOR + block_bytes]`.
    Loaded(AlignedBuf),
    /// Verified while copied into the caller's destination
    /// ([`DiskTier::load_batch_into`]).
    Delivered,
    /// Not on disk (or the tier is down).
    Miss,
    /// On disk but failed verification: dropped.
    Corrupt,
    /// The read failed (I/O error): dropped.
    Failed,
}

/// The segments of one engine block an I/O thread copies a block into.
///
/// Contract: made by [`DiskTier::load_batch_into`] from `&mut` slices that stay
/// borrowed until every job holding one has ended (it waits for them), distinct
/// blocks per job; so a job is the only writer of its segments.
struct Dst(Vec<(*mut u8, usize)>);

// SAFETY: the pointers are plain memory with the contract above; nothing else
// touches them while a job holds them.
unsafe impl Send for Dst {}

/// Counters of the disk tier (per process).
#[derive(Debug, Default)]
pub struct DiskStats {
    /// Lookup blocks found on disk.
    pub hit_blocks: AtomicU64,
    /// Offloads queued.
    pub offload_queued: AtomicU64,
    /// Offloads dropped because the write queue was full.
    pub offload_dropped_full: AtomicU64,
    /// Offloads dropped because every slot was pinned or being written.
    pub offload_dropped_no_slot: AtomicU64,
    /// Offloads the eviction policy turned away: the block was less likely to be
    /// used again than the one it would have evicted.
    pub offload_refused: AtomicU64,
    /// Blocks written.
    pub written_blocks: AtomicU64,
    /// Payload bytes written.
    pub written_bytes: AtomicU64,
    /// Blocks evicted from disk.
    pub evictions: AtomicU64,
    /// Blocks read and verified.
    pub read_blocks: AtomicU64,
    /// Payload bytes read and verified.
    pub read_bytes: AtomicU64,
    /// Loads of identities not on disk.
    pub read_misses: AtomicU64,
    /// Reads (by a process that does not own the file) of a slot the owner had
    /// reused meanwhile: misses, not corruption.
    pub stale_reads: AtomicU64,
    /// Blocks that failed verification (dropped, never served).
    pub checksum_failures: AtomicU64,
    /// Failed reads.
    pub read_errors: AtomicU64,
    /// Failed writes.
    pub write_errors: AtomicU64,
    /// Blocks kept by the last recovery.
    pub recovered_blocks: AtomicU64,
    /// Slots dropped by the last recovery (invalid header or payload, duplicates).
    pub recovery_dropped: AtomicU64,
    /// Duration of the last recovery.
    pub recovery_ns: AtomicU64,
    /// Write latency (one block, header included).
    pub write_latency: Histogram,
    /// Read latency (one block, with verification).
    pub read_latency: Histogram,
}

/// The disk tier's slots by state ([`DiskTier::census`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskCensus {
    /// Slots in the file.
    pub capacity: u64,
    /// Identities in the index.
    pub indexed: u64,
    /// Keys the eviction policy tracks.
    pub policy: u64,
    /// Entries of the free list.
    pub free_list: u64,
    /// Slots holding a block.
    pub ready: u64,
    /// Slots being written.
    pub writing: u64,
    /// Free slots.
    pub free: u64,
}

impl DiskCensus {
    /// Whether every slot is accounted for exactly once: indexed + free + writing
    /// == capacity, and the index, the policy and the free list agree with the
    /// slot states (no orphaned slot, no dead policy entry).
    pub fn consistent(&self) -> bool {
        self.indexed + self.free + self.writing == self.capacity
            && self.ready == self.indexed
            && self.policy == self.indexed
            && self.free_list == self.free
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Free,
    Writing,
    Ready,
}

#[derive(Debug, Clone, Copy)]
struct SlotEntry {
    state: SlotState,
    hash: BlockHash,
    pins: u32,
    /// The engine's key for the block (KV events; 0: none).
    key: u64,
}

struct Index {
    map: HashMap<u64, u32>,
    slots: Vec<SlotEntry>,
    free: Vec<u32>,
    policy: Box<dyn Policy>,
    pending: HashSet<u64>,
    next_gen: u64,
    /// The shared directory other processes read (owner only).
    dir: Option<Arc<Directory>>,
}

impl Index {
    /// The index of `n` slots holding the blocks recovery `found`, oldest first in
    /// the policy's order (so that it follows the write order).
    fn recovered(found: &recovery::Found, n: usize, policy: PolicyKind, dir: Option<Arc<Directory>>) -> Self {
        let mut policy = policy.build(n);
        let mut map = HashMap::with_capacity(found.blocks.len());
        let free_slot = SlotEntry {
            state: SlotState::Free,
            hash: BlockHash(0),
            pins: 0,
            key: 0,
        };
        let mut slots = vec![free_slot; n];
        for (req, b) in found.blocks.iter().enumerate() {
            let key = b.hash.fold64();
            map.insert(key, b.slot);
            slots[b.slot as usize] = SlotEntry {
                state: SlotState::Ready,
                hash: b.hash,
                pins: 0,
                key: b.key,
            };
            policy.on_insert(Access {
                key,
                request: req as u64,
                depth: 0,
                // Unknown after a restart: the policy learns these blocks' classes
                // anew from their next use.
                last: false,
                now_ms: 0,
            });
        }
        let free = (0..n as u32)
            .rev()
            .filter(|&s| slots[s as usize].state == SlotState::Free)
            .collect();
        Index {
            map,
            slots,
            free,
            policy,
            pending: HashSet::new(),
            next_gen: found.max_generation + 1,
            dir,
        }
    }

    fn ready(&self, hash: BlockHash) -> Option<u32> {
        let &s = self.map.get(&hash.fold64())?;
        let e = &self.slots[s as usize];
        (e.state == SlotState::Ready && e.hash == hash).then_some(s)
    }

    /// A free slot, or one evicted by policy for `a` (when the policy admits it);
    /// marked `Writing`. With the key of the block evicted for it, if any.
    fn take_slot(&mut self, a: Access, stats: &DiskStats) -> Result<(u32, Option<u64>), NoSlot> {
        let mut evicted = None;
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                let (map, slots) = (&self.map, &self.slots);
                let mut evictable = |k: u64| {
                    map.get(&k)
                        .is_some_and(|&s| slots[s as usize].state == SlotState::Ready && slots[s as usize].pins == 0)
                };
                if !self.policy.admit(a, &mut evictable) {
                    return Err(NoSlot::Refused);
                }
                let victim = self.policy.evict(&mut evictable).ok_or(NoSlot::Pinned)?;
                stats.evictions.fetch_add(1, Ordering::Relaxed);
                let s = self.map.remove(&victim).ok_or(NoSlot::Pinned)?;
                if let Some(d) = &self.dir {
                    d.remove(self.slots[s as usize].hash);
                }
                evicted = Some(self.slots[s as usize].key);
                s
            }
        };
        self.slots[slot as usize].state = SlotState::Writing;
        Ok((slot, evicted))
    }

    /// Frees `slot`; returns the key of the block it held when it was `Ready`.
    fn drop_slot(&mut self, slot: u32) -> Option<u64> {
        let e = &mut self.slots[slot as usize];
        let held = (e.state == SlotState::Ready).then_some(e.key);
        if e.state == SlotState::Ready {
            let key = e.hash.fold64();
            self.map.remove(&key);
            self.policy.on_remove(key);
            if let Some(d) = &self.dir {
                d.remove(e.hash);
            }
        }
        e.state = SlotState::Free;
        e.pins = 0;
        self.free.push(slot);
        held
    }
}

/// Why a write found no slot.
enum NoSlot {
    /// Every slot was pinned or being written.
    Pinned,
    /// The eviction policy did not admit the block.
    Refused,
}

/// State shared with the I/O jobs.
struct Inner {
    file: File,
    path: PathBuf,
    geo: DiskGeometry,
    direct: bool,
    file_id: (u64, u64),
    index: Mutex<Index>,
    stats: DiskStats,
    faults: Faults,
    down: AtomicBool,
    down_reason: Mutex<Option<String>>,
    consecutive_errors: AtomicU32,
    last_health: Mutex<Instant>,
    inflight: AtomicU64,
    requests: AtomicU64,
    /// The eviction policy's clock starts here.
    opened_at: Instant,
    /// Whether this process owns the file (holds its lock, writes it). Others
    /// only look up and read, through the shared directory.
    owner: bool,
    /// Slot-sized read buffers handed back by callers ([`DiskTier::recycle`]):
    /// a fresh 4 KiB-aligned buffer costs page faults and zeroing per read.
    buffers: Mutex<Vec<AlignedBuf>>,
    dir_path: PathBuf,
    /// Who may share the files (`TIERKV_SHARE_GROUP`).
    sharing: Sharing,
    /// A reader's mapping of the owner's directory, attached lazily.
    reader_dir: Mutex<(Option<Arc<Directory>>, Option<Instant>)>,
    /// A reader's `(identity, slot)` pairs that failed verification: it cannot drop
    /// them from the owner's index, so it stops reading them (a miss) instead of
    /// failing on them again. Bounded; cleared when full.
    reader_bad: Mutex<HashSet<(u128, u32)>>,
    /// The event logs of the managers using this tier in this process; events go
    /// to the first live one that records (one report per change).
    events: Mutex<Vec<Weak<EventLog>>>,
}

/// The disk tier of this process for one file.
pub struct DiskTier {
    inner: Arc<Inner>,
    pool: IoPool,
}

/// Disk tiers open in this process, by file, so that the managers of one process
/// (vLLM's scheduler and worker, or two engines) share one index and one lock.
static OPEN: Mutex<Vec<(PathBuf, Weak<DiskTier>)>> = Mutex::new(Vec::new());

impl DiskTier {
    /// Opens (or joins, in this process) the disk tier `cfg` names for blocks of
    /// `block_bytes`, recovering its index from the file. `Err` means the tier is
    /// unavailable; the caller goes on without it.
    /// With `reader_only`, this process never takes ownership: it looks blocks up
    /// and reads them while another process (or manager) writes.
    pub fn open(
        cfg: &DiskSettings,
        block_bytes: u64,
        dispatch: &tracing::Dispatch,
        reader_only: bool,
    ) -> Result<Arc<Self>, DiskError> {
        let dir = cfg.dir.clone();
        let path = super::store::disk_file_path(&dir, &cfg.store_name);
        let mut open = OPEN.lock();
        open.retain(|(_, w)| w.strong_count() > 0);
        let shared = open
            .iter()
            .filter(|(p, _)| *p == path)
            .filter_map(|(_, w)| w.upgrade())
            .find(|t| t.inner.owner || reader_only);
        if let Some(t) = shared {
            if t.geometry().block_bytes != block_bytes {
                return Err(unavailable(
                    &path,
                    format!(
                        "already open in this process for blocks of {} bytes, not {block_bytes}",
                        t.geometry().block_bytes
                    ),
                ));
            }
            return Ok(t);
        }
        let tier = Arc::new(Self::create(cfg, &dir, &path, block_bytes, dispatch, reader_only)?);
        open.push((path, Arc::downgrade(&tier)));
        Ok(tier)
    }

    fn create(
        cfg: &DiskSettings,
        dir: &Path,
        path: &Path,
        block_bytes: u64,
        dispatch: &tracing::Dispatch,
        reader_only: bool,
    ) -> Result<Self, DiskError> {
        let geo = DiskGeometry::fit(block_bytes, cfg.bytes).ok_or_else(|| {
            unavailable(
                path,
                format!(
                    "TIERKV_DISK_BYTES={} cannot hold one block of {block_bytes} bytes with its header",
                    cfg.bytes
                ),
            )
        })?;
        let sharing = Sharing { group: cfg.share_group };
        let opened = recovery::open_file(dir, path, geo, cfg.direct, !reader_only, sharing)?;
        let dir_path = super::store::directory_path(&cfg.shm_dir, &cfg.store_name);
        let start = Instant::now();
        let full = cfg.recovery == RecoveryMode::Full;
        let found = if opened.owner {
            recovery::scan(&opened.file, geo, cfg.threads, full)
                .map_err(|e| unavailable(path, format!("recovery read failed: {e}")))?
        } else {
            recovery::Found::default()
        };
        let directory = if opened.owner {
            let d = Directory::create(&dir_path, geo.n_slots, sharing)
                .map_err(|e| unavailable(&dir_path, format!("cannot create the shared directory: {e}")))?;
            found.blocks.iter().for_each(|b| d.insert(b.hash, b.slot));
            Some(Arc::new(d))
        } else {
            None
        };
        let stats = DiskStats::default();
        let index = Index::recovered(&found, geo.n_slots as usize, cfg.eviction, directory);
        stats
            .recovered_blocks
            .store(found.blocks.len() as u64, Ordering::Relaxed);
        stats.recovery_dropped.store(found.dropped, Ordering::Relaxed);
        stats
            .recovery_ns
            .store(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        tracing::info!(
            path = %path.display(),
            owner = opened.owner,
            kept = found.blocks.len(),
            dropped = found.dropped,
            seconds = start.elapsed().as_secs_f64(),
            direct_io = opened.direct,
            "disk tier open"
        );
        if found.dropped > 0 {
            tracing::warn!(
                dropped = found.dropped,
                "disk-tier recovery dropped slots that did not verify"
            );
        }
        let pool = IoPool::start(cfg.threads, cfg.queue, dispatch.clone())
            .map_err(|e| unavailable(path, format!("cannot start I/O threads: {e}")))?;
        let inner = Arc::new(Inner {
            file: opened.file,
            path: path.to_path_buf(),
            geo,
            direct: opened.direct,
            file_id: opened.file_id,
            index: Mutex::new(index),
            stats,
            faults: Faults::default(),
            down: AtomicBool::new(false),
            down_reason: Mutex::new(None),
            consecutive_errors: AtomicU32::new(0),
            last_health: Mutex::new(Instant::now()),
            inflight: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            opened_at: Instant::now(),
            owner: opened.owner,
            buffers: Mutex::new(Vec::new()),
            dir_path,
            sharing,
            reader_dir: Mutex::new((None, None)),
            reader_bad: Mutex::new(HashSet::new()),
            events: Mutex::new(Vec::new()),
        });
        Ok(Self { inner, pool })
    }

    /// The file's geometry.
    pub fn geometry(&self) -> DiskGeometry {
        self.inner.geo
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Counters.
    pub fn stats(&self) -> &DiskStats {
        &self.inner.stats
    }

    /// Whether O_DIRECT is in use (false on filesystems without it, e.g. tmpfs).
    pub fn direct_io(&self) -> bool {
        self.inner.direct
    }

    /// Whether the tier is serving.
    pub fn is_up(&self) -> bool {
        !self.inner.down.load(Ordering::Acquire)
    }

    /// Why the tier went down, if it did.
    pub fn down_reason(&self) -> Option<String> {
        self.inner.down_reason.lock().clone()
    }

    /// Slots by state, with a check that they account for the whole file.
    pub fn census(&self) -> DiskCensus {
        let ix = self.inner.index.lock();
        let mut c = DiskCensus {
            capacity: self.inner.geo.n_slots,
            indexed: ix.map.len() as u64,
            policy: ix.policy.len() as u64,
            free_list: ix.free.len() as u64,
            ..DiskCensus::default()
        };
        for e in &ix.slots {
            match e.state {
                SlotState::Free => c.free += 1,
                SlotState::Writing => c.writing += 1,
                SlotState::Ready => c.ready += 1,
            }
        }
        c
    }

    /// Blocks on disk.
    pub fn block_count(&self) -> u64 {
        self.inner.index.lock().map.len() as u64
    }

    /// `(reads, writes)` queued.
    pub fn queue_depths(&self) -> (usize, usize) {
        self.pool.depths()
    }

    /// Arms an injected fault (tests of the failure paths).
    #[doc(hidden)]
    pub fn inject(&self, f: Fault) {
        self.inner.faults.inject(f);
    }

    /// Number of leading `hashes` on disk (none while the tier is down).
    pub fn lookup_run(&self, hashes: &[BlockHash]) -> usize {
        if !self.is_up() {
            return 0;
        }
        if !self.inner.owner {
            let bad = self.inner.reader_bad.lock();
            return self.inner.directory().map_or(0, |d| {
                hashes
                    .iter()
                    .take_while(|&&h| d.get(h).is_some_and(|s| !bad.contains(&(h.0, s))))
                    .count()
            });
        }
        let ix = self.inner.index.lock();
        hashes.iter().take_while(|&&h| ix.ready(h).is_some()).count()
    }

    /// Whether a reader's file has no owner any more (the owner's `flock` is free:
    /// it died or closed the tier). Always false for the owner.
    pub fn owner_gone(&self) -> bool {
        if self.inner.owner {
            return false;
        }
        use std::os::fd::AsRawFd;
        let fd = self.inner.file.as_raw_fd();
        // SAFETY: flock on our own descriptor; taken and released at once so that
        // opening the file again (as owner, through another descriptor) can take it.
        unsafe {
            if libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) != 0 {
                return false;
            }
            libc::flock(fd, libc::LOCK_UN);
        }
        true
    }

    /// Whether this process owns (writes) the file; other processes read it.
    pub fn is_owner(&self) -> bool {
        self.inner.owner
    }

    /// Whether `hash` is on disk.
    pub fn contains(&self, hash: BlockHash) -> bool {
        self.lookup_run(&[hash]) == 1
    }

    /// Whether a store of `hash` would be a no-op: on disk, or queued for writing
    /// (for a reader: in the owner's directory).
    pub fn holds(&self, hash: BlockHash) -> bool {
        if !self.inner.owner {
            return self.contains(hash);
        }
        let key = hash.fold64();
        let ix = self.inner.index.lock();
        ix.map.contains_key(&key) || ix.pending.contains(&key)
    }

    /// Drops `hash` (the owner only; a block being read stays). Its slot leaves the
    /// index at once, its header is cleared on this thread (one sector) so that a
    /// restart does not index it again, and only then is the slot free for a new
    /// block. Returns whether it was dropped.
    pub fn remove(&self, hash: BlockHash) -> bool {
        if !self.inner.owner || !self.is_up() {
            return false;
        }
        let slot = {
            let mut ix = self.inner.index.lock();
            let Some(s) = ix.ready(hash).filter(|&s| ix.slots[s as usize].pins == 0) else {
                return false;
            };
            let key = ix.drop_slot(s);
            // Not free until its header is gone: a new block must not land in a slot
            // whose clearing is still to come.
            let last = ix.free.pop();
            debug_assert_eq!(last, Some(s));
            ix.slots[s as usize].state = SlotState::Writing;
            drop(ix);
            self.inner.record(EventKind::Removed, key.unwrap_or(0), 0);
            s
        };
        self.inner.clear_header(slot);
        let mut ix = self.inner.index.lock();
        ix.slots[slot as usize].state = SlotState::Free;
        ix.free.push(slot);
        true
    }

    /// Waits until no offload is queued or running, up to `timeout`. Returns whether
    /// it got there.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while self.inner.inflight.load(Ordering::Acquire) > 0 {
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        true
    }

    /// Queues `hash` for writing to disk if it is not there yet (admission is the
    /// caller's: [`crate::movement`]). The block's bytes (`data`, the segments of one block, `block_bytes` in
    /// all) are copied into a staging buffer here, so the write cannot lose the
    /// block to a host-tier eviction that happens before its turn; the caller keeps
    /// ownership of `data`. Never blocks on the disk: a full queue drops the
    /// offload (counted), so staged memory is bounded by `TIERKV_DISK_QUEUE`
    /// blocks. `depth` places the block in the current chain
    /// ([`DiskTier::begin_request`]) for the eviction policy. Returns whether the
    /// block is on disk or on its way there (false: queue full, tier down, or a
    /// reader).
    pub fn offload(&self, hash: BlockHash, namespace: u64, depth: u32, data: &[&[u8]]) -> bool {
        self.store(hash, namespace, depth, data) != StoreOutcome::NoSpace
    }

    /// Records this tier's KV events (writes landed, evictions, drops) in `log`
    /// too; the first live log that records gets each event.
    pub fn attach_events(&self, log: &Arc<EventLog>) {
        let mut logs = self.inner.events.lock();
        logs.retain(|w| w.strong_count() > 0);
        if !logs.iter().any(|w| w.as_ptr() == Arc::as_ptr(log)) {
            logs.push(Arc::downgrade(log));
        }
    }

    /// [`DiskTier::offload`], saying which: `Stored` (queued now),
    /// `AlreadyPresent` (on disk or queued before), `NoSpace` (queue full, tier
    /// down, a reader, or a block of the wrong length).
    pub fn store(&self, hash: BlockHash, namespace: u64, depth: u32, data: &[&[u8]]) -> StoreOutcome {
        let ctx = BlockCtx {
            namespace,
            depth,
            last: false,
            key: 0,
            parent: 0,
        };
        self.store_ctx(hash, ctx, data)
    }

    /// [`DiskTier::store`] with the block's context: namespace, chain depth and
    /// the engine's key (kept in the block's header).
    pub fn store_ctx(&self, hash: BlockHash, ctx: BlockCtx, data: &[&[u8]]) -> StoreOutcome {
        let inner = &self.inner;
        if !inner.owner {
            return StoreOutcome::NoSpace;
        }
        let g = inner.geo;
        if data.iter().map(|s| s.len() as u64).sum::<u64>() != g.block_bytes {
            debug_assert!(false, "offload of a block of the wrong length");
            return StoreOutcome::NoSpace;
        }
        inner.maybe_check_health();
        if !self.is_up() {
            return StoreOutcome::NoSpace;
        }
        let key = hash.fold64();
        {
            let mut ix = inner.index.lock();
            if ix.map.contains_key(&key) || ix.pending.contains(&key) {
                return StoreOutcome::AlreadyPresent;
            }
            ix.pending.insert(key);
        }
        let mut buf = inner.buffer();
        {
            let rest = &mut buf.as_mut_slice()[SECTOR..];
            let mut at = 0;
            for s in data {
                rest[at..at + s.len()].copy_from_slice(s);
                at += s.len();
            }
            // Padding up to the sector: zeros, never another block's bytes.
            rest[at..].fill(0);
        }
        inner.inflight.fetch_add(1, Ordering::AcqRel);
        let request = inner.requests.load(Ordering::Relaxed);
        let job_inner = Arc::clone(inner);
        let job = Box::new(move || {
            let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                job_inner.write_block(buf, hash, ctx, request);
            }));
            if written.is_err() {
                job_inner.index.lock().pending.remove(&key);
            }
            job_inner.inflight.fetch_sub(1, Ordering::AcqRel);
        });
        if self.pool.try_submit_write(job).is_err() {
            inner.index.lock().pending.remove(&key);
            inner.inflight.fetch_sub(1, Ordering::AcqRel);
            inner.stats.offload_dropped_full.fetch_add(1, Ordering::Relaxed);
            StoreOutcome::NoSpace
        } else {
            inner.stats.offload_queued.fetch_add(1, Ordering::Relaxed);
            StoreOutcome::Stored
        }
    }

    /// Hands a loaded block's buffer back for reuse by later reads and offloads
    /// (at most 64 are kept).
    pub fn recycle(&self, buf: AlignedBuf) {
        self.inner.recycle(buf);
    }

    /// Starts a new chain for the eviction policy (one engine call).
    pub fn begin_request(&self) {
        self.inner.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads `hashes` in parallel and verifies them against `namespace`.
    pub fn load_batch(&self, hashes: &[BlockHash], namespace: u64) -> Vec<DiskRead> {
        self.load(hashes, namespace, None)
    }

    /// Reads `hashes` in parallel, each I/O thread verifying its block while it
    /// copies it into `dsts[i]` (one pass; [`DiskRead::Delivered`]). A
    /// destination whose block is not delivered may hold unverified bytes.
    pub fn load_batch_into(&self, hashes: &[BlockHash], namespace: u64, dsts: &mut [Vec<&mut [u8]>]) -> Vec<DiskRead> {
        let to = dsts
            .iter_mut()
            .map(|d| Dst(d.iter_mut().map(|s| (s.as_mut_ptr(), s.len())).collect()))
            .collect();
        // The destinations stay borrowed until `load` returns, which is after
        // every job that holds one has ended.
        self.load(hashes, namespace, Some(to))
    }

    fn load(&self, hashes: &[BlockHash], namespace: u64, dsts: Option<Vec<Dst>>) -> Vec<DiskRead> {
        let mut dsts = dsts.map(|d| d.into_iter().map(Some).collect::<Vec<_>>());
        let inner = &self.inner;
        let mut out: Vec<DiskRead> = hashes.iter().map(|_| DiskRead::Miss).collect();
        if !self.is_up() || hashes.is_empty() {
            return out;
        }
        let request = inner.requests.fetch_add(1, Ordering::Relaxed) + 1;
        let mut slots = Vec::with_capacity(hashes.len());
        if !inner.owner {
            // A reader: slots from the owner's directory; the owner may rewrite a
            // slot meanwhile, which verification turns into a miss.
            let d = inner.directory();
            let bad = inner.reader_bad.lock();
            slots.extend(
                hashes
                    .iter()
                    .map(|&h| d.as_ref().and_then(|d| d.get(h)).filter(|&s| !bad.contains(&(h.0, s)))),
            );
        } else {
            let mut ix = inner.index.lock();
            for (d, &h) in hashes.iter().enumerate() {
                let s = ix.ready(h);
                if let Some(s) = s {
                    ix.slots[s as usize].pins += 1;
                    ix.policy.on_hit(Access {
                        key: h.fold64(),
                        request,
                        depth: d as u32,
                        last: d + 1 == hashes.len(),
                        now_ms: inner.now_ms(),
                    });
                }
                slots.push(s);
            }
        }
        let (tx, rx) = crossbeam_channel::bounded(hashes.len());
        for (i, (&h, &s)) in hashes.iter().zip(&slots).enumerate() {
            let Some(s) = s else {
                inner.stats.read_misses.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let (job_inner, tx) = (Arc::clone(inner), tx.clone());
            let dst = dsts.as_mut().and_then(|d| d[i].take());
            let job: io::Job = Box::new(move || {
                let r = job_inner.read_block(s, h, namespace, dst);
                let _ = tx.send((i, r));
            });
            // Until its result arrives, a submitted read counts as failed: a job
            // that dies (its sender dropped unsent) never leaves its caller waiting.
            if self.pool.submit_read(job).is_ok() {
                out[i] = DiskRead::Failed;
            }
        }
        drop(tx);
        for (i, r) in rx.iter() {
            out[i] = r;
        }
        if !inner.owner {
            let mut bad = inner.reader_bad.lock();
            for (i, s) in slots.iter().enumerate() {
                if let (Some(s), DiskRead::Corrupt | DiskRead::Failed) = (*s, &out[i]) {
                    if bad.len() >= 4096 {
                        bad.clear();
                    }
                    bad.insert((hashes[i].0, s));
                }
            }
            return out;
        }
        let mut ix = inner.index.lock();
        for (i, s) in slots.iter().enumerate() {
            let Some(s) = *s else { continue };
            let e = &mut ix.slots[s as usize];
            e.pins = e.pins.saturating_sub(1);
            if matches!(out[i], DiskRead::Corrupt | DiskRead::Failed) && e.hash == hashes[i] {
                if let Some(k) = ix.drop_slot(s) {
                    inner.record(EventKind::Removed, k, 0);
                }
                let job_inner = Arc::clone(inner);
                // Best effort: clear the header so a restart does not index it again.
                let _ = self.pool.try_submit_write(Box::new(move || job_inner.clear_header(s)));
            }
        }
        out
    }
}

impl Inner {
    /// The eviction policy's clock: milliseconds since the tier opened.
    fn now_ms(&self) -> u64 {
        self.opened_at.elapsed().as_millis() as u64
    }

    /// An event for the first live log that records.
    fn record(&self, kind: EventKind, key: u64, parent: u64) {
        let logs = self.events.lock();
        if let Some(log) = logs.iter().filter_map(Weak::upgrade).find(|l| l.is_on()) {
            log.record(kind, EventTier::Disk, key, parent);
        }
    }

    /// A reader's view of the owner's directory: opened when the owner has
    /// published one, and opened again when a new owner renamed a new one into
    /// place (the path's inode changed); checked at most once a second.
    fn directory(&self) -> Option<Arc<Directory>> {
        let mut g = self.reader_dir.lock();
        if g.1.is_none_or(|t| t.elapsed() >= HEALTH_INTERVAL) {
            g.1 = Some(Instant::now());
            let current = std::fs::symlink_metadata(&self.dir_path)
                .ok()
                .map(|m| (m.dev(), m.ino()));
            if current.is_some_and(|id| g.0.as_ref().is_none_or(|d| d.id() != id)) {
                if let Some(d) = Directory::open(&self.dir_path, self.sharing) {
                    g.0 = Some(Arc::new(d));
                }
            }
        }
        g.0.clone()
    }

    fn write_block(&self, mut buf: AlignedBuf, hash: BlockHash, ctx: BlockCtx, request: u64) {
        let (namespace, depth) = (ctx.namespace, ctx.depth);
        let key = hash.fold64();
        let access = Access {
            key,
            request,
            depth,
            last: ctx.last,
            now_ms: self.now_ms(),
        };
        let g = self.geo;
        // The key stays pending until the write has landed (or failed): an offer of
        // the same identity meanwhile is answered "on its way", never written twice.
        let slot = {
            let mut ix = self.index.lock();
            let (slot, evicted) = match ix.take_slot(access, &self.stats) {
                Ok(s) => s,
                Err(why) => {
                    ix.pending.remove(&key);
                    drop(ix);
                    let counter = match why {
                        NoSlot::Pinned => &self.stats.offload_dropped_no_slot,
                        NoSlot::Refused => &self.stats.offload_refused,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    self.recycle(buf);
                    return;
                }
            };
            ix.slots[slot as usize].hash = hash;
            let generation = ix.next_gen;
            ix.next_gen += 1;
            (slot, generation, evicted)
        };
        let (slot, generation, evicted) = slot;
        if let Some(k) = evicted {
            self.record(EventKind::Removed, k, 0);
        }
        let mut header = BlockHeader {
            hash,
            namespace,
            len: g.block_bytes,
            generation,
            key: ctx.key,
            payload_sum: 0,
        };
        let (hdr, rest) = buf.as_mut_slice().split_at_mut(SECTOR);
        header.encode(hdr, &rest[..g.block_bytes as usize]);
        let start = Instant::now();
        let res = self
            .faults
            .write_all_at(&self.file, buf.as_slice(), g.slot_offset(slot));
        let mut ix = self.index.lock();
        ix.pending.remove(&key);
        match res {
            Ok(()) => {
                self.consecutive_errors.store(0, Ordering::Relaxed);
                // Never two slots for one identity: a replaced slot is freed and
                // leaves the policy (only reachable if two writers raced anyway).
                if let Some(&old) = ix.map.get(&key) {
                    if old != slot {
                        if let Some(k) = ix.drop_slot(old) {
                            self.record(EventKind::Removed, k, 0);
                        }
                    }
                }
                ix.slots[slot as usize] = SlotEntry {
                    state: SlotState::Ready,
                    hash,
                    pins: 0,
                    key: ctx.key,
                };
                ix.map.insert(key, slot);
                ix.policy.on_insert(access);
                if let Some(d) = &ix.dir {
                    d.insert(hash, slot);
                }
                drop(ix);
                self.record(EventKind::Stored, ctx.key, ctx.parent);
                self.stats.written_blocks.fetch_add(1, Ordering::Relaxed);
                self.stats.written_bytes.fetch_add(g.block_bytes, Ordering::Relaxed);
                self.stats.write_latency.observe_ns(start.elapsed().as_nanos() as u64);
            }
            Err(e) => {
                ix.drop_slot(slot);
                drop(ix);
                self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                self.io_error("write", &e);
            }
        }
        self.recycle(buf);
    }

    fn recycle(&self, buf: AlignedBuf) {
        let mut pool = self.buffers.lock();
        if buf.as_slice().len() == self.geo.slot_bytes as usize && pool.len() < 64 {
            pool.push(buf);
        }
    }

    fn buffer(&self) -> AlignedBuf {
        self.buffers
            .lock()
            .pop()
            .unwrap_or_else(|| AlignedBuf::zeroed(self.geo.slot_bytes as usize))
    }

    fn read_block(&self, slot: u32, hash: BlockHash, namespace: u64, dst: Option<Dst>) -> DiskRead {
        let g = self.geo;
        let start = Instant::now();
        let mut buf = self.buffer();
        if let Err(e) = self
            .faults
            .read_exact_at(&self.file, buf.as_mut_slice(), g.slot_offset(slot))
        {
            self.stats.read_errors.fetch_add(1, Ordering::Relaxed);
            self.io_error("read", &e);
            return DiskRead::Failed;
        }
        let (hdr, rest) = buf.as_slice().split_at(SECTOR);
        let payload = &rest[..g.block_bytes as usize];
        let header = BlockHeader::decode(hdr).ok();
        let ours = header.filter(|h| h.hash == hash && h.namespace == namespace);
        let ok = match (ours, &dst) {
            (None, _) => false,
            (Some(h), None) => h.verifies(hdr, payload),
            (Some(h), Some(d)) => {
                let mut segs: Vec<&mut [u8]> =
                    d.0.iter()
                        .map(|&(p, n)| {
                            // SAFETY: `Dst`'s contract: distinct live segments, written
                            // by this job alone until it ends.
                            unsafe { std::slice::from_raw_parts_mut(p, n) }
                        })
                        .collect();
                h.verify_into(hdr, payload, &mut segs)
            }
        };
        if !ok && !self.owner && self.stale(slot, hash, header.map(|h| h.hash)) {
            // A reader raced the owner reusing the slot: the block is simply gone.
            self.recycle(buf);
            self.stats.stale_reads.fetch_add(1, Ordering::Relaxed);
            return DiskRead::Miss;
        }
        if !ok {
            self.stats.checksum_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                hash = format_args!("{:032x}", hash.0),
                slot,
                "disk-tier block failed verification; dropped"
            );
            return DiskRead::Corrupt;
        }
        self.consecutive_errors.store(0, Ordering::Relaxed);
        self.stats.read_blocks.fetch_add(1, Ordering::Relaxed);
        self.stats.read_bytes.fetch_add(g.block_bytes, Ordering::Relaxed);
        self.stats.read_latency.observe_ns(start.elapsed().as_nanos() as u64);
        if dst.is_some() {
            self.recycle(buf);
            return DiskRead::Delivered;
        }
        DiskRead::Loaded(buf)
    }

    /// Whether a reader's failed read of `hash` in `slot` is a stale directory
    /// entry rather than corruption: the slot now holds another identity (or none),
    /// or the owner no longer lists `hash` there (it unlists a victim before it
    /// starts rewriting the slot).
    fn stale(&self, slot: u32, hash: BlockHash, found: Option<BlockHash>) -> bool {
        found != Some(hash) || self.directory().is_none_or(|d| d.get(hash) != Some(slot))
    }

    fn clear_header(&self, slot: u32) {
        let zero = AlignedBuf::zeroed(SECTOR);
        if let Err(e) = self
            .faults
            .write_all_at(&self.file, zero.as_slice(), self.geo.slot_offset(slot))
        {
            self.io_error("clear", &e);
        }
    }

    /// Classifies an I/O error: whole-file conditions take the tier down at once;
    /// others after [`MAX_CONSECUTIVE_ERRORS`] in a row.
    fn io_error(&self, op: &str, e: &std::io::Error) {
        tracing::warn!(op, error = %e, path = %self.path.display(), "disk-tier I/O error");
        let fatal = matches!(
            e.raw_os_error(),
            Some(libc::ENOSPC | libc::EROFS | libc::EDQUOT | libc::EBADF | libc::EFBIG)
        );
        let n = self.consecutive_errors.fetch_add(1, Ordering::Relaxed) + 1;
        if let Err(why) = self.check_file() {
            self.take_down(why);
        } else if fatal {
            self.take_down(format!("{op} failed: {e}"));
        } else if n >= MAX_CONSECUTIVE_ERRORS {
            self.take_down(format!("{n} I/O errors in a row, last: {e}"));
        }
    }

    fn take_down(&self, why: String) {
        if !self.down.swap(true, Ordering::AcqRel) {
            tracing::error!(path = %self.path.display(), reason = %why, "disk tier down; serving from the other tiers");
            *self.down_reason.lock() = Some(why);
        }
    }

    /// Whether the path still names our file, at its full length.
    fn check_file(&self) -> Result<(), String> {
        let m = std::fs::metadata(&self.path).map_err(|e| format!("file gone: {e}"))?;
        if (m.dev(), m.ino()) != self.file_id {
            return Err("file was replaced or removed underneath".into());
        }
        if m.len() < self.geo.file_len {
            return Err(format!(
                "file truncated to {} bytes (expected {})",
                m.len(),
                self.geo.file_len
            ));
        }
        Ok(())
    }

    fn maybe_check_health(&self) {
        let mut last = self.last_health.lock();
        if last.elapsed() < HEALTH_INTERVAL {
            return;
        }
        *last = Instant::now();
        drop(last);
        if let Err(why) = self.check_file() {
            self.take_down(why);
        }
    }
}

fn unavailable(path: &Path, why: String) -> DiskError {
    DiskError {
        path: path.to_path_buf(),
        why,
    }
}

#[cfg(test)]
mod tests;
