//! The disk tier's series: present whenever a disk tier is configured, zeros and
//! `tierkv_tier_up{tier="disk"} 0` while it is not serving.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{DiskStats, DiskTier};
use crate::metrics::Report;
use crate::tier::{TRANSFER_HELP, TRANSFER_SECONDS};

/// Adds the series of a configured disk tier to `r`; `tier` is `None` when it
/// failed to open.
pub fn report(tier: Option<&DiskTier>, r: &mut Report) {
    let zero = DiskStats::default();
    let d = tier.map_or(&zero, DiskTier::stats);
    let v = |a: &AtomicU64| a.load(Ordering::Relaxed);
    r.counter(
        "tierkv_lookup_blocks_total",
        "Blocks asked for by lookups, by tier and result (result=miss: found in no tier).",
        &[("tier=\"disk\",result=\"hit\"", v(&d.hit_blocks))],
    );
    r.counter(
        "tierkv_block_ops_total",
        "Block operations by tier and op.",
        &[
            ("tier=\"disk\",op=\"store\"", v(&d.written_blocks)),
            ("tier=\"disk\",op=\"load\"", v(&d.read_blocks)),
            ("tier=\"disk\",op=\"load_miss\"", v(&d.read_misses)),
            ("tier=\"disk\",op=\"evict\"", v(&d.evictions)),
        ],
    );
    r.counter(
        "tierkv_transfer_bytes_total",
        "Bytes copied between tiers.",
        &[
            ("src=\"host\",dst=\"disk\"", v(&d.written_bytes)),
            ("src=\"disk\",dst=\"engine\"", v(&d.read_bytes)),
        ],
    );
    r.counter(
        "tierkv_checksum_failures_total",
        "Loaded blocks whose checksum or identity did not verify (served as misses).",
        &[("tier=\"disk\"", v(&d.checksum_failures))],
    );
    report_state(tier, r);
    report_io(d, r);
}

/// Occupancy, capacity, whether it serves, its queues.
fn report_state(tier: Option<&DiskTier>, r: &mut Report) {
    let (blocks, cap_blocks, cap_bytes, up, direct, (reads, writes)) = match tier {
        Some(t) => {
            let g = t.geometry();
            (
                t.block_count(),
                g.n_slots,
                g.file_len,
                t.is_up(),
                t.direct_io(),
                t.queue_depths(),
            )
        }
        None => (0, 0, 0, false, false, (0, 0)),
    };
    r.gauge(
        "tierkv_tier_blocks",
        "Blocks held by the tier.",
        &[("tier=\"disk\"", blocks)],
    );
    r.gauge(
        "tierkv_tier_capacity_blocks",
        "Tier capacity in blocks.",
        &[("tier=\"disk\"", cap_blocks)],
    );
    r.gauge(
        "tierkv_tier_capacity_bytes",
        "Tier capacity in bytes, metadata included.",
        &[("tier=\"disk\"", cap_bytes)],
    );
    r.gauge(
        "tierkv_tier_up",
        "Whether the tier is serving (0: failed, see the log).",
        &[("tier=\"disk\"", u64::from(up))],
    );
    r.gauge(
        "tierkv_disk_direct_io",
        "Whether the disk tier uses O_DIRECT.",
        &[("", u64::from(direct))],
    );
    r.gauge(
        "tierkv_queue_depth",
        "Jobs waiting in a bounded queue.",
        &[
            ("queue=\"disk_read\"", reads as u64),
            ("queue=\"disk_write\"", writes as u64),
        ],
    );
}

/// Offload outcomes, I/O errors, recovery and the copy latencies.
fn report_io(d: &DiskStats, r: &mut Report) {
    let v = |a: &AtomicU64| a.load(Ordering::Relaxed);
    r.counter(
        "tierkv_offload_total",
        "Host-to-disk offloads by outcome (queued; dropped: queue full, no free slot, refused by the eviction policy).",
        &[
            ("result=\"queued\"", v(&d.offload_queued)),
            ("result=\"queue_full\"", v(&d.offload_dropped_full)),
            ("result=\"no_slot\"", v(&d.offload_dropped_no_slot)),
            ("result=\"refused\"", v(&d.offload_refused)),
        ],
    );
    r.counter(
        "tierkv_io_errors_total",
        "Failed disk I/Os.",
        &[("op=\"read\"", v(&d.read_errors)), ("op=\"write\"", v(&d.write_errors))],
    );
    r.gauge(
        "tierkv_disk_recovery_blocks",
        "Blocks the last restart recovery kept and dropped.",
        &[
            ("result=\"kept\"", v(&d.recovered_blocks)),
            ("result=\"dropped\"", v(&d.recovery_dropped)),
        ],
    );
    r.gauge_value(
        "tierkv_disk_recovery_seconds",
        "Duration of the last restart recovery.",
        v(&d.recovery_ns) as f64 / 1e9,
    );
    r.histogram(
        TRANSFER_SECONDS,
        TRANSFER_HELP,
        "src=\"host\",dst=\"disk\"",
        &d.write_latency,
    );
    r.histogram(
        TRANSFER_SECONDS,
        TRANSFER_HELP,
        "src=\"disk\",dst=\"engine\"",
        &d.read_latency,
    );
}
