//! Leases: which processes are attached to an arena, decided by the kernel.
//!
//! Core types: [`OwnerToken`] (lease index + generation, what slots record as their
//! writer and what pins are filed under), [`Lease`] (one entry of the shared table).
//!
//! ```text
//!   lease table (shared):  [gen | held | pins x PINS_PER_LEASE] x MAX_LEASES
//!   lock bytes (kernel):   LOCK_BASE + i, one OFD write lock per held lease i
//! ```
//!
//! A lease is live exactly while some open file description holds the write lock on
//! its byte: the kernel releases it when the last descriptor of that description is
//! closed, which includes the death of the process by any signal, in any PID
//! namespace. Probing (`F_OFD_GETLK`) from another description sees the lock; a
//! description never conflicts with itself, so a process's own lease is recognised
//! by its token instead.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use super::PAGE;

/// Most arena mappings (processes, or managers of one process) attached at once.
pub const MAX_LEASES: usize = 256;
/// Most slots one mapping can have pinned for reading at once (one per block being
/// copied out, across all its threads).
pub const PINS_PER_LEASE: usize = 30;
/// The lock bytes lie here, far past any file end (locks need no data behind them).
const LOCK_BASE: i64 = 1 << 40;

/// One entry of the lease table, in shared memory (changed under the arena mutex).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Lease {
    /// Bumped each time the entry is taken (never 0 once taken).
    pub generation: u32,
    /// 1 while taken.
    pub held: u32,
    /// Slots pinned by this lease (slot + 1; 0 = unused).
    pub pins: [u32; PINS_PER_LEASE],
}

/// Bytes of the lease table, page-rounded.
pub(super) const LEASE_BYTES: u64 = ((MAX_LEASES * std::mem::size_of::<Lease>()) as u64).div_ceil(PAGE) * PAGE;

/// Who holds a slot: a lease index and the generation it had when taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnerToken {
    /// Lease index + 1 (0: nobody).
    pub index_plus_one: u32,
    /// The lease's generation.
    pub generation: u32,
}

impl OwnerToken {
    /// Nobody.
    pub const NONE: Self = Self {
        index_plus_one: 0,
        generation: 0,
    };

    /// The lease index, when this is somebody.
    pub fn index(self) -> Option<usize> {
        (self.index_plus_one as usize)
            .checked_sub(1)
            .filter(|&i| i < MAX_LEASES)
    }
}

fn flock_struct(kind: i32, start: i64, len: i64) -> libc::flock {
    libc::flock {
        l_type: kind as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: start,
        l_len: len,
        l_pid: 0,
    }
}

/// Whether another open file description holds a lock in `[LOCK_BASE + first,
/// LOCK_BASE + first + count)`.
fn probe(fd: &OwnedFd, first: usize, count: usize) -> io::Result<bool> {
    let mut fl = flock_struct(libc::F_WRLCK, LOCK_BASE + first as i64, count as i64);
    // SAFETY: F_OFD_GETLK reads and writes the flock struct we pass.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

/// Whether any lease of the file is held by a live mapping other than through `fd`.
pub(super) fn any_held(fd: &OwnedFd) -> io::Result<bool> {
    probe(fd, 0, MAX_LEASES)
}

/// Whether lease `i` is held through another open file description. Errors count
/// as held: never reclaim what might be alive.
pub(super) fn held_elsewhere(fd: &OwnedFd, i: usize) -> bool {
    probe(fd, i, 1).unwrap_or(true)
}

/// Takes the lock of lease `i` through `fd`; `false` when someone else holds it.
pub(super) fn lock(fd: &OwnedFd, i: usize) -> bool {
    let fl = flock_struct(libc::F_WRLCK, LOCK_BASE + i as i64, 1);
    // SAFETY: F_OFD_SETLK reads the flock struct we pass.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_SETLK, &fl) == 0 }
}

/// Drops the lock of lease `i` held through `fd`.
pub(super) fn unlock(fd: &OwnedFd, i: usize) {
    let fl = flock_struct(libc::F_UNLCK, LOCK_BASE + i as i64, 1);
    // SAFETY: F_OFD_SETLK reads the flock struct we pass.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
}
