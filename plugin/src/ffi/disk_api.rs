//! The disk tier's part of the C ABI: its state and a flush before shutdown.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{guard, manager, out_ptr, FfiError, TierkvManager, TierkvStatus};

/// What `tierkv_disk_status` reports.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct TierkvDiskStatus {
    /// 1 when `TIERKV_DISK_PATH` is set.
    pub configured: u8,
    /// 1 when the disk tier is serving.
    pub up: u8,
    /// 1 when it uses O_DIRECT.
    pub direct_io: u8,
    /// Blocks on disk.
    pub blocks: u64,
    /// Capacity in blocks.
    pub capacity_blocks: u64,
    /// Capacity in bytes (the file, headers included).
    pub capacity_bytes: u64,
    /// Blocks kept by the start-up recovery.
    pub recovered_blocks: u64,
    /// Slots dropped by the start-up recovery (did not verify).
    pub recovery_dropped: u64,
    /// Offloads queued and not yet written.
    pub pending_writes: u64,
    /// Slots being written now (owner's view; 0 in a reader).
    pub writing_blocks: u64,
    /// Free slots (owner's view; 0 in a reader).
    pub free_blocks: u64,
    /// 1 when every slot is accounted for once: indexed + free + writing ==
    /// capacity, and the index, eviction policy and free list agree (always 1 in a
    /// reader, which keeps no index).
    pub consistent: u8,
}

/// Writes the disk tier's state to `*out`. Returns `TIERKV_OK` when the tier serves
/// or is not configured, and `TIERKV_UNAVAILABLE` (with the reason in
/// `tierkv_last_error`) when it is configured but failed to open or went down; `*out`
/// is written in both cases.
///
/// # Safety
/// `mgr` a live handle; `out` valid for one write. Does not block on I/O.
#[no_mangle]
pub unsafe extern "C" fn tierkv_disk_status(mgr: *const TierkvManager, out: *mut TierkvDiskStatus) -> TierkvStatus {
    guard(|| {
        let m = manager(mgr)?;
        // SAFETY: validated pointer, caller contract.
        let out = unsafe { out_ptr(out, "out") }?;
        let mut st = TierkvDiskStatus {
            configured: u8::from(m.config().disk_path.is_some()),
            ..TierkvDiskStatus::default()
        };
        if let Some(d) = m.disk() {
            let g = d.geometry();
            let s = d.stats();
            let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
            st.up = u8::from(d.is_up());
            st.direct_io = u8::from(d.direct_io());
            st.blocks = d.block_count();
            st.capacity_blocks = g.n_slots;
            st.capacity_bytes = g.file_len;
            st.recovered_blocks = r(&s.recovered_blocks);
            st.recovery_dropped = r(&s.recovery_dropped);
            st.pending_writes = d.queue_depths().1 as u64;
            if d.is_owner() {
                let c = d.census();
                st.writing_blocks = c.writing;
                st.free_blocks = c.free;
                st.consistent = u8::from(c.consistent());
            } else {
                st.consistent = 1;
            }
        }
        *out = st;
        match m.disk_problem() {
            Some(why) => Err(FfiError {
                status: TierkvStatus::Unavailable,
                message: why,
            }),
            None => Ok(()),
        }
    })
}

/// Waits until every queued disk offload has been written (or dropped), for at most
/// `timeout_ms` milliseconds. Writes 1 to `*out_idle` if it got there, 0 on time-out.
/// Engines call it before a planned shutdown so that nothing queued is lost.
///
/// # Safety
/// `mgr` a live handle; `out_idle` valid for one write. Blocks up to `timeout_ms`.
#[no_mangle]
pub unsafe extern "C" fn tierkv_disk_flush(
    mgr: *const TierkvManager,
    timeout_ms: u64,
    out_idle: *mut u8,
) -> TierkvStatus {
    guard(|| {
        let m = manager(mgr)?;
        // SAFETY: validated pointer, caller contract.
        let out = unsafe { out_ptr(out_idle, "out_idle") }?;
        *out = match m.disk() {
            Some(d) => u8::from(d.wait_idle(std::time::Duration::from_millis(timeout_ms))),
            None => 1,
        };
        Ok(())
    })
}
