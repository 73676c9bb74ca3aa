//! The engine block pool through the facade: every operation takes the pool lock
//! for itself alone (nothing else runs under it) and fails with `State` when the
//! manager was created without a pool.

use std::sync::atomic::Ordering;

use super::{Manager, ManagerError};
use crate::block::{BlockId, BlockPool, CowOutcome, PoolError, PoolStats};
use crate::metrics::Report;
use crate::prefix::BlockHash;
pub use crate::tier::arena::stats::POOL_DISAGREEMENTS as POOL_DISAGREEMENT_KINDS;

impl Manager {
    fn with_pool<R>(&self, f: impl FnOnce(&mut BlockPool) -> Result<R, PoolError>) -> Result<R, ManagerError> {
        let pool = self.pool.as_ref().ok_or(ManagerError::State(
            "this manager has no engine block pool (create it with pool_blocks > 0)",
        ))?;
        Ok(f(&mut pool.lock())?)
    }

    /// Allocates `n` blocks, all or nothing, appending their ids to `out`
    /// (`Pool(Insufficient)` changes nothing).
    pub fn pool_allocate(&self, n: usize, out: &mut Vec<BlockId>) -> Result<(), ManagerError> {
        self.with_pool(|p| p.allocate(n, out).map_err(PoolError::from))
    }

    /// Releases one reference to each of `ids` (a request's blocks, last first).
    pub fn pool_free(&self, ids: &[BlockId]) -> Result<(), ManagerError> {
        self.with_pool(|p| p.free(ids))
    }

    /// Adds one reference to each of `ids` (a forked sequence).
    pub fn pool_fork(&self, ids: &[BlockId]) -> Result<(), ManagerError> {
        self.with_pool(|p| p.fork(ids))
    }

    /// References exactly the blocks `ids` (a prefix hit on blocks found with
    /// [`Manager::pool_find`]); free ones leave the free list.
    pub fn pool_touch(&self, ids: &[BlockId]) -> Result<(), ManagerError> {
        self.with_pool(|p| p.touch(ids))
    }

    /// Prepares block `id` for writing (copy-on-write when shared).
    pub fn pool_copy_on_write(&self, id: BlockId) -> Result<CowOutcome, ManagerError> {
        self.with_pool(|p| p.copy_on_write(id))
    }

    /// Records that held block `id` holds `hash`; whether it is now findable.
    pub fn pool_register(&self, id: BlockId, hash: BlockHash) -> Result<bool, ManagerError> {
        self.with_pool(|p| p.register(id, hash))
    }

    /// [`Manager::pool_register`] for many blocks under one lock: `ids[i]` holds
    /// `hashes[i]`; appends whether each is the block found to `out`, stopping at
    /// the first error (the blocks before it stay registered).
    pub fn pool_register_many(
        &self,
        ids: &[BlockId],
        hashes: &[BlockHash],
        out: &mut Vec<bool>,
    ) -> Result<(), ManagerError> {
        if ids.len() != hashes.len() {
            return Err(ManagerError::InvalidArgument("ids and hashes differ in length".into()));
        }
        self.with_pool(|p| p.register_many(ids, hashes, out))
    }

    /// References the blocks of the longest leading run of `hashes` the pool holds,
    /// appending their ids to `out`; returns the run's length.
    pub fn pool_acquire_cached(&self, hashes: &[BlockHash], out: &mut Vec<BlockId>) -> Result<usize, ManagerError> {
        self.with_pool(|p| Ok(p.acquire_cached(hashes, out)))
    }
}

/// The engine pool's state as a status call sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolState {
    /// Slots.
    pub num_blocks: u64,
    /// Free slots (cached ones included).
    pub free: u64,
    /// Slots holding an identity (in use or free).
    pub cached: u64,
    /// Counters since creation.
    pub stats: PoolStats,
}

impl Manager {
    /// The block found for each of `hashes` (`None`: not held), changing nothing.
    pub fn pool_find(&self, hashes: &[BlockHash], out: &mut Vec<Option<BlockId>>) -> Result<(), ManagerError> {
        self.with_pool(|p| {
            p.find(hashes, out);
            Ok(())
        })
    }

    /// Drops the identity each of `ids` holds (their KV is unusable); returns how
    /// many identities were dropped.
    pub fn pool_forget(&self, ids: &[BlockId]) -> Result<usize, ManagerError> {
        self.with_pool(|p| p.forget(ids))
    }

    /// Forgets every identity (the engine's weights changed); returns how many.
    pub fn pool_reset_prefix_cache(&self) -> Result<usize, ManagerError> {
        self.with_pool(|p| Ok(p.reset_prefix_cache()))
    }

    /// Sizes and counters of the pool.
    pub fn pool_state(&self) -> Result<PoolState, ManagerError> {
        self.with_pool(|p| {
            Ok(PoolState {
                num_blocks: p.num_blocks() as u64,
                free: p.num_free() as u64,
                cached: p.num_cached() as u64,
                stats: p.stats(),
            })
        })
    }

    /// Adds what a shadow of the engine's own pool compared: `ops` operations
    /// mirrored, `disagreements[k]` of each kind ([`POOL_DISAGREEMENT_KINDS`]).
    /// Store-wide counters: the exporter of any process sharing the store shows them.
    pub fn pool_shadow_record(&self, ops: u64, disagreements: &[u64]) -> Result<(), ManagerError> {
        if disagreements.len() != POOL_DISAGREEMENT_KINDS.len() {
            return Err(ManagerError::InvalidArgument(format!(
                "{} disagreement kinds, not {}",
                POOL_DISAGREEMENT_KINDS.len(),
                disagreements.len()
            )));
        }
        let c = &self.movement.host().stats().pool_shadow;
        c.ops.fetch_add(ops, Ordering::Relaxed);
        for (a, &n) in c.disagreements.iter().zip(disagreements) {
            a.fetch_add(n, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The shadow comparison's series.
    pub(super) fn report_pool_shadow(&self, r: &mut Report) {
        let c = &self.movement.host().stats().pool_shadow;
        r.counter(
            "tierkv_pool_shadow_ops_total",
            "Engine pool operations mirrored into tierkv's pool by the shadow mode (TIERKV_VLLM_POOL=shadow).",
            &[("", c.ops.load(Ordering::Relaxed))],
        );
        let labels: Vec<String> = POOL_DISAGREEMENT_KINDS
            .iter()
            .map(|k| format!("kind=\"{k}\""))
            .collect();
        let series: Vec<(&str, u64)> = labels
            .iter()
            .zip(&c.disagreements)
            .map(|(l, a)| (l.as_str(), a.load(Ordering::Relaxed)))
            .collect();
        r.counter(
            "tierkv_pool_shadow_disagreements_total",
            "Shadow mode: operations where tierkv's pool decided otherwise than the engine's (allocated ids, eviction victims, prefix hits, free counts).",
            &series,
        );
    }
}
