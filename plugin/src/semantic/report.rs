//! Semantic sharing's series (present when it is on for the manager's namespace).

use std::sync::atomic::{AtomicU64, Ordering};

use super::{Rejection, SemanticIndex};
use crate::metrics::Report;

impl SemanticIndex {
    /// Adds the index's series to `r`.
    pub fn report(&self, r: &mut Report) {
        let s = self.stats();
        let v = |a: &AtomicU64| a.load(Ordering::Relaxed);
        r.gauge(
            "tierkv_semantic_index_prompts",
            "Prompts in the near-duplicate index.",
            &[("", self.len() as u64)],
        );
        r.counter(
            "tierkv_semantic_lookups_total",
            "Lookups that consulted the near-duplicate index (the exact prefix hit was short).",
            &[("", v(&s.lookups))],
        );
        r.counter(
            "tierkv_semantic_candidates_total",
            "Candidate prompts aligned.",
            &[("", v(&s.candidates))],
        );
        let results: Vec<(String, u64)> = std::iter::once(("accepted", v(&s.accepted)))
            .chain(
                [
                    Rejection::NoCandidate,
                    Rejection::BelowSimilarity,
                    Rejection::TooMuchRecompute,
                    Rejection::NoGain,
                ]
                .map(|k| (k.label(), v(&s.rejected[k as usize]))),
            )
            .map(|(label, n)| (format!("result=\"{label}\""), n))
            .collect();
        let series: Vec<(&str, u64)> = results.iter().map(|(l, n)| (l.as_str(), *n)).collect();
        r.counter(
            "tierkv_semantic_plans_total",
            "Reuse plans by result: accepted, or why rejected.",
            &series,
        );
        r.counter(
            "tierkv_semantic_tokens_total",
            "Prompt tokens of accepted plans: reused from a near-duplicate, or to recompute.",
            &[
                ("kind=\"reused\"", v(&s.reused_tokens)),
                ("kind=\"recompute\"", v(&s.recompute_tokens)),
            ],
        );
        r.counter(
            "tierkv_semantic_load_blocks_total",
            "Blocks built from near-duplicate sources: loaded, or failed (source gone or corrupt; recomputed).",
            &[
                ("result=\"loaded\"", v(&s.loaded_blocks)),
                ("result=\"failed\"", v(&s.failed_blocks)),
            ],
        );
        r.counter(
            "tierkv_semantic_removed_total",
            "Indexed prompts removed because their blocks had left the host tier.",
            &[("", v(&s.removed_gone))],
        );
        r.histogram(
            "tierkv_semantic_lookup_seconds",
            "Time of a semantic lookup (signature, probe, alignment, plan).",
            "",
            &s.lookup_ns,
        );
    }
}
