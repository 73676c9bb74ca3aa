//! A manager's hold on its disk tier over time: opened at start, opened later if it
//! could not be then (a scheduler that started before the engine that owns the
//! file), and taken over when the owning process dies.
//!
//! Core type: [`DiskHandle`]. [`DiskHandle::get`] is the one way to the tier: a
//! read-locked clone on the fast path; at most once a second it also
//! 1. retries opening a tier that is configured but not open, and
//! 2. for a manager that may own the file (not a disk reader), checks whether a
//!    process that only reads still has an owner (the owner's `flock` is free
//!    once it dies) and, if not, reopens the tier as its owner (recovering the
//!    index from the file and publishing a new directory; readers re-map it).

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use super::{DiskError, DiskSettings, DiskTier};

/// How often a missing tier is retried and a reader checks for a dead owner.
const RETRY: Duration = Duration::from_secs(1);

/// The disk tier of one manager, reopened when it should be.
pub struct DiskHandle {
    cfg: DiskSettings,
    block_bytes: u64,
    dispatch: tracing::Dispatch,
    reader_only: bool,
    current: RwLock<Option<Arc<DiskTier>>>,
    error: Mutex<Option<String>>,
    last_try: Mutex<Instant>,
}

impl DiskHandle {
    /// Opens the tier `cfg` configures (a failure is kept as the reason and
    /// retried later).
    pub fn open(cfg: &DiskSettings, block_bytes: u64, dispatch: &tracing::Dispatch, reader_only: bool) -> Self {
        let (current, error) = match DiskTier::open(cfg, block_bytes, dispatch, reader_only) {
            Ok(d) => (Some(d), None),
            Err(e) => {
                tracing::error!(error = %e, "disk tier unavailable; running on the host tier only (retried once a second)");
                (None, Some(e.to_string()))
            }
        };
        Self {
            cfg: cfg.clone(),
            block_bytes,
            dispatch: dispatch.clone(),
            reader_only,
            current: RwLock::new(current),
            error: Mutex::new(error),
            last_try: Mutex::new(Instant::now()),
        }
    }

    /// The tier, if open (retrying or taking over first when it is time to).
    pub fn get(&self) -> Option<Arc<DiskTier>> {
        let now = self.current.read().clone();
        let Some(mut last) = self.last_try.try_lock() else {
            return now;
        };
        if last.elapsed() < RETRY {
            return now;
        }
        *last = Instant::now();
        drop(last);
        match &now {
            None => self.reopen("opened"),
            Some(d) if !d.is_owner() && !self.reader_only && d.owner_gone() => self.reopen("taken over"),
            _ => now,
        }
    }

    fn reopen(&self, what: &str) -> Option<Arc<DiskTier>> {
        match DiskTier::open(&self.cfg, self.block_bytes, &self.dispatch, self.reader_only) {
            Ok(d) => {
                tracing::info!(owner = d.is_owner(), "disk tier {what}");
                *self.error.lock() = None;
                *self.current.write() = Some(Arc::clone(&d));
                Some(d)
            }
            Err(DiskError { why, .. }) => {
                *self.error.lock() = Some(why);
                self.current.read().clone()
            }
        }
    }

    /// The tier as it is now, without retrying (cheap; for gauges).
    pub fn peek(&self) -> Option<Arc<DiskTier>> {
        self.current.read().clone()
    }

    /// Why the tier is not serving, if it is not: it failed to open, or went down.
    pub fn problem(&self) -> Option<String> {
        match self.peek() {
            Some(d) => d.down_reason(),
            None => self.error.lock().clone(),
        }
    }
}
