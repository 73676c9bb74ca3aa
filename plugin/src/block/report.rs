//! The engine block pool's series.

use super::{BlockPool, PoolStats};
use crate::metrics::Report;

impl BlockPool {
    /// Adds the pool's series to `r`.
    pub fn report(&self, r: &mut Report) {
        write(r, self.stats(), self.num_blocks() as u64, self.num_free() as u64);
    }

    /// The same series when the engine keeps its own pool (all zero).
    pub fn report_absent(r: &mut Report) {
        write(r, PoolStats::default(), 0, 0);
    }
}

fn write(r: &mut Report, s: PoolStats, size: u64, free: u64) {
    r.counter(
        "tierkv_block_ops_total",
        "Block operations by tier and op.",
        &[
            ("tier=\"engine\",op=\"allocate\"", s.allocated),
            ("tier=\"engine\",op=\"free\"", s.freed),
            ("tier=\"engine\",op=\"hit\"", s.hits),
            ("tier=\"engine\",op=\"evict\"", s.evictions),
        ],
    );
    r.gauge(
        "tierkv_engine_pool_used_blocks",
        "Engine pool blocks in use.",
        &[("", size - free)],
    );
    r.gauge("tierkv_engine_pool_blocks", "Engine pool size.", &[("", size)]);
}
