//! The scheduler's decisions through the C ABI, for engines that move blocks
//! themselves (offload pacing, prefetch depth, free-block watermark).

use super::{guard, manager, out_ptr, TierkvManager, TierkvStatus, TIERKV_TIER_DISK, TIERKV_TIER_HOST};
use crate::manager::Placement;

/// What `tierkv_hw_hints` reports (see docs/gpu.md for the rules behind each).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct TierkvHwHints {
    /// 1 when NVML sees the engine's GPU (`TIERKV_GPU_DEVICE`).
    pub gpu_available: u8,
    /// Tier new blocks go to: `TIERKV_TIER_HOST` or `TIERKV_TIER_DISK`.
    pub placement: u8,
    /// NUMA node for host memory near the GPU; -1: no preference.
    pub numa_node: i32,
    /// Offload budget in bytes/s beside the engine's PCIe traffic; `UINT64_MAX`:
    /// unlimited.
    pub offload_rate_bytes_per_s: u64,
    /// Blocks to load ahead.
    pub prefetch_depth: u64,
    /// Engine blocks to keep free.
    pub watermark_blocks: u64,
    /// Telemetry samples taken so far (0: sampling is off, defaults reported).
    pub samples: u64,
}

/// Writes the scheduler's latest decisions to `*out`. With sampling off
/// (`TIERKV_HW_INTERVAL=off`) it reports the defaults: host placement, no NUMA
/// preference, unlimited rate, zero depth and watermark, zero samples.
///
/// # Safety
/// `mgr` a live handle; `out` valid for one write. Does not block.
#[no_mangle]
pub unsafe extern "C" fn tierkv_hw_hints(mgr: *const TierkvManager, out: *mut TierkvHwHints) -> TierkvStatus {
    guard(|| {
        let m = manager(mgr)?;
        // SAFETY: validated pointer, caller contract.
        let out = unsafe { out_ptr(out, "out") }?;
        let (samples, latest) = m.telemetry();
        let mut h = TierkvHwHints {
            placement: TIERKV_TIER_HOST,
            numa_node: -1,
            offload_rate_bytes_per_s: u64::MAX,
            samples,
            ..TierkvHwHints::default()
        };
        if let Some((t, d)) = latest {
            h.gpu_available = u8::from(t.gpu.is_some());
            h.placement = match d.placement {
                Placement::Host => TIERKV_TIER_HOST,
                Placement::Disk => TIERKV_TIER_DISK,
            };
            h.numa_node = d.numa_node.map_or(-1, |n| i32::try_from(n).unwrap_or(-1));
            h.offload_rate_bytes_per_s = d.offload_rate.unwrap_or(u64::MAX);
            h.prefetch_depth = d.prefetch_depth;
            h.watermark_blocks = d.watermark_blocks;
        }
        *out = h;
        Ok(())
    })
}
