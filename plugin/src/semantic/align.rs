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
//!    tokens (between the long in-order runs) is searched for anchors (8-grams)
//!    anywhere in the source, and each anchor is extended forward: this finds documents that moved (reordered
//!    retrieved passages), which an in-order diff reports as delete + insert.
//!    Runs then grow backwards over equal tokens the anchors could not reach.
//! 3. Replaced spans (same place, other tokens: a swapped name or number) are kept
//!    apart, paired position by position, as candidates for substitution where a
//!    policy allows it.
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

/// What [`align`] looks for besides the in-order diff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlignOptions {
    /// Runs shorter than this are not moves.
    pub min_run: usize,
    /// Search for moved passages.
    pub moves: bool,
    /// Longest replaced span (target tokens) kept as a substitution candidate.
    pub max_span: usize,
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

/// Aligns `target` with `source`; moved runs shorter than `min_run` are dropped (a
/// coincidental match of a few common tokens elsewhere is not a move).
pub fn align(source: &[u32], target: &[u32], deadline: Duration, opts: AlignOptions) -> Alignment {
    let min_run = opts.min_run;
    let ops = similar::capture_diff_slices_deadline(Algorithm::Myers, source, target, Some(Instant::now() + deadline));
    let mut equal = Vec::new();
    let mut replaced = Vec::new();
    for op in ops {
        match op {
            DiffOp::Equal {
                old_index,
                new_index,
                len,
            } => equal.push(m(new_index, old_index, len)),
            DiffOp::Replace {
                old_index,
                old_len,
                new_index,
                new_len,
            } if new_len <= opts.max_span => {
                // Position by position; extra target tokens pair with the last
                // source token of the span (a longer name, a longer number).
                replaced.push(m(new_index, old_index, old_len.min(new_len)));
                for k in old_len..new_len {
                    replaced.push(m(new_index + k, old_index + old_len - 1, 1));
                }
            }
            DiffOp::Replace { .. } | DiffOp::Insert { .. } | DiffOp::Delete { .. } => {}
        }
    }
    // The move search looks at what the long in-order runs leave: short runs inside
    // a moved passage (a common "Q:" line) must not cut it into pieces.
    let long: Vec<Match> = equal.iter().filter(|x| x.len as usize >= min_run).copied().collect();
    let gaps = complement(
        long.iter().map(|x| (x.target as usize, x.target_end() as usize)),
        target.len(),
    );
    let found = if opts.moves {
        find_moves(source, target, &gaps)
    } else {
        Vec::new()
    };
    let moved: Vec<Match> = found.into_iter().filter(|x| x.len as usize >= min_run).collect();
    // Short in-order runs and replaced spans that a move explains give way to it.
    equal.retain(|r| !moved.iter().any(|mv| overlaps(r, mv)));
    replaced.retain(|r| !moved.iter().any(|mv| overlaps(r, mv)));
    equal.extend(moved);
    equal.sort_unstable_by_key(|x| x.target);
    extend_forwards(source, target, &mut equal, min_run);
    extend_backwards(source, target, &mut equal);
    replaced.retain(|r| !equal.iter().any(|e| overlaps(r, e)));
    replaced.sort_unstable_by_key(|x| x.target);
    Alignment { equal, replaced }
}

/// Grows each long run forwards while the tokens stay equal, up to the next long
/// run (a move found by anchors stops where its gap ended; the passage may go on
/// past a few tokens the diff matched elsewhere), and drops the short runs it
/// covers.
fn extend_forwards(source: &[u32], target: &[u32], runs: &mut Vec<Match>, min_run: usize) {
    let long: Vec<usize> = (0..runs.len()).filter(|&i| runs[i].len as usize >= min_run).collect();
    for (k, &i) in long.iter().enumerate() {
        let limit = long.get(k + 1).map_or(target.len(), |&j| runs[j].target as usize);
        let r = &mut runs[i];
        while (r.target_end() as usize) < limit
            && ((r.source + r.len) as usize) < source.len()
            && target[r.target_end() as usize] == source[(r.source + r.len) as usize]
        {
            r.len += 1;
        }
    }
    let grown: Vec<Match> = long.iter().map(|&i| runs[i]).collect();
    runs.retain(|r| r.len as usize >= min_run || !grown.iter().any(|g| overlaps(r, g)));
}

/// Grows each run backwards over uncovered target positions whose tokens equal the
/// source's before it: the few separator tokens ("\n\nPassage:") in front of a
/// moved passage, too short for an anchor.
fn extend_backwards(source: &[u32], target: &[u32], runs: &mut [Match]) {
    let mut floor = 0;
    for r in runs.iter_mut() {
        while r.target > floor && r.source > 0 && target[r.target as usize - 1] == source[r.source as usize - 1] {
            r.target -= 1;
            r.source -= 1;
            r.len += 1;
        }
        floor = r.target_end();
    }
}

/// `(start, len)` of the gaps between sorted, disjoint `[a, b)` ranges in `[0, n)`.
fn complement(ranges: impl Iterator<Item = (usize, usize)>, n: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    for (a, b) in ranges {
        if a > at {
            out.push((at, a - at));
        }
        at = at.max(b);
    }
    if at < n {
        out.push((at, n - at));
    }
    out
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

/// Anchored search of target gaps in the whole source (a moved passage may sit
/// where the diff matched a few common tokens); first occurrence of each anchor,
/// so the result is deterministic.
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
