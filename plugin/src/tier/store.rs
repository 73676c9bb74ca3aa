//! A store's files as an operator sees them: which exist, whether a process is
//! attached, and removing them (`tierkv-admin ls` / `tierkv-admin rm`).
//!
//! A store named `NAME` is `$TIERKV_SHM_DIR/tierkv-NAME.arena` (host tier),
//! `$TIERKV_SHM_DIR/tierkv-NAME.g3dir` (the disk tier's shared directory) and, when
//! a disk path is given, `$TIERKV_DISK_PATH/tierkv-NAME.g3` (the disk tier).
//!
//! Workflow of [`remove`]: refuse while a live process holds a lease on the arena
//! (kernel locks, see [`super::arena`]) unless forced; unlink each file that is a
//! regular file owned by the caller (never following a link); report what went.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The host arena of store `name`.
pub fn arena_path(shm_dir: &Path, name: &str) -> PathBuf {
    shm_dir.join(format!("tierkv-{name}.arena"))
}

/// The disk tier's shared directory of store `name`.
pub fn directory_path(shm_dir: &Path, name: &str) -> PathBuf {
    shm_dir.join(format!("tierkv-{name}.g3dir"))
}

/// The disk tier's file of store `name`.
pub fn disk_file_path(disk_dir: &Path, name: &str) -> PathBuf {
    disk_dir.join(format!("tierkv-{name}.g3"))
}

/// The files of store `name`.
pub fn files(shm_dir: &Path, name: &str, disk_path: Option<&Path>) -> Vec<PathBuf> {
    let mut v = vec![arena_path(shm_dir, name), directory_path(shm_dir, name)];
    if let Some(d) = disk_path {
        v.push(disk_file_path(d, name));
    }
    v
}

/// One store found in a shared-memory directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreEntry {
    /// The store name.
    pub name: String,
    /// Bytes of its arena file (0 without one).
    pub arena_bytes: u64,
    /// Owner uid of the arena (or directory) file.
    pub uid: u32,
    /// Whether a live process is attached to its arena.
    pub in_use: bool,
}

/// The stores in `shm_dir`, by name.
pub fn list(shm_dir: &Path) -> std::io::Result<Vec<StoreEntry>> {
    let mut out: Vec<StoreEntry> = Vec::new();
    for e in std::fs::read_dir(shm_dir)? {
        let e = e?;
        let file = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = file.strip_prefix("tierkv-") else {
            continue;
        };
        let (name, arena) = match (rest.strip_suffix(".arena"), rest.strip_suffix(".g3dir")) {
            (Some(n), _) => (n, true),
            (_, Some(n)) => (n, false),
            _ => continue,
        };
        let meta = std::fs::symlink_metadata(e.path())?;
        let i = match out.iter().position(|s| s.name == name) {
            Some(i) => i,
            None => {
                out.push(StoreEntry {
                    name: name.to_string(),
                    arena_bytes: 0,
                    uid: meta.uid(),
                    in_use: false,
                });
                out.len() - 1
            }
        };
        if arena {
            out[i].arena_bytes = meta.len();
            out[i].uid = meta.uid();
            out[i].in_use = super::arena::in_use(&e.path()).unwrap_or(false);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Why a store was not removed.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    /// A live process is attached.
    #[error("store {0} is in use by a live process; stop its engines first (or force)")]
    InUse(String),
    /// A file is not the caller's plain file.
    #[error("{0} is not a regular file owned by this user; left in place")]
    Untrusted(PathBuf),
    /// Unlinking failed.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// Removes store `name`'s files; returns those removed (absent ones are skipped).
pub fn remove(shm_dir: &Path, name: &str, disk_path: Option<&Path>, force: bool) -> Result<Vec<PathBuf>, RemoveError> {
    let arena = arena_path(shm_dir, name);
    if !force && super::arena::in_use(&arena).unwrap_or(false) {
        return Err(RemoveError::InUse(name.to_string()));
    }
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let mut removed = Vec::new();
    for f in files(shm_dir, name, disk_path) {
        let meta = match std::fs::symlink_metadata(&f) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(RemoveError::Io(f, e)),
        };
        if !meta.file_type().is_file() || (meta.uid() != euid && euid != 0) {
            return Err(RemoveError::Untrusted(f));
        }
        std::fs::remove_file(&f).map_err(|e| RemoveError::Io(f.clone(), e))?;
        removed.push(f);
    }
    Ok(removed)
}
