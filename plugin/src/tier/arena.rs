//! The shared host-tier arena: one file on a tmpfs, mapped by every process that
//! uses the same store name, with a process-shared robust mutex guarding its index.
//!
//! Core types: [`Arena`] (the mapping), [`Geometry`] (slot size and count, fixed at
//! creation), [`Locked`] (the index while the mutex is held), [`SlotMeta`],
//! [`OwnerToken`] (a process's lease: who writes or pins a slot).
//!
//! File layout (every offset page-aligned where it matters):
//!
//! ```text
//!   0         Header (16 KiB): magic, geometry, robust mutex, lists, shared stats,
//!                                         eviction policy and its learned model
//!   lease_off Lease x MAX_LEASES          generation, held flag, pinned slots
//!   meta_off  SlotMeta x n_slots          identity, checksum, state, generation,
//!                                         writer token, pin count, links, uses
//!   table_off u32 x table_cap             open-addressing index: slot + 1, 0 = empty
//!   departed_off Departed x 4 n_slots     keys evicted lately (hazard policy)
//!   data_off  slot_stride x n_slots       block payloads, each 4 KiB aligned
//! ```
//!
//! Workflow of opening:
//! 1. Open the file with `O_NOFOLLOW` (created `O_EXCL`, mode 0600 or 0660 with a
//!    share group) and refuse it unless it is ours ([`super::shared_file`]); take
//!    `flock(LOCK_EX)` (waits up to `TIERKV_LOCK_TIMEOUT` for another opener).
//! 2. If the magic is missing (new file, or an initialiser died), or the store's
//!    geometry differs from the configuration and no live process is attached (no
//!    lease lock held), size it with `posix_fallocate` (a full tmpfs fails here,
//!    never later with SIGBUS) and initialise it; the magic is written last.
//!    A differing geometry with live processes attached is joined as it is, with a
//!    warning naming both values (another block size is an error).
//! 3. Check that the file is as long as the header says, map that length only.
//! 4. Take a lease (below), then release the flock.
//!
//! Liveness: a pid says nothing across PID namespaces (containers sharing
//! `/dev/shm`) or after pid reuse. Each attached [`Arena`] instead holds a lease:
//! an entry of the lease table with a generation, plus an open-file-description
//! lock (`F_OFD_SETLK`) on one byte far past the end of the file. The kernel drops
//! that lock when the process dies, in whatever namespace, and any process can ask
//! whether it is held (`F_OFD_GETLK`). Writers and readers are recorded by
//! [`OwnerToken`] (lease index + generation), and each slot has a generation bumped
//! whenever it is reserved, so a writer whose slot was reclaimed can never commit it.
//!
//! Crash safety: the index is guarded by a robust mutex taken with a timeout (a
//! timeout is a miss, counted). If a process dies holding it, the next locker gets
//! `EOWNERDEAD` and rebuilds the table, lists and pin counts from the slot metadata
//! and the live leases. Everything read from shared memory is bounds-checked; an
//! out-of-range value marks the index damaged and it is rebuilt the same way before
//! the lock is released. Payloads are never trusted: every load verifies a checksum
//! seeded with the block identity.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use self::stats::SharedStats;
use super::shared_file::{self, SharedFileError, Sharing};
use crate::evict::list::{ListEnds, NIL};
use crate::evict::{Departed, SlotHazard, SlotUse, DEPARTED_PER_RESIDENT};
use crate::prefix::BlockHash;

const MAGIC: u64 = 0x7469_6572_6b76_4152; // "tierkvAR"
/// 2: the header no longer keeps a separate count of ready slots.
/// 3: leases instead of pids, slot generations, pin counts, lock timeouts.
/// 4: each slot keeps the engine's key for its block (KV events).
/// 5: the eviction policy is the arena's (LRU or hazard), with its model in the
///    header, each slot's uses and a table of departed keys.
const VERSION: u32 = 5;
/// The oldest format whose users hold leases as this one does: a store of such a
/// version with nobody attached is recreated in this format.
const LEASED_SINCE: u32 = 3;
const PAGE: u64 = 4096;
const HEADER_BYTES: u64 = 4 * PAGE;
/// How long a lock of the index may be waited for before the operation is a miss.
pub const LOCK_WAIT: Duration = Duration::from_secs(2);
/// A slot in the `Writing` state longer than this is reclaimed even if its writer
/// still holds its lease (a stopped or wedged process); a block copy takes
/// milliseconds.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(30);

mod lease;
mod locked;
pub mod stats;

use lease::LEASE_BYTES;
pub use lease::{OwnerToken, MAX_LEASES, PINS_PER_LEASE};
pub use locked::{Arrival, Locked, Refused, WriteTicket};

/// State of one slot.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// On the free list.
    Free = 0,
    /// Reserved by a writer (`writer` token), indexed but not loadable.
    Writing = 1,
    /// Holds a verified-at-write block; on the eviction list.
    Ready = 2,
    /// Failed verification while other readers pinned it: unindexed (no new
    /// reader finds it), freed when the last pin is dropped.
    Dropped = 3,
}

/// Metadata of one slot, in shared memory. Changed only under the arena mutex.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SlotMeta {
    /// Block identity, low and high halves.
    pub hash: [u64; 2],
    /// xxh3-64 of the payload, seeded with the identity.
    pub checksum: u64,
    /// Payload bytes.
    pub len: u64,
    /// Logical time of the last store or load.
    pub last_access: u64,
    /// `CLOCK_BOOTTIME` nanoseconds when the slot entered `Writing`.
    pub write_started: u64,
    /// The engine's key for the block (its KV-event name; 0: none).
    pub key: u64,
    /// A [`SlotState`] value.
    pub state: u32,
    /// Bumped each time the slot is reserved for a write.
    pub generation: u32,
    /// Lease of the writer while `Writing` (index + 1, 0 = none).
    pub writer_lease: u32,
    /// Generation of that lease.
    pub writer_gen: u32,
    /// Readers pinning the slot (each also listed in its lease's pins).
    pub pins: u32,
    /// List links (free list or eviction list).
    pub prev: u32,
    /// List links.
    pub next: u32,
    /// The hazard policy's record of the slot.
    pub used: SlotUse,
}

/// Fixed at creation: what each slot holds and how many there are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Payload bytes per block.
    pub slot_bytes: u64,
    /// Bytes between slots (payload rounded up to a page).
    pub slot_stride: u64,
    /// Number of slots.
    pub n_slots: u32,
    /// Index table entries (a power of two, at least twice `n_slots`).
    pub table_cap: u32,
    /// Offset of the lease table.
    pub lease_off: u64,
    /// Offset of the metadata array.
    pub meta_off: u64,
    /// Offset of the index table.
    pub table_off: u64,
    /// Offset of the departed-keys table.
    pub departed_off: u64,
    /// Entries of the departed-keys table (a multiple of its ways).
    pub departed_len: u32,
    /// Offset of the first payload.
    pub data_off: u64,
    /// File size, at most the configured capacity.
    pub file_len: u64,
}

impl Geometry {
    /// The largest geometry for `slot_bytes` payloads within `capacity` bytes, all
    /// metadata included. `None` when not even one slot fits.
    pub fn fit(slot_bytes: u64, capacity: u64) -> Option<Self> {
        if slot_bytes == 0 {
            return None;
        }
        let slot_stride = slot_bytes.checked_add(PAGE - 1)? / PAGE * PAGE;
        let meta = std::mem::size_of::<SlotMeta>() as u64
            + u64::from(DEPARTED_PER_SLOT) * std::mem::size_of::<Departed>() as u64;
        let fixed = HEADER_BYTES + LEASE_BYTES;
        // Upper bound ignoring the table; binary search the largest count that fits.
        let mut hi = (capacity.saturating_sub(fixed) / (slot_stride + meta)).min(u64::from(u32::MAX / 4));
        let mut lo = 0u64;
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if Self::layout(slot_bytes, slot_stride, mid as u32).file_len <= capacity {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        (lo > 0).then(|| Self::layout(slot_bytes, slot_stride, lo as u32))
    }

    fn layout(slot_bytes: u64, slot_stride: u64, n_slots: u32) -> Self {
        let table_cap = (u64::from(n_slots) * 2).next_power_of_two().max(2) as u32;
        let lease_off = HEADER_BYTES;
        let meta_off = lease_off + LEASE_BYTES;
        let table_off = meta_off + u64::from(n_slots) * std::mem::size_of::<SlotMeta>() as u64;
        let departed_off = (table_off + u64::from(table_cap) * 4).div_ceil(8) * 8;
        let departed_len = n_slots.saturating_mul(DEPARTED_PER_SLOT);
        let departed_bytes = u64::from(departed_len) * std::mem::size_of::<Departed>() as u64;
        let data_off = (departed_off + departed_bytes).div_ceil(PAGE) * PAGE;
        let file_len = data_off + u64::from(n_slots) * slot_stride;
        Self {
            slot_bytes,
            slot_stride,
            n_slots,
            table_cap,
            lease_off,
            meta_off,
            table_off,
            departed_off,
            departed_len,
            data_off,
            file_len,
        }
    }

    /// The geometry a header describes, if it is self-consistent.
    fn from_header(slot_bytes: u64, n_slots: u32, table_cap: u32, file_len: u64) -> Option<Self> {
        if slot_bytes == 0 || n_slots == 0 || n_slots > u32::MAX / 4 {
            return None;
        }
        let stride = slot_bytes.checked_add(PAGE - 1)? / PAGE * PAGE;
        let g = Self::layout(slot_bytes, stride, n_slots);
        (g.table_cap == table_cap && g.file_len == file_len).then_some(g)
    }
}

/// Departed keys remembered per slot (as the keyed hazard policy does).
const DEPARTED_PER_SLOT: u32 = DEPARTED_PER_RESIDENT as u32;

/// How a full arena picks its victim; chosen by the process that creates it and
/// kept in its header, so every process of the arena evicts alike.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostEviction {
    /// Least recently used.
    Lru = 0,
    /// Learned reuse odds ([`SlotHazard`]).
    #[default]
    Hazard = 1,
}

impl HostEviction {
    /// Parses `lru` or `hazard`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "lru" => Some(Self::Lru),
            "hazard" => Some(Self::Hazard),
            _ => None,
        }
    }

    /// The name `parse` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Lru => "lru",
            Self::Hazard => "hazard",
        }
    }

    /// The policy a header field names (anything else, written by someone else:
    /// LRU, whose list the repair rebuilds).
    fn from_raw(v: u32) -> Self {
        if v == Self::Hazard as u32 {
            Self::Hazard
        } else {
            Self::Lru
        }
    }
}

#[repr(C)]
struct Header {
    magic: AtomicU64,
    version: u32,
    /// A [`HostEviction`] value.
    policy: u32,
    slot_bytes: u64,
    n_slots: u32,
    table_cap: u32,
    file_len: u64,
    clock: u64,
    free: ListEnds,
    lru: ListEnds,
    mutex: libc::pthread_mutex_t,
    stats: SharedStats,
    hazard: SlotHazard,
}

const _: () = assert!(std::mem::size_of::<Header>() as u64 <= HEADER_BYTES);
// The sizes docs/architecture.md gives for the file layout (format version 5).
const _: () = assert!(std::mem::size_of::<SlotMeta>() == 104 && std::mem::size_of::<Departed>() == 24);

/// Where the header keeps the eviction policy's state: (offset of the policy
/// field, offset and length of the hazard model and lists) — for tests that
/// write garbage there.
#[cfg(test)]
pub(crate) fn policy_state_offsets() -> (u64, u64, u64) {
    (
        std::mem::offset_of!(Header, policy) as u64,
        std::mem::offset_of!(Header, hazard) as u64,
        std::mem::size_of::<SlotHazard>() as u64,
    )
}

/// Why an arena could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum ArenaError {
    /// An OS call failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was attempted.
        what: &'static str,
        /// The arena file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The file is a link, or not ours (see [`SharedFileError`]).
    #[error(transparent)]
    Untrusted(#[from] SharedFileError),
    /// The capacity holds no slot of this size.
    #[error("TIERKV_CPU_BYTES={capacity} cannot hold one block of {slot_bytes} bytes plus metadata")]
    TooSmall {
        /// Configured bytes.
        capacity: u64,
        /// Block bytes.
        slot_bytes: u64,
    },
    /// The tmpfs cannot hold the arena.
    #[error("{path} needs {needed} bytes but its filesystem is full; lower TIERKV_CPU_BYTES or free space in TIERKV_SHM_DIR")]
    NoSpace {
        /// The arena file.
        path: PathBuf,
        /// Bytes needed.
        needed: u64,
    },
    /// An existing arena, in use by live processes, was made for other blocks.
    #[error("arena {path} holds blocks of {found} bytes, this engine's blocks are {wanted} bytes, and other processes use it; use another TIERKV_STORE_NAME")]
    Mismatch {
        /// The arena file.
        path: PathBuf,
        /// Its block size.
        found: u64,
        /// Requested block size.
        wanted: u64,
    },
    /// An existing arena has another format version.
    #[error("arena {path} has format version {found}, this library uses {VERSION}; use another TIERKV_STORE_NAME or delete the file once no engine uses it")]
    Version {
        /// The arena file.
        path: PathBuf,
        /// Its version.
        found: u32,
    },
    /// The index mutex cannot be taken.
    #[error("the lock of arena {0} is unusable: {1}; delete the file to start the store anew")]
    Lock(PathBuf, io::Error),
    /// The index mutex was not free within [`LOCK_WAIT`]: this operation is a miss.
    #[error("the lock of arena {0} was not free within {LOCK_WAIT:?}")]
    LockTimeout(PathBuf),
    /// Every lease is held by a live process.
    #[error("arena {0} has {MAX_LEASES} processes attached already; use another TIERKV_STORE_NAME")]
    Crowded(PathBuf),
    /// The file shrank underneath (someone truncated it): the tier is down.
    #[error("arena {0} was truncated while in use; the host tier is down until it is recreated")]
    Truncated(PathBuf),
    /// Another process held the creation lock too long.
    #[error("timed out after {0:?} waiting for another process to initialise {1} (TIERKV_LOCK_TIMEOUT)")]
    Timeout(Duration, PathBuf),
}

/// One mapping of a shared arena, holding one lease.
pub struct Arena {
    base: *mut u8,
    geo: Geometry,
    path: PathBuf,
    fd: OwnedFd,
    me: OwnerToken,
    broken: AtomicBool,
}

// SAFETY: the mapping is valid for the Arena's lifetime; the index is only touched
// under the process-shared mutex, stats are atomics, and payload ranges are handed
// out under the slot-state protocol (a writer owns a Writing slot, readers pin).
unsafe impl Send for Arena {}
// SAFETY: as above; all shared mutation is synchronised by the mutex or atomics.
unsafe impl Sync for Arena {}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ArenaError + 'a {
    move |source| ArenaError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// What the configuration asks of an arena.
#[derive(Debug, Clone, Copy)]
pub struct ArenaSpec {
    /// Payload bytes per block.
    pub slot_bytes: u64,
    /// Capacity in bytes (`TIERKV_CPU_BYTES`).
    pub capacity: u64,
    /// Wait for another opener (`TIERKV_LOCK_TIMEOUT`).
    pub timeout: Duration,
    /// Who may share the file (`TIERKV_SHARE_GROUP`).
    pub sharing: Sharing,
    /// The eviction policy of an arena this process creates (`TIERKV_HOST_EVICTION`).
    pub eviction: HostEviction,
}

impl Arena {
    /// Opens (creating if needed) the arena at `path` as `spec` asks.
    pub fn open(path: &Path, spec: ArenaSpec) -> Result<Self, ArenaError> {
        let want = Geometry::fit(spec.slot_bytes, spec.capacity).ok_or(ArenaError::TooSmall {
            capacity: spec.capacity,
            slot_bytes: spec.slot_bytes,
        })?;
        let opened = shared_file::open(path, true, 0, spec.sharing)?;
        let fd = opened.fd;
        flock_timeout(&fd, spec.timeout).map_err(|e| match e {
            None => ArenaError::Timeout(spec.timeout, path.to_path_buf()),
            Some(err) => io_err("flock", path)(err),
        })?;
        // The flock is released when `fd` is closed (failure) or below (success).
        let mut arena = Self::open_locked(fd, path, want, &spec)?;
        arena.me = arena.attach()?;
        // SAFETY: valid descriptor; unlocking cannot violate memory safety.
        unsafe { libc::flock(arena.fd.as_raw_fd(), libc::LOCK_UN) };
        if arena.eviction() != spec.eviction {
            tracing::warn!(path = %path.display(), store = arena.eviction().name(), configured = spec.eviction.name(),
                "the host-tier store evicts by the policy it was created with (TIERKV_HOST_EVICTION differs); every process of a store evicts alike");
        }
        Ok(arena)
    }

    /// The store's eviction policy (fixed when it was created).
    pub fn eviction(&self) -> HostEviction {
        // SAFETY: the header is mapped for the arena's lifetime; the field is set
        // before the magic is published and never changed by this library.
        HostEviction::from_raw(unsafe { std::ptr::addr_of!((*(self.base as *const Header)).policy).read_volatile() })
    }

    fn open_locked(fd: OwnedFd, path: &Path, want: Geometry, spec: &ArenaSpec) -> Result<Self, ArenaError> {
        let existing = file_size(&fd, path)?;
        if existing < HEADER_BYTES {
            return Self::create_locked(fd, path, want, spec.eviction);
        }
        let probe = map(&fd, HEADER_BYTES, path)?;
        // SAFETY: the first HEADER_BYTES are mapped; Header fits in them.
        let h = unsafe { &*(probe as *const Header) };
        let initialised = h.magic.load(Ordering::Acquire) == MAGIC;
        let (version, found) = (
            h.version,
            Geometry::from_header(h.slot_bytes, h.n_slots, h.table_cap, h.file_len),
        );
        let found_bytes = h.slot_bytes;
        // SAFETY: probe was mapped above with this length.
        unsafe { libc::munmap(probe.cast(), HEADER_BYTES as usize) };
        if !initialised {
            return Self::create_locked(fd, path, want, spec.eviction);
        }
        if !(LEASED_SINCE..=VERSION).contains(&version) {
            // Another library version may be using it (it takes no lease we could
            // see): never re-initialise it.
            return Err(ArenaError::Version {
                path: path.to_path_buf(),
                found: version,
            });
        }
        let attached = lease::any_held(&fd).map_err(io_err("probe leases", path))?;
        if version != VERSION {
            if attached {
                // Engines of another library version use it now.
                return Err(ArenaError::Version {
                    path: path.to_path_buf(),
                    found: version,
                });
            }
            tracing::warn!(path = %path.display(), found = version, want = VERSION,
                "host-tier store has an older format and no process attached; recreating it");
            return Self::create_locked(fd, path, want, spec.eviction);
        }
        match found {
            Some(g) if g == want && existing >= g.file_len => Self::mapped(fd, path, g),
            _ if !attached => {
                if found.is_some_and(|g| g != want) {
                    tracing::warn!(path = %path.display(), found_bytes, found_len = found.map_or(0, |g| g.file_len),
                        want_bytes = want.slot_bytes, want_len = want.file_len,
                        "host-tier store has another geometry and no process attached; recreating it as configured");
                }
                Self::create_locked(fd, path, want, spec.eviction)
            }
            Some(g) if g.slot_bytes != want.slot_bytes => Err(ArenaError::Mismatch {
                path: path.to_path_buf(),
                found: g.slot_bytes,
                wanted: want.slot_bytes,
            }),
            Some(g) if existing >= g.file_len => {
                tracing::warn!(
                    path = %path.display(),
                    store_blocks = g.n_slots,
                    store_bytes = g.file_len,
                    configured_blocks = want.n_slots,
                    configured_bytes = want.file_len,
                    "TIERKV_CPU_BYTES differs from the existing store's size, which other processes use; joining it as it is (stop them, or use another TIERKV_STORE_NAME, to apply the new size)"
                );
                Self::mapped(fd, path, g)
            }
            _ => Err(ArenaError::Truncated(path.to_path_buf())),
        }
    }

    fn mapped(fd: OwnedFd, path: &Path, geo: Geometry) -> Result<Self, ArenaError> {
        let base = map(&fd, geo.file_len, path)?;
        Ok(Self {
            base,
            geo,
            path: path.to_path_buf(),
            fd,
            me: OwnerToken::NONE,
            broken: AtomicBool::new(false),
        })
    }

    fn create_locked(fd: OwnedFd, path: &Path, geo: Geometry, eviction: HostEviction) -> Result<Self, ArenaError> {
        // SAFETY: valid descriptor; ftruncate to zero first drops any stale content.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), 0) } != 0 {
            return Err(io_err("truncate", path)(io::Error::last_os_error()));
        }
        // SAFETY: valid descriptor and a non-negative length.
        let rc = unsafe { libc::posix_fallocate(fd.as_raw_fd(), 0, geo.file_len as libc::off_t) };
        if rc == libc::ENOSPC {
            return Err(ArenaError::NoSpace {
                path: path.to_path_buf(),
                needed: geo.file_len,
            });
        } else if rc != 0 {
            return Err(io_err("allocate", path)(io::Error::from_raw_os_error(rc)));
        }
        let arena = Self::mapped(fd, path, geo)?;
        // SAFETY: the whole file is mapped and no other process uses it: we hold the
        // creation flock, no lease is held, and the magic is not yet written.
        unsafe { arena.init_header(eviction) }.map_err(io_err("init mutex", path))?;
        Ok(arena)
    }

    /// # Safety
    /// Exclusive access to a freshly allocated (zeroed) mapping.
    unsafe fn init_header(&self, eviction: HostEviction) -> io::Result<()> {
        let h = self.base as *mut Header;
        // SAFETY: h points at HEADER_BYTES of mapped, zeroed memory we own exclusively.
        let hdr = unsafe { &mut *h };
        hdr.version = VERSION;
        hdr.policy = eviction as u32;
        hdr.hazard = SlotHazard::default();
        hdr.slot_bytes = self.geo.slot_bytes;
        hdr.n_slots = self.geo.n_slots;
        hdr.table_cap = self.geo.table_cap;
        hdr.file_len = self.geo.file_len;
        hdr.free = ListEnds::new();
        hdr.lru = ListEnds::new();
        // SAFETY: attr is initialised by pthread_mutexattr_init before use, and the
        // mutex lives in shared memory that outlives every user.
        unsafe {
            let mut attr: libc::pthread_mutexattr_t = std::mem::zeroed();
            libc::pthread_mutexattr_init(&mut attr);
            libc::pthread_mutexattr_setpshared(&mut attr, libc::PTHREAD_PROCESS_SHARED);
            libc::pthread_mutexattr_setrobust(&mut attr, libc::PTHREAD_MUTEX_ROBUST);
            let rc = libc::pthread_mutex_init(&mut hdr.mutex, &attr);
            libc::pthread_mutexattr_destroy(&mut attr);
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
        }
        let mut view = Locked::new(self);
        for i in 0..self.geo.n_slots {
            *view.meta_mut(i) = SlotMeta::free();
            let mut free = view.header().free;
            free.push_back(&mut view, i);
            view.header().free = free;
        }
        std::mem::forget(view); // the mutex was never taken
        hdr.magic.store(MAGIC, Ordering::Release);
        Ok(())
    }

    /// Takes a lease for this mapping (under the index lock).
    fn attach(&self) -> Result<OwnerToken, ArenaError> {
        let mut l = self.lock()?;
        l.take_lease().ok_or_else(|| ArenaError::Crowded(self.path.clone()))
    }

    /// This mapping's lease.
    pub fn owner(&self) -> OwnerToken {
        self.me
    }

    /// The geometry.
    pub fn geometry(&self) -> Geometry {
        self.geo
    }

    /// The file path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Shared statistics (atomics; no lock needed).
    pub fn stats(&self) -> &SharedStats {
        // SAFETY: the header is mapped for the arena's lifetime; stats are atomics.
        unsafe { &(*(self.base as *const Header)).stats }
    }

    /// Takes the index mutex, waiting at most [`LOCK_WAIT`]. Repairs the index first
    /// if its last owner died. Fails when the wait times out (a miss for the caller,
    /// counted), when the mutex is unusable (`ENOTRECOVERABLE`: a repair itself was
    /// interrupted) or when the file was truncated underneath: then the tier is
    /// reported down and callers recompute.
    pub fn lock(&self) -> Result<Locked<'_>, ArenaError> {
        if self.broken.load(Ordering::Relaxed) {
            return Err(ArenaError::Truncated(self.path.clone()));
        }
        let m = self.mutex_ptr();
        let deadline = realtime_after(LOCK_WAIT);
        // SAFETY: the mutex was initialised as process-shared and robust before the
        // magic was published, and stays mapped while self lives.
        let rc = unsafe { libc::pthread_mutex_timedlock(m, &deadline) };
        if rc == libc::ETIMEDOUT {
            self.stats().lock_timeouts.fetch_add(1, Ordering::Relaxed);
            return Err(ArenaError::LockTimeout(self.path.clone()));
        }
        if rc != 0 && rc != libc::EOWNERDEAD {
            return Err(ArenaError::Lock(self.path.clone(), io::Error::from_raw_os_error(rc)));
        }
        let mut locked = Locked::new(self);
        if rc == libc::EOWNERDEAD {
            tracing::warn!(path = %self.path.display(), "a process died holding the arena lock; repairing the index");
            if !self.still_whole() {
                // Unlocking without marking it consistent makes it unusable for all.
                return Err(ArenaError::Truncated(self.path.clone()));
            }
            locked.repair();
            self.stats().lock_recoveries.fetch_add(1, Ordering::Relaxed);
            // SAFETY: we own the mutex (EOWNERDEAD hands it over) and repaired the state.
            unsafe { libc::pthread_mutex_consistent(m) };
        }
        Ok(locked)
    }

    /// Whether the file is still as long as the mapping (checked before a repair,
    /// which touches every slot's metadata). A short file takes the tier down.
    fn still_whole(&self) -> bool {
        let whole = file_size(&self.fd, &self.path).is_ok_and(|len| len >= self.geo.file_len);
        if !whole {
            self.broken.store(true, Ordering::Relaxed);
            tracing::error!(path = %self.path.display(), "host-tier arena was truncated underneath; tier down");
        }
        whole
    }

    fn mutex_ptr(&self) -> *mut libc::pthread_mutex_t {
        // SAFETY: computing a field address inside the mapped header.
        unsafe { std::ptr::addr_of_mut!((*(self.base as *mut Header)).mutex) }
    }

    /// Prefers NUMA node `node` for the arena's pages, including those other
    /// processes fault in later (the policy belongs to the shared file).
    pub fn prefer_numa_node(&self, node: u32) -> io::Result<()> {
        // SAFETY: base/len describe this arena's own mapping.
        unsafe { crate::hw::numa::prefer_node(self.base, self.geo.file_len as usize, node) }
    }

    /// Raw pointer to the payload of `slot`.
    ///
    /// The caller may read it only while it pins the slot, and write it only while
    /// it holds the slot in the `Writing` state.
    pub fn payload_ptr(&self, slot: u32) -> *mut u8 {
        assert!(slot < self.geo.n_slots);
        // SAFETY: slot < n_slots, so the offset stays inside the mapping.
        unsafe {
            self.base
                .add((self.geo.data_off + u64::from(slot) * self.geo.slot_stride) as usize)
        }
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        if self.me != OwnerToken::NONE {
            if let Ok(mut l) = self.lock() {
                l.release_lease();
            }
        }
        // SAFETY: base/len describe the mapping created in `open`; nothing borrows it
        // past the Arena's lifetime. Closing `fd` afterwards drops the lease lock.
        unsafe { libc::munmap(self.base.cast(), self.geo.file_len as usize) };
    }
}

/// Whether a live process (any mapping, in any PID namespace) is attached to the
/// arena at `path`. `Ok(false)` when there is no such file.
pub fn in_use(path: &Path) -> io::Result<bool> {
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    lease::any_held(&OwnedFd::from(file))
}

fn file_size(fd: &OwnedFd, path: &Path) -> Result<u64, ArenaError> {
    // SAFETY: fstat writes into a zeroed stat struct we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd is valid and st is a valid out-pointer.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io_err("fstat", path)(io::Error::last_os_error()));
    }
    Ok(st.st_size as u64)
}

fn map(fd: &OwnedFd, len: u64, path: &Path) -> Result<*mut u8, ArenaError> {
    // SAFETY: mapping a valid descriptor with a length within the file.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io_err("mmap", path)(io::Error::last_os_error()));
    }
    Ok(p.cast())
}

/// `flock(LOCK_EX)` with a deadline. `Err(None)` is a timeout.
fn flock_timeout(fd: &OwnedFd, timeout: Duration) -> Result<(), Option<io::Error>> {
    let start = Instant::now();
    loop {
        // SAFETY: valid descriptor.
        if unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(Some(err));
        }
        if start.elapsed() > timeout {
            return Err(None);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// `CLOCK_REALTIME` now + `d`, as `pthread_mutex_timedlock` wants it.
fn realtime_after(d: Duration) -> libc::timespec {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into our timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut now) };
    let ns = now.tv_nsec as u64 + u64::from(d.subsec_nanos());
    libc::timespec {
        tv_sec: now.tv_sec + d.as_secs() as libc::time_t + (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as _,
    }
}

/// `CLOCK_BOOTTIME` in nanoseconds: one clock for every process on the host.
pub(crate) fn boottime_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into our timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

impl SlotMeta {
    fn free() -> Self {
        Self {
            hash: [0; 2],
            checksum: 0,
            len: 0,
            last_access: 0,
            write_started: 0,
            key: 0,
            state: SlotState::Free as u32,
            generation: 0,
            writer_lease: 0,
            writer_gen: 0,
            pins: 0,
            prev: NIL,
            next: NIL,
            used: SlotUse::default(),
        }
    }

    /// The identity.
    pub fn block_hash(&self) -> BlockHash {
        BlockHash::from_parts(self.hash)
    }

    /// The writer's lease while `Writing`.
    pub fn writer(&self) -> OwnerToken {
        OwnerToken {
            index_plus_one: self.writer_lease,
            generation: self.writer_gen,
        }
    }
}
