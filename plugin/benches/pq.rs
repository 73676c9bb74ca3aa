//! The cost of PQ retrieval (`tierkv::pq`) on a CPU, next to what it replaces,
//! in one run. Shapes of SmolLM2-135M: 30 layers, 3 KV heads of 64 dimensions,
//! 3 query heads per KV head; PQCache's m = 2 sub-spaces of 2^6 centroids, 32
//! sinks, a budget of 1/5 of the context.
//!
//! Run: `cargo bench -p tierkv --bench pq [-- --quick]`. Cases, at 2K, 8K and 32K
//! tokens of context:
//! 1. `build`: k-means of one (layer, head) (both sub-spaces; trained on at most
//!    8,192 keys after the sinks), then encoding every key; per (layer, head,
//!    sub-space) and for the whole model (30 x 3 heads, one thread).
//! 2. `step`: one decode step for every layer: per KV head the LUTs of its 3
//!    query heads, the scan of every candidate's codes, softmax per query head
//!    summed over the group, top-k. Against `exact`: the exact scores `q . k` of
//!    the same candidates for the same query heads (what PQ must beat to be worth
//!    it on a CPU), and `exact+topk` (the oracle selection's whole cost).
//! 3. Memory: codes + centroids against the fp32 K and V bytes of the context.
//!
//! The keys are random here (uniform in [-1, 1)): k-means runs its full 25
//! iterations on them (real keys converge sooner), and the costs of the scan and
//! top-k do not depend on the values. Quality on real keys is another matter:
//! docs/pq.md.

use std::hint::black_box;
use std::time::Instant;

use tierkv::pq::{group_scores, topk, Budget, HeadIndex, Rng, Scratch, Train};

const LAYERS: usize = 30;
const KV_HEADS: usize = 3;
const GROUP: usize = 3;
const DIM: usize = 64;
const SINK: usize = 32;
const BUDGET: f64 = 0.2;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| r.unit() as f32 * 2.0 - 1.0).collect()
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let sizes: &[usize] = if quick { &[2048] } else { &[2048, 8192, 32768] };
    let reps = if quick { 3 } else { 7 };
    let t = Train::default();
    println!(
        "PQ retrieval cost: {LAYERS} layers x {KV_HEADS} KV heads x {GROUP} query heads, head_dim {DIM}, m = {}, {} centroids, budget {BUDGET}, {SINK} sinks; medians of {reps}",
        t.subspaces,
        1 << t.bits
    );
    println!(
        "{:>7} {:>14} {:>12} {:>11} {:>11} {:>13} {:>9} {:>12} {:>12}",
        "tokens",
        "kmeans/sub ms",
        "model build s",
        "step ms",
        "exact ms",
        "exact+topk ms",
        "pq/exact",
        "index MiB",
        "KV MiB"
    );
    for &n in sizes {
        // One head's keys; every (layer, head) of the model costs the same.
        let keys = random(n * DIM, n as u64);
        let mut builds = Vec::new();
        let mut idx = None;
        for r in 0..reps.min(3) {
            let t0 = Instant::now();
            let i = HeadIndex::build(&keys, DIM, SINK, &Train { seed: r as u64, ..t }).unwrap();
            builds.push(t0.elapsed().as_secs_f64());
            idx = Some(i);
        }
        let idx = idx.unwrap();
        let build = median(builds);
        let budget = Budget::of(n, BUDGET, SINK);
        let cand = budget.candidates(n);
        let queries = random(GROUP * DIM, 99);
        let mut s = Scratch::default();
        // A decode step: every layer and KV head (the same index stands in for each).
        let mut steps = Vec::new();
        for _ in 0..reps {
            let t0 = Instant::now();
            for _ in 0..LAYERS * KV_HEADS {
                black_box(idx.select(black_box(&queries), &budget, &mut s));
            }
            steps.push(t0.elapsed().as_secs_f64());
        }
        let (mut exact, mut exact_topk) = (Vec::new(), Vec::new());
        let mut raw = vec![0f32; GROUP * cand.len()];
        let mut agg = vec![0f32; cand.len()];
        let mut order = Vec::new();
        for _ in 0..reps {
            let (mut e, mut et) = (0.0, 0.0);
            for _ in 0..LAYERS * KV_HEADS {
                let t0 = Instant::now();
                for (h, q) in queries.chunks_exact(DIM).enumerate() {
                    for (o, k) in raw[h * cand.len()..(h + 1) * cand.len()]
                        .iter_mut()
                        .zip(keys[cand.start * DIM..cand.end * DIM].chunks_exact(DIM))
                    {
                        *o = q.iter().zip(k).map(|(a, b)| a * b).sum();
                    }
                }
                black_box(&raw);
                e += t0.elapsed().as_secs_f64();
                group_scores(&raw, cand.len(), 1.0 / (DIM as f32).sqrt(), &mut agg);
                black_box(topk(&agg, budget.topk, &mut order));
                et += t0.elapsed().as_secs_f64();
            }
            exact.push(e);
            exact_topk.push(et);
        }
        let (step, ex, ext) = (median(steps), median(exact), median(exact_topk));
        let index_bytes = idx.bytes() * LAYERS * KV_HEADS;
        let kv_bytes = n * DIM * 4 * 2 * LAYERS * KV_HEADS;
        println!(
            "{n:>7} {:>14.2} {:>12.2} {:>11.3} {:>11.3} {:>13.3} {:>9.2} {:>12.2} {:>12.1}",
            build * 1e3 / t.subspaces as f64,
            build * (LAYERS * KV_HEADS) as f64,
            step * 1e3,
            ex * 1e3,
            ext * 1e3,
            step / ex,
            index_bytes as f64 / (1 << 20) as f64,
            kv_bytes as f64 / (1 << 20) as f64,
        );
    }
}
