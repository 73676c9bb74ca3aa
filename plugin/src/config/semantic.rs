//! The `TIERKV_SEMANTIC*` variables, read into semantic sharing's own settings
//! ([`SemanticPolicy`]), defaults from the table.

use super::parse::{parse_bool, BOOL_FORMS};
use super::read::{int_in, Vars};
use super::ConfigError;
use crate::semantic::SemanticPolicy;

fn fraction(s: &str) -> Option<f32> {
    s.parse::<f32>().ok().filter(|x| (0.0..=1.0).contains(x))
}

const FRACTION: &str = "a number from 0 to 1";

/// Reads the `TIERKV_SEMANTIC*` variables.
pub(super) fn read(v: &Vars<impl Fn(&str) -> Option<String>>) -> Result<SemanticPolicy, ConfigError> {
    let (shift, shift_forms) = int_in(0u32, 1 << 24);
    let (prefix_shift, prefix_shift_forms) = int_in(0u32, 1 << 24);
    let (sub, sub_forms) = int_in(0u32, 1 << 16);
    let (span, span_forms) = int_in(1u32, 1 << 16);
    let (prompts, prompt_forms) = int_in(1usize, 10_000_000);
    let namespaces = |s: &str| {
        Some(
            s.split(',')
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty())
                .collect::<Vec<_>>(),
        )
    };
    Ok(SemanticPolicy {
        enabled: v.value("TIERKV_SEMANTIC", parse_bool, BOOL_FORMS)?,
        namespaces: v
            .get("TIERKV_SEMANTIC_NAMESPACES", namespaces, "comma-separated namespaces")?
            .unwrap_or_default(),
        min_similarity: v.value("TIERKV_SEMANTIC_MIN_SIMILARITY", fraction, FRACTION)?,
        max_recompute: v.value("TIERKV_SEMANTIC_MAX_RECOMPUTE", fraction, FRACTION)?,
        blend: v.value("TIERKV_SEMANTIC_BLEND", fraction, FRACTION)?,
        max_shift: v.value("TIERKV_SEMANTIC_MAX_SHIFT", shift, &shift_forms)?,
        consult_below: v.value("TIERKV_SEMANTIC_BELOW", fraction, FRACTION)?,
        substitute: v.value("TIERKV_SEMANTIC_SUBSTITUTE", sub, &sub_forms)?,
        substitute_span: v.value("TIERKV_SEMANTIC_SUBSTITUTE_SPAN", span, &span_forms)?,
        prefix_shift: v.value("TIERKV_SEMANTIC_PREFIX_SHIFT", prefix_shift, &prefix_shift_forms)?,
        moves: v.value("TIERKV_SEMANTIC_MOVES", parse_bool, BOOL_FORMS)?,
        prompts: v.value("TIERKV_SEMANTIC_PROMPTS", prompts, &prompt_forms)?,
    })
}
