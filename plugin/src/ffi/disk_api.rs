//! The disk tier's part of the C ABI: its state and a flush before shutdown.

use super::{guard, manager, out_ptr, FfiError, TierkvManager, TierkvStatus};
use crate::manager::TierId;

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
        let Some(t) = m.tier_status(TierId::Disk) else {
            *out = TierkvDiskStatus::default();
            return Ok(());
        };
        *out = TierkvDiskStatus {
            configured: 1,
            up: u8::from(t.up),
            direct_io: u8::from(t.direct_io),
            blocks: t.blocks,
            capacity_blocks: t.capacity_blocks,
            capacity_bytes: t.capacity_bytes,
            recovered_blocks: t.recovered_blocks,
            recovery_dropped: t.recovery_dropped,
            pending_writes: t.pending_writes,
            writing_blocks: t.writing_blocks,
            free_blocks: t.free_blocks,
            consistent: u8::from(t.consistent),
        };
        match t.problem {
            Some(why) => Err(FfiError {
                status: TierkvStatus::Unavailable,
                message: why,
            }),
            None => Ok(()),
        }
    })
}

/// Waits until every queued lower-tier write (disk offloads, remote writes) has been
/// written (or dropped), for at most `timeout_ms` milliseconds. Writes 1 to `*out_idle` if it got there, 0 on time-out.
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
        *out = u8::from(m.flush(std::time::Duration::from_millis(timeout_ms)));
        Ok(())
    })
}
