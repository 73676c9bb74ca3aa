//! Opening the files a store shares between processes (host arena, disk file, disk
//! directory) so that only their owner can ever be joined.
//!
//! Core types: [`Sharing`] (who may share: the effective uid alone, or a group named
//! by `TIERKV_SHARE_GROUP`), [`SharedFileError`] (names the file, its owner and
//! mode, and the fix), [`open`].
//!
//! Workflow of [`open`]:
//! 1. `open(O_NOFOLLOW)` the existing file: a symlink is refused (`ELOOP`), never
//!    followed, so a planted link cannot make us truncate or map its target.
//! 2. Absent and `create`: `open(O_CREAT | O_EXCL | O_NOFOLLOW)` with mode 0600
//!    (0660 and the share group with [`Sharing::group`]); losing the creation race
//!    to another process falls back to step 1.
//! 3. `fstat` the descriptor (not the path: no check-then-use race): a regular
//!    file, and either owned by the effective uid with no group or other bits, or,
//!    when a share group is allowed, of that group with no other bits.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Who may share a store's files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sharing {
    /// A group whose members may join (`TIERKV_SHARE_GROUP`); `None`: the owner only.
    pub group: Option<u32>,
}

impl Sharing {
    /// The creation mode: 0600, or 0660 when a group may share.
    pub fn mode(&self) -> u32 {
        if self.group.is_some() {
            0o660
        } else {
            0o600
        }
    }
}

/// Why a shared file was refused or could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SharedFileError {
    /// The path is a symbolic link.
    #[error("{0} is a symbolic link; tierkv never follows links for its shared files. Remove it, or point TIERKV_SHM_DIR / TIERKV_DISK_PATH / TIERKV_STORE_NAME elsewhere")]
    Symlink(PathBuf),
    /// The file belongs to someone else or is open to others.
    #[error("{path} is owned by uid {uid} (gid {gid}) with mode {mode:04o}; tierkv only joins files owned by this process's uid {euid} with no group or other permissions{group_hint}. Remove the file, use another TIERKV_STORE_NAME, or allow a group with TIERKV_SHARE_GROUP")]
    Untrusted {
        /// The file.
        path: PathBuf,
        /// Its owner.
        uid: u32,
        /// Its group.
        gid: u32,
        /// Its permission bits.
        mode: u32,
        /// Our effective uid.
        euid: u32,
        /// What a share group would allow, when one is set.
        group_hint: String,
    },
    /// Not a regular file.
    #[error("{0} is not a regular file")]
    NotRegular(PathBuf),
    /// An OS call failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was attempted.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

impl SharedFileError {
    fn io(what: &'static str, path: &Path, source: io::Error) -> Self {
        Self::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// An opened shared file, and whether this call created it.
pub struct Opened {
    /// The descriptor (read-write, close-on-exec).
    pub fd: OwnedFd,
    /// True when this call created the file (it is empty).
    pub created: bool,
}

/// Opens `path` read-write with `extra_flags` (e.g. `O_DIRECT`), creating it when
/// absent and `create`; refuses links and files others own or may write.
pub fn open(path: &Path, create: bool, extra_flags: i32, sharing: Sharing) -> Result<Opened, SharedFileError> {
    let cpath = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| SharedFileError::io("open", path, io::Error::from(io::ErrorKind::InvalidInput)))?;
    let base = libc::O_RDWR | libc::O_NOFOLLOW | libc::O_CLOEXEC | extra_flags;
    for _ in 0..8 {
        match raw_open(&cpath, base, 0) {
            Ok(fd) => {
                check(&fd, path, sharing)?;
                return Ok(Opened { fd, created: false });
            }
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(SharedFileError::Symlink(path.into())),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) && create => {}
            Err(e) => return Err(SharedFileError::io("open", path, e)),
        }
        match raw_open(&cpath, base | libc::O_CREAT | libc::O_EXCL, sharing.mode()) {
            Ok(fd) => {
                set_owner_mode(&fd, path, sharing)?;
                check(&fd, path, sharing)?;
                return Ok(Opened { fd, created: true });
            }
            // Someone else created it (or planted a link) since: look again.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
            Err(e) => return Err(SharedFileError::io("create", path, e)),
        }
    }
    Err(SharedFileError::io(
        "open",
        path,
        io::Error::other("the file keeps appearing and disappearing"),
    ))
}

fn raw_open(cpath: &CString, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    // SAFETY: cpath is a valid NUL-terminated string; open has no other preconditions.
    let raw = unsafe { libc::open(cpath.as_ptr(), flags, mode as libc::c_uint) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: raw is a freshly opened descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn set_owner_mode(fd: &OwnedFd, path: &Path, sharing: Sharing) -> Result<(), SharedFileError> {
    if let Some(gid) = sharing.group {
        // SAFETY: fchown on our own descriptor; -1 keeps the owner.
        if unsafe { libc::fchown(fd.as_raw_fd(), u32::MAX, gid) } != 0 {
            return Err(SharedFileError::io(
                "chown to TIERKV_SHARE_GROUP",
                path,
                io::Error::last_os_error(),
            ));
        }
    }
    // The umask may have cleared bits of the creation mode: set it exactly.
    // SAFETY: fchmod on our own descriptor.
    if unsafe { libc::fchmod(fd.as_raw_fd(), sharing.mode()) } != 0 {
        return Err(SharedFileError::io("chmod", path, io::Error::last_os_error()));
    }
    Ok(())
}

fn check(fd: &OwnedFd, path: &Path, sharing: Sharing) -> Result<(), SharedFileError> {
    // SAFETY: fstat writes into a zeroed stat struct we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd is valid and st is a valid out-pointer.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(SharedFileError::io("fstat", path, io::Error::last_os_error()));
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(SharedFileError::NotRegular(path.into()));
    }
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let perm = st.st_mode & 0o7777;
    let owner_only = st.st_uid == euid && perm & 0o077 == 0;
    let group_ok = sharing
        .group
        .is_some_and(|g| st.st_gid == g && perm & 0o007 == 0 && (st.st_uid == euid || in_group(g)));
    if owner_only || group_ok {
        return Ok(());
    }
    Err(SharedFileError::Untrusted {
        path: path.into(),
        uid: st.st_uid,
        gid: st.st_gid,
        mode: perm,
        euid,
        group_hint: sharing
            .group
            .map(|g| format!(" (or of group {g} with no other permissions)"))
            .unwrap_or_default(),
    })
}

/// Whether this process is a member of group `gid`.
fn in_group(gid: u32) -> bool {
    // SAFETY: getegid has no preconditions.
    if unsafe { libc::getegid() } == gid {
        return true;
    }
    let mut groups = vec![0 as libc::gid_t; 256];
    // SAFETY: the buffer holds groups.len() entries.
    let n = unsafe { libc::getgroups(groups.len() as libc::c_int, groups.as_mut_ptr()) };
    n > 0 && groups[..n as usize].contains(&gid)
}

/// Resolves `TIERKV_SHARE_GROUP`: a group name or a numeric gid.
pub fn resolve_group(name: &str) -> Option<u32> {
    if let Ok(gid) = name.parse::<u32>() {
        return Some(gid);
    }
    let cname = CString::new(name).ok()?;
    // SAFETY: libc::group is plain old data (pointers and integers); all-zero is
    // valid, and getgrnam_r fills it.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; buf outlives the use of grp.
    let rc = unsafe { libc::getgrnam_r(cname.as_ptr(), &mut grp, buf.as_mut_ptr(), buf.len(), &mut out) };
    (rc == 0 && !out.is_null()).then_some(grp.gr_gid)
}

#[cfg(test)]
mod tests;
