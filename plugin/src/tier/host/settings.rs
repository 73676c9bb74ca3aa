//! [`HostSettings`]: what the host tier is told (built by `crate::config`).

use std::path::PathBuf;
use std::time::Duration;

use crate::tier::arena::HostEviction;

/// The host tier's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct HostSettings {
    /// Arena capacity in bytes, metadata included (`TIERKV_CPU_BYTES`).
    pub capacity: u64,
    /// Arena name (`TIERKV_STORE_NAME`).
    pub store_name: String,
    /// Arena directory (`TIERKV_SHM_DIR`).
    pub shm_dir: PathBuf,
    /// Group allowed to share the arena (`TIERKV_SHARE_GROUP`).
    pub share_group: Option<u32>,
    /// How long opening waits for another process's initialisation
    /// (`TIERKV_LOCK_TIMEOUT`).
    pub lock_timeout: Duration,
    /// Eviction policy of a store this process creates (`TIERKV_HOST_EVICTION`).
    pub eviction: HostEviction,
}
