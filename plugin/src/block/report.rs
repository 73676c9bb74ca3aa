//! The engine block pool's series.

use super::{BlockPool, PoolStats};
use crate::metrics::Report;

impl BlockPool {
    /// Adds the pool's series to `r`.
    pub fn report(&self, r: &mut Report) {
        write(r, self.stats(), self.num_blocks() as u64, self.num_free() as u64);
        policy(r, self.policy(), 1, self.policy_fallbacks(), self.policy_refusals());
    }

    /// The same series when the engine keeps its own pool (all zero).
    pub fn report_absent(r: &mut Report) {
        write(r, PoolStats::default(), 0, 0);
        policy(r, "none", 0, 0, 0);
    }
}

fn policy(r: &mut Report, name: &str, present: u64, fallbacks: u64, refused: u64) {
    r.gauge(
        "tierkv_engine_pool_eviction_policy",
        "The engine pool's eviction policy (TIERKV_POOL_EVICTION; lru: the engine's own order), 1 for the one in use.",
        &[(format!("policy=\"{name}\"").as_str(), present)],
    );
    r.counter(
        "tierkv_engine_pool_policy_fallbacks_total",
        "Engine pool allocations for which TIERKV_POOL_EVICTION's policy named no free block (every candidate it looked at was held): the least recently released one was evicted.",
        &[("", fallbacks)],
    );
    r.counter(
        "tierkv_engine_pool_policy_refused_total",
        "Engine pool blocks whose identity TIERKV_POOL_EVICTION's policy judged not worth a block it would evict: released to the head of the free list (evicted first).",
        &[("", refused)],
    );
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
