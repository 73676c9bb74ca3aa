//! The remote tier's series: present whenever a remote tier is configured;
//! `tierkv_tier_up{tier="remote"}` is 0 while the store cannot be reached.

use std::sync::atomic::{AtomicU64, Ordering};

use super::RemoteTier;
use crate::metrics::Report;
use crate::tier::{TRANSFER_HELP, TRANSFER_SECONDS};

/// Adds the series of `t` to `r`.
pub fn report(t: &RemoteTier, r: &mut Report) {
    let d = t.stats();
    let v = |a: &AtomicU64| a.load(Ordering::Relaxed);
    r.counter(
        "tierkv_lookup_blocks_total",
        "Blocks asked for by lookups, by tier and result (result=miss: found in no tier).",
        &[("tier=\"remote\",result=\"hit\"", v(&d.hit_blocks))],
    );
    r.counter(
        "tierkv_block_ops_total",
        "Block operations by tier and op.",
        &[
            ("tier=\"remote\",op=\"store\"", v(&d.written_blocks)),
            ("tier=\"remote\",op=\"load\"", v(&d.read_blocks)),
            ("tier=\"remote\",op=\"load_miss\"", v(&d.read_misses)),
        ],
    );
    r.counter(
        "tierkv_transfer_bytes_total",
        "Bytes copied between tiers.",
        &[
            ("src=\"host\",dst=\"remote\"", v(&d.written_bytes)),
            ("src=\"remote\",dst=\"engine\"", v(&d.read_bytes)),
        ],
    );
    r.counter(
        "tierkv_checksum_failures_total",
        "Loaded blocks whose checksum or identity did not verify (served as misses).",
        &[("tier=\"remote\"", v(&d.checksum_failures))],
    );
    r.gauge(
        "tierkv_tier_up",
        "Whether the tier is serving (0: failed, see the log).",
        &[("tier=\"remote\"", u64::from(t.is_up()))],
    );
    r.gauge(
        "tierkv_queue_depth",
        "Jobs waiting in a bounded queue.",
        &[("queue=\"remote_write\"", t.queued())],
    );
    r.gauge(
        "tierkv_remote_known_keys",
        "Remote keys whose presence this process remembers (lookups answer from them).",
        &[("", t.known_keys() as u64)],
    );
    r.counter(
        "tierkv_remote_writes_total",
        "Remote-tier writes by result (exists: another node stored the block first; dropped: queue full; down: store unreachable; error: failed at the store).",
        &[
            ("result=\"stored\"", v(&d.written_blocks)),
            ("result=\"exists\"", v(&d.write_exists)),
            ("result=\"dropped\"", v(&d.write_dropped)),
            ("result=\"down\"", v(&d.write_down)),
            ("result=\"error\"", v(&d.write_errors)),
        ],
    );
    r.counter(
        "tierkv_remote_loads_total",
        "Remote-tier block loads by result (miss: evicted or expired; corrupt: did not verify, deleted; error: failed at the store).",
        &[
            ("result=\"hit\"", v(&d.read_blocks)),
            ("result=\"miss\"", v(&d.read_misses)),
            ("result=\"corrupt\"", v(&d.checksum_failures)),
            ("result=\"error\"", v(&d.read_errors)),
        ],
    );
    r.counter(
        "tierkv_remote_probes_total",
        "Keys the remote tier asked the store about, by answer (error: no answer, taken as absent).",
        &[
            ("result=\"present\"", v(&d.probe_present)),
            ("result=\"absent\"", v(&d.probe_absent)),
            ("result=\"error\"", v(&d.probe_errors)),
        ],
    );
    r.counter(
        "tierkv_remote_lookups_pending_total",
        "Lookups answered 'ask again later' while the remote tier probed the store.",
        &[("", v(&d.lookups_pending))],
    );
    r.counter(
        "tierkv_remote_connects_total",
        "Connections to the store, by result.",
        &[
            ("result=\"ok\"", v(&d.connects)),
            ("result=\"failed\"", v(&d.connect_failures)),
        ],
    );
    r.histogram(
        TRANSFER_SECONDS,
        TRANSFER_HELP,
        "src=\"host\",dst=\"remote\"",
        &d.write_latency,
    );
    r.histogram(
        TRANSFER_SECONDS,
        TRANSFER_HELP,
        "src=\"remote\",dst=\"engine\"",
        &d.read_latency,
    );
}
