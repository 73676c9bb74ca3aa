//! PQ retrieval's counters ([`PqStats`], `tierkv_pq_*`) and their series.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::metrics::{Histogram, Report};

/// Counters of the PQ indexes of one manager.
#[derive(Debug, Default)]
pub struct PqStats {
    /// Indexes built.
    pub builds: AtomicU64,
    /// Time to build an index (every layer and head: k-means, encoding).
    pub build_latency: Histogram,
    /// Bytes of codes and centroids of the live indexes.
    pub index_bytes: AtomicU64,
    /// Tokens indexed in the live indexes (per layer and head once).
    pub index_tokens: AtomicU64,
    /// Top-k selections (one per layer and call).
    pub topk_calls: AtomicU64,
    /// Time of a top-k selection of one layer (every KV head).
    pub topk_latency: Histogram,
    /// Tokens selected (sinks, window and top-k, summed over KV heads).
    pub selected_tokens: AtomicU64,
    /// Gathers (one per layer and call).
    pub gathers: AtomicU64,
    /// Time of one layer's gather (every KV head).
    pub gather_latency: Histogram,
    /// Bytes of K and V rows written to gather buffers (fp32).
    pub gathered_bytes: AtomicU64,
    /// Bytes of blocks fetched from the tiers for gathers (block-cache misses).
    pub fetched_bytes: AtomicU64,
    /// Block regions a gather found in its index's block cache.
    pub cache_hits: AtomicU64,
    /// Block regions a gather read from the tiers.
    pub cache_misses: AtomicU64,
}

/// Adds the series of `s` to `r`.
pub fn report(s: &PqStats, r: &mut Report) {
    let v = |a: &AtomicU64| a.load(Ordering::Relaxed);
    r.counter(
        "tierkv_pq_builds_total",
        "PQ indexes built (tierkv_pq_build).",
        &[("", v(&s.builds))],
    );
    r.histogram(
        "tierkv_pq_build_seconds",
        "Time to build a PQ index: k-means and encoding of every layer and KV head.",
        "",
        &s.build_latency,
    );
    r.gauge(
        "tierkv_pq_index_bytes",
        "Bytes of codes and centroids of the live PQ indexes.",
        &[("", v(&s.index_bytes))],
    );
    r.gauge(
        "tierkv_pq_index_tokens",
        "Tokens indexed by the live PQ indexes.",
        &[("", v(&s.index_tokens))],
    );
    r.counter(
        "tierkv_pq_topk_total",
        "Top-k selections, one per layer and call (tierkv_pq_topk).",
        &[("", v(&s.topk_calls))],
    );
    r.histogram(
        "tierkv_pq_topk_seconds",
        "Time of one layer's top-k selection (LUTs, code scan, softmax per query head, top-k; every KV head).",
        "",
        &s.topk_latency,
    );
    r.counter(
        "tierkv_pq_selected_tokens_total",
        "Tokens selected for attention (sinks, local window and top-k, summed over KV heads).",
        &[("", v(&s.selected_tokens))],
    );
    r.counter(
        "tierkv_pq_gathers_total",
        "Gathers of selected tokens' K and V, one per layer and call (tierkv_pq_gather).",
        &[("", v(&s.gathers))],
    );
    r.histogram(
        "tierkv_pq_gather_seconds",
        "Time of one layer's gather: block-cache lookups, fetches of the missed blocks from the tiers, row copies.",
        "",
        &s.gather_latency,
    );
    r.counter(
        "tierkv_pq_gathered_bytes_total",
        "Bytes of K and V rows (fp32) written to gather buffers.",
        &[("", v(&s.gathered_bytes))],
    );
    r.counter(
        "tierkv_pq_fetched_bytes_total",
        "Bytes gathers read from the tiers (block-cache misses: a region from the host tier, or a whole block from a lower tier).",
        &[("", v(&s.fetched_bytes))],
    );
    r.counter(
        "tierkv_pq_block_cache_total",
        "Block regions (a layer's K and V) a gather needed, by where it found them: result=hit (the index's LFU block cache) or miss (read from the tiers).",
        &[("result=\"hit\"", v(&s.cache_hits)), ("result=\"miss\"", v(&s.cache_misses))],
    );
}
