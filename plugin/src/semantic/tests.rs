//! Semantic sharing: retrieval, alignment, plans, token maps and synthesis.

use std::collections::HashMap;

use proptest::prelude::*;
use tierkv_cuda::reference::{rerotate_keys, KeyDtype, RopeSpec};

use super::plan::TokenSource;
use super::synth::{TokenLayout, TokenRows};
use super::*;
use crate::tier::layout::Region;

const BT: u32 = 16;

/// Deterministic pseudo-random tokens (a vocabulary of 5000).
fn words(seed: u64, n: usize) -> Vec<u32> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 5000) as u32
        })
        .collect()
}

fn hashes_for(tokens: &[u32], tag: u128) -> Vec<BlockHash> {
    (0..tokens.len() as u128 / u128::from(BT))
        .map(|i| BlockHash(tag << 32 | i))
        .collect()
}

/// Sharing on, every kind of reuse allowed (moves, any substitution).
fn policy() -> SemanticPolicy {
    SemanticPolicy {
        enabled: true,
        moves: true,
        substitute: 64,
        substitute_span: 64,
        ..SemanticPolicy::default()
    }
}

fn index_with(prompts: &[(&[u32], u128)]) -> SemanticIndex {
    // A generous alignment budget: plans must not depend on the machine's load
    // (a debug build under parallel tests is far slower than the 20 ms default's
    // measured 35 us).
    let ix = SemanticIndex::new(100).with_align_deadline(std::time::Duration::from_secs(10));
    for (p, tag) in prompts {
        ix.insert(p, hashes_for(p, *tag)).unwrap();
    }
    ix
}

/// Every plan invariant: runs sorted and disjoint, each reused token equal to its
/// source token, runs and recompute partition the target exactly.
fn check_plan(p: &ReusePlan, source: &[u32], target: &[u32]) {
    let mut covered = vec![0u8; target.len()];
    for r in &p.runs {
        for k in 0..r.len {
            let (t, s) = ((r.target + k) as usize, (r.source + k) as usize);
            assert_eq!(target[t], source[s], "reused token differs at target {t}");
            assert!(
                s < p.source_hashes.len() * BT as usize,
                "source position {s} not stored"
            );
            covered[t] += 1;
        }
    }
    for r in &p.recompute {
        for t in r.clone() {
            covered[t as usize] += 1;
        }
    }
    assert!(
        covered.iter().all(|&c| c == 1),
        "runs and recompute partition the target"
    );
}

#[test]
fn a_prompt_that_is_not_similar_gets_no_plan() {
    let a = words(1, 512);
    let b = words(2, 512);
    let ix = index_with(&[(&a, 1)]);
    assert_eq!(
        ix.lookup(&b, 0, BT, &policy(), |_| true).unwrap_err(),
        Rejection::NoCandidate
    );
    // The same prompt is found (and the plan is the identity).
    let p = ix.lookup(&a, 0, BT, &policy(), |_| true).unwrap();
    assert_eq!(p.runs.len(), 1);
    assert_eq!((p.runs[0].target, p.runs[0].source), (0, 0));
    assert_eq!(
        ix.stats().rejected[Rejection::NoCandidate as usize].load(Ordering::Relaxed),
        1
    );
}

#[test]
fn a_swapped_name_is_recomputed_and_stops_the_approximate_prefix() {
    // source: 200 tokens, 4 "name" tokens at 100..104, 200 more.
    let source = words(3, 404);
    let mut target = source.clone();
    target[100..104].copy_from_slice(&[4990, 4991, 4992, 4993]);
    let ix = index_with(&[(&source, 7)]);
    let p = ix.lookup(&target, 0, BT, &policy(), |_| true).unwrap();
    check_plan(&p, &source, &target);
    // Expected: runs [0,100) and [164, 400); hole [100,104) plus the blend budget
    // (0.15 * 404 = 60 tokens) right after it; [400, 404) is past the source's
    // stored full blocks.
    assert_eq!(p.runs[0].target..p.runs[0].target_end(), 0..100);
    assert_eq!(p.recompute, vec![100..164, 400..404]);
    assert_eq!(p.replaced.len(), 1);
    // A prefix-only engine: up to the block holding the swap (96), or past it when 4
    // substituted tokens are allowed (up to the last full block before 403).
    assert_eq!(p.approximate_prefix(0, 403, 0, u32::MAX), 96);
    assert_eq!(p.approximate_prefix(0, 403, 3, u32::MAX), 96);
    assert_eq!(p.approximate_prefix(0, 403, 4, u32::MAX), 400);
    // The swap keeps every later position where it was: no shift to refuse.
    assert_eq!(p.approximate_prefix(0, 403, 4, 0), 400);
    // Nothing beyond an exact hit that already reaches the swap.
    assert_eq!(p.approximate_prefix(96, 403, 0, u32::MAX), 0);
}

#[test]
fn a_deleted_passage_shifts_what_follows_and_the_prefix_shift_limit_stops_it() {
    // A chat window that slid: the target drops the source's first 96-token turn.
    let (sys, turn, rest) = (words(20, 64), words(21, 96), words(22, 400));
    let source: Vec<u32> = [&sys[..], &turn, &rest].concat();
    let target: Vec<u32> = [&sys[..], &rest].concat();
    let ix = index_with(&[(&source, 1)]);
    let p = ix.lookup(&target, 64, BT, &policy(), |_| true).unwrap();
    check_plan(&p, &source, &target);
    assert!(p.runs.iter().any(|r| r.source == r.target + 96), "{:?}", p.runs);
    // No target position is missing, yet what follows the seam attended to the
    // deleted turn: the blend budget is spent right after it (engines that
    // recompute).
    let budget = (policy().blend * target.len() as f32) as u32;
    assert_eq!(p.recompute, vec![64..64 + budget], "{:?}", p.recompute);
    // Every later position has a source 96 positions on: served only when a shift
    // of 96 is allowed; by default (no shift) nothing beyond the exact 64.
    assert!(p.approximate_prefix(64, 463, 0, 96) > 400);
    assert_eq!(p.approximate_prefix(64, 463, 0, 95), 0);
    assert_eq!(
        p.approximate_prefix(64, 463, 0, SemanticPolicy::default().prefix_shift),
        0
    );
}

#[test]
fn reordered_documents_are_found_as_moves_with_shifted_positions() {
    let (sys, a, b) = (words(10, 64), words(11, 300), words(12, 200));
    let source: Vec<u32> = [&sys[..], &a, &b, &words(13, 20)].concat();
    let target: Vec<u32> = [&sys[..], &b, &a, &words(14, 20)].concat();
    let ix = index_with(&[(&source, 1)]);
    let p = ix.lookup(&target, 64, BT, &policy(), |_| true).unwrap();
    check_plan(&p, &source, &target);
    assert!(p.coverage() > 0.9, "coverage {}", p.coverage());
    let shifts: Vec<i64> = p
        .runs
        .iter()
        .map(|r| i64::from(r.target) - i64::from(r.source))
        .collect();
    assert!(
        shifts.contains(&-300) && shifts.contains(&200),
        "doc B moved back 300, doc A on 200: {shifts:?}"
    );
    // Everything but the differing question can be loaded as a prefix.
    assert_eq!(p.approximate_prefix(64, 583, 0, u32::MAX), 560);
    // Served only where the moved passages' shifts are allowed.
    assert_eq!(p.approximate_prefix(64, 583, 0, 0), 0);
    assert_eq!(p.approximate_prefix(64, 583, 0, 299), 0);
    let (srcs, map) = p.token_map(4, 31, false).unwrap();
    for (k, s) in map.iter().enumerate() {
        let t = 64 + k;
        let sp = srcs_pos(&srcs, s, &p);
        assert_eq!(target[t], source[sp], "target {t}");
        assert_eq!(i64::from(s.delta), t as i64 - sp as i64);
    }
}

/// Source position of a token-map entry.
fn srcs_pos(srcs: &[BlockHash], s: &TokenSource, p: &ReusePlan) -> usize {
    let block = p
        .source_hashes
        .iter()
        .position(|h| *h == srcs[s.block as usize])
        .unwrap();
    block * BT as usize + s.slot as usize
}

#[test]
fn plans_are_deterministic_and_the_most_similar_source_wins() {
    let base = words(20, 600);
    let mut near = base.clone();
    near[300..310].copy_from_slice(&words(21, 10));
    let mut far = base.clone();
    for i in (0..600).step_by(40) {
        far[i..i + 12].copy_from_slice(&words(22 + i as u64, 12));
    }
    let ix = index_with(&[(&far, 1), (&near, 2)]);
    let p1 = ix.lookup(&base, 0, BT, &policy(), |_| true).unwrap();
    let p2 = ix.lookup(&base, 0, BT, &policy(), |_| true).unwrap();
    assert_eq!(p1, p2);
    assert_eq!(
        p1.source_hashes[0],
        BlockHash(2 << 32),
        "the near duplicate is the source"
    );
}

#[test]
fn gone_sources_are_removed_and_capacity_is_bounded() {
    let ix = SemanticIndex::new(3);
    let ps: Vec<Vec<u32>> = (0..5).map(|i| words(30 + i, 256)).collect();
    for (i, p) in ps.iter().enumerate() {
        ix.insert(p, hashes_for(p, i as u128)).unwrap();
        // The same prompt again is refreshed, not duplicated.
        ix.insert(p, hashes_for(p, i as u128)).unwrap();
    }
    assert_eq!(ix.len(), 3, "the two oldest left");
    assert_eq!(
        ix.lookup(&ps[0], 0, BT, &policy(), |_| true).unwrap_err(),
        Rejection::NoCandidate
    );
    assert!(ix.lookup(&ps[4], 0, BT, &policy(), |_| true).is_ok());
    assert_eq!(
        ix.lookup(&ps[4], 0, BT, &policy(), |_| false).unwrap_err(),
        Rejection::NoCandidate
    );
    assert_eq!(ix.len(), 2, "the gone source was removed");
    assert_eq!(ix.stats().removed_gone.load(Ordering::Relaxed), 1);
}

#[test]
fn policy_limits_reject_with_their_reason() {
    let source = words(40, 400);
    let mut target = source.clone();
    target[200..300].copy_from_slice(&words(41, 100));
    let ix = index_with(&[(&source, 1)]);
    let strict = SemanticPolicy {
        max_recompute: 0.2,
        ..policy()
    };
    assert_eq!(
        ix.lookup(&target, 0, BT, &strict, |_| true).unwrap_err(),
        Rejection::TooMuchRecompute
    );
    let picky = SemanticPolicy {
        min_similarity: 0.9,
        ..policy()
    };
    assert_eq!(
        ix.lookup(&target, 0, BT, &picky, |_| true).unwrap_err(),
        Rejection::BelowSimilarity
    );
    let no_shift = SemanticPolicy {
        max_shift: 0,
        ..policy()
    };
    let shifted: Vec<u32> = [&words(42, 40)[..], &source].concat();
    let p = ix.lookup(&shifted, 0, BT, &policy(), |_| true).unwrap();
    assert!(p.runs.iter().all(|r| r.target == r.source + 40));
    assert_eq!(
        ix.lookup(&shifted, 0, BT, &no_shift, |_| true).unwrap_err(),
        Rejection::BelowSimilarity
    );
    assert_eq!(
        ix.lookup(&source, 400, BT, &policy(), |_| true).unwrap_err(),
        Rejection::NoGain
    );
}

#[test]
fn the_default_policy_serves_no_approximate_kv_to_a_prefix_only_engine() {
    let defaults = SemanticPolicy {
        enabled: true,
        ..SemanticPolicy::default()
    };
    let (sys, a, b) = (words(50, 64), words(51, 300), words(52, 200));
    let source: Vec<u32> = [&sys[..], &a, &b, &words(53, 20)].concat();
    let target: Vec<u32> = [&sys[..], &b, &a, &words(54, 20)].concat();
    let ix = index_with(&[(&source, 1)]);
    // Without the moved passage the plan recomputes too much: refused.
    assert_eq!(
        ix.lookup(&target, 0, BT, &defaults, |_| true).unwrap_err(),
        Rejection::TooMuchRecompute
    );
    // A 4-token name: planned (a recomputing engine can use it), but a prefix-only
    // engine gets nothing past the exact block by default; with substitution
    // allowed, the name is substituted; a 12-token rewording exceeds the span.
    let long_text = words(55, 400);
    let mut name = long_text.clone();
    name[20..24].copy_from_slice(&words(56, 4));
    let mut reworded = long_text.clone();
    reworded[20..32].copy_from_slice(&words(57, 12));
    let ix = index_with(&[(&long_text, 2)]);
    let p = ix.lookup(&name, 0, BT, &defaults, |_| true).unwrap();
    let (sub, shift) = (defaults.substitute, defaults.prefix_shift);
    assert_eq!((sub, shift), (0, 0));
    assert_eq!(p.approximate_prefix(16, 399, sub, shift), 0);
    assert_eq!(p.approximate_prefix(16, 399, 8, shift), 384);
    let p = ix.lookup(&reworded, 0, BT, &defaults, |_| true).unwrap();
    assert_eq!(
        p.approximate_prefix(16, 399, 8, u32::MAX),
        0,
        "only the exact first block"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn random_edits_give_valid_plans(
        seed in 0u64..1000,
        edits in proptest::collection::vec((0usize..500, 0usize..20, 0usize..20), 0..6),
    ) {
        let source = words(seed, 500);
        let mut target = source.clone();
        for (i, (at, del, ins)) in edits.iter().enumerate() {
            let at = (*at).min(target.len());
            let del = (*del).min(target.len() - at);
            target.splice(at..at + del, words(seed * 31 + i as u64, *ins));
        }
        prop_assume!(target.len() >= 64);
        let p = ReusePlan::build(
            &align::align(&source, &target, ALIGN_DEADLINE, policy().align_options()),
            0, hashes_for(&source, 1).into(), BT, target.len() as u32, 1.0, &policy(),
        );
        check_plan(&p, &source, &target);
        let l = p.approximate_prefix(0, target.len() as u32 - 1, 0, u32::MAX);
        prop_assert!(l.is_multiple_of(BT) && l < target.len() as u32);
        if l > 0 {
            let (srcs, map) = p.token_map(0, l / BT, false).unwrap();
            for (t, s) in map.iter().enumerate() {
                prop_assert_eq!(target[t], source[srcs_pos(&srcs, s, &p)]);
            }
        }
    }
}

/// vLLM's CPU layout for `heads` KV heads of `dim` fp32 elements: one region per
/// layer, `[heads, 2 * BT, dim]` per block: per head the keys transposed
/// (`[dim][BT]`), then the value rows.
fn cpu_layout_rows(layers: u32, heads: u32, dim: u32) -> (Vec<Region>, Vec<TokenRows>) {
    let row = u64::from(dim) * 4;
    let per_block = u64::from(heads) * 2 * u64::from(BT) * row;
    let regions: Vec<Region> = (0..layers)
        .map(|l| Region {
            base: 0x1000 * (u64::from(l) + 1),
            block_stride: per_block,
            bytes_per_block: per_block,
        })
        .collect();
    let mut rows = Vec::new();
    for l in 0..layers {
        // Keys transposed ([dim][BT] per head), values as rows.
        rows.push(TokenRows {
            region: l,
            is_key: 1,
            offset: 0,
            token_stride: 4,
            head_stride: 2 * u64::from(BT) * row,
            heads,
            row_bytes: row as u32,
            elem_stride: u64::from(BT) * 4,
        });
        rows.push(TokenRows {
            region: l,
            is_key: 0,
            offset: u64::from(BT) * row,
            token_stride: row,
            head_stride: 2 * u64::from(BT) * row,
            heads,
            row_bytes: row as u32,
            elem_stride: 0,
        });
    }
    (regions, rows)
}

#[test]
fn token_layouts_must_tile_every_block_exactly() {
    let (regions, mut rows) = cpu_layout_rows(2, 3, 64);
    let rope = RopeSpec::standard(1, 64, 64, 10000.0, true).unwrap();
    assert!(TokenLayout::new(&regions, BT, &rows, KeyDtype::F32, rope.clone()).is_ok());
    let v = rows.pop().unwrap();
    let e = TokenLayout::new(&regions, BT, &rows, KeyDtype::F32, rope.clone()).unwrap_err();
    assert!(e.0.contains("region 1"), "{e}");
    rows.push(TokenRows { offset: 4, ..v });
    assert!(TokenLayout::new(&regions, BT, &rows, KeyDtype::F32, rope.clone()).is_err());
    rows.pop();
    rows.push(TokenRows { row_bytes: 128, ..v });
    assert!(TokenLayout::new(&regions, BT, &rows, KeyDtype::F32, rope).is_err());
}

#[test]
fn synthesized_blocks_copy_values_and_rerotate_keys_like_the_reference() {
    let (layers, heads, dim) = (2u32, 3u32, 64u32);
    let (regions, rows) = cpu_layout_rows(layers, heads, dim);
    let rope = RopeSpec::standard(1, dim, dim, 100_000.0, true).unwrap();
    let tl = TokenLayout::new(&regions, BT, &rows, KeyDtype::F32, rope.clone()).unwrap();
    let block = regions[0].bytes_per_block as usize;
    let sources: Vec<Vec<u8>> = (0..2u32)
        .map(|s| {
            (0..block * layers as usize / 4)
                .flat_map(|i| ((i as f32 * 0.37 + s as f32).sin()).to_ne_bytes())
                .collect()
        })
        .collect();
    // Target slot t takes source block t % 2, slot 15 - t, delta t - 3.
    let map: Vec<TokenSource> = (0..BT)
        .map(|t| TokenSource {
            block: t % 2,
            slot: BT - 1 - t,
            delta: t as i32 - 3,
        })
        .collect();
    let mut mem = vec![vec![0xAAu8; block]; layers as usize];
    let mut out: Vec<&mut [u8]> = mem.iter_mut().map(|m| &mut m[..]).collect();
    tl.synthesize(&sources, &map, &mut out, &mut HashMap::new());
    let row = dim as usize * 4;
    let bt = BT as usize;
    // Key of token t, head h (transposed): element d at ((h * 2 * BT) * dim + d * BT + t) * 4.
    let key = |buf: &[u8], h: usize, t: usize| -> Vec<u8> {
        (0..dim as usize)
            .flat_map(|d| {
                let at = (h * 2 * bt * dim as usize + d * bt + t) * 4;
                buf[at..at + 4].to_vec()
            })
            .collect()
    };
    for l in 0..layers as usize {
        for h in 0..heads as usize {
            for (t, s) in map.iter().enumerate() {
                let src = &sources[s.block as usize][l * block..(l + 1) * block];
                let mut want = key(src, h, s.slot as usize);
                let one = RopeSpec {
                    heads: 1,
                    ..rope.clone()
                };
                rerotate_keys(&mut want, KeyDtype::F32, &one, &[s.delta]).unwrap();
                assert_eq!(key(&mem[l], h, t), want, "key layer {l} head {h} slot {t}");
                let v_src = (h * 2 * bt + bt + s.slot as usize) * row;
                let v_dst = (h * 2 * bt + bt + t) * row;
                assert_eq!(&mem[l][v_dst..v_dst + row], &src[v_src..v_src + row], "value");
            }
        }
    }
}
