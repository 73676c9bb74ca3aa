//! KV events in the C ABI: what a C or C++ engine needs to publish tierkv's tiers
//! to a KV-aware router itself (vLLM's `KVEventBatch` msgpack wire format).

use super::api::TierkvHash;
use super::{guard, manager, out_ptr, slice_in, slice_out, FfiError, TierkvManager, TierkvStatus};
use crate::manager::{BlockHash, EVENTS_MIN_BUFFER};

/// A buffer of this many bytes always holds a batch of at least one event.
pub const TIERKV_EVENTS_MIN_BUFFER: usize = 512;
const _: () = assert!(TIERKV_EVENTS_MIN_BUFFER == EVENTS_MIN_BUFFER);

/// Starts recording KV events (`BlockStored` / `BlockRemoved` of the host tier,
/// medium `CPU`, and the disk tier, medium `STORAGE`), keeping at most `capacity`
/// undelivered events (0: 65536; the oldest are dropped beyond, counted in
/// `tierkv_events_total{outcome="dropped"}`). Until then nothing is recorded.
///
/// # Safety
/// `mgr` a live handle (checked).
#[no_mangle]
pub unsafe extern "C" fn tierkv_events_start(mgr: *const TierkvManager, capacity: usize) -> TierkvStatus {
    guard(|| {
        manager(mgr)?.events_start(capacity);
        Ok(())
    })
}

/// Names blocks for KV events: the engine's 64-bit key `keys[i]` (the hash it
/// publishes for its own GPU blocks) and its parent's `parents[i]` (0: none;
/// `parents` may be null) for identity `hashes[i]`. Call it before storing or
/// loading the blocks; the key is kept with each block in every tier, so whichever
/// process later evicts it names it the same way. Key 0 names nothing. A no-op
/// while events are off.
///
/// # Safety
/// `hashes`, `keys` valid for `n` reads; `parents` null or valid for `n` reads.
#[no_mangle]
pub unsafe extern "C" fn tierkv_name_blocks(
    mgr: *const TierkvManager,
    hashes: *const TierkvHash,
    keys: *const u64,
    parents: *const u64,
    n: usize,
) -> TierkvStatus {
    guard(|| {
        let m = manager(mgr)?;
        // SAFETY: validated pointers, caller contract.
        let (hs, ks) = unsafe { (slice_in(hashes, n, "hashes")?, slice_in(keys, n, "keys")?) };
        let ps = if parents.is_null() {
            None
        } else {
            // SAFETY: as above.
            Some(unsafe { slice_in(parents, n, "parents") }?)
        };
        let hs: Vec<BlockHash> = hs.iter().map(|&h| h.into()).collect();
        m.name_blocks(&hs, ks, ps)?;
        Ok(())
    })
}

/// Takes the oldest KV events as one `KVEventBatch` in vLLM's wire format
/// (msgpack: `[ts, [event...], nil]`, each event a map tagged `"type"`), as many
/// as fit in `cap` bytes. Writes the batch's length to `*out_len` (0 when no event
/// was queued), the events in it to `*out_events`, and those still queued to
/// `*out_remaining` (call again while it is not 0). A `cap` below
/// `TIERKV_EVENTS_MIN_BUFFER` is `BUFFER_TOO_SMALL` (with that size in
/// `*out_len`), taking nothing.
///
/// # Safety
/// `buf` valid for `cap` writes; the three out pointers valid for one write each.
#[no_mangle]
pub unsafe extern "C" fn tierkv_take_events(
    mgr: *const TierkvManager,
    buf: *mut u8,
    cap: usize,
    out_len: *mut usize,
    out_events: *mut usize,
    out_remaining: *mut usize,
) -> TierkvStatus {
    guard(|| {
        // SAFETY: validated pointers, caller contract.
        let (out_len, out_events, out_remaining) = unsafe {
            (
                out_ptr(out_len, "out_len")?,
                out_ptr(out_events, "out_events")?,
                out_ptr(out_remaining, "out_remaining")?,
            )
        };
        (*out_len, *out_events, *out_remaining) = (0, 0, 0);
        let m = manager(mgr)?;
        if cap < TIERKV_EVENTS_MIN_BUFFER {
            *out_len = TIERKV_EVENTS_MIN_BUFFER;
            return Err(FfiError {
                status: TierkvStatus::BufferTooSmall,
                message: format!("buffer of {cap} bytes, at least {TIERKV_EVENTS_MIN_BUFFER} needed"),
            });
        }
        // SAFETY: as above.
        let out = unsafe { slice_out(buf, cap, "buf") }?;
        let t = m.take_events(out)?;
        (*out_len, *out_events, *out_remaining) = (t.bytes, t.events, t.remaining);
        Ok(())
    })
}
