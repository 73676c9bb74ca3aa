//! The semantic-sharing policy: which namespaces may reuse near-duplicate KV, and
//! how much difference a plan may carry. Parsed from `TIERKV_SEMANTIC*` variables
//! by [`crate::config::Config`]; every default is the safe one (off).

use super::align;
use crate::config::ConfigError;

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
    /// (`TIERKV_SEMANTIC_SUBSTITUTE`). Default 8: a swapped name or number; the
    /// reworded system prompts of the benchmark needed 16 and lost their answers.
    pub substitute: u32,
    /// Longest replaced span that may be substituted
    /// (`TIERKV_SEMANTIC_SUBSTITUTE_SPAN`). Default 8: a name or a number, not a
    /// reworded sentence.
    pub substitute_span: u32,
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
            substitute: 8,
            substitute_span: 8,
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

    /// Reads the `TIERKV_SEMANTIC*` variables through `get`.
    pub fn from_lookup(get: impl Fn(&'static str) -> Option<(&'static str, String)>) -> Result<Self, ConfigError> {
        let err = |var: &'static str, value: &str, expected: &str| ConfigError {
            var,
            value: value.to_string(),
            expected: expected.to_string(),
        };
        let d = Self::default();
        let fraction = |name: &'static str, default: f32| -> Result<f32, ConfigError> {
            match get(name) {
                Some((var, v)) => v
                    .parse::<f32>()
                    .ok()
                    .filter(|x| (0.0..=1.0).contains(x))
                    .ok_or_else(|| err(var, &v, "a number from 0 to 1")),
                None => Ok(default),
            }
        };
        let int = |name: &'static str, default: u64, min: u64, max: u64| -> Result<u64, ConfigError> {
            match get(name) {
                Some((var, v)) => v
                    .parse::<u64>()
                    .ok()
                    .filter(|n| (min..=max).contains(n))
                    .ok_or_else(|| err(var, &v, &format!("an integer from {min} to {max}"))),
                None => Ok(default),
            }
        };
        let enabled = match get("TIERKV_SEMANTIC") {
            Some((var, v)) => crate::config::parse_bool(&v).ok_or_else(|| err(var, &v, crate::config::BOOL_FORMS))?,
            None => false,
        };
        let namespaces = get("TIERKV_SEMANTIC_NAMESPACES")
            .map(|(_, v)| {
                v.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            enabled,
            namespaces,
            min_similarity: fraction("TIERKV_SEMANTIC_MIN_SIMILARITY", d.min_similarity)?,
            max_recompute: fraction("TIERKV_SEMANTIC_MAX_RECOMPUTE", d.max_recompute)?,
            blend: fraction("TIERKV_SEMANTIC_BLEND", d.blend)?,
            max_shift: int("TIERKV_SEMANTIC_MAX_SHIFT", 4096, 0, 1 << 24)? as u32,
            consult_below: fraction("TIERKV_SEMANTIC_BELOW", d.consult_below)?,
            substitute: int("TIERKV_SEMANTIC_SUBSTITUTE", 8, 0, 1 << 16)? as u32,
            substitute_span: int("TIERKV_SEMANTIC_SUBSTITUTE_SPAN", 8, 1, 1 << 16)? as u32,
            moves: match get("TIERKV_SEMANTIC_MOVES") {
                Some((var, v)) => {
                    crate::config::parse_bool(&v).ok_or_else(|| err(var, &v, crate::config::BOOL_FORMS))?
                }
                None => false,
            },
            prompts: int("TIERKV_SEMANTIC_PROMPTS", 10_000, 1, 10_000_000)? as usize,
        })
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
