//! [`PqSettings`]: what PQ retrieval is told (built by `crate::config` from the
//! `TIERKV_PQ_*` variables; a caller may give its own per index).

use super::codebook::Train;

/// PQ retrieval's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PqSettings {
    /// Tokens attended per decode step, as a fraction of the context: half local
    /// window, half top-k, plus the sinks (`TIERKV_PQ_BUDGET`).
    pub budget: f64,
    /// Attention sinks: the first tokens, always attended and not trained on
    /// (`TIERKV_PQ_SINK`).
    pub sink: usize,
    /// Codebook training: sub-spaces (`TIERKV_PQ_SUBSPACES`), bits per code
    /// (`TIERKV_PQ_BITS`), sample, iterations, seed.
    pub train: Train,
    /// Bytes of hot block regions an index keeps for its gathers, LFU
    /// (`TIERKV_PQ_CACHE_BYTES`; 0: every gather fetches from the tiers).
    pub cache_bytes: u64,
}

impl Default for PqSettings {
    /// PQCache's: 1/5 of the context, 32 sinks, m = 2, b = 6; 64 MiB of block cache.
    fn default() -> Self {
        Self {
            budget: 0.2,
            sink: 32,
            train: Train::default(),
            cache_bytes: 64 << 20,
        }
    }
}
