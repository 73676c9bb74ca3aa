//! Block movement between tiers: the one module that knows more than one tier.
//! Placement of new blocks, write-behind to the lower tiers through their
//! admission, lookups across tiers, and onboarding a lower-tier hit into the host
//! tier on its way to the engine.
//!
//! Core types: [`Movement`] (the host tier, then the lower tiers in speed order,
//! each a [`Tier`] with its [`Admission`]), [`Run`] (a lookup's answer) and
//! [`AdmitMode`].
//!
//! ```text
//!   engine (G1) ──store──► host (G2) ──offer: admission──► disk (G3) ──► remote (G4)...
//!   engine (G1) ◄──load─── host (G2) ◄──onboard─────────── first lower tier that has it
//! ```
//!
//! Workflow of a store (one engine call, [`Movement::store`]):
//! 1. Every tier starts a new chain ([`Tier::begin_request`]).
//! 2. Per block: when the scheduler places new blocks on disk (host memory is
//!    short) and the first lower tier takes stores, the block goes there directly
//!    (admission first). Otherwise it is copied to the host tier (through its
//!    admission) and offered to every lower tier, also when the host tier refused
//!    it or had no room.
//! 3. An offer counts a use for admission, skips a tier that holds the block or
//!    cannot store now, and stores it when admission says yes (the tier's store may
//!    be write-behind: it never waits for the device).
//!
//! Workflow of a load ([`Movement::load`], a loader thread):
//! 1. Per block, the host tier copies it into its engine block and verifies it; a
//!    host hit is a use (offered to the lower tiers, as a store is).
//! 2. Host misses go to the lower tiers in order, in one batch per tier; each block
//!    a tier loads is stored into the host tier (onboarding) from the engine block
//!    it was loaded into; a miss goes on to the next tier.
//!
//! Adding a tier is implementing [`Tier`] and handing it to
//! [`Movement::with_lower`]; nothing here names a particular lower tier.

mod admission;
#[cfg(test)]
mod tests;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

pub use admission::{Admission, AdmitMode, UNSIZED};

use crate::events::EventLog;
use crate::hw::{HwState, Placement};
use crate::metrics::Report;
use crate::prefix::BlockHash;
use crate::tier::layout::EngineLayout;
use crate::tier::{BlockCtx, HostTier, LoadOutcome, StoreOutcome, Tier, TierError, TierId, TierStatus};

/// A lower tier with its admission (created when the tier first takes stores, so
/// that it is sized for the tier's capacity).
struct Lower {
    tier: Box<dyn Tier>,
    mode: AdmitMode,
    admission: OnceLock<Admission>,
}

impl Lower {
    fn admission(&self) -> Option<&Admission> {
        if let Some(a) = self.admission.get() {
            return Some(a);
        }
        if !self.tier.writable() {
            return None;
        }
        Some(
            self.admission
                .get_or_init(|| Admission::new(self.mode, self.tier.status().capacity_blocks)),
        )
    }

    /// A use of `hash` (a store or a hit in a faster tier), for admission.
    fn observe(&self, hash: BlockHash) {
        if let Some(a) = self.admission() {
            a.observe(hash.fold64());
        }
    }

    /// Stores `hash` here if it is not here yet and admission says yes. Returns
    /// whether the block is here or on its way.
    fn offer(&self, hash: BlockHash, ctx: BlockCtx, segs: &[&[u8]]) -> Result<bool, TierError> {
        if !self.tier.writable() {
            return Ok(false);
        }
        if self.tier.holds(hash) {
            return Ok(true);
        }
        let Some(a) = self.admission() else { return Ok(false) };
        if !a.admit(hash.fold64()) {
            return Ok(false);
        }
        Ok(matches!(
            self.tier.store(hash, ctx, segs)?,
            StoreOutcome::Stored | StoreOutcome::AlreadyPresent
        ))
    }
}

/// The answer of [`Movement::lookup`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// Where the run of held blocks ends.
    pub end: usize,
    /// A lower tier is still finding out about block `end`: ask again later.
    pub pending: bool,
}

/// The tiers below the engine and the moves between them.
pub struct Movement {
    host: Arc<HostTier>,
    lower: Vec<Lower>,
    hw: Arc<HwState>,
    namespace: u64,
    events: Arc<EventLog>,
}

impl Movement {
    /// Movement over the host tier alone; `hw` decides placement, `namespace` is
    /// the digest written with every block in a lower tier.
    pub fn new(host: Arc<HostTier>, hw: Arc<HwState>, namespace: u64) -> Self {
        Self {
            host,
            lower: Vec::new(),
            hw,
            namespace,
            events: Arc::new(EventLog::new()),
        }
    }

    /// Names blocks from `log` (the engine's keys, for KV events) in every store.
    pub fn with_events(mut self, log: Arc<EventLog>) -> Self {
        self.events = log;
        self
    }

    /// Adds a lower tier below the ones already there (slower than them).
    pub fn with_lower(mut self, tier: Box<dyn Tier>, mode: AdmitMode) -> Self {
        self.lower.push(Lower {
            tier,
            mode,
            admission: OnceLock::new(),
        });
        self
    }

    /// The host tier (its own calls: semantic loads, counters).
    pub fn host(&self) -> &HostTier {
        &self.host
    }

    /// The lower tier `id`, if configured.
    pub fn lower(&self, id: TierId) -> Option<&dyn Tier> {
        self.lower.iter().find(|l| l.tier.id() == id).map(|l| &*l.tier)
    }

    /// Whether the first lower tier takes stores now (the scheduler may place new
    /// blocks there).
    pub fn can_place_lower(&self) -> bool {
        self.lower.first().is_some_and(|l| l.tier.writable())
    }

    /// Fills `tiers[start..]` with the tier of each leading block of
    /// `hashes[start..]` held below the engine, and returns where the run ends
    /// and whether a lower tier is still finding out about the block there
    /// ([`Tier::pending`]: ask again later). A block in several tiers is reported
    /// in the fastest. With `count` (and nothing pending), records the hits of
    /// each tier and the misses (`hashes.len()` minus the run).
    pub fn lookup(
        &self,
        hashes: &[BlockHash],
        tiers: &mut [TierId],
        start: usize,
        count: bool,
    ) -> Result<Run, TierError> {
        let mut n = start;
        let mut host_hits = 0usize;
        let mut lower_hits = vec![0usize; self.lower.len()];
        'runs: loop {
            let h = self.host.lookup_run(&hashes[n..])?;
            mark(tiers, n, h, TierId::Host);
            n += h;
            host_hits += h;
            if n == hashes.len() {
                break;
            }
            for (j, l) in self.lower.iter().enumerate() {
                // This tier's run ends where a faster tier takes over again.
                let run = l.tier.lookup_run(&hashes[n..])?;
                let mut k = 0;
                while k < run && !self.faster_holds(j, hashes[n + k])? {
                    k += 1;
                }
                if k > 0 {
                    mark(tiers, n, k, l.tier.id());
                    n += k;
                    lower_hits[j] += k;
                    continue 'runs;
                }
            }
            break;
        }
        let pending = n < hashes.len() && self.lower.iter().any(|l| l.tier.pending(hashes[n]));
        if count && !pending {
            self.host.record_lookup(host_hits as u64, (hashes.len() - n) as u64);
            for (l, &k) in self.lower.iter().zip(&lower_hits).filter(|(_, &k)| k > 0) {
                l.tier.record_hits(k as u64);
            }
        }
        Ok(Run { end: n, pending })
    }

    /// Whether the host tier or a lower tier before `j` holds `hash`.
    fn faster_holds(&self, j: usize, hash: BlockHash) -> Result<bool, TierError> {
        if self.host.lookup_run(&[hash])? == 1 {
            return Ok(true);
        }
        for l in &self.lower[..j] {
            if l.tier.lookup_run(&[hash])? == 1 {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Copies engine blocks `block_ids[i]` of `layout` out under `hashes[i]` (see
    /// the module's store workflow), writing `outcomes[i]`. Blocks are checked by
    /// the caller (in range, equal lengths).
    ///
    /// # Safety
    /// `layout`'s memory must be valid for reads for the duration of the call, and
    /// not be written concurrently in the ranges of these blocks.
    pub unsafe fn store(
        &self,
        layout: &EngineLayout,
        hashes: &[BlockHash],
        block_ids: &[u64],
        outcomes: &mut [StoreOutcome],
    ) -> Result<(), TierError> {
        self.begin_request();
        let direct = self.hw.placement() == Placement::Disk && self.can_place_lower();
        let mut segs: Vec<&[u8]> = Vec::with_capacity(layout.regions().len());
        for (i, (&h, &b)) in hashes.iter().zip(block_ids).enumerate() {
            segs.clear();
            segs.extend(layout.ranges(b).map(|(p, n)| {
                // SAFETY: the layout is validated (in range, no overflow) and the
                // caller guarantees the memory is readable and not being written.
                unsafe { std::slice::from_raw_parts(p as *const u8, n) }
            }));
            let ctx = self.ctx(i, hashes.len(), h);
            let o = if direct {
                // Host memory is short (the scheduler says so): straight down.
                let first = &self.lower[0];
                first.observe(h);
                if first.offer(h, ctx, &segs)? {
                    StoreOutcome::Stored
                } else {
                    StoreOutcome::NoSpace
                }
            } else {
                let o = Tier::store(&*self.host, h, ctx, &segs)?;
                // A block the host tier refused (its admission, or no room) is
                // offered too: the lower tiers' admission decides for them.
                if !matches!(o, StoreOutcome::Deferred) {
                    self.offer_down(h, ctx, &segs)?;
                }
                o
            };
            if let Some(slot) = outcomes.get_mut(i) {
                *slot = o;
            }
        }
        Ok(())
    }

    /// A use of a block the host tier holds: counted by every lower tier's
    /// admission and offered to each.
    fn offer_down(&self, hash: BlockHash, ctx: BlockCtx, segs: &[&[u8]]) -> Result<(), TierError> {
        for l in &self.lower {
            l.observe(hash);
            l.offer(hash, ctx, segs)?;
        }
        Ok(())
    }

    /// Every tier starts a new chain (one engine call), for its eviction policy.
    fn begin_request(&self) {
        Tier::begin_request(&*self.host);
        self.lower.iter().for_each(|l| l.tier.begin_request());
    }

    /// The context of block `i` of a call of `n` blocks, `hash`: its position
    /// (and whether it ends the chain) and the engine's name for it.
    fn ctx(&self, i: usize, n: usize, hash: BlockHash) -> BlockCtx {
        let (key, parent) = self.events.key_of(hash);
        BlockCtx {
            namespace: self.namespace,
            depth: i as u32,
            last: i + 1 == n,
            key,
            parent,
        }
    }

    /// Copies blocks `hashes[i]` into engine blocks `block_ids[i]` of `layout`,
    /// verifying each (see the module's load workflow), writing `outcomes[i]`.
    /// Blocks are checked by the caller (in range, distinct, equal lengths).
    ///
    /// # Safety
    /// `layout`'s memory must be valid for writes for the duration of the call, and
    /// nothing else may access these blocks' ranges meanwhile.
    pub unsafe fn load(
        &self,
        layout: &EngineLayout,
        hashes: &[BlockHash],
        block_ids: &[u64],
        outcomes: &mut [LoadOutcome],
    ) -> Result<(), TierError> {
        self.begin_request();
        let mut missed = Vec::new();
        let mut segs: Vec<&mut [u8]> = Vec::with_capacity(layout.regions().len());
        for (i, (&h, &b)) in hashes.iter().zip(block_ids).enumerate() {
            segs.clear();
            // SAFETY: the caller's contract, for this block alone (the previous
            // block's slices were cleared).
            segs.extend(unsafe { block_mut(layout, b) });
            let o = self.host.load_at(h, &mut segs, i, hashes.len())?;
            if let Some(slot) = outcomes.get_mut(i) {
                *slot = o;
            }
            if self.lower.is_empty() {
                continue;
            }
            match o {
                // A reuse: counts for admission, and may now go down.
                LoadOutcome::Loaded => {
                    let view: Vec<&[u8]> = segs.iter().map(|s| &**s).collect();
                    self.offer_down(h, self.ctx(i, hashes.len(), h), &view)?;
                }
                LoadOutcome::Miss => missed.push(i),
                _ => {}
            }
        }
        drop(segs);
        for l in &self.lower {
            if missed.is_empty() {
                break;
            }
            // SAFETY: the caller's contract; the host loop's slices are gone and
            // the blocks of `missed` are distinct (checked by the caller).
            missed = unsafe { self.load_from(&*l.tier, layout, hashes, block_ids, &missed, outcomes) }?;
        }
        Ok(())
    }

    /// Loads blocks `which` from `tier` into their engine blocks, onboarding each
    /// into the host tier; returns the ones `tier` did not have.
    ///
    /// # Safety
    /// As [`Movement::load`].
    unsafe fn load_from(
        &self,
        tier: &dyn Tier,
        layout: &EngineLayout,
        hashes: &[BlockHash],
        block_ids: &[u64],
        which: &[usize],
        outcomes: &mut [LoadOutcome],
    ) -> Result<Vec<usize>, TierError> {
        let want: Vec<BlockHash> = which.iter().map(|&i| hashes[i]).collect();
        // SAFETY: the caller's contract; one destination per distinct block.
        let mut dsts: Vec<Vec<&mut [u8]>> = which
            .iter()
            .map(|&i| unsafe { block_mut(layout, block_ids[i]) }.collect())
            .collect();
        let mut got = vec![LoadOutcome::Miss; which.len()];
        tier.load_into(&want, self.namespace, &mut dsts, &mut got)?;
        let mut still = Vec::new();
        for ((&i, dst), o) in which.iter().zip(&dsts).zip(got) {
            match o {
                LoadOutcome::Loaded => {
                    let view: Vec<&[u8]> = dst.iter().map(|s| &**s).collect();
                    Tier::store(&*self.host, hashes[i], self.ctx(i, hashes.len(), hashes[i]), &view)?;
                }
                LoadOutcome::Miss => still.push(i),
                _ => {}
            }
            if let Some(slot) = outcomes.get_mut(i) {
                *slot = o;
            }
        }
        Ok(still)
    }

    /// Copies whole blocks `hashes[i]` (their regions concatenated, the tiers'
    /// payload) into `bufs[i]`, from the host tier or else the first lower tier
    /// that has them (onboarded into the host tier), each verified; writes
    /// `outcomes[i]`. A host copy that fails verification is dropped and the
    /// block sought below. A read for the library's own use (PQ gathers): no
    /// admission use is counted.
    pub fn fetch(
        &self,
        hashes: &[BlockHash],
        bufs: &mut [Vec<u8>],
        outcomes: &mut [LoadOutcome],
    ) -> Result<(), TierError> {
        self.begin_request();
        let mut missed = Vec::new();
        for (i, (&h, buf)) in hashes.iter().zip(bufs.iter_mut()).enumerate() {
            outcomes[i] = self.host.load(h, &mut [&mut buf[..]])?;
            // A corrupt host copy was dropped: a lower tier may hold a good one.
            if matches!(outcomes[i], LoadOutcome::Miss | LoadOutcome::Corrupt) {
                missed.push(i);
            }
        }
        for l in &self.lower {
            if missed.is_empty() {
                break;
            }
            let want: Vec<BlockHash> = missed.iter().map(|&i| hashes[i]).collect();
            let mut got = vec![LoadOutcome::Miss; missed.len()];
            {
                // `missed` is ascending: the buffers it names, in its order.
                let mut dsts: Vec<Vec<&mut [u8]>> = bufs
                    .iter_mut()
                    .enumerate()
                    .filter(|(i, _)| missed.binary_search(i).is_ok())
                    .map(|(_, b)| vec![&mut b[..]])
                    .collect();
                l.tier.load_into(&want, self.namespace, &mut dsts, &mut got)?;
            }
            let mut still = Vec::new();
            for (&i, o) in missed.iter().zip(got) {
                outcomes[i] = o;
                match o {
                    LoadOutcome::Loaded => {
                        let ctx = self.ctx(i, hashes.len(), hashes[i]);
                        Tier::store(&*self.host, hashes[i], ctx, &[&bufs[i][..]])?;
                    }
                    LoadOutcome::Miss => still.push(i),
                    _ => {}
                }
            }
            missed = still;
        }
        Ok(())
    }

    /// A status snapshot of tier `id` (host or a configured lower tier).
    pub fn status(&self, id: TierId) -> Option<TierStatus> {
        match id {
            TierId::Host => Some(Tier::status(&*self.host)),
            _ => self.lower(id).map(Tier::status),
        }
    }

    /// Waits until every lower tier has written what it accepted, up to `timeout`
    /// in all; whether they all got there.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        self.lower
            .iter()
            .all(|l| l.tier.wait_idle(end.saturating_duration_since(Instant::now())))
    }

    /// Adds the host tier's series to `r`.
    pub fn report_host(&self, r: &mut Report) {
        self.host.report(r);
    }

    /// Adds every lower tier's series, with its admission decisions, to `r`.
    pub fn report_lower(&self, r: &mut Report) {
        for l in &self.lower {
            l.tier.report(r);
            let (admitted, rejected) = l.admission.get().map_or((0, 0), Admission::decisions);
            if l.tier.id() == TierId::Disk {
                r.counter(
                    "tierkv_disk_admission_total",
                    "Disk admission decisions.",
                    &[("decision=\"admit\"", admitted), ("decision=\"reject\"", rejected)],
                );
                continue;
            }
            let tier = l.tier.id().label();
            let (yes, no) = (
                format!("tier=\"{tier}\",decision=\"admit\""),
                format!("tier=\"{tier}\",decision=\"reject\""),
            );
            r.counter(
                "tierkv_admission_total",
                "Admission decisions of a lower tier (the disk tier's: tierkv_disk_admission_total).",
                &[(&yes, admitted), (&no, rejected)],
            );
        }
    }
}

/// Marks `tiers[at..at + n]` (as far as `tiers` reaches) as `id`.
fn mark(tiers: &mut [TierId], at: usize, n: usize, id: TierId) {
    for t in tiers.iter_mut().skip(at).take(n) {
        *t = id;
    }
}

/// The segments of engine block `b` in `layout`, writable. They borrow engine
/// memory, not `layout`: the caller chooses their lifetime `'m`.
///
/// # Safety
/// `layout`'s memory must be valid for writes for `'m`, and nothing else may
/// access this block's ranges while the slices live (regions of one block never
/// overlap: they are separate tensors).
unsafe fn block_mut<'m, 'l>(layout: &'l EngineLayout, b: u64) -> impl Iterator<Item = &'m mut [u8]> + 'l {
    layout.ranges(b).map(|(p, n)| {
        // SAFETY: the layout is validated (in range, no overflow); exclusive
        // access is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(p as *mut u8, n) }
    })
}
