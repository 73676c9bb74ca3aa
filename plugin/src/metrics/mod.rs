//! Counters and histograms as plain atomics, and their Prometheus text form.
//!
//! Core types: [`SharedStats`] (the host tier's counters; they live in the shared
//! arena, so every process that maps a store sees and adds to the same totals),
//! [`Histogram`] (fixed log-spaced latency buckets), [`render`] (text exposition
//! format 0.0.4) and [`exporter::Exporter`] (an optional HTTP endpoint).
//!
//! Workflow:
//! 1. Hot paths add to atomics with `Relaxed` ordering (no locks, no allocation).
//! 2. A scrape (HTTP or `tierkv_metrics_text`) reads them and renders text.
//!
//! Names are an API: renaming one is a breaking change recorded in the CHANGELOG.

pub mod exporter;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::tier::disk::DiskStats;

/// Bucket upper bounds of the latency histograms, in seconds: 1 us to ~8.4 s,
/// doubling (24 buckets), plus `+Inf`. Covers a single small block copy up to a
/// stalled load.
pub const LATENCY_BUCKETS: usize = 24;

fn bucket_bound(i: usize) -> f64 {
    1e-6 * f64::from(1u32 << i)
}

/// A latency histogram of atomics.
#[repr(C)]
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe_ns(&self, ns: u64) {
        let us = ns / 1000;
        let i = if us == 0 { 0 } else { (64 - us.leading_zeros()) as usize };
        self.buckets[i.min(LATENCY_BUCKETS)].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let (sep, braces) = if labels.is_empty() {
            ("", String::new())
        } else {
            (",", format!("{{{labels}}}"))
        };
        let mut cum = 0;
        for i in 0..LATENCY_BUCKETS {
            cum += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{:e}\"}} {cum}", bucket_bound(i));
        }
        cum += self.buckets[LATENCY_BUCKETS].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cum}");
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {cum}");
    }
}

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
    /// Stores refused because nothing could be evicted.
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
}

/// The operations an engine adapter reports degraded errors for
/// (`tierkv_adapter_errors_total{op}`), in `tierkv_record_error`'s numbering.
pub const ADAPTER_OPS: [&str; 5] = ["lookup", "load", "store", "hash", "other"];
/// Status codes counted per operation (`TIERKV_STATUS_*` 0-8, then "other").
pub const ADAPTER_STATUSES: usize = 10;
const STATUS_LABELS: [&str; ADAPTER_STATUSES] = [
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

/// Gauges read at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    /// Ready blocks in the host tier.
    pub host_blocks: u64,
    /// Host tier capacity in blocks.
    pub host_capacity_blocks: u64,
    /// Host tier capacity in bytes (the arena file).
    pub host_capacity_bytes: u64,
    /// Payload bytes per block.
    pub block_bytes: u64,
    /// Engine pool blocks in use (0 without a pool).
    pub pool_used_blocks: u64,
    /// Engine pool size (0 without a pool).
    pub pool_blocks: u64,
    /// Engine pool counters.
    pub pool: crate::block::PoolStats,
}

fn counter(out: &mut String, name: &str, help: &str, series: &[(&str, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (labels, v) in series {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
}

fn gauge(out: &mut String, name: &str, help: &str, series: &[(&str, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
    for (labels, v) in series {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
}

fn gauge_f(out: &mut String, name: &str, help: &str, v: f64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
}

/// The disk tier as a scrape sees it (absent when no disk tier is configured).
#[derive(Debug, Default)]
pub struct DiskView<'a> {
    /// Counters; `None` when the tier failed to open.
    pub stats: Option<&'a DiskStats>,
    /// Whether it is serving.
    pub up: bool,
    /// Whether O_DIRECT is in use.
    pub direct: bool,
    /// Blocks held.
    pub blocks: u64,
    /// Capacity in blocks.
    pub capacity_blocks: u64,
    /// Capacity in bytes (the file, headers included).
    pub capacity_bytes: u64,
    /// Reads queued.
    pub queued_reads: u64,
    /// Writes queued.
    pub queued_writes: u64,
    /// Admission decisions: admitted.
    pub admitted: u64,
    /// Admission decisions: rejected.
    pub rejected: u64,
}

/// Renders every metric in the Prometheus text format.
pub fn render(s: &SharedStats, g: &Gauges, disk: Option<&DiskView<'_>>) -> String {
    let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let zero = DiskStats::default();
    let d = disk.map(|v| v.stats.unwrap_or(&zero));
    let with_disk = |mut v: Vec<(&'static str, u64)>, extra: &dyn Fn(&DiskStats) -> Vec<(&'static str, u64)>| {
        if let Some(d) = d {
            v.extend(extra(d));
        }
        v
    };
    let mut o = String::with_capacity(16384);
    counter(
        &mut o,
        "tierkv_lookups_total",
        "Prefix lookups, each request counted once (repeated lookups of a waiting request are not).",
        &[("", r(&s.lookups))],
    );
    counter(
        &mut o,
        "tierkv_lookup_calls_total",
        "Lookup calls, repeated ones included.",
        &[("", r(&s.lookup_calls))],
    );
    counter(
        &mut o,
        "tierkv_loaded_tokens_total",
        "Tokens of blocks loaded and verified into engine memory (what the engine serves from tierkv).",
        &[("", r(&s.loaded_tokens))],
    );
    let labels: Vec<(String, u64)> = ADAPTER_OPS
        .iter()
        .enumerate()
        .flat_map(|(i, op)| {
            STATUS_LABELS
                .iter()
                .enumerate()
                .map(move |(j, st)| (format!("op=\"{op}\",status=\"{st}\""), i, j))
        })
        .map(|(l, i, j)| (l, r(&s.adapter_errors[i][j])))
        .filter(|&(_, v)| v > 0)
        .collect();
    let series: Vec<(&str, u64)> = labels.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    counter(
        &mut o,
        "tierkv_adapter_errors_total",
        "Library errors an engine adapter caught and degraded (loads recomputed, lookups missed, stores skipped).",
        &series,
    );
    let lookup = with_disk(
        vec![
            ("tier=\"host\",result=\"hit\"", r(&s.hit_blocks)),
            ("tier=\"host\",result=\"miss\"", r(&s.miss_blocks)),
        ],
        &|d| vec![("tier=\"disk\",result=\"hit\"", r(&d.hit_blocks))],
    );
    counter(
        &mut o,
        "tierkv_lookup_blocks_total",
        "Blocks asked for by lookups, by tier and result (result=miss: found in no tier).",
        &lookup,
    );
    counter(
        &mut o,
        "tierkv_lookup_tokens_total",
        "Tokens of the blocks asked for by lookups, by tier and result.",
        &[
            ("tier=\"host\",result=\"hit\"", r(&s.hit_tokens)),
            ("tier=\"host\",result=\"miss\"", r(&s.miss_tokens)),
        ],
    );
    let ops = with_disk(
        vec![
            ("tier=\"host\",op=\"store\"", r(&s.stored_blocks)),
            ("tier=\"host\",op=\"store_dedup\"", r(&s.store_dedup)),
            ("tier=\"host\",op=\"store_rejected\"", r(&s.store_rejected)),
            ("tier=\"host\",op=\"load\"", r(&s.loaded_blocks)),
            ("tier=\"host\",op=\"load_miss\"", r(&s.load_misses)),
            ("tier=\"host\",op=\"evict\"", r(&s.evictions)),
            ("tier=\"engine\",op=\"allocate\"", g.pool.allocated),
            ("tier=\"engine\",op=\"free\"", g.pool.freed),
            ("tier=\"engine\",op=\"hit\"", g.pool.hits),
            ("tier=\"engine\",op=\"evict\"", g.pool.evictions),
        ],
        &|d| {
            vec![
                ("tier=\"disk\",op=\"store\"", r(&d.written_blocks)),
                ("tier=\"disk\",op=\"load\"", r(&d.read_blocks)),
                ("tier=\"disk\",op=\"load_miss\"", r(&d.read_misses)),
                ("tier=\"disk\",op=\"evict\"", r(&d.evictions)),
            ]
        },
    );
    counter(
        &mut o,
        "tierkv_block_ops_total",
        "Block operations by tier and op.",
        &ops,
    );
    let bytes = with_disk(
        vec![
            ("src=\"engine\",dst=\"host\"", r(&s.stored_bytes)),
            ("src=\"host\",dst=\"engine\"", r(&s.loaded_bytes)),
        ],
        &|d| {
            vec![
                ("src=\"host\",dst=\"disk\"", r(&d.written_bytes)),
                ("src=\"disk\",dst=\"engine\"", r(&d.read_bytes)),
            ]
        },
    );
    counter(
        &mut o,
        "tierkv_transfer_bytes_total",
        "Bytes copied between tiers.",
        &bytes,
    );
    let sums = with_disk(vec![("tier=\"host\"", r(&s.checksum_failures))], &|d| {
        vec![("tier=\"disk\"", r(&d.checksum_failures))]
    });
    counter(
        &mut o,
        "tierkv_checksum_failures_total",
        "Loaded blocks whose checksum or identity did not verify (served as misses).",
        &sums,
    );
    counter(
        &mut o,
        "tierkv_recoveries_total",
        "Repairs of the host tier: a process died holding the lock or mid-store, or the index was damaged.",
        &[
            ("kind=\"lock_owner\"", r(&s.lock_recoveries)),
            ("kind=\"dead_writer\"", r(&s.dead_writer_reclaims)),
            ("kind=\"index\"", r(&s.index_repairs)),
        ],
    );
    counter(
        &mut o,
        "tierkv_lock_timeouts_total",
        "Host-tier operations that missed because the shared index lock was not free within 2 s.",
        &[("", r(&s.lock_timeouts))],
    );
    counter(
        &mut o,
        "tierkv_writes_lost_total",
        "Host-tier stores whose slot was reclaimed (write deadline passed) before they committed.",
        &[("", r(&s.writes_lost))],
    );
    let view = disk.map(|v| (v.blocks, v.capacity_blocks, v.capacity_bytes, u64::from(v.up)));
    let tier = |host: u64, pick: fn((u64, u64, u64, u64)) -> u64| {
        let mut v = vec![("tier=\"host\"", host)];
        if let Some(x) = view {
            v.push(("tier=\"disk\"", pick(x)));
        }
        v
    };
    gauge(
        &mut o,
        "tierkv_tier_blocks",
        "Blocks held by the tier.",
        &tier(g.host_blocks, |x| x.0),
    );
    gauge(
        &mut o,
        "tierkv_tier_capacity_blocks",
        "Tier capacity in blocks.",
        &tier(g.host_capacity_blocks, |x| x.1),
    );
    gauge(
        &mut o,
        "tierkv_tier_capacity_bytes",
        "Tier capacity in bytes, metadata included.",
        &tier(g.host_capacity_bytes, |x| x.2),
    );
    gauge(
        &mut o,
        "tierkv_tier_up",
        "Whether the tier is serving (0: failed, see the log).",
        &tier(1, |x| x.3),
    );
    gauge(
        &mut o,
        "tierkv_block_bytes",
        "Payload bytes of one block.",
        &[("", g.block_bytes)],
    );
    gauge(
        &mut o,
        "tierkv_engine_pool_used_blocks",
        "Engine pool blocks in use.",
        &[("", g.pool_used_blocks)],
    );
    gauge(
        &mut o,
        "tierkv_engine_pool_blocks",
        "Engine pool size.",
        &[("", g.pool_blocks)],
    );
    if let (Some(v), Some(d)) = (disk, d) {
        render_disk(&mut o, v, d);
    }
    let _ = writeln!(
        o,
        "# HELP tierkv_transfer_seconds Latency of one block copy with its checksum.\n# TYPE tierkv_transfer_seconds histogram"
    );
    s.store_latency
        .render(&mut o, "tierkv_transfer_seconds", "src=\"engine\",dst=\"host\"");
    s.load_latency
        .render(&mut o, "tierkv_transfer_seconds", "src=\"host\",dst=\"engine\"");
    if let Some(d) = d {
        d.write_latency
            .render(&mut o, "tierkv_transfer_seconds", "src=\"host\",dst=\"disk\"");
        d.read_latency
            .render(&mut o, "tierkv_transfer_seconds", "src=\"disk\",dst=\"engine\"");
    }
    o
}

/// Telemetry and scheduling decisions ([`crate::hw`]).
pub fn render_hw(o: &mut String, hw: &crate::hw::HwState) {
    let latest = hw.latest();
    let gpu = latest.as_ref().and_then(|(t, _)| t.gpu.clone());
    gauge(
        o,
        "tierkv_gpu_available",
        "Whether NVML sees the engine's GPU (TIERKV_GPU_DEVICE); 0 without a driver.",
        &[("", u64::from(gpu.is_some()))],
    );
    gauge(
        o,
        "tierkv_telemetry_source",
        "Where telemetry comes from (nvml, host: /proc, none: sampling off).",
        &[(&format!("source=\"{}\"", hw.source()), 1)],
    );
    counter(
        o,
        "tierkv_telemetry_samples_total",
        "Telemetry samples taken.",
        &[("", hw.samples())],
    );
    let Some((t, d)) = latest else { return };
    gauge(
        o,
        "tierkv_host_memory_bytes",
        "Host memory (/proc/meminfo).",
        &[
            ("kind=\"total\"", t.host_mem_total),
            ("kind=\"available\"", t.host_mem_available),
        ],
    );
    if let Some(g) = &gpu {
        gauge(
            o,
            "tierkv_gpu_memory_bytes",
            "GPU memory (NVML).",
            &[("kind=\"total\"", g.mem_total), ("kind=\"used\"", g.mem_used)],
        );
        gauge(
            o,
            "tierkv_gpu_utilization_percent",
            "Share of time a kernel ran (NVML).",
            &[("", u64::from(g.util_pct))],
        );
        gauge(
            o,
            "tierkv_pcie_throughput_bytes_per_second",
            "PCIe traffic of the GPU (NVML; tx = device to host).",
            &[("dir=\"tx\"", g.pcie_tx), ("dir=\"rx\"", g.pcie_rx)],
        );
        gauge(
            o,
            "tierkv_pcie_link",
            "PCIe link now: generation, lanes, usable bytes/s per direction.",
            &[
                ("kind=\"generation\"", u64::from(g.link_gen)),
                ("kind=\"width\"", u64::from(g.link_width)),
                ("kind=\"bytes_per_second\"", g.link_bytes_per_s()),
            ],
        );
        gauge(
            o,
            "tierkv_gpu_temperature_celsius",
            "GPU core temperature (NVML).",
            &[("", u64::from(g.temp_c))],
        );
        gauge(
            o,
            "tierkv_gpu_throttle_reasons",
            "NVML throttle-reason bits (0: not throttled).",
            &[("", g.throttle)],
        );
    }
    let rate = d.offload_rate.map_or_else(|| "+Inf".to_string(), |r| r.to_string());
    let _ = writeln!(
        o,
        "# HELP tierkv_sched_offload_rate_bytes_per_second Offload budget the scheduler leaves beside the engine's PCIe traffic (+Inf: no link to share).\n# TYPE tierkv_sched_offload_rate_bytes_per_second gauge\ntierkv_sched_offload_rate_bytes_per_second {rate}"
    );
    gauge(
        o,
        "tierkv_sched_prefetch_depth_blocks",
        "Blocks to load ahead.",
        &[("", d.prefetch_depth)],
    );
    gauge(
        o,
        "tierkv_sched_watermark_blocks",
        "Engine blocks to keep free (from measured memory headroom).",
        &[("", d.watermark_blocks)],
    );
    let _ = writeln!(
        o,
        "# HELP tierkv_sched_numa_node NUMA node for the host tier (the GPU's; -1: no preference).\n# TYPE tierkv_sched_numa_node gauge\ntierkv_sched_numa_node {}",
        d.numa_node.map_or(-1, i64::from)
    );
    gauge(
        o,
        "tierkv_sched_placement",
        "Tier new blocks go to (1 = this one).",
        &[
            ("tier=\"host\"", u64::from(d.placement == crate::hw::Placement::Host)),
            ("tier=\"disk\"", u64::from(d.placement == crate::hw::Placement::Disk)),
        ],
    );
}

/// The GPU data path: whether a device layout is in use, and stores deferred by
/// the offload budget.
pub fn render_gpu_path(o: &mut String, active: bool, deferred: u64) {
    gauge(
        o,
        "tierkv_gpu_data_path",
        "Whether the engine's KV is registered in GPU memory (tierkv_register_device_layout).",
        &[("", u64::from(active))],
    );
    counter(
        o,
        "tierkv_store_deferred_blocks_total",
        "Device blocks not stored because the engine was saturating the PCIe link (offload budget).",
        &[("", deferred)],
    );
}

/// Semantic sharing (present when it is on for the manager's namespace).
pub fn render_semantic(o: &mut String, ix: &crate::semantic::SemanticIndex) {
    use crate::semantic::Rejection;
    let s = &ix.stats;
    let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
    gauge(
        o,
        "tierkv_semantic_index_prompts",
        "Prompts in the near-duplicate index.",
        &[("", ix.len() as u64)],
    );
    counter(
        o,
        "tierkv_semantic_lookups_total",
        "Lookups that consulted the near-duplicate index (the exact prefix hit was short).",
        &[("", r(&s.lookups))],
    );
    counter(
        o,
        "tierkv_semantic_candidates_total",
        "Candidate prompts aligned.",
        &[("", r(&s.candidates))],
    );
    let results: Vec<(String, u64)> = std::iter::once(("accepted", r(&s.accepted)))
        .chain(
            [
                Rejection::NoCandidate,
                Rejection::BelowSimilarity,
                Rejection::TooMuchRecompute,
                Rejection::NoGain,
            ]
            .map(|k| (k.label(), r(&s.rejected[k as usize]))),
        )
        .map(|(label, v)| (format!("result=\"{label}\""), v))
        .collect();
    let series: Vec<(&str, u64)> = results.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    counter(
        o,
        "tierkv_semantic_plans_total",
        "Reuse plans by result: accepted, or why rejected.",
        &series,
    );
    counter(
        o,
        "tierkv_semantic_tokens_total",
        "Prompt tokens of accepted plans: reused from a near-duplicate, or to recompute.",
        &[
            ("kind=\"reused\"", r(&s.reused_tokens)),
            ("kind=\"recompute\"", r(&s.recompute_tokens)),
        ],
    );
    counter(
        o,
        "tierkv_semantic_load_blocks_total",
        "Blocks built from near-duplicate sources: loaded, or failed (source gone or corrupt; recomputed).",
        &[
            ("result=\"loaded\"", r(&s.loaded_blocks)),
            ("result=\"failed\"", r(&s.failed_blocks)),
        ],
    );
    counter(
        o,
        "tierkv_semantic_removed_total",
        "Indexed prompts removed because their blocks had left the host tier.",
        &[("", r(&s.removed_gone))],
    );
    let _ = writeln!(
        o,
        "# HELP tierkv_semantic_lookup_seconds Time of a semantic lookup (signature, probe, alignment, plan).\n# TYPE tierkv_semantic_lookup_seconds histogram"
    );
    s.lookup_ns.render(o, "tierkv_semantic_lookup_seconds", "");
}

fn render_disk(o: &mut String, v: &DiskView<'_>, d: &DiskStats) {
    let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
    gauge(
        o,
        "tierkv_disk_direct_io",
        "Whether the disk tier uses O_DIRECT.",
        &[("", u64::from(v.direct))],
    );
    gauge(
        o,
        "tierkv_queue_depth",
        "Jobs waiting in a bounded queue.",
        &[
            ("queue=\"disk_read\"", v.queued_reads),
            ("queue=\"disk_write\"", v.queued_writes),
        ],
    );
    counter(
        o,
        "tierkv_disk_admission_total",
        "Disk admission decisions.",
        &[("decision=\"admit\"", v.admitted), ("decision=\"reject\"", v.rejected)],
    );
    counter(
        o,
        "tierkv_offload_total",
        "Host-to-disk offloads by outcome (queued; dropped: queue full, no free slot).",
        &[
            ("result=\"queued\"", r(&d.offload_queued)),
            ("result=\"queue_full\"", r(&d.offload_dropped_full)),
            ("result=\"no_slot\"", r(&d.offload_dropped_no_slot)),
        ],
    );
    counter(
        o,
        "tierkv_io_errors_total",
        "Failed disk I/Os.",
        &[("op=\"read\"", r(&d.read_errors)), ("op=\"write\"", r(&d.write_errors))],
    );
    gauge(
        o,
        "tierkv_disk_recovery_blocks",
        "Blocks the last restart recovery kept and dropped.",
        &[
            ("result=\"kept\"", r(&d.recovered_blocks)),
            ("result=\"dropped\"", r(&d.recovery_dropped)),
        ],
    );
    gauge_f(
        o,
        "tierkv_disk_recovery_seconds",
        "Duration of the last restart recovery.",
        r(&d.recovery_ns) as f64 / 1e9,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe_ns(500); // < 1us -> bucket 0
        h.observe_ns(3_000); // 3us -> le 4us
        h.observe_ns(20_000_000_000); // 20 s -> +Inf
        let mut o = String::new();
        h.render(&mut o, "x", "a=\"b\"");
        assert!(o.contains("x_bucket{a=\"b\",le=\"1e-6\"} 1"), "{o}");
        assert!(o.contains("x_bucket{a=\"b\",le=\"4e-6\"} 2"), "{o}");
        assert!(o.contains("x_bucket{a=\"b\",le=\"+Inf\"} 3"), "{o}");
        assert!(o.contains("x_count{a=\"b\"} 3"));
    }

    /// Every sample line parses as `name{labels} value` and every family has TYPE.
    #[test]
    fn exposition_is_well_formed() {
        let s = SharedStats::default();
        s.hit_blocks.fetch_add(3, Ordering::Relaxed);
        let text = render(&s, &Gauges::default(), None);
        let mut typed = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                typed.insert(rest.split(' ').next().unwrap().to_string());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            value.parse::<f64>().unwrap();
            let name = series.split('{').next().unwrap();
            let family = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(typed.contains(family) || typed.contains(name), "{line}");
        }
        assert!(text.contains("tierkv_lookup_blocks_total{tier=\"host\",result=\"hit\"} 3"));
    }
}
