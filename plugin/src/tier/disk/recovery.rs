//! Opening the disk tier's file and rebuilding its index from what is on it.
//!
//! Workflow of [`open_file`]:
//! 1. Create the directory (0700) if missing; open or create the file (0600, or
//!    0660 with a share group; never through a symlink, refused unless ours: see
//!    [`crate::tier::shared_file`]) with O_DIRECT, falling back to buffered I/O
//!    where the filesystem refuses it.
//! 2. Take an exclusive `flock`: another process using the file makes the tier
//!    unavailable here rather than corrupting both.
//! 3. A new file is preallocated whole (`posix_fallocate`: a disk without room
//!    fails now, not mid-write) and gets a superblock; an existing one must carry a
//!    superblock of the same geometry (another is refused, never overwritten).
//!
//! Workflow of [`scan`]: worker threads read every slot's header sector (or the whole
//! slot in full mode, verifying the payload), keep those that verify, drop the rest,
//! and keep the newest copy of an identity found twice that verifies whole (a crash
//! between writing a block and forgetting its old slot; a torn newer copy never
//! hides an older valid one).

use std::fs::{DirBuilder, File};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::Path;

use super::format::{AlignedBuf, BlockHeader, DiskGeometry, HeaderState, SECTOR};
use super::{unavailable, DiskError};
use crate::prefix::BlockHash;
use crate::tier::shared_file::{self, SharedFileError, Sharing};

/// An open, locked file of the right geometry.
pub(super) struct Opened {
    pub file: File,
    pub direct: bool,
    pub file_id: (u64, u64),
    /// Holds the lock and writes; otherwise a reader of another owner's file.
    pub owner: bool,
}

/// A block found by [`scan`].
#[derive(Clone, Copy)]
pub(super) struct FoundBlock {
    pub slot: u32,
    pub hash: BlockHash,
    pub generation: u64,
    /// The engine's key for the block (0: none).
    pub key: u64,
}

/// What [`scan`] found: blocks oldest first.
#[derive(Default)]
pub(super) struct Found {
    pub blocks: Vec<FoundBlock>,
    pub dropped: u64,
    pub max_generation: u64,
}

fn os_err(e: &std::io::Error) -> String {
    e.to_string()
}

pub(super) fn open_file(
    dir: &Path,
    path: &Path,
    geo: DiskGeometry,
    direct: bool,
    want_owner: bool,
    sharing: Sharing,
) -> Result<Opened, DiskError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| unavailable(dir, format!("cannot create the directory: {}", os_err(&e))))?;
    let open = |direct: bool| {
        let flags = if direct { libc::O_DIRECT } else { 0 };
        shared_file::open(path, true, flags, sharing).map(|o| File::from(o.fd))
    };
    let einval = |e: &SharedFileError| matches!(e, SharedFileError::Io { source, .. } if source.raw_os_error() == Some(libc::EINVAL));
    let (file, direct) = match open(direct) {
        Ok(f) => (f, direct),
        Err(e) if direct && einval(&e) => {
            tracing::warn!(path = %path.display(), "filesystem refuses O_DIRECT; using buffered I/O");
            (open(false).map_err(|e| unavailable(path, e.to_string()))?, false)
        }
        Err(e) => return Err(unavailable(path, format!("cannot open: {e}"))),
    };
    // SAFETY: flock on a descriptor we own; no memory is passed.
    let owner = want_owner && unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    let meta = file.metadata().map_err(|e| unavailable(path, os_err(&e)))?;
    if !owner {
        // Another process owns the file: read it as it is, change nothing.
        if meta.len() < geo.file_len {
            return Err(unavailable(path, "not yet created by its owner process".into()));
        }
        read_super(&file, path, geo)?;
        tracing::info!(path = %path.display(), "disk tier owned by another process; reading only");
        return Ok(Opened {
            file,
            direct,
            file_id: (meta.dev(), meta.ino()),
            owner,
        });
    }
    if meta.len() == 0 {
        init_file(&file, path, geo)?;
    } else {
        check_existing(&file, path, geo, meta.len())?;
    }
    Ok(Opened {
        file,
        direct,
        file_id: (meta.dev(), meta.ino()),
        owner,
    })
}

fn init_file(file: &File, path: &Path, geo: DiskGeometry) -> Result<(), DiskError> {
    // SAFETY: posix_fallocate on our descriptor with in-range lengths.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, geo.file_len as libc::off_t) };
    if rc != 0 {
        let _ = std::fs::remove_file(path);
        return Err(unavailable(
            path,
            format!(
                "cannot reserve {} bytes: {}",
                geo.file_len,
                std::io::Error::from_raw_os_error(rc)
            ),
        ));
    }
    let mut sb = AlignedBuf::zeroed(SECTOR);
    geo.encode_super(sb.as_mut_slice());
    std::os::unix::fs::FileExt::write_all_at(file, sb.as_slice(), 0)
        .and_then(|()| file.sync_data())
        .map_err(|e| unavailable(path, format!("cannot write the superblock: {}", os_err(&e))))
}

fn check_existing(file: &File, path: &Path, geo: DiskGeometry, len: u64) -> Result<(), DiskError> {
    let mut sb = AlignedBuf::zeroed(SECTOR);
    std::os::unix::fs::FileExt::read_exact_at(file, sb.as_mut_slice(), 0)
        .map_err(|e| unavailable(path, format!("cannot read the superblock: {}", os_err(&e))))?;
    if let Ok(found) = DiskGeometry::decode_super(sb.as_slice()) {
        if found != geo {
            // The owner holds the file's lock: no other process writes it, and
            // readers verify every block, so the configuration wins.
            tracing::warn!(
                path = %path.display(),
                file_slots = found.n_slots,
                file_block_bytes = found.block_bytes,
                configured_slots = geo.n_slots,
                configured_block_bytes = geo.block_bytes,
                "disk-tier file has another geometry than TIERKV_DISK_BYTES and the block size ask for; recreating it empty"
            );
            // SAFETY: ftruncate on our own descriptor.
            if unsafe { libc::ftruncate(file.as_raw_fd(), 0) } != 0 {
                return Err(unavailable(
                    path,
                    format!("cannot recreate: {}", std::io::Error::last_os_error()),
                ));
            }
            return init_file(file, path, geo);
        }
    }
    read_super(file, path, geo)?;
    if len < geo.file_len {
        tracing::warn!(path = %path.display(), len, want = geo.file_len, "disk-tier file was truncated; restoring its length");
        // SAFETY: as in init_file.
        let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, geo.file_len as libc::off_t) };
        if rc != 0 {
            return Err(unavailable(
                path,
                format!(
                    "truncated and cannot be restored: {}",
                    std::io::Error::from_raw_os_error(rc)
                ),
            ));
        }
    }
    Ok(())
}

fn read_super(file: &File, path: &Path, geo: DiskGeometry) -> Result<(), DiskError> {
    let mut sb = AlignedBuf::zeroed(SECTOR);
    std::os::unix::fs::FileExt::read_exact_at(file, sb.as_mut_slice(), 0)
        .map_err(|e| unavailable(path, format!("cannot read the superblock: {}", os_err(&e))))?;
    let found = DiskGeometry::decode_super(sb.as_slice()).map_err(|why| {
        unavailable(
            path,
            format!("{why}; move the file away or point TIERKV_DISK_PATH elsewhere"),
        )
    })?;
    if found != geo {
        return Err(unavailable(
            path,
            format!(
                "holds {} slots of {}-byte blocks, but this manager needs {} slots of {}-byte blocks \
                 (TIERKV_DISK_BYTES or the model changed); move the file away or use another TIERKV_STORE_NAME",
                found.n_slots, found.block_bytes, geo.n_slots, geo.block_bytes
            ),
        ));
    }
    Ok(())
}

/// Whether the whole block in `slot` verifies (header and payload).
fn verify_slot(file: &File, geo: DiskGeometry, slot: u32) -> std::io::Result<bool> {
    let mut buf = AlignedBuf::zeroed(geo.slot_bytes as usize);
    std::os::unix::fs::FileExt::read_exact_at(file, buf.as_mut_slice(), geo.slot_offset(slot))?;
    let b = buf.as_slice();
    Ok(BlockHeader::decode(b).is_ok_and(|h| {
        h.len == geo.block_bytes && h.verifies(&b[..SECTOR], &b[SECTOR..SECTOR + geo.block_bytes as usize])
    }))
}

/// Reads the slots `range` and returns the verified blocks and the dropped count.
fn scan_range(
    file: &File,
    geo: DiskGeometry,
    range: std::ops::Range<u32>,
    full: bool,
) -> std::io::Result<(Vec<FoundBlock>, u64)> {
    let read_len = if full { geo.slot_bytes as usize } else { SECTOR };
    let mut buf = AlignedBuf::zeroed(read_len);
    let (mut blocks, mut dropped) = (Vec::new(), 0u64);
    for slot in range {
        let b = &mut buf.as_mut_slice()[..read_len];
        std::os::unix::fs::FileExt::read_exact_at(file, b, geo.slot_offset(slot))?;
        match BlockHeader::decode(b) {
            Err(HeaderState::Empty) => {}
            Err(HeaderState::Invalid) => dropped += 1,
            Ok(h) if h.len != geo.block_bytes => dropped += 1,
            Ok(h) => {
                if full && !h.verifies(&b[..SECTOR], &b[SECTOR..SECTOR + geo.block_bytes as usize]) {
                    dropped += 1;
                    continue;
                }
                let f = FoundBlock {
                    slot,
                    hash: h.hash,
                    generation: h.generation,
                    key: h.key,
                };
                blocks.push(f);
            }
        }
    }
    Ok((blocks, dropped))
}

pub(super) fn scan(file: &File, geo: DiskGeometry, threads: usize, full: bool) -> std::io::Result<Found> {
    let n = geo.n_slots as u32;
    let threads = threads.clamp(1, 64) as u32;
    let chunk = n.div_ceil(threads).max(1);
    let parts: Vec<std::io::Result<_>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .step_by(chunk as usize)
            .map(|lo| s.spawn(move || scan_range(file, geo, lo..(lo + chunk).min(n), full)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("scan thread panicked")))
            })
            .collect()
    });
    let (mut all, mut dropped) = (Vec::new(), 0u64);
    for p in parts {
        let (b, d) = p?;
        all.extend(b);
        dropped += d;
    }
    // Generations stay unique across restarts: the next write is newer than any
    // copy found, kept or not.
    let max_generation = all.iter().map(|f| f.generation).max().unwrap_or(0);
    // The newest copy of an identity that verifies wins; the others are dropped.
    // A header-only scan has not read the payloads: where an identity is found
    // twice, the copies are verified whole, newest first, so a torn newer write
    // never hides an older valid copy.
    all.sort_unstable_by_key(|f| (f.hash.0, std::cmp::Reverse(f.generation)));
    let before = all.len();
    let mut kept: Vec<FoundBlock> = Vec::with_capacity(all.len());
    let mut i = 0;
    while i < all.len() {
        let j = (i..all.len())
            .find(|&k| all[k].hash.0 != all[i].hash.0)
            .unwrap_or(all.len());
        let winner = if j - i == 1 || full {
            Some(i)
        } else {
            (i..j).find(|&k| verify_slot(file, geo, all[k].slot).unwrap_or(false))
        };
        if let Some(w) = winner {
            kept.push(all[w]);
        }
        i = j;
    }
    dropped += (before - kept.len()) as u64;
    let mut all = kept;
    all.sort_unstable_by_key(|f| f.generation);
    Ok(Found {
        blocks: all,
        dropped,
        max_generation,
    })
}
