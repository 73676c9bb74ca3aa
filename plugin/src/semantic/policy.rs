//! The semantic-sharing policy: which namespaces may reuse near-duplicate KV, and
//! how much difference a plan may carry. Built from the `TIERKV_SEMANTIC*` variables
//! by `crate::config`; every default is the safe one (off).

use super::align;

/// Policy knobs of semantic sharing.
#[derive(Debug, Clone, PartialEq)]
pub struct SemanticPolicy {
    /// On at all (`TIERKV_SEMANTIC`). Default: false.
    pub enabled: bool,
    /// Namespaces it is on for (`TIERKV_SEMANTIC_NAMESPACES`); empty: every
    /// namespace. Sharing never crosses a namespace either way.
    pub namespaces: Vec<String>,
    /// Least fraction of the prompt covered by reusable runs
    /// (`TIERKV_SEMANTIC_MIN_SIMILARITY`). Default 0.5.
    pub min_similarity: f32,
    /// Most fraction of the prompt a plan may recompute
    /// (`TIERKV_SEMANTIC_MAX_RECOMPUTE`). Default 0.3.
    pub max_recompute: f32,
    /// Extra fraction of the prompt recomputed after each edit, CacheBlend style
    /// (`TIERKV_SEMANTIC_BLEND`). Default 0.15.
    pub blend: f32,
    /// Largest position shift of a reused run (`TIERKV_SEMANTIC_MAX_SHIFT`).
    /// Default 4096.
    pub max_shift: u32,
    /// Consult the index only when the exact prefix hit covers less than this
    /// fraction of the prompt (`TIERKV_SEMANTIC_BELOW`). Default 0.5.
    pub consult_below: f32,
    /// Replaced tokens an approximate prefix may serve with the source's KV
    /// (`TIERKV_SEMANTIC_SUBSTITUTE`). Default 0: a substituted token keeps the
    /// KV of the token it replaced, so a question about it is answered from the
    /// other request (measured: a swapped customer name answered with the source's
    /// name, docs/benchmarks.md). Engines that recompute holes ignore it.
    pub substitute: u32,
    /// Longest replaced span that may be substituted
    /// (`TIERKV_SEMANTIC_SUBSTITUTE_SPAN`). Default 8: a name or a number, not a
    /// reworded sentence.
    pub substitute_span: u32,
    /// Largest position shift of KV an approximate prefix may serve
    /// (`TIERKV_SEMANTIC_PREFIX_SHIFT`). Default 0: text inserted or deleted before
    /// a position changed what its KV attended to, and a prefix-only engine cannot
    /// recompute it (a chat window that slid lost its answers, docs/benchmarks.md).
    pub prefix_shift: u32,
    /// Reuse passages that moved (`TIERKV_SEMANTIC_MOVES`). Default false: their KV
    /// was computed after other text, and without recomputing the tokens after
    /// each move the answers change (docs/benchmarks.md).
    pub moves: bool,
    /// Prompts the index holds (`TIERKV_SEMANTIC_PROMPTS`). Default 10000.
    pub prompts: usize,
}

impl Default for SemanticPolicy {
    fn default() -> Self {
        Self {
            enabled: false,
            namespaces: Vec::new(),
            min_similarity: 0.5,
            max_recompute: 0.3,
            blend: 0.15,
            max_shift: 4096,
            consult_below: 0.5,
            substitute: 0,
            substitute_span: 8,
            prefix_shift: 0,
            moves: false,
            prompts: 10_000,
        }
    }
}

impl SemanticPolicy {
    /// The alignment this policy asks for.
    pub fn align_options(&self) -> align::AlignOptions {
        align::AlignOptions {
            min_run: super::MIN_RUN,
            moves: self.moves,
            max_span: self.substitute_span as usize,
        }
    }

    /// Whether sharing is on for `namespace`: an entry equal to it, or to its last
    /// `|`-separated field (the vLLM connector composes `model|dtype|kv|TIERKV_NAMESPACE`).
    pub fn on_for(&self, namespace: &str) -> bool {
        if !self.enabled {
            return false;
        }
        if self.namespaces.is_empty() {
            return true;
        }
        let last = namespace.rsplit('|').next().unwrap_or(namespace);
        self.namespaces.iter().any(|n| n == namespace || n == last)
    }
}
