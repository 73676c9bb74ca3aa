//! The engine block pool through the facade: every operation takes the pool lock
//! for itself alone (nothing else runs under it) and fails with `State` when the
//! manager was created without a pool.

use super::{Manager, ManagerError};
use crate::block::{BlockId, BlockPool, CowOutcome, PoolError};
use crate::prefix::BlockHash;

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

    /// Prepares block `id` for writing (copy-on-write when shared).
    pub fn pool_copy_on_write(&self, id: BlockId) -> Result<CowOutcome, ManagerError> {
        self.with_pool(|p| p.copy_on_write(id))
    }

    /// Records that held block `id` holds `hash`; whether it is now findable.
    pub fn pool_register(&self, id: BlockId, hash: BlockHash) -> Result<bool, ManagerError> {
        self.with_pool(|p| p.register(id, hash))
    }

    /// References the blocks of the longest leading run of `hashes` the pool holds,
    /// appending their ids to `out`; returns the run's length.
    pub fn pool_acquire_cached(&self, hashes: &[BlockHash], out: &mut Vec<BlockId>) -> Result<usize, ManagerError> {
        self.with_pool(|p| Ok(p.acquire_cached(hashes, out)))
    }
}
