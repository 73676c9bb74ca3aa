//! Semantic lookup latency against index size and prompt length, printed as a
//! table next to the exact-prefix work every request already pays (hashing the
//! prompt's blocks), measured in the same run.
//!
//! Run: `cargo bench -p tierkv --bench semantic` (add `-- --quick` for a smoke run).
//! Cases (medians over queries; each query is a near-duplicate of an indexed
//! prompt with 16 tokens replaced in the middle and the question at the end new):
//! 1. `distinct`: index of N unrelated prompts of 1,024 tokens, N = 1K, 10K, 100K.
//! 2. `length`: 10K unrelated prompts of L tokens, L = 1K, 4K, 16K, 32K.
//! 3. `templated`: 10K prompts of 4,096 tokens that share a 3,072-token template
//!    (every prompt is a candidate of every other: the worst case for the probe).
//! 4. `moves`: as `length` 4K, with the moved-passage search on
//!    (`TIERKV_SEMANTIC_MOVES=1`).
//!
//! Every case but `moves` runs the default policy.
//!
//! Columns: the whole lookup (signature, LSH probe, up to 4 alignments, plan), its
//! alignment share, and the ratio to hashing the prompt's blocks (xxh3-128,
//! 16-token blocks).

use std::hint::black_box;
use std::time::Instant;

use tierkv::prefix::{BlockHash, BlockHasher, HashAlgo};
use tierkv::semantic::{align, SemanticIndex, SemanticPolicy, ALIGN_DEADLINE};

fn words(seed: u64, n: usize) -> Vec<u32> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 49_152) as u32
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A near-duplicate of `p`: 16 tokens replaced in the middle, the last 32 new.
fn query_of(p: &[u32], seed: u64) -> Vec<u32> {
    let mut q = p.to_vec();
    let mid = q.len() / 2;
    q[mid..mid + 16].copy_from_slice(&words(seed ^ 0xabc, 16));
    let n = q.len();
    q[n - 32..].copy_from_slice(&words(seed ^ 0xdef, 32));
    q
}

fn case(name: &str, prompts: Vec<Vec<u32>>, queries: usize, moves: bool) {
    let ix = SemanticIndex::new(prompts.len());
    let hasher = BlockHasher::new(HashAlgo::Xxh3_128, 16, "bench", "").unwrap_or_else(|| unreachable!());
    let t = Instant::now();
    for (i, p) in prompts.iter().enumerate() {
        let hashes: Vec<BlockHash> = (0..p.len() as u128 / 16)
            .map(|b| BlockHash((i as u128) << 32 | b))
            .collect();
        ix.insert(p, hashes);
    }
    let build_s = t.elapsed().as_secs_f64();
    // The default policy (no move search), or with TIERKV_SEMANTIC_MOVES.
    let policy = SemanticPolicy {
        enabled: true,
        moves,
        ..SemanticPolicy::default()
    };
    let (mut look, mut al, mut hash, mut found) = (Vec::new(), Vec::new(), Vec::new(), 0);
    for k in 0..queries {
        let src = &prompts[(k * 7919) % prompts.len()];
        let q = query_of(src, k as u64);
        let t = Instant::now();
        let r = ix.lookup(black_box(&q), 0, 16, &policy, |_| true);
        look.push(t.elapsed().as_nanos() as f64);
        found += usize::from(r.is_ok());
        let t = Instant::now();
        black_box(align::align(src, &q, ALIGN_DEADLINE, policy.align_options()));
        al.push(t.elapsed().as_nanos() as f64);
        let mut out = Vec::new();
        let t = Instant::now();
        hasher.hash_blocks(None, black_box(&q), &mut out);
        hash.push(t.elapsed().as_nanos() as f64);
    }
    let (l, a, h) = (median(look), median(al), median(hash));
    println!(
        "{name}\t{}\t{}\t{:.1}\t{:.1}\t{:.1}\t{:.1}x\t{found}/{queries}\t{build_s:.2}",
        prompts.len(),
        prompts[0].len(),
        l / 1e3,
        a / 1e3,
        h / 1e3,
        l / h
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let scale = if quick { 10 } else { 1 };
    let queries = if quick { 5 } else { 51 };
    println!("case\tprompts\ttokens\tlookup_us\talign_us\thash_us\tlookup/hash\tplans\tbuild_s");
    for n in [1_000, 10_000, 100_000] {
        case(
            "distinct",
            (0..n / scale).map(|i| words(i as u64, 1024)).collect(),
            queries,
            false,
        );
    }
    for len in [1024, 4096, 16_384, 32_768] {
        case(
            "length",
            (0..10_000 / scale).map(|i| words(i as u64, len)).collect(),
            queries,
            false,
        );
    }
    let template = words(u64::MAX, 4096);
    let templated = (0..10_000 / scale)
        .map(|i| {
            let mut p = template.clone();
            p[3072..].copy_from_slice(&words(i as u64, 1024));
            p
        })
        .collect();
    case("templated", templated, queries, false);
    let moves = (0..10_000 / scale).map(|i| words(i as u64, 4096)).collect();
    case("moves", moves, queries, true);
}
