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
//! 4. `gather` (2K and 8K tokens): a decode step's selections (every layer, from
//!    the PQ index of stored blocks in vLLM's CPU layout, 16 tokens a block,
//!    host tier) copied row by row into compact buffers (`Manager::pq_gather`:
//!    per touched block the layer's region, read from the host tier and checked
//!    against the build's digest), with no block cache, with the default 64 MiB
//!    LFU cache and with a cache holding every region (`gather-all`: the row
//!    copies alone), against loading every block the step's selections touch
//!    whole into engine blocks (what an engine without a gather moves). With
//!    random keys the selections scatter over nearly every block (the worst
//!    case; the LFU hit ratio on real keys is in `integration/bench/pq_quality.py`).
//!
//! The keys are random here (uniform in [-1, 1)): k-means runs its full 25
//! iterations on them (real keys converge sooner), and the costs of the scan and
//! top-k do not depend on the values. Quality on real keys is another matter:
//! docs/pq.md.

use std::hint::black_box;
use std::time::Instant;

use tierkv::config::Config;
use tierkv::pq::{group_scores, topk, Budget, HeadIndex, Rng, Scratch, Train};
use tierkv::semantic::synth::{row_rope, TokenRows};
use tierkv::tier::layout::Region;
use tierkv::{Manager, ManagerParams};
use tierkv_cuda::reference::KeyDtype;

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
    gather(if quick { &[2048] } else { &[2048, 8192] }, reps);
}

/// Tokens a block (vLLM's default).
const BT: usize = 16;

/// Case 4: gathers against whole-block loads (see the file's overview).
fn gather(sizes: &[usize], reps: usize) {
    println!(
        "\ngather per decode step (every layer), 16-token blocks in the host tier, random keys; medians of {reps}"
    );
    println!(
        "{:>7} {:>7} {:>12} {:>14} {:>9} {:>14} {:>9} {:>9} {:>14} {:>10}",
        "tokens",
        "blocks",
        "gather-0 ms",
        "gather-LFU ms",
        "LFU hits",
        "gather-all ms",
        "whole ms",
        "rows MiB",
        "fetched-0 MiB",
        "whole MiB"
    );
    // vLLM's CPU layout per layer and block: per KV head K as [dim][BT], then V [BT][dim].
    let slab = 2 * DIM * BT * 4;
    let region = KV_HEADS * slab;
    let block = LAYERS * region;
    for &n in sizes {
        let nb = n.div_ceil(BT);
        let shm = tempfile::tempdir().unwrap();
        let cfg = Config {
            shm_dir: shm.path().to_path_buf(),
            cpu_bytes: (2 * nb * block) as u64 + (64 << 20),
            hw_interval: None,
            ..Config::default()
        };
        let params = ManagerParams {
            block_tokens: BT as u32,
            block_bytes: block as u64,
            namespace: Some(format!("pq-bench-{n}")),
            pool_blocks: 0,
            disk_reader: false,
            pool_engine_order: false,
        };
        let m = Manager::new(cfg, params).unwrap();
        // Engine memory: nb blocks of the request, then nb more to load whole blocks into.
        let mut mems: Vec<Vec<f32>> = (0..LAYERS).map(|l| random(2 * nb * region / 4, l as u64 + 7)).collect();
        let regions: Vec<Region> = mems
            .iter_mut()
            .map(|mem| Region {
                base: mem.as_mut_ptr() as u64,
                block_stride: region as u64,
                bytes_per_block: region as u64,
            })
            .collect();
        m.register_layout(&regions, 2 * nb as u64).unwrap();
        let rows: Vec<TokenRows> = (0..LAYERS as u32)
            .flat_map(|l| {
                let k = TokenRows {
                    region: l,
                    is_key: 1,
                    offset: 0,
                    token_stride: 4,
                    head_stride: slab as u64,
                    heads: KV_HEADS as u32,
                    row_bytes: (DIM * 4) as u32,
                    elem_stride: (BT * 4) as u64,
                };
                let v = TokenRows {
                    is_key: 0,
                    offset: (DIM * BT * 4) as u64,
                    token_stride: (DIM * 4) as u64,
                    elem_stride: 0,
                    ..k
                };
                [k, v]
            })
            .collect();
        let rope = row_rope(DIM as u32, DIM as u32, 10000.0, true, None).unwrap();
        m.register_token_layout(&rows, KeyDtype::F32, rope).unwrap();
        let tokens: Vec<u32> = (0..(nb * BT) as u32).map(|t| t * 7 + n as u32).collect();
        let mut hs = Vec::new();
        m.hash_tokens(None, &tokens, &mut hs).unwrap();
        let ids: Vec<u64> = (0..nb as u64).collect();
        let mut out = vec![tierkv::tier::StoreOutcome::NoSpace; nb];
        // SAFETY: the engine memory is ours and not written during the call.
        unsafe { m.store_blocks(&hs, &ids, &mut out) }.unwrap();
        let settings = |cache_bytes| tierkv::pq::PqSettings {
            cache_bytes,
            ..m.pq_settings()
        };
        let (ix0, ixc, ixa) = (
            m.pq_build_blocks(&hs, n, Some(settings(0))).unwrap(),
            m.pq_build_blocks(&hs, n, Some(settings(64 << 20))).unwrap(),
            m.pq_build_blocks(&hs, n, Some(settings((nb * block) as u64))).unwrap(),
        );
        // One decode step's selections: every layer's, from its own queries.
        let sels: Vec<Vec<Vec<u32>>> = (0..LAYERS)
            .map(|l| {
                let mut o = vec![Vec::new(); KV_HEADS];
                let q = random(KV_HEADS * GROUP * DIM, 1000 + l as u64);
                ix0.topk(l, &q, GROUP, None, &mut o).unwrap();
                o
            })
            .collect();
        let cap = sels.iter().flatten().map(Vec::len).max().unwrap();
        let (mut k, mut v, mut got) = (
            vec![0f32; KV_HEADS * cap * DIM],
            vec![0f32; KV_HEADS * cap * DIM],
            vec![0; KV_HEADS],
        );
        let mut step = |ix: &tierkv::PqHandle| {
            let t0 = Instant::now();
            for (l, sel) in sels.iter().enumerate() {
                let lists: Vec<&[u32]> = sel.iter().map(|s| &s[..]).collect();
                m.pq_gather(ix, l, &lists, cap, &mut k, &mut v, &mut got).unwrap();
                black_box(&k);
            }
            t0.elapsed().as_secs_f64()
        };
        let counter = |name: &str| -> f64 {
            let text = m.metrics_text();
            let line = text.lines().find(|l| l.starts_with(name)).unwrap_or("x 0");
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        let fetched0 = counter("tierkv_pq_fetched_bytes_total");
        let g0 = median((0..reps).map(|_| step(&ix0)).collect());
        let fetched_per_step = (counter("tierkv_pq_fetched_bytes_total") - fetched0) / reps as f64;
        let (h0, m0) = (
            counter("tierkv_pq_block_cache_total{result=\"hit\"}"),
            counter("tierkv_pq_block_cache_total{result=\"miss\"}"),
        );
        let gc = median((0..reps).map(|_| step(&ixc)).collect());
        let (h1, m1) = (
            counter("tierkv_pq_block_cache_total{result=\"hit\"}") - h0,
            counter("tierkv_pq_block_cache_total{result=\"miss\"}") - m0,
        );
        let ga = median((0..reps).map(|_| step(&ixa)).collect());
        // Whole blocks: every block some layer's selection touches, loaded once.
        let mut touched: Vec<u64> = sels
            .iter()
            .flatten()
            .flatten()
            .map(|&t| u64::from(t) / BT as u64)
            .collect();
        touched.sort_unstable();
        touched.dedup();
        let want: Vec<_> = touched.iter().map(|&b| hs[b as usize]).collect();
        let dst: Vec<u64> = touched.iter().map(|&b| nb as u64 + b).collect();
        let mut lo = vec![tierkv::tier::LoadOutcome::Miss; want.len()];
        let whole = median(
            (0..reps)
                .map(|_| {
                    let t0 = Instant::now();
                    // SAFETY: blocks nb.. of the engine memory are ours to write.
                    unsafe { m.load_blocks(&want, &dst, &mut lo) }.unwrap();
                    t0.elapsed().as_secs_f64()
                })
                .collect(),
        );
        let rows_bytes: usize = sels.iter().flatten().map(|s| s.len() * DIM * 4 * 2).sum();
        let mib = |b: f64| b / (1 << 20) as f64;
        println!(
            "{n:>7} {nb:>7} {:>12.1} {:>14.1} {:>9.2} {:>14.2} {:>9.2} {:>9.2} {:>14.1} {:>10.1}",
            g0 * 1e3,
            gc * 1e3,
            h1 / (h1 + m1).max(1.0),
            ga * 1e3,
            whole * 1e3,
            mib(rows_bytes as f64),
            mib(fetched_per_step),
            mib((touched.len() * block) as f64),
        );
    }
}
