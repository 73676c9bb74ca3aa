//! Token-level alignment of a new prompt (target) with a cached one (source).
//!
//! Core type: [`Alignment`]: runs of equal tokens ([`Match`]) and equal-length
//! replaced spans ([`Match`] too, over different tokens), both sorted by target
//! position and disjoint in the target.
//!
//! Workflow:
//! 1. Myers diff (the `similar` crate) with a deadline: the longest common
//!    subsequence in order. Past the deadline it returns a coarser diff, never hangs.
//! 2. Moves: a target gap (inserted or replaced tokens) of at least [`ANCHOR`]
//!    tokens is searched for anchors (8-grams) anywhere in the source, and each
//!    anchor is extended forward: this finds documents that moved (reordered
//!    retrieved passages), which an in-order diff reports as delete + insert.
//! 3. Replaced spans (same place, other tokens: a swapped name or number) are kept
//!    apart, as candidates for substitution where a policy allows it.
//!
//! ```text
//!   source  [sys][doc A][doc B][q1]
//!   target  [sys][doc B][doc A][q2]
//!   diff    sys = , doc B inserted, doc A = , doc B deleted, q replaced
//!   moves   doc B (target) found at its source position by anchors
//! ```

use std::collections::HashMap;
use std::time::{Duration, Instant};

use similar::{Algorithm, DiffOp};

/// Tokens per anchor of the move search.
pub const ANCHOR: usize = 8;

/// `len` tokens at `target..` taken from `source..`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match {
    /// First target position.
    pub target: u32,
    /// First source position.
    pub source: u32,
    /// Tokens.
    pub len: u32,
}

impl Match {
    /// One past the last target position.
    pub fn target_end(&self) -> u32 {
        self.target + self.len
    }
}

/// The result of [`align`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Alignment {
    /// Equal tokens, sorted by target, disjoint.
    pub equal: Vec<Match>,
    /// Replaced spans paired position by position (the shorter side's length),
    /// sorted by target, disjoint from `equal`.
    pub replaced: Vec<Match>,
}

/// Aligns `target` with `source`; runs shorter than `min_run` are dropped (a
/// coincidental match of a few common tokens is not worth reusing).
pub fn align(source: &[u32], target: &[u32], deadline: Duration, min_run: usize) -> Alignment {
    let ops = similar::capture_diff_slices_deadline(Algorithm::Myers, source, target, Some(Instant::now() + deadline));
    let mut equal = Vec::new();
    let mut replaced = Vec::new();
    let mut gaps = Vec::new();
    for op in ops {
        match op {
            DiffOp::Equal {
                old_index,
                new_index,
                len,
            } => equal.push(m(new_index, old_index, len)),
            DiffOp::Insert { new_index, new_len, .. } => gaps.push((new_index, new_len)),
            DiffOp::Replace {
                old_index,
                old_len,
                new_index,
                new_len,
            } => {
                gaps.push((new_index, new_len));
                replaced.push(m(new_index, old_index, old_len.min(new_len)));
            }
            DiffOp::Delete { .. } => {}
        }
    }
    let moved = find_moves(source, target, &gaps);
    // A replaced span that a move explains is not a substitution any more.
    replaced.retain(|r| !moved.iter().any(|mv| overlaps(r, mv)));
    equal.extend(moved);
    equal.retain(|x| x.len as usize >= min_run);
    equal.sort_unstable_by_key(|x| x.target);
    replaced.sort_unstable_by_key(|x| x.target);
    Alignment { equal, replaced }
}

fn m(target: usize, source: usize, len: usize) -> Match {
    Match {
        target: target as u32,
        source: source as u32,
        len: len as u32,
    }
}

fn overlaps(a: &Match, b: &Match) -> bool {
    a.target < b.target_end() && b.target < a.target_end()
}

/// Anchored search of target gaps in the whole source (first occurrence of each
/// anchor, so the result is deterministic).
fn find_moves(source: &[u32], target: &[u32], gaps: &[(usize, usize)]) -> Vec<Match> {
    let mut out = Vec::new();
    if source.len() < ANCHOR || !gaps.iter().any(|&(_, n)| n >= ANCHOR) {
        return out;
    }
    let mut first: HashMap<&[u32], usize> = HashMap::new();
    for (i, w) in source.windows(ANCHOR).enumerate() {
        first.entry(w).or_insert(i);
    }
    for &(start, len) in gaps.iter().filter(|&&(_, n)| n >= ANCHOR) {
        let end = start + len;
        let mut i = start;
        while i + ANCHOR <= end {
            match first.get(&target[i..i + ANCHOR]) {
                Some(&j) => {
                    let mut n = ANCHOR;
                    while i + n < end && j + n < source.len() && target[i + n] == source[j + n] {
                        n += 1;
                    }
                    out.push(m(i, j, n));
                    i += n;
                }
                None => i += 1,
            }
        }
    }
    out
}
