//! The host tier's series: its shared counters (every process's totals, read
//! from the arena header) and its gauges.

use std::sync::atomic::{AtomicU64, Ordering};

use super::HostTier;
use crate::metrics::Report;
use crate::tier::arena::stats::{ADAPTER_OPS, STATUS_LABELS};
use crate::tier::{TRANSFER_HELP, TRANSFER_SECONDS};

impl HostTier {
    /// Adds the host tier's series (and the engine-facing totals it keeps in the
    /// arena: lookups, loaded tokens, adapter errors) to `r`.
    pub fn report(&self, r: &mut Report) {
        self.report_engine_totals(r);
        self.report_operations(r);
        self.report_gauges(r);
    }

    /// Totals of the engine's calls, shared by every process of the store.
    fn report_engine_totals(&self, r: &mut Report) {
        let s = self.stats();
        let v = |a: &AtomicU64| a.load(Ordering::Relaxed);
        r.counter(
            "tierkv_lookups_total",
            "Prefix lookups, each request counted once (repeated lookups of a waiting request are not).",
            &[("", v(&s.lookups))],
        );
        r.counter(
            "tierkv_lookup_calls_total",
            "Lookup calls, repeated ones included.",
            &[("", v(&s.lookup_calls))],
        );
        r.counter(
            "tierkv_loaded_tokens_total",
            "Tokens of blocks loaded and verified into engine memory (what the engine serves from tierkv).",
            &[("", v(&s.loaded_tokens))],
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
            .map(|(l, i, j)| (l, v(&s.adapter_errors[i][j])))
            .filter(|&(_, n)| n > 0)
            .collect();
        let series: Vec<(&str, u64)> = labels.iter().map(|(l, n)| (l.as_str(), *n)).collect();
        r.counter(
            "tierkv_adapter_errors_total",
            "Library errors an engine adapter caught and degraded (loads recomputed, lookups missed, stores skipped).",
            &series,
        );
    }

    /// Lookups, block operations, bytes, verification failures and repairs.
    fn report_operations(&self, r: &mut Report) {
        let s = self.stats();
        let v = |a: &AtomicU64| a.load(Ordering::Relaxed);
        r.counter(
            "tierkv_lookup_blocks_total",
            "Blocks asked for by lookups, by tier and result (result=miss: found in no tier).",
            &[
                ("tier=\"host\",result=\"hit\"", v(&s.hit_blocks)),
                ("tier=\"host\",result=\"miss\"", v(&s.miss_blocks)),
            ],
        );
        r.counter(
            "tierkv_lookup_tokens_total",
            "Tokens of the blocks asked for by lookups, by tier and result.",
            &[
                ("tier=\"host\",result=\"hit\"", v(&s.hit_tokens)),
                ("tier=\"host\",result=\"miss\"", v(&s.miss_tokens)),
            ],
        );
        r.counter(
            "tierkv_block_ops_total",
            "Block operations by tier and op.",
            &[
                ("tier=\"host\",op=\"store\"", v(&s.stored_blocks)),
                ("tier=\"host\",op=\"store_dedup\"", v(&s.store_dedup)),
                ("tier=\"host\",op=\"store_rejected\"", v(&s.store_rejected)),
                ("tier=\"host\",op=\"load\"", v(&s.loaded_blocks)),
                ("tier=\"host\",op=\"load_miss\"", v(&s.load_misses)),
                ("tier=\"host\",op=\"evict\"", v(&s.evictions)),
            ],
        );
        r.counter(
            "tierkv_transfer_bytes_total",
            "Bytes copied between tiers.",
            &[
                ("src=\"engine\",dst=\"host\"", v(&s.stored_bytes)),
                ("src=\"host\",dst=\"engine\"", v(&s.loaded_bytes)),
            ],
        );
        r.counter(
            "tierkv_checksum_failures_total",
            "Loaded blocks whose checksum or identity did not verify (served as misses).",
            &[("tier=\"host\"", v(&s.checksum_failures))],
        );
        r.counter(
            "tierkv_recoveries_total",
            "Repairs of the host tier: a process died holding the lock or mid-store, or the index was damaged.",
            &[
                ("kind=\"lock_owner\"", v(&s.lock_recoveries)),
                ("kind=\"dead_writer\"", v(&s.dead_writer_reclaims)),
                ("kind=\"index\"", v(&s.index_repairs)),
            ],
        );
        r.counter(
            "tierkv_lock_timeouts_total",
            "Host-tier operations that missed because the shared index lock was not free within 2 s.",
            &[("", v(&s.lock_timeouts))],
        );
        r.counter(
            "tierkv_writes_lost_total",
            "Host-tier stores whose slot was reclaimed (write deadline passed) before they committed.",
            &[("", v(&s.writes_lost))],
        );
    }

    /// Occupancy, capacity and the copy latencies.
    fn report_gauges(&self, r: &mut Report) {
        let s = self.stats();
        let g = self.arena().geometry();
        let blocks = self.block_count().unwrap_or(0);
        r.gauge(
            "tierkv_tier_blocks",
            "Blocks held by the tier.",
            &[("tier=\"host\"", blocks)],
        );
        r.gauge(
            "tierkv_tier_capacity_blocks",
            "Tier capacity in blocks.",
            &[("tier=\"host\"", u64::from(g.n_slots))],
        );
        r.gauge(
            "tierkv_tier_capacity_bytes",
            "Tier capacity in bytes, metadata included.",
            &[("tier=\"host\"", g.file_len)],
        );
        r.gauge(
            "tierkv_tier_up",
            "Whether the tier is serving (0: failed, see the log).",
            &[("tier=\"host\"", 1)],
        );
        r.gauge(
            "tierkv_block_bytes",
            "Payload bytes of one block.",
            &[("", g.slot_bytes)],
        );
        r.histogram(
            TRANSFER_SECONDS,
            TRANSFER_HELP,
            "src=\"engine\",dst=\"host\"",
            &s.store_latency,
        );
        r.histogram(
            TRANSFER_SECONDS,
            TRANSFER_HELP,
            "src=\"host\",dst=\"engine\"",
            &s.load_latency,
        );
    }
}
