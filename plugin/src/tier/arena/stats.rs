//! The host tier's counters: they live in the arena header (shared memory), so
//! every process that maps a store sees and adds to the same totals.
//!
//! Their layout is part of the arena's binary format: [`LAYOUT`] pins the offset
//! of every field and the size of the whole for the format version
//! [`super::VERSION`], and a compile-time check fails when either changes without
//! that pin being written again, which is the moment to bump the version.

use std::sync::atomic::AtomicU64;

use crate::metrics::Histogram;

/// The host tier's counters, shared by every process mapping the same arena.
#[repr(C)]
#[derive(Debug, Default)]
pub struct SharedStats {
    /// Prefix lookups.
    pub lookups: AtomicU64,
    /// Leading blocks found by lookups.
    pub hit_blocks: AtomicU64,
    /// Blocks asked for by lookups and not found (everything after the first miss).
    pub miss_blocks: AtomicU64,
    /// Tokens of the hit blocks.
    pub hit_tokens: AtomicU64,
    /// Tokens of the missed blocks.
    pub miss_tokens: AtomicU64,
    /// Blocks written.
    pub stored_blocks: AtomicU64,
    /// Bytes written.
    pub stored_bytes: AtomicU64,
    /// Stores skipped because the block was already present or being written.
    pub store_dedup: AtomicU64,
    /// Stores refused: by the eviction policy's admission, or nothing could be evicted.
    pub store_rejected: AtomicU64,
    /// Blocks loaded and verified.
    pub loaded_blocks: AtomicU64,
    /// Bytes loaded and verified.
    pub loaded_bytes: AtomicU64,
    /// Loads of blocks that were not present (evicted since the lookup).
    pub load_misses: AtomicU64,
    /// Loads whose checksum did not match: counted as misses, never served.
    pub checksum_failures: AtomicU64,
    /// Blocks evicted.
    pub evictions: AtomicU64,
    /// Times a process found the arena lock owned by a dead process and repaired it.
    pub lock_recoveries: AtomicU64,
    /// Slots reclaimed from writers that died or passed the write deadline.
    pub dead_writer_reclaims: AtomicU64,
    /// Times the index lock was not free within its wait (the operation missed).
    pub lock_timeouts: AtomicU64,
    /// Times the index was found damaged (out-of-range values) and rebuilt.
    pub index_repairs: AtomicU64,
    /// Stores whose slot was reclaimed before they committed (not stored).
    pub writes_lost: AtomicU64,
    /// Lookup calls, repeated ones included (`lookups` counts each request once).
    pub lookup_calls: AtomicU64,
    /// Tokens of blocks loaded and verified into engine memory (what the engine
    /// reports as served from an external cache).
    pub loaded_tokens: AtomicU64,
    /// Errors an engine adapter caught and degraded (per operation, per status;
    /// see [`ADAPTER_OPS`]).
    pub adapter_errors: [[AtomicU64; ADAPTER_STATUSES]; ADAPTER_OPS.len()],
    /// Store latency (one block).
    pub store_latency: Histogram,
    /// Load latency (one block).
    pub load_latency: Histogram,
    /// The semantic index's counters: its lookups run in vLLM's scheduler
    /// process, the exporter in the worker's; kept here, any process reports them.
    pub semantic: SemanticCounters,
    /// The engine pool's shadow comparisons (vLLM's scheduler process).
    pub pool_shadow: PoolShadowCounters,
}

/// Counters of semantic sharing (store-wide: every manager sharing the store adds
/// to them; see `crate::semantic`).
#[repr(C)]
#[derive(Debug, Default)]
pub struct SemanticCounters {
    /// Lookups that consulted the index.
    pub lookups: AtomicU64,
    /// Candidates aligned.
    pub candidates: AtomicU64,
    /// Plans accepted.
    pub accepted: AtomicU64,
    /// Rejections, by the semantic module's `Rejection` (index = discriminant).
    pub rejected: [AtomicU64; 5],
    /// Target tokens planned from a source (accepted plans).
    pub reused_tokens: AtomicU64,
    /// Target tokens planned for recompute (accepted plans).
    pub recompute_tokens: AtomicU64,
    /// Target blocks built from sources.
    pub loaded_blocks: AtomicU64,
    /// Target blocks that could not be built (source gone or corrupt: recomputed).
    pub failed_blocks: AtomicU64,
    /// Prompts removed because their source blocks were gone.
    pub removed_gone: AtomicU64,
    /// Lookup time (signature, probe, alignment, plan).
    pub lookup_ns: Histogram,
}

/// What the engine pool's shadow mode compared (`TIERKV_VLLM_POOL=shadow`: vLLM's
/// pool decides, tierkv's pool mirrors every operation).
#[repr(C)]
#[derive(Debug, Default)]
pub struct PoolShadowCounters {
    /// Pool operations mirrored.
    pub ops: AtomicU64,
    /// Disagreements by kind ([`POOL_DISAGREEMENTS`]).
    pub disagreements: [AtomicU64; POOL_DISAGREEMENTS.len()],
}

/// The kinds of pool disagreement (`tierkv_pool_shadow_disagreements_total{kind}`),
/// in `tierkv_pool_shadow_record`'s numbering.
pub const POOL_DISAGREEMENTS: [&str; 4] = ["allocated_ids", "eviction_victims", "prefix_hits", "free_count"];

/// The operations an engine adapter reports degraded errors for
/// (`tierkv_adapter_errors_total{op}`), in `tierkv_record_error`'s numbering.
pub const ADAPTER_OPS: [&str; 5] = ["lookup", "load", "store", "hash", "other"];
/// Status codes counted per operation (`TIERKV_STATUS_*` 0-8, then "other").
pub const ADAPTER_STATUSES: usize = 10;
/// The `status` label of each column of `adapter_errors`.
pub const STATUS_LABELS: [&str; ADAPTER_STATUSES] = [
    "ok",
    "invalid_argument",
    "config",
    "no_space",
    "unavailable",
    "insufficient",
    "state",
    "buffer_too_small",
    "internal",
    "other",
];

/// The pinned layout: `(arena format version, size of SharedStats, offset of
/// every field in declaration order)`. Written by hand on purpose: a change to
/// [`SharedStats`] (or to [`Histogram`]) fails the check below until this is
/// updated, and updating it means bumping [`super::VERSION`] (an arena of the old
/// layout must be refused, not read with the new one).
pub const LAYOUT: (u32, usize, [usize; 26]) = (
    5,
    1336,
    [
        0, 8, 16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96, 104, 112, 120, 128, 136, 144, 152, 160, 168, 568, 776, 984,
        1296,
    ],
);

/// The layout `SharedStats` has in this build.
const fn actual_layout() -> (usize, [usize; 26]) {
    use std::mem::offset_of;
    (
        std::mem::size_of::<SharedStats>(),
        [
            offset_of!(SharedStats, lookups),
            offset_of!(SharedStats, hit_blocks),
            offset_of!(SharedStats, miss_blocks),
            offset_of!(SharedStats, hit_tokens),
            offset_of!(SharedStats, miss_tokens),
            offset_of!(SharedStats, stored_blocks),
            offset_of!(SharedStats, stored_bytes),
            offset_of!(SharedStats, store_dedup),
            offset_of!(SharedStats, store_rejected),
            offset_of!(SharedStats, loaded_blocks),
            offset_of!(SharedStats, loaded_bytes),
            offset_of!(SharedStats, load_misses),
            offset_of!(SharedStats, checksum_failures),
            offset_of!(SharedStats, evictions),
            offset_of!(SharedStats, lock_recoveries),
            offset_of!(SharedStats, dead_writer_reclaims),
            offset_of!(SharedStats, lock_timeouts),
            offset_of!(SharedStats, index_repairs),
            offset_of!(SharedStats, writes_lost),
            offset_of!(SharedStats, lookup_calls),
            offset_of!(SharedStats, loaded_tokens),
            offset_of!(SharedStats, adapter_errors),
            offset_of!(SharedStats, store_latency),
            offset_of!(SharedStats, load_latency),
            offset_of!(SharedStats, semantic),
            offset_of!(SharedStats, pool_shadow),
        ],
    )
}

const fn same(a: &[usize; 26], b: &[usize; 26]) -> bool {
    let mut i = 0;
    while i < 26 {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

const _: () = {
    let (size, offsets) = actual_layout();
    assert!(
        LAYOUT.0 == super::VERSION && LAYOUT.1 == size && same(&LAYOUT.2, &offsets),
        "SharedStats changed: bump the arena format version (tier/arena.rs VERSION) and pin the new layout in tier/arena/stats.rs LAYOUT"
    );
};

#[cfg(test)]
mod tests {
    use super::*;

    /// The same check as the compile-time one, as a test that names the rule: the
    /// counters' layout in shared memory is the one pinned for this format version.
    #[test]
    fn the_shared_counters_layout_is_pinned_to_the_arena_format_version() {
        let (size, offsets) = actual_layout();
        assert_eq!(LAYOUT.0, super::super::VERSION, "pinned for another format version");
        assert_eq!(
            (LAYOUT.1, LAYOUT.2),
            (size, offsets),
            "SharedStats changed: bump VERSION and pin it again"
        );
    }
}
