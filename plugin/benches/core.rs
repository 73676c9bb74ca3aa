//! Hot-path benchmarks, printed as a table (one line per case, medians of several
//! repetitions), for `integration/bench/core_bench.py` to put next to vLLM's own
//! figures measured in the same run.
//!
//! Run: `cargo bench -p tierkv --bench core` (add `-- --quick` for a smoke run).
//! Cases:
//! 1. `hash_lookup`: identities of a 131,072-token prompt (16-token blocks) plus a
//!    prefix lookup of all 8,192 of them in a pool that holds them.
//! 2. `alloc_free`: allocate then free 8,192 blocks in batches of 64 (one request's
//!    blocks at a time), as vLLM's `get_new_blocks` / `free_blocks`.
//! 3. `host_store` / `host_load` against `memcpy`: 128 blocks shaped like SmolLM2's
//!    (30 layers x 48 KiB segments, 1.4 MiB a block) gathered from / scattered to a
//!    layer-major engine layout, checksummed and verified, against plain copies of
//!    the same segments.

use std::hint::black_box;
use std::time::Instant;

use tierkv::block::BlockPool;
use tierkv::config::Config;
use tierkv::prefix::{BlockHash, BlockHasher, HashAlgo};
use tierkv::tier::{HostTier, LoadOutcome};

fn median_ns(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut v: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_nanos() as f64
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let reps = if quick { 3 } else { 15 };
    println!("case\tunit\tvalue");

    // 1. Hashing + lookup.
    let tokens: Vec<u32> = (0..131_072u32)
        .map(|i| i.wrapping_mul(2_654_435_761) % 128_000)
        .collect();
    let hasher = BlockHasher::new(HashAlgo::Xxh3_128, 16, "bench-model", "").unwrap();
    let mut hashes = Vec::new();
    hasher.hash_blocks(None, &tokens, &mut hashes);
    let n_blocks = hashes.len();
    let mut pool = BlockPool::new(n_blocks);
    let mut ids = Vec::new();
    pool.allocate(n_blocks, &mut ids).unwrap();
    for (&id, &h) in ids.iter().zip(&hashes) {
        pool.register(id, h).unwrap();
    }
    let mut out = Vec::with_capacity(n_blocks);
    let t = median_ns(reps, || {
        out.clear();
        hasher.hash_blocks(None, black_box(&tokens), &mut out);
        black_box(pool.lookup(&out));
    });
    println!("hash_lookup\tns_per_block\t{:.2}", t / n_blocks as f64);
    let sha = BlockHasher::new(HashAlgo::Sha256Cbor, 16, "", "0").unwrap();
    let t = median_ns(reps.min(5), || {
        out.clear();
        sha.hash_blocks(None, black_box(&tokens), &mut out);
        black_box(pool.lookup(&out));
    });
    println!("hash_lookup_sha256_cbor\tns_per_block\t{:.2}", t / n_blocks as f64);

    // 2. Allocate + free, 64 blocks per request.
    let mut pool = BlockPool::new(n_blocks);
    let mut batch = Vec::with_capacity(64);
    let t = median_ns(reps, || {
        for _ in 0..n_blocks / 64 {
            batch.clear();
            pool.allocate(64, &mut batch).unwrap();
            batch.reverse();
            pool.free(&batch).unwrap();
        }
    });
    println!("alloc_free\tns_per_block\t{:.2}", t / n_blocks as f64);

    // 3. Host tier store/load vs memcpy.
    let layers = 30usize;
    let seg = 3 * 32 * 128 * 4; // kv heads x block tokens x (2 x head dim) x fp32
    let blocks = if quick { 16 } else { 128 };
    let engine_blocks = blocks;
    let mut engine: Vec<Vec<u8>> = (0..layers)
        .map(|l| (0..engine_blocks * seg).map(|i| (i * 7 + l) as u8).collect())
        .collect();
    let dir = tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap());
    let block_bytes = (layers * seg) as u64;
    let cfg = Config {
        cpu_bytes: block_bytes * (blocks as u64 + 8) + (8 << 20),
        shm_dir: dir.path().to_path_buf(),
        store_name: "bench".into(),
        ..Config::default()
    };
    let tier = HostTier::open(&cfg.host_settings(), block_bytes, 32).unwrap();
    let mut contiguous = vec![0u8; blocks * layers * seg];
    let bytes = (blocks * layers * seg) as f64;
    let mut round = 0u128;
    let t_store = median_ns(reps, || {
        round += 1;
        for b in 0..blocks {
            let segs: Vec<&[u8]> = engine.iter().map(|l| &l[b * seg..(b + 1) * seg]).collect();
            tier.store(BlockHash((round << 32) | b as u128), &segs).unwrap();
        }
    });
    let t_memcpy_gather = median_ns(reps, || {
        for b in 0..blocks {
            for (l, layer) in engine.iter().enumerate() {
                let dst = (b * layers + l) * seg;
                contiguous[dst..dst + seg].copy_from_slice(&layer[b * seg..(b + 1) * seg]);
            }
        }
        black_box(&contiguous);
    });
    let t_load = median_ns(reps, || {
        for b in 0..blocks {
            let mut segs: Vec<&mut [u8]> = engine.iter_mut().map(|l| &mut l[b * seg..(b + 1) * seg]).collect();
            let o = tier.load(BlockHash((round << 32) | b as u128), &mut segs).unwrap();
            assert_eq!(o, LoadOutcome::Loaded);
        }
    });
    let t_memcpy_scatter = median_ns(reps, || {
        for b in 0..blocks {
            for (l, layer) in engine.iter_mut().enumerate() {
                let src = (b * layers + l) * seg;
                layer[b * seg..(b + 1) * seg].copy_from_slice(&contiguous[src..src + seg]);
            }
        }
        black_box(&engine);
    });
    let gbs = |ns: f64| bytes / ns;
    println!("host_store\tGB_per_s\t{:.2}", gbs(t_store));
    println!("memcpy_gather\tGB_per_s\t{:.2}", gbs(t_memcpy_gather));
    println!("host_load\tGB_per_s\t{:.2}", gbs(t_load));
    println!("memcpy_scatter\tGB_per_s\t{:.2}", gbs(t_memcpy_scatter));
    println!("store_vs_memcpy\tratio\t{:.3}", t_memcpy_gather / t_store);
    println!("load_vs_memcpy\tratio\t{:.3}", t_memcpy_scatter / t_load);
}
