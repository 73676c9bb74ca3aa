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

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use super::{DiskError, DiskRead, DiskSettings, DiskTier};
use crate::events::EventLog;
use crate::metrics::Report;
use crate::prefix::BlockHash;
use crate::tier::{BlockCtx, LoadOutcome, StoreOutcome, Tier, TierError, TierId, TierStatus};

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
    events: Arc<EventLog>,
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
            events: Arc::new(EventLog::new()),
        }
    }

    /// Records the tier's KV events in `log` (the tier open now and any opened
    /// later).
    pub fn with_events(mut self, log: Arc<EventLog>) -> Self {
        if let Some(d) = self.current.get_mut() {
            d.attach_events(&log);
        }
        self.events = log;
        self
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
                d.attach_events(&self.events);
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

/// The disk tier as movement sees it: every call goes to the tier open now (opened
/// late or taken over first when it is time to); while none is open it answers
/// misses and `NoSpace`, and reports itself down.
impl Tier for DiskHandle {
    fn id(&self) -> TierId {
        TierId::Disk
    }

    fn lookup_run(&self, hashes: &[BlockHash]) -> Result<usize, TierError> {
        Ok(self.get().map_or(0, |d| d.lookup_run(hashes)))
    }

    fn holds(&self, hash: BlockHash) -> bool {
        self.get().is_some_and(|d| d.holds(hash))
    }

    fn record_hits(&self, blocks: u64) {
        if let Some(d) = self.get() {
            d.stats().hit_blocks.fetch_add(blocks, Ordering::Relaxed);
        }
    }

    fn writable(&self) -> bool {
        self.get().is_some_and(|d| d.is_owner() && d.is_up())
    }

    fn begin_request(&self) {
        if let Some(d) = self.get() {
            d.begin_request();
        }
    }

    fn store(&self, hash: BlockHash, ctx: BlockCtx, segs: &[&[u8]]) -> Result<StoreOutcome, TierError> {
        Ok(self
            .get()
            .map_or(StoreOutcome::NoSpace, |d| d.store_ctx(hash, ctx, segs)))
    }

    fn load_into(
        &self,
        hashes: &[BlockHash],
        namespace: u64,
        dsts: &mut [Vec<&mut [u8]>],
        outcomes: &mut [LoadOutcome],
    ) -> Result<(), TierError> {
        let Some(d) = self.get() else {
            outcomes.fill(LoadOutcome::Miss);
            return Ok(());
        };
        let reads = d.load_batch_into(hashes, namespace, dsts);
        for (r, o) in reads.into_iter().zip(outcomes.iter_mut()) {
            *o = match r {
                DiskRead::Delivered => LoadOutcome::Loaded,
                // Not asked of `load_batch_into`; verified all the same.
                DiskRead::Loaded(buf) => {
                    d.recycle(buf);
                    LoadOutcome::Miss
                }
                DiskRead::Miss => LoadOutcome::Miss,
                DiskRead::Corrupt => LoadOutcome::Corrupt,
                DiskRead::Failed => LoadOutcome::IoError,
            };
        }
        Ok(())
    }

    fn remove(&self, hash: BlockHash) -> Result<bool, TierError> {
        Ok(self.get().is_some_and(|d| d.remove(hash)))
    }

    fn wait_idle(&self, timeout: Duration) -> bool {
        self.get().is_none_or(|d| d.wait_idle(timeout))
    }

    fn status(&self) -> TierStatus {
        let mut st = TierStatus {
            problem: self.problem(),
            ..TierStatus::default()
        };
        let Some(d) = self.get() else { return st };
        let g = d.geometry();
        let s = d.stats();
        st.up = d.is_up();
        st.writable = d.is_owner() && st.up;
        st.direct_io = d.direct_io();
        st.blocks = d.block_count();
        st.capacity_blocks = g.n_slots;
        st.capacity_bytes = g.file_len;
        st.recovered_blocks = s.recovered_blocks.load(Ordering::Relaxed);
        st.recovery_dropped = s.recovery_dropped.load(Ordering::Relaxed);
        st.pending_writes = d.queue_depths().1 as u64;
        if d.is_owner() {
            let c = d.census();
            st.writing_blocks = c.writing;
            st.free_blocks = c.free;
            st.consistent = c.consistent();
        } else {
            st.consistent = true;
        }
        st
    }

    fn report(&self, r: &mut Report) {
        super::report(self.peek().as_deref(), r);
    }
}
