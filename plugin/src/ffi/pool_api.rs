//! The engine block pool's queries and the shadow comparison's counters in the C
//! ABI (allocation, release and registration are in `api.rs`).

use super::api::TierkvHash;
use super::{guard, manager, out_ptr, slice_in, slice_out, FfiError, TierkvManager, TierkvStatus};
use crate::manager::{BlockHash, POOL_DISAGREEMENT_KINDS};

/// `tierkv_pool_find`'s answer for an identity no block holds.
pub const TIERKV_POOL_NONE: u32 = u32::MAX;

/// Kinds of `tierkv_pool_shadow_record`'s disagreements, in order: allocated ids,
/// eviction victims, prefix hits, free counts.
pub const TIERKV_POOL_DISAGREEMENT_KINDS: usize = 4;
const _: () = assert!(TIERKV_POOL_DISAGREEMENT_KINDS == POOL_DISAGREEMENT_KINDS.len());

/// What `tierkv_pool_state` reports.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct TierkvPoolState {
    /// Slots.
    pub num_blocks: u64,
    /// Free slots (cached ones included).
    pub free: u64,
    /// Slots holding an identity (in use or free; two may hold one identity).
    pub cached: u64,
    /// Blocks handed out by allocations.
    pub allocated: u64,
    /// References released.
    pub freed: u64,
    /// Blocks reused by identity.
    pub hits: u64,
    /// Cached blocks evicted by allocations.
    pub evictions: u64,
}

/// Writes the block found for each of `hashes` to `out_ids` (`TIERKV_POOL_NONE`
/// when no block holds it), changing nothing: the first block registered for an
/// identity and still holding it, as vLLM's `get_cached_block`.
///
/// # Safety
/// `hashes` valid for `n` reads, `out_ids` for `n` writes. Takes the pool lock.
#[no_mangle]
pub unsafe extern "C" fn tierkv_pool_find(
    mgr: *const TierkvManager,
    hashes: *const TierkvHash,
    n: usize,
    out_ids: *mut u32,
) -> TierkvStatus {
    guard(|| {
        let m = manager(mgr)?;
        // SAFETY: validated pointers, caller contract.
        let (hs, out) = unsafe { (slice_in(hashes, n, "hashes")?, slice_out(out_ids, n, "out_ids")?) };
        let hs: Vec<BlockHash> = hs.iter().map(|&h| h.into()).collect();
        let mut found = Vec::with_capacity(n);
        m.pool_find(&hs, &mut found)?;
        for (o, f) in out.iter_mut().zip(found) {
            *o = f.unwrap_or(TIERKV_POOL_NONE);
        }
        Ok(())
    })
}

/// Drops the identity each of `ids` holds (the engine found their KV unusable, as
/// vLLM's `evict_blocks` after a failed load); held blocks stay held. Writes how many
/// identities were dropped to `*out_dropped`. An id out of range changes nothing.
///
/// # Safety
/// `ids` valid for `n` reads; `out_dropped` for one write. Takes the pool lock.
#[no_mangle]
pub unsafe extern "C" fn tierkv_pool_forget(
    mgr: *const TierkvManager,
    ids: *const u32,
    n: usize,
    out_dropped: *mut usize,
) -> TierkvStatus {
    guard(|| {
        // SAFETY: validated pointers, caller contract.
        let (ids, out) = unsafe { (slice_in(ids, n, "ids")?, out_ptr(out_dropped, "out_dropped")?) };
        *out = 0;
        *out = manager(mgr)?.pool_forget(ids)?;
        Ok(())
    })
}

/// Forgets every identity in the pool (the engine's weights changed); held blocks
/// stay held. Writes how many were dropped to `*out_dropped`.
///
/// # Safety
/// `out_dropped` valid for one write. Takes the pool lock.
#[no_mangle]
pub unsafe extern "C" fn tierkv_pool_reset_prefix_cache(
    mgr: *const TierkvManager,
    out_dropped: *mut usize,
) -> TierkvStatus {
    guard(|| {
        // SAFETY: validated pointer, caller contract.
        let out = unsafe { out_ptr(out_dropped, "out_dropped") }?;
        *out = 0;
        *out = manager(mgr)?.pool_reset_prefix_cache()?;
        Ok(())
    })
}

/// Writes the pool's sizes and counters to `*out`.
///
/// # Safety
/// `out` valid for one write. Takes the pool lock.
#[no_mangle]
pub unsafe extern "C" fn tierkv_pool_state(mgr: *const TierkvManager, out: *mut TierkvPoolState) -> TierkvStatus {
    guard(|| {
        // SAFETY: validated pointer, caller contract.
        let out = unsafe { out_ptr(out, "out") }?;
        let s = manager(mgr)?.pool_state()?;
        *out = TierkvPoolState {
            num_blocks: s.num_blocks,
            free: s.free,
            cached: s.cached,
            allocated: s.stats.allocated,
            freed: s.stats.freed,
            hits: s.stats.hits,
            evictions: s.stats.evictions,
        };
        Ok(())
    })
}

/// Adds what a shadow of the engine's own block pool compared to the store-wide
/// counters (`tierkv_pool_shadow_ops_total`,
/// `tierkv_pool_shadow_disagreements_total{kind}`): `ops` operations mirrored and
/// `disagreements[k]` of each of the `TIERKV_POOL_DISAGREEMENT_KINDS` kinds. Any
/// process sharing the store exports them (the shadow runs in vLLM's scheduler
/// process, the exporter in its worker).
///
/// # Safety
/// `disagreements` valid for `TIERKV_POOL_DISAGREEMENT_KINDS` reads.
#[no_mangle]
pub unsafe extern "C" fn tierkv_pool_shadow_record(
    mgr: *const TierkvManager,
    ops: u64,
    disagreements: *const u64,
) -> TierkvStatus {
    guard(|| {
        // SAFETY: validated pointer, caller contract.
        let d = unsafe { slice_in(disagreements, TIERKV_POOL_DISAGREEMENT_KINDS, "disagreements") }?;
        manager(mgr)?.pool_shadow_record(ops, d).map_err(FfiError::from)
    })
}

/// `tierkv_pool_register` for `n` blocks in one call (one lock, one crossing):
/// held block `ids[i]` holds `hashes[i]`; `out_indexed[i]` (may be null) says
/// whether it is the block found for its identity. Stops at the first error (the
/// blocks before it stay registered; the message names the failing one).
///
/// # Safety
/// `ids`, `hashes` valid for `n` reads; `out_indexed` null or valid for `n` writes.
/// Takes the pool lock.
#[no_mangle]
pub unsafe extern "C" fn tierkv_pool_register_many(
    mgr: *const TierkvManager,
    ids: *const u32,
    hashes: *const TierkvHash,
    n: usize,
    out_indexed: *mut u8,
) -> TierkvStatus {
    guard(|| {
        let m = manager(mgr)?;
        // SAFETY: validated pointers, caller contract.
        let (ids, hs) = unsafe { (slice_in(ids, n, "ids")?, slice_in(hashes, n, "hashes")?) };
        let out = if out_indexed.is_null() {
            None
        } else {
            // SAFETY: as above.
            Some(unsafe { slice_out(out_indexed, n, "out_indexed") }?)
        };
        let hs: Vec<BlockHash> = hs.iter().map(|&h| h.into()).collect();
        let mut flags = Vec::with_capacity(n);
        let r = m.pool_register_many(ids, &hs, &mut flags);
        if let Some(out) = out {
            for (o, &f) in out.iter_mut().zip(&flags) {
                *o = u8::from(f);
            }
        }
        r.map_err(FfiError::from)
    })
}
