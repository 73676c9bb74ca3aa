//! The shared host-tier arena: one file on a tmpfs, mapped by every process that
//! uses the same store name, with a process-shared robust mutex guarding its index.
//!
//! Core types: [`Arena`] (the mapping), [`Geometry`] (slot size and count, fixed at
//! creation), [`Locked`] (the index while the mutex is held), [`SlotMeta`].
//!
//! File layout (every offset page-aligned where it matters):
//!
//! ```text
//!   0        Header (4 KiB): magic, geometry, robust mutex, lists, shared stats
//!   meta_off SlotMeta x n_slots          identity, checksum, state, links, pins
//!   table_off u32 x table_cap            open-addressing index: slot + 1, 0 = empty
//!   data_off  slot_stride x n_slots      block payloads, each 4 KiB aligned
//! ```
//!
//! Workflow of opening:
//! 1. `open(O_CREAT)` the file and take `flock(LOCK_EX)` (waits up to
//!    `TIERKV_LOCK_TIMEOUT` for another process that is initialising it).
//! 2. If the magic is missing (new file, or an initialiser died), size it with
//!    `posix_fallocate` (so a full tmpfs fails here, never later with SIGBUS),
//!    initialise header, mutex and lists, and write the magic last.
//! 3. Otherwise check that the geometry matches; release the flock.
//!
//! Crash safety: the index is guarded by a robust mutex. If a process dies holding
//! it, the next locker gets `EOWNERDEAD`; it then rebuilds the table and lists from
//! the slot metadata (the source of truth), frees slots whose writer died, drops pins
//! of dead readers, and marks the mutex consistent. Payloads are never trusted:
//! every load verifies a checksum seeded with the block identity.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::block::list::{ListEnds, NIL};
use crate::metrics::SharedStats;
use crate::prefix::BlockHash;

const MAGIC: u64 = 0x7469_6572_6b76_4152; // "tierkvAR"
                                          // 2: the header no longer keeps a separate count of ready slots.
const VERSION: u32 = 2;
const PAGE: u64 = 4096;
const HEADER_BYTES: u64 = 4 * PAGE;
/// Most processes that can pin one slot for reading at once.
pub const MAX_READERS: usize = 6;

extern "C" {
    // glibc exports these (POSIX 2008); the libc crate does not bind them on Linux.
    fn pthread_mutexattr_setrobust(attr: *mut libc::pthread_mutexattr_t, robust: libc::c_int) -> libc::c_int;
    fn pthread_mutex_consistent(mutex: *mut libc::pthread_mutex_t) -> libc::c_int;
}

/// State of one slot.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// On the free list.
    Free = 0,
    /// Reserved by a writer (`writer` pid), indexed but not loadable.
    Writing = 1,
    /// Holds a verified-at-write block; on the eviction list.
    Ready = 2,
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
    /// A [`SlotState`] value.
    pub state: u32,
    /// Pid of the writer while `Writing`.
    pub writer: u32,
    /// List links (free list or eviction list).
    pub prev: u32,
    /// List links.
    pub next: u32,
    /// Pids pinning the slot for reading (0 = unused entry).
    pub readers: [u32; MAX_READERS],
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
    /// Offset of the metadata array.
    pub meta_off: u64,
    /// Offset of the index table.
    pub table_off: u64,
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
        let meta = std::mem::size_of::<SlotMeta>() as u64;
        // Upper bound ignoring the table; binary search the largest count that fits.
        let mut hi = (capacity.saturating_sub(HEADER_BYTES) / (slot_stride + meta)).min(u64::from(u32::MAX / 4));
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
        let meta_off = HEADER_BYTES;
        let table_off = meta_off + u64::from(n_slots) * std::mem::size_of::<SlotMeta>() as u64;
        let data_off = (table_off + u64::from(table_cap) * 4).div_ceil(PAGE) * PAGE;
        let file_len = data_off + u64::from(n_slots) * slot_stride;
        Self {
            slot_bytes,
            slot_stride,
            n_slots,
            table_cap,
            meta_off,
            table_off,
            data_off,
            file_len,
        }
    }
}

#[repr(C)]
struct Header {
    magic: AtomicU64,
    version: u32,
    _pad: u32,
    slot_bytes: u64,
    n_slots: u32,
    table_cap: u32,
    file_len: u64,
    clock: u64,
    free: ListEnds,
    lru: ListEnds,
    mutex: libc::pthread_mutex_t,
    stats: SharedStats,
}

/// Why an arena could not be opened.
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
    /// An existing arena was made for other blocks.
    #[error("arena {path} holds blocks of {found} bytes, this engine's blocks are {wanted} bytes; use another TIERKV_STORE_NAME")]
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
    /// Another process held the creation lock too long.
    #[error("timed out after {0:?} waiting for another process to initialise {1} (TIERKV_LOCK_TIMEOUT)")]
    Timeout(Duration, PathBuf),
}

/// One mapping of a shared arena.
pub struct Arena {
    base: *mut u8,
    geo: Geometry,
    path: PathBuf,
    _fd: OwnedFd,
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

impl Arena {
    /// Opens (creating if needed) the arena at `path` for blocks of `slot_bytes`,
    /// sized to at most `capacity` bytes when created.
    pub fn open(path: &Path, slot_bytes: u64, capacity: u64, timeout: Duration) -> Result<Self, ArenaError> {
        let geo = Geometry::fit(slot_bytes, capacity).ok_or(ArenaError::TooSmall { capacity, slot_bytes })?;
        let cpath = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| io_err("open", path)(io::Error::from(io::ErrorKind::InvalidInput)))?;
        // SAFETY: cpath is a valid NUL-terminated string; open has no other preconditions.
        let raw = unsafe { libc::open(cpath.as_ptr(), libc::O_RDWR | libc::O_CREAT | libc::O_CLOEXEC, 0o600) };
        if raw < 0 {
            return Err(io_err("open", path)(io::Error::last_os_error()));
        }
        // SAFETY: raw is a freshly opened descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        flock_timeout(&fd, timeout).map_err(|e| match e {
            None => ArenaError::Timeout(timeout, path.to_path_buf()),
            Some(err) => io_err("flock", path)(err),
        })?;
        let result = Self::open_locked(fd, path, geo);
        // The descriptor (if kept) is unlocked below; a failed open closes it.
        if let Ok(arena) = &result {
            // SAFETY: valid descriptor; unlocking cannot violate memory safety.
            unsafe { libc::flock(arena._fd.as_raw_fd(), libc::LOCK_UN) };
        }
        result
    }

    fn open_locked(fd: OwnedFd, path: &Path, want: Geometry) -> Result<Self, ArenaError> {
        // SAFETY: fstat writes into a zeroed stat struct we own.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fd is valid and st is a valid out-pointer.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(io_err("fstat", path)(io::Error::last_os_error()));
        }
        let existing = st.st_size as u64;
        if existing >= HEADER_BYTES {
            let probe = map(&fd, HEADER_BYTES, path)?;
            // SAFETY: the first HEADER_BYTES are mapped; Header fits in them.
            let h = unsafe { &*(probe as *const Header) };
            let initialised = h.magic.load(Ordering::Acquire) == MAGIC;
            let (version, found, n_slots, file_len) = (h.version, h.slot_bytes, h.n_slots, h.file_len);
            // SAFETY: probe was mapped above with this length.
            unsafe { libc::munmap(probe.cast(), HEADER_BYTES as usize) };
            if initialised && version != VERSION {
                // Another library version may be using it: never re-initialise it.
                return Err(ArenaError::Version {
                    path: path.to_path_buf(),
                    found: version,
                });
            }
            let ready = initialised;
            if ready {
                if found != want.slot_bytes {
                    return Err(ArenaError::Mismatch {
                        path: path.to_path_buf(),
                        found,
                        wanted: want.slot_bytes,
                    });
                }
                let geo = Geometry::layout(found, want.slot_stride, n_slots);
                if geo.file_len != file_len || existing < file_len {
                    return Err(io_err("validate", path)(io::Error::other(
                        "arena header is inconsistent",
                    )));
                }
                let base = map(&fd, geo.file_len, path)?;
                return Ok(Self {
                    base,
                    geo,
                    path: path.to_path_buf(),
                    _fd: fd,
                });
            }
        }
        Self::create_locked(fd, path, want)
    }

    fn create_locked(fd: OwnedFd, path: &Path, geo: Geometry) -> Result<Self, ArenaError> {
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
        let base = map(&fd, geo.file_len, path)?;
        let arena = Self {
            base,
            geo,
            path: path.to_path_buf(),
            _fd: fd,
        };
        // SAFETY: the whole file is mapped and no other process uses it: we hold the
        // creation flock and the magic is not yet written.
        unsafe { arena.init_header() }.map_err(io_err("init mutex", path))?;
        Ok(arena)
    }

    /// # Safety
    /// Exclusive access to a freshly allocated (zeroed) mapping.
    unsafe fn init_header(&self) -> io::Result<()> {
        let h = self.base as *mut Header;
        // SAFETY: h points at HEADER_BYTES of mapped, zeroed memory we own exclusively.
        let hdr = unsafe { &mut *h };
        hdr.version = VERSION;
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
            pthread_mutexattr_setrobust(&mut attr, libc::PTHREAD_MUTEX_ROBUST);
            let rc = libc::pthread_mutex_init(&mut hdr.mutex, &attr);
            libc::pthread_mutexattr_destroy(&mut attr);
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
        }
        let mut view = Locked { arena: self };
        for i in 0..self.geo.n_slots {
            *view.meta_mut(i) = SlotMeta::free();
            let mut free = view.header().free;
            free.push_back(&mut view, i);
            view.header().free = free;
        }
        hdr.magic.store(MAGIC, Ordering::Release);
        Ok(())
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

    /// Takes the index mutex. Repairs the index first if its last owner died.
    /// Fails only if the mutex is unusable (`ENOTRECOVERABLE`: a repair itself was
    /// interrupted), in which case the tier is reported down and callers recompute.
    pub fn lock(&self) -> Result<Locked<'_>, ArenaError> {
        let m = self.mutex_ptr();
        // SAFETY: the mutex was initialised as process-shared and robust before the
        // magic was published, and stays mapped while self lives.
        let rc = unsafe { libc::pthread_mutex_lock(m) };
        if rc != 0 && rc != libc::EOWNERDEAD {
            return Err(ArenaError::Lock(self.path.clone(), io::Error::from_raw_os_error(rc)));
        }
        let mut locked = Locked { arena: self };
        if rc == libc::EOWNERDEAD {
            tracing::warn!(path = %self.path.display(), "a process died holding the arena lock; repairing the index");
            locked.repair();
            self.stats().lock_recoveries.fetch_add(1, Ordering::Relaxed);
            // SAFETY: we own the mutex (EOWNERDEAD hands it over) and repaired the state.
            unsafe { pthread_mutex_consistent(m) };
        }
        Ok(locked)
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
        // SAFETY: base/len describe the mapping created in `open`; nothing borrows it
        // past the Arena's lifetime.
        unsafe { libc::munmap(self.base.cast(), self.geo.file_len as usize) };
    }
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

impl SlotMeta {
    fn free() -> Self {
        Self {
            hash: [0; 2],
            checksum: 0,
            len: 0,
            last_access: 0,
            state: SlotState::Free as u32,
            writer: 0,
            prev: NIL,
            next: NIL,
            readers: [0; MAX_READERS],
        }
    }

    /// The identity.
    pub fn block_hash(&self) -> BlockHash {
        BlockHash::from_parts(self.hash)
    }
}

/// Whether process `pid` still exists.
pub fn pid_alive(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

mod locked;

pub use locked::Locked;
