//! [`ReusePlan`]: which target positions take KV from which source positions, and
//! which must be recomputed.
//!
//! Workflow ([`ReusePlan::build`]):
//! 1. Keep the aligned runs that lie in the source's stored full blocks and shift
//!    by at most `max_shift` positions.
//! 2. Holes (target positions no run covers) are recomputed.
//! 3. A blend budget (`blend` x prompt length) is spent on the tokens right after
//!    each difference (a hole, or a seam where the source does not continue: text
//!    deleted, a passage moved), nearest first, round-robin across differences:
//!    their KV attended to other tokens in the source, and after CacheBlend the
//!    first ones deviate most. They are removed from the runs and recomputed too.
//! 4. [`ReusePlan::approximate_prefix`] turns the plan into what an engine that can
//!    only load a prefix (vLLM) can use: the longest block-aligned `[0, L)` with
//!    every position taken from a source (runs, blend tokens served from the source
//!    as they are, and at most `substitute` replaced tokens).
//!
//! ```text
//!   target   0 ........ 40 ... 44 ........... 100     (block_tokens 16)
//!   runs     [0, 40) shift 0 | hole [40, 44) | [44, 100) shift +2
//!   blend    [44, 50) recomputed after the hole
//!   prefix   L = 32 with substitute 0 (the hole at 40 stops it, aligned down)
//! ```

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use crate::prefix::BlockHash;

use super::align::{Alignment, Match};
use super::policy::SemanticPolicy;

/// `len` target positions from `target` take KV from source positions `source..`;
/// keys are re-rotated by `target - source`.
pub type ReuseRun = Match;

/// Where one target position's KV comes from (for [`crate::Manager::load_tokens`]).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TokenSource {
    /// Index into the source block identities passed with the map.
    pub block: u32,
    /// Token slot in that block.
    pub slot: u32,
    /// Target position minus source position (RoPE re-rotation).
    pub delta: i32,
}

/// A plan to build a prompt's KV from a cached near-duplicate.
#[derive(Debug, Clone, PartialEq)]
pub struct ReusePlan {
    /// Index id of the source prompt.
    pub source_id: u64,
    /// Identities of the source's stored full blocks.
    pub source_hashes: Arc<[BlockHash]>,
    /// Tokens per block.
    pub block_tokens: u32,
    /// Target prompt length.
    pub target_len: u32,
    /// Runs to load, sorted by target, disjoint, none overlapping `recompute`.
    pub runs: Vec<ReuseRun>,
    /// Target ranges to recompute (holes and blend), sorted, merged.
    pub recompute: Vec<Range<u32>>,
    /// Blend tokens (part of `recompute`), with the source position they would
    /// have been loaded from.
    pub blend: Vec<ReuseRun>,
    /// Replaced spans paired position by position (substitution candidates).
    pub replaced: Vec<ReuseRun>,
    /// Estimated Jaccard similarity from the signatures.
    pub estimate: f32,
}

impl ReusePlan {
    /// Builds the plan for a target of `target_len` tokens from `al`.
    pub fn build(
        al: &Alignment,
        source_id: u64,
        source_hashes: Arc<[BlockHash]>,
        block_tokens: u32,
        target_len: u32,
        estimate: f32,
        policy: &SemanticPolicy,
    ) -> Self {
        let stored = source_hashes.len() as u32 * block_tokens;
        let usable = |r: &Match| -> Option<Match> {
            let len = r
                .len
                .min(stored.saturating_sub(r.source))
                .min(target_len.saturating_sub(r.target));
            let shift = (i64::from(r.target) - i64::from(r.source)).unsigned_abs();
            (len > 0 && shift <= u64::from(policy.max_shift)).then_some(Match { len, ..*r })
        };
        let mut runs: Vec<Match> = al.equal.iter().filter_map(usable).collect();
        let replaced: Vec<Match> = al.replaced.iter().filter_map(usable).collect();
        let budget = (policy.blend * target_len as f32) as u32;
        let blend = take_blend(&mut runs, budget);
        let mut recompute = holes(&runs, target_len);
        recompute.extend(blend.iter().map(|b| b.target..b.target_end()));
        Self {
            source_id,
            source_hashes,
            block_tokens,
            target_len,
            runs,
            recompute: merge(recompute),
            blend,
            replaced,
            estimate,
        }
    }

    /// Target tokens loaded from the source.
    pub fn reused_tokens(&self) -> u32 {
        self.runs.iter().map(|r| r.len).sum()
    }

    /// Target tokens to recompute.
    pub fn recompute_tokens(&self) -> u32 {
        self.recompute.iter().map(|r| r.end - r.start).sum()
    }

    /// Fraction of the target covered by the source (runs and blend tokens).
    pub fn coverage(&self) -> f32 {
        let blend: u32 = self.blend.iter().map(|b| b.len).sum();
        (self.reused_tokens() + blend) as f32 / self.target_len.max(1) as f32
    }

    /// The longest block-aligned `[0, L)` an engine that can only load a prefix can
    /// take from the source (positions before `exact_tokens` come from the exact
    /// prefix hit), at most `limit` tokens; 0 when nothing beyond `exact_tokens`.
    /// At most `substitute` replaced tokens are served with the KV of the tokens
    /// they replaced, and no position whose source lies more than `max_shift`
    /// positions away (text inserted or deleted before it) is served.
    pub fn approximate_prefix(&self, exact_tokens: u32, limit: u32, substitute: u32, max_shift: u32) -> u32 {
        let mut sources = self.sources_in_order();
        sources.retain(|(_, sub)| !sub || substitute > 0);
        let mut at = exact_tokens;
        let mut substituted = 0;
        for (r, sub) in sources {
            if r.target_end() <= at {
                continue;
            }
            if r.target > at || r.target.abs_diff(r.source) > max_shift {
                break;
            }
            let take = r.target_end() - at;
            if sub {
                let room = substitute - substituted;
                if take > room {
                    at += room;
                    break;
                }
                substituted += take;
            }
            at = r.target_end();
        }
        let l = at.min(limit) / self.block_tokens * self.block_tokens;
        if l > exact_tokens {
            l
        } else {
            0
        }
    }

    /// Every source span in target order: runs, blend tokens (served from the
    /// source in an approximate prefix), and replaced spans (flagged `true`).
    fn sources_in_order(&self) -> Vec<(Match, bool)> {
        let mut all: Vec<(Match, bool)> = self
            .runs
            .iter()
            .chain(&self.blend)
            .map(|r| (*r, false))
            .chain(self.replaced.iter().map(|r| (*r, true)))
            .collect();
        all.sort_unstable_by_key(|(r, sub)| (r.target, *sub));
        all
    }

    /// Where each position of target blocks `[first, first + n)` comes from, for an
    /// approximate prefix ending at or after them: `(source block identities, one
    /// TokenSource per position)`. `None` if a position has no source.
    pub fn token_map(&self, first: u32, n: u32, substitute: bool) -> Option<(Vec<BlockHash>, Vec<TokenSource>)> {
        let bt = self.block_tokens;
        let (start, end) = (first * bt, (first + n) * bt);
        let mut blocks: Vec<u32> = Vec::new();
        let mut index: HashMap<u32, u32> = HashMap::new();
        let mut map = Vec::with_capacity((end - start) as usize);
        // Sources are sorted by target and disjoint: one pass with a cursor.
        let sources: Vec<Match> = self
            .sources_in_order()
            .into_iter()
            .filter(|(_, sub)| !sub || substitute)
            .map(|(r, _)| r)
            .collect();
        let mut k = 0;
        for p in start..end {
            while k < sources.len() && sources[k].target_end() <= p {
                k += 1;
            }
            let r = sources.get(k).filter(|r| r.target <= p)?;
            let sp = r.source + (p - r.target);
            let idx = *index.entry(sp / bt).or_insert_with(|| {
                blocks.push(sp / bt);
                blocks.len() as u32 - 1
            });
            map.push(TokenSource {
                block: idx,
                slot: sp % bt,
                delta: (i64::from(p) - i64::from(sp)) as i32,
            });
        }
        let hashes = blocks.iter().map(|&b| self.source_hashes[b as usize]).collect();
        Some((hashes, map))
    }
}

/// Takes up to `budget` tokens from the starts of runs that follow a difference (a
/// hole or a seam), round-robin, nearest to the difference first.
fn take_blend(runs: &mut Vec<Match>, mut budget: u32) -> Vec<Match> {
    // A run follows a difference when target positions before it are not loaded
    // (a hole) or when its source does not continue the previous run's (text
    // deleted before it, or a moved passage): either way its KV attended to
    // context the target does not have.
    let mut after_diff: Vec<usize> = (0..runs.len())
        .filter(|&i| match i {
            0 => runs[0].target > 0 || runs[0].source > 0,
            _ => runs[i - 1].target_end() < runs[i].target || runs[i - 1].source + runs[i - 1].len != runs[i].source,
        })
        .collect();
    let mut taken = vec![0u32; runs.len()];
    while budget > 0 && !after_diff.is_empty() {
        after_diff.retain(|&i| taken[i] < runs[i].len);
        for &i in &after_diff {
            if budget == 0 {
                break;
            }
            taken[i] += 1;
            budget -= 1;
        }
    }
    let mut blend = Vec::new();
    for (r, &t) in runs.iter_mut().zip(&taken) {
        if t > 0 {
            blend.push(Match { len: t, ..*r });
            r.target += t;
            r.source += t;
            r.len -= t;
        }
    }
    runs.retain(|r| r.len > 0);
    blend
}

fn holes(runs: &[Match], target_len: u32) -> Vec<Range<u32>> {
    let mut out = Vec::new();
    let mut at = 0;
    for r in runs {
        if r.target > at {
            out.push(at..r.target);
        }
        at = at.max(r.target_end());
    }
    if at < target_len {
        out.push(at..target_len);
    }
    out
}

fn merge(mut v: Vec<Range<u32>>) -> Vec<Range<u32>> {
    v.sort_unstable_by_key(|r| r.start);
    let mut out: Vec<Range<u32>> = Vec::with_capacity(v.len());
    for r in v {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}
