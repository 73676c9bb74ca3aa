//! Product-quantized retrieval of keys for long contexts (after PQCache,
//! arXiv 2407.12820): the whole KV stays in the tiers; near the compute only a
//! PQ index of the keys is kept, and each decode step attends over the sinks,
//! the local window, and the tokens whose keys score highest for its query.
//!
//! Core types: [`PqIndex`] (every (layer, KV head) of a request), [`HeadIndex`]
//! (one head: [`Codebook`] + one code row per token), [`Budget`] (sinks, window,
//! top-k), [`PqSettings`] / [`Train`] (PQCache's defaults: 1/5 of the context,
//! 32 sinks, m = 2 sub-spaces of 2^6 centroids), [`BlockCache`] (a request's hot
//! blocks for gathers, LFU), [`PqStats`] (`tierkv_pq_*`).
//!
//! ```text
//!   prefill keys ──k-means per sub-space──► Codebook ──encode──► codes (m bytes/token)
//!   decode query ──LUT (q_j . c)──► scores = sum of m entries ──softmax per query
//!      head, summed over the KV group──► top-k ∪ sinks ∪ window ──► tokens to fetch
//! ```
//!
//! Workflow:
//! 1. [`PqIndex::build`] from each head's keys (trained after the sinks, on an
//!    evenly spaced sample of a long context; every key encoded).
//! 2. Each decode step: [`HeadIndex::select`] with the KV group's queries and the
//!    step's [`Budget`]; tokens leaving the window were encoded already
//!    ([`HeadIndex::append`], no re-clustering).
//!
//! Hand-written (no crate fits: `kmeans` needs nightly, faiss is a C library
//! Debian does not ship, linfa is heavy); loops written for autovectorisation.

mod cache;
mod codebook;
mod index;
mod kmeans;
mod report;
mod select;
mod settings;

pub use self::cache::BlockCache;
pub use self::codebook::{Codebook, PqError, Train};
pub use self::index::{HeadIndex, PqIndex, Scratch};
pub use self::kmeans::{kmeans, Clusters, Rng};
pub use self::report::{report, PqStats};
pub use self::select::{group_scores, topk, Budget};
pub use self::settings::PqSettings;
