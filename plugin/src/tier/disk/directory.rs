//! Which blocks the disk tier holds, and in which slot, published in shared memory
//! so that other processes of the store (vLLM's scheduler, a second engine) can
//! look blocks up and read them while one process owns the file and writes it.
//!
//! Core type: [`Directory`], an open-addressing table of `(identity, slot)` entries in
//! a file next to the host arena (`$TIERKV_SHM_DIR/tierkv-$STORE.g3dir`). One writer
//! (the owner, holding the data file's lock); any number of lock-free readers.
//!
//! ```text
//!   header (64 B): magic | capacity | ...      entries: [lo u64 | hi u64 | slot+1 u64] x capacity
//!   slot+1 == 0: empty (ends a probe)   slot+1 == u64::MAX: removed (probe goes on)
//! ```
//!
//! The owner builds a new table in a temporary file and `rename`s it into place, so
//! a reader's mapping is never truncated underneath; readers re-open the path when
//! its inode changes. Both sides open with `O_NOFOLLOW` and the ownership rules of
//! [`crate::tier::shared_file`].
//!
//! Readers may see a torn or stale entry. That is safe by construction: a reader
//! only uses the slot to read the block, and every read is verified against the
//! identity and checksum in the block's own header; a stale answer is a miss.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::prefix::BlockHash;
use crate::tier::shared_file::{self, SharedFileError, Sharing};

const MAGIC: u64 = 0x3130_5249_4433_4754; // "TG3DIR01"
const HEADER: usize = 64;
const EMPTY: u64 = 0;
const REMOVED: u64 = u64::MAX;
/// Longest probe a reader follows before answering "not found".
const MAX_PROBE: usize = 4096;

/// A shared `(identity -> slot)` table.
pub struct Directory {
    ptr: *mut u8,
    len: usize,
    cap: usize,
    id: (u64, u64),
}

// SAFETY: all access to the mapping goes through atomics; the mapping lives until drop.
unsafe impl Send for Directory {}
// SAFETY: as above.
unsafe impl Sync for Directory {}

impl Directory {
    /// Creates a new, empty table for `slots` blocks and renames it over `path`
    /// (mappings of an older table stay valid). Owner only.
    pub fn create(path: &Path, slots: u64, sharing: Sharing) -> Result<Self, SharedFileError> {
        let cap = (slots.max(8) * 2).next_power_of_two() as usize;
        let len = HEADER + cap * 24;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let io = |what, e| SharedFileError::Io {
            what,
            path: path.to_path_buf(),
            source: e,
        };
        let f = File::from(shared_file::open(&tmp, true, 0, sharing)?.fd);
        let built = f
            .set_len(len as u64)
            .map_err(|e| io("size", e))
            .and_then(|()| Self::map(&f, len, cap).map_err(|e| io("map", e)));
        let d = match built {
            Ok(d) => d,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        d.word(1).store(cap as u64, Ordering::Relaxed);
        d.word(0).store(MAGIC, Ordering::Release);
        if let Err(e) = std::fs::rename(&tmp, path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(io("rename", e));
        }
        Ok(d)
    }

    /// Maps an existing table for reading. `None` if absent, not (yet) valid, or
    /// not trusted (a link, or owned by someone else: logged).
    pub fn open(path: &Path, sharing: Sharing) -> Option<Self> {
        let f = match shared_file::open(path, false, 0, sharing) {
            Ok(o) => File::from(o.fd),
            Err(SharedFileError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!("disk-tier directory refused: {e}");
                return None;
            }
        };
        let len = f.metadata().ok()?.len() as usize;
        if len < HEADER {
            return None;
        }
        let mut d = Self::map(&f, len, 0).ok()?;
        if d.word(0).load(Ordering::Acquire) != MAGIC {
            return None;
        }
        let cap = d.word(1).load(Ordering::Relaxed) as usize;
        if !cap.is_power_of_two() || HEADER + cap * 24 > len {
            return None;
        }
        d.cap = cap;
        Some(d)
    }

    /// `(device, inode)` of the file this mapping shows.
    pub fn id(&self) -> (u64, u64) {
        self.id
    }

    fn map(f: &File, len: usize, cap: usize) -> std::io::Result<Self> {
        let meta = f.metadata()?;
        // SAFETY: a shared read-write mapping of a file we opened read-write, of its
        // current length; released in Drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(f),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self {
            ptr: p.cast(),
            len,
            cap,
            id: (meta.dev(), meta.ino()),
        })
    }

    fn word(&self, i: usize) -> &AtomicU64 {
        debug_assert!(i * 8 + 8 <= self.len);
        // SAFETY: in bounds (header words, or entries below cap as checked at open),
        // 8-byte aligned (page-aligned base, HEADER and entries multiples of 8), and
        // only ever accessed atomically.
        unsafe { &*self.ptr.add(i * 8).cast::<AtomicU64>() }
    }

    fn entry(&self, i: usize) -> [&AtomicU64; 3] {
        let w = HEADER / 8 + i * 3;
        [self.word(w), self.word(w + 1), self.word(w + 2)]
    }

    fn start(&self, hash: BlockHash) -> usize {
        let [lo, hi] = hash.to_parts();
        ((lo ^ hi.rotate_left(17)) as usize) & (self.cap - 1)
    }

    /// The slot of `hash`, if published.
    pub fn get(&self, hash: BlockHash) -> Option<u32> {
        let [lo, hi] = hash.to_parts();
        let mut i = self.start(hash);
        for _ in 0..self.cap.min(MAX_PROBE) {
            let [elo, ehi, eslot] = self.entry(i);
            let s = eslot.load(Ordering::Acquire);
            if s == EMPTY {
                return None;
            }
            if s != REMOVED && elo.load(Ordering::Relaxed) == lo && ehi.load(Ordering::Relaxed) == hi {
                return u32::try_from(s - 1).ok();
            }
            i = (i + 1) & (self.cap - 1);
        }
        None
    }

    /// Publishes `hash` in `slot`. Owner only (one writer).
    pub fn insert(&self, hash: BlockHash, slot: u32) {
        let [lo, hi] = hash.to_parts();
        let mut i = self.start(hash);
        let mut reuse = None;
        for _ in 0..self.cap {
            let [elo, ehi, eslot] = self.entry(i);
            let s = eslot.load(Ordering::Relaxed);
            if s == EMPTY {
                break;
            }
            if s == REMOVED {
                reuse.get_or_insert(i);
            } else if elo.load(Ordering::Relaxed) == lo && ehi.load(Ordering::Relaxed) == hi {
                eslot.store(u64::from(slot) + 1, Ordering::Release);
                return;
            }
            i = (i + 1) & (self.cap - 1);
        }
        let [elo, ehi, eslot] = self.entry(reuse.unwrap_or(i));
        // Mark removed while the identity changes, so no reader pairs old and new.
        eslot.store(REMOVED, Ordering::Release);
        elo.store(lo, Ordering::Relaxed);
        ehi.store(hi, Ordering::Relaxed);
        eslot.store(u64::from(slot) + 1, Ordering::Release);
    }

    /// Withdraws `hash`. Owner only.
    pub fn remove(&self, hash: BlockHash) {
        let [lo, hi] = hash.to_parts();
        let mut i = self.start(hash);
        for _ in 0..self.cap {
            let [elo, ehi, eslot] = self.entry(i);
            let s = eslot.load(Ordering::Relaxed);
            if s == EMPTY {
                return;
            }
            if s != REMOVED && elo.load(Ordering::Relaxed) == lo && ehi.load(Ordering::Relaxed) == hi {
                eslot.store(REMOVED, Ordering::Release);
                return;
            }
            i = (i + 1) & (self.cap - 1);
        }
    }
}

impl Drop for Directory {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping of this length.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_get_remove_and_a_second_mapping_sees_it() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.g3dir");
        let w = Directory::create(&p, 4, Sharing::default()).unwrap();
        for k in 1..=8u128 {
            w.insert(BlockHash(k << 64 | k), k as u32);
        }
        let r = Directory::open(&p, Sharing::default()).unwrap();
        assert_eq!(r.get(BlockHash(3 << 64 | 3)), Some(3));
        w.remove(BlockHash(3 << 64 | 3));
        assert_eq!(r.get(BlockHash(3 << 64 | 3)), None);
        assert_eq!(
            r.get(BlockHash(8 << 64 | 8)),
            Some(8),
            "probing goes past removed entries"
        );
        w.insert(BlockHash(9), 9);
        w.insert(BlockHash(8 << 64 | 8), 10);
        assert_eq!(r.get(BlockHash(8 << 64 | 8)), Some(10));
        assert_eq!(r.get(BlockHash(9)), Some(9));
    }
}
