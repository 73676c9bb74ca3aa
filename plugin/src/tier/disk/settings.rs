//! [`DiskSettings`]: what the disk tier is told (built by `crate::config` from the
//! `TIERKV_DISK_*` variables, the store name and the sharing group).

use std::path::PathBuf;

use crate::evict::PolicyKind;

/// How much a restart reads to rebuild the disk tier's index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryMode {
    /// Each block's header sector (checksummed); payloads are verified on load.
    Headers,
    /// Every block whole, verifying each payload.
    Full,
}

/// The disk tier's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DiskSettings {
    /// Directory of the tier's file (`TIERKV_DISK_PATH`).
    pub dir: PathBuf,
    /// Budget of the file in bytes, headers included (`TIERKV_DISK_BYTES`).
    pub bytes: u64,
    /// Store name: the file is `<dir>/<store_name>.tierkv` (`TIERKV_STORE_NAME`).
    pub store_name: String,
    /// Where the owner publishes its index for readers (`TIERKV_SHM_DIR`).
    pub shm_dir: PathBuf,
    /// Group allowed to share the files (`TIERKV_SHARE_GROUP`).
    pub share_group: Option<u32>,
    /// Eviction policy (`TIERKV_DISK_EVICTION`).
    pub eviction: PolicyKind,
    /// I/O threads (`TIERKV_DISK_THREADS`).
    pub threads: usize,
    /// Bound of the read and write queues (`TIERKV_DISK_QUEUE`).
    pub queue: usize,
    /// O_DIRECT when the file system allows it (`TIERKV_DISK_DIRECT`).
    pub direct: bool,
    /// Recovery depth (`TIERKV_DISK_RECOVERY`).
    pub recovery: RecoveryMode,
}
