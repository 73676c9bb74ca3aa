//! Remote-tier throughput next to the store's own `redis-benchmark` with the same
//! value size, on the same cluster, in the same run. Prints a table of medians.
//!
//! Run: `cargo bench -p tierkv --bench remote [-- --quick]`. Starts a 3-master
//! cluster with `scripts/redis-cluster.sh` (Debian's redis-server) unless
//! `TIERKV_BENCH_REDIS_URL` names one (then `redis-benchmark` runs against its
//! first node). `TIERKV_BENCH_TLS=1`: a TLS-only cluster, the tier and
//! `redis-benchmark` over TLS (client certificates). Cases (blocks shaped like SmolLM2-135M's fp32 KV, 1,474,560 bytes):
//! 1. `remote_store`: blocks queued by `store` (value built and checksummed on the
//!    caller's thread; a full queue of 64 is waited on, not dropped) until the
//!    write-behind queue drained (the tier's writer threads, one connection each),
//!    against `redis-benchmark -t set -d <block> -c 1`.
//! 2. `remote_load`: `load_into` in batches of 16 (pipelined GETEX, header check,
//!    verified copy into the destination) over one connection, against
//!    `redis-benchmark -t get -c 1` of values of the same size.
//!    Both also against `-c 8` (eight connections), the store's ceiling here.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tierkv::prefix::BlockHash;
use tierkv::tier::remote::{parse_url, RemoteSettings, RemoteTier, TlsFiles};
use tierkv::tier::{BlockCtx, LoadOutcome, StoreOutcome, Tier};

const BLOCK: usize = 1_474_560;
const NS: u64 = 0xbe7c;

static TLS_ARGS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/redis-cluster.sh")
}

/// A cluster for the run: the URL, and the directory to stop (if started here).
/// `TIERKV_BENCH_TLS=1`: the cluster, the tier and `redis-benchmark` use TLS.
fn tls() -> bool {
    std::env::var("TIERKV_BENCH_TLS").as_deref() == Ok("1")
}

/// The TLS options of `redis-cli` / `redis-benchmark` for a cluster the bench
/// started in `dir` (none without TLS).
fn tls_args(dir: &Option<PathBuf>) -> Vec<String> {
    match dir {
        Some(d) if tls() => {
            let t = d.join("tls");
            let f = |n: &str| t.join(n).to_str().unwrap().to_string();
            vec![
                "--tls".into(),
                "--cacert".into(),
                f("ca.crt"),
                "--cert".into(),
                f("client.crt"),
                "--key".into(),
                f("client.key"),
            ]
        }
        _ => Vec::new(),
    }
}

fn cluster() -> (String, Option<PathBuf>) {
    if let Ok(url) = std::env::var("TIERKV_BENCH_REDIS_URL") {
        return (url, None);
    }
    let dir = std::env::temp_dir().join(format!("tierkv-bench-redis-{}", std::process::id()));
    let out = Command::new(script())
        .args(["start", dir.to_str().unwrap()])
        .env("TIERKV_REDIS_TLS", if tls() { "1" } else { "0" })
        .env("TIERKV_REDIS_MAXMEMORY", "3gb")
        .output()
        .expect("scripts/redis-cluster.sh runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let url = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_string();
    (url, Some(dir))
}

/// `redis-benchmark` against `nodes`: requests per second of `test` with values of
/// `BLOCK` bytes over `clients` connections, on `keys` random keys (`key:<n>`,
/// `-r`) or one key (`None`).
fn redis_benchmark(nodes: &[String], cluster: bool, test: &str, n: usize, clients: usize, keys: Option<usize>) -> f64 {
    let first = nodes[0].split("://").nth(1).unwrap();
    let (host, port) = first.rsplit_once(':').unwrap();
    let mut cmd = Command::new("redis-benchmark");
    cmd.args(TLS_ARGS.get().unwrap());
    cmd.args(["-h", host, "-p", port, "-t", test, "-q", "--csv"]).args([
        "-d",
        &BLOCK.to_string(),
        "-n",
        &n.to_string(),
        "-c",
        &clients.to_string(),
    ]);
    if let Some(k) = keys {
        cmd.args(["-r", &k.to_string()]);
    }
    if cluster {
        cmd.arg("--cluster");
    }
    let out = cmd.output().expect("redis-benchmark runs");
    let text = String::from_utf8_lossy(&out.stdout);
    // CSV: "test","rps",...; the row of `test`.
    text.lines()
        .filter(|l| l.to_ascii_lowercase().starts_with(&format!("\"{test}\"")))
        .find_map(|l| l.split(',').nth(1).and_then(|v| v.trim_matches('"').parse().ok()))
        .unwrap_or_else(|| panic!("no {test} figure in redis-benchmark's output: {text}"))
}

fn payload(k: u64) -> (Vec<u8>, Vec<u8>) {
    let a: Vec<u8> = (0..BLOCK / 2).map(|i| (i as u64 ^ k).wrapping_mul(31) as u8).collect();
    let b: Vec<u8> = (0..BLOCK / 2).map(|i| (i as u64 + k).wrapping_mul(17) as u8).collect();
    (a, b)
}

/// CPU time of this process so far (every thread), seconds.
fn cpu_s() -> f64 {
    // SAFETY: getrusage writes the struct it is given; a zeroed rusage is valid.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 * 1e-6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// Removes the bench's keys from a cluster it started (`FLUSHALL` on each master):
/// rounds must not fill `maxmemory` and evict the keys a round reads.
fn flush(nodes: &[String]) {
    for n in nodes {
        let (host, port) = n.split("://").nth(1).unwrap().rsplit_once(':').unwrap();
        let _ = Command::new("redis-cli")
            .args(TLS_ARGS.get().unwrap())
            .args(["-h", host, "-p", port, "FLUSHALL"])
            .output();
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    // redis-benchmark's figures step by its 250 ms timer tick: enough requests
    // that the step is small (about 3 s per case, a step of 8% or less). Its
    // new-key cases write `new_n` values (5.9 GB: the cluster's 3 x 3 GB holds
    // them without evicting; flushed before each).
    let (n, bench_n, new_n, rounds) = if quick {
        (100, 500, 500, 1)
    } else {
        (1000, 8000, 4000, 3)
    };
    let (url, dir) = cluster();
    TLS_ARGS.set(tls_args(&dir)).unwrap();
    let nodes = parse_url(&url).expect("a redis:// URL");
    let settings = RemoteSettings {
        cluster_seeds: nodes.len() > 1,
        nodes: nodes.clone(),
        password: None,
        ttl: Duration::from_secs(3600),
        timeout: Duration::from_secs(5),
        queue: 64,
        prefix: format!("bench{}", std::process::id()),
        tls: match &dir {
            Some(d) if tls() => TlsFiles {
                ca: Some(d.join("tls/ca.crt")),
                cert: Some(d.join("tls/client.crt")),
                key: Some(d.join("tls/client.key")),
            },
            _ => TlsFiles::default(),
        },
    };
    let blocks: Vec<(Vec<u8>, Vec<u8>)> = (0..16u64).map(payload).collect();
    let mut rows: Vec<(&str, Vec<f64>)> = [
        "remote_store",
        "set -c 1 -r",
        "set -c 8 -r",
        "set -c 1 1key",
        "remote_load",
        "get -c 1 -r",
        "get -c 8 -r",
        "get -c 1 1key",
    ]
    .iter()
    .map(|&name| (name, Vec::new()))
    .collect();
    let (mut cpu_store, mut cpu_load) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        if dir.is_some() {
            flush(&nodes);
        }
        // A fresh tier (nothing known) and fresh keys each round.
        let t = RemoteTier::open(&settings, NS, &format!("bench{round}"), &tracing::Dispatch::none());
        let hashes: Vec<BlockHash> = (0..n as u128).map(|i| BlockHash((round as u128) << 64 | i)).collect();
        let ctx = BlockCtx {
            namespace: NS,
            depth: 0,
            last: false,
            key: 0,
            parent: 0,
        };
        let (t0, c0) = (Instant::now(), cpu_s());
        for (i, &h) in hashes.iter().enumerate() {
            let (a, b) = &blocks[i % blocks.len()];
            // A full queue drops: the bench waits for room instead (throughput).
            while t.store(h, ctx, &[a, b]).unwrap() == StoreOutcome::NoSpace {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        assert!(t.wait_idle(Duration::from_secs(600)));
        rows[0].1.push((n * BLOCK) as f64 / t0.elapsed().as_secs_f64());
        cpu_store.push((cpu_s() - c0) / n as f64);
        let mut bufs: Vec<(Vec<u8>, Vec<u8>)> = (0..16).map(|_| (vec![0; BLOCK / 2], vec![0; BLOCK / 2])).collect();
        let (t0, c0) = (Instant::now(), cpu_s());
        for chunk in hashes.chunks(16) {
            let mut dsts: Vec<Vec<&mut [u8]>> = bufs
                .iter_mut()
                .take(chunk.len())
                .map(|(a, b)| vec![&mut a[..], &mut b[..]])
                .collect();
            let mut out = vec![LoadOutcome::Miss; chunk.len()];
            t.load_into(chunk, NS, &mut dsts, &mut out).unwrap();
            assert!(out.iter().all(|&o| o == LoadOutcome::Loaded), "{out:?}");
        }
        rows[4].1.push((n * BLOCK) as f64 / t0.elapsed().as_secs_f64());
        cpu_load.push((cpu_s() - c0) / n as f64);
        // The baselines, each on a store holding only its own keys.
        let c = nodes.len() > 1;
        let fresh = |rows: &mut Vec<(&str, Vec<f64>)>, row: usize, test: &str, clients: usize, keys: Option<usize>| {
            if dir.is_some() {
                flush(&nodes);
            }
            let reqs = if keys.is_some() { new_n } else { bench_n };
            rows[row]
                .1
                .push(redis_benchmark(&nodes, c, test, reqs, clients, keys) * BLOCK as f64);
        };
        // New keys each (a key space far larger than the requests).
        fresh(&mut rows, 1, "set", 1, Some(1 << 30));
        fresh(&mut rows, 2, "set", 8, Some(1 << 30));
        fresh(&mut rows, 3, "set", 1, None);
        // `n` keys, written 5x over so that few are missing, then read.
        redis_benchmark(&nodes, c, "set", n * 5, 8, Some(n));
        rows[5]
            .1
            .push(redis_benchmark(&nodes, c, "get", bench_n, 1, Some(n)) * BLOCK as f64);
        rows[6]
            .1
            .push(redis_benchmark(&nodes, c, "get", bench_n, 8, Some(n)) * BLOCK as f64);
        rows[7]
            .1
            .push(redis_benchmark(&nodes, c, "get", bench_n, 1, None) * BLOCK as f64);
    }
    println!("remote tier vs redis-benchmark, {n} blocks of {BLOCK} bytes, {rounds} round(s), medians ({url})");
    println!("{:<14} {:>10}", "case", "MB/s");
    let mb = |r: &[f64]| median(r.to_vec()) / 1e6;
    for (name, r) in &rows {
        println!("{name:<14} {:>10.0}", mb(r));
    }
    println!(
        "CPU per block (this process, every thread): store {:.3} ms, load {:.3} ms",
        median(cpu_store) * 1e3,
        median(cpu_load) * 1e3
    );
    println!(
        "ratio store/set -c 1 -r: {:.2} (one key: {:.2})   load/get -c 1 -r: {:.2} (one key: {:.2})",
        mb(&rows[0].1) / mb(&rows[1].1),
        mb(&rows[0].1) / mb(&rows[3].1),
        mb(&rows[4].1) / mb(&rows[5].1),
        mb(&rows[4].1) / mb(&rows[7].1)
    );
    if let Some(d) = dir {
        let _ = Command::new(script()).args(["stop", d.to_str().unwrap()]).status();
    }
}
