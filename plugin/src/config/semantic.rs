//! The `TIERKV_SEMANTIC*` variables, read into semantic sharing's own settings
//! ([`SemanticPolicy`]).

use super::parse::{parse_bool, BOOL_FORMS};
use super::ConfigError;
use crate::semantic::SemanticPolicy;

/// Reads the `TIERKV_SEMANTIC*` variables through `get`.
pub(super) fn from_lookup(
    get: impl Fn(&'static str) -> Option<(&'static str, String)>,
) -> Result<SemanticPolicy, ConfigError> {
    let err = |var: &'static str, value: &str, expected: &str| ConfigError {
        var,
        value: value.to_string(),
        expected: expected.to_string(),
    };
    let d = SemanticPolicy::default();
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
        Some((var, v)) => parse_bool(&v).ok_or_else(|| err(var, &v, BOOL_FORMS))?,
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
    Ok(SemanticPolicy {
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
            Some((var, v)) => parse_bool(&v).ok_or_else(|| err(var, &v, BOOL_FORMS))?,
            None => false,
        },
        prompts: int("TIERKV_SEMANTIC_PROMPTS", 10_000, 1, 10_000_000)? as usize,
    })
}
