//! Disk-tier throughput next to `dd` with O_DIRECT on the same directory, in the
//! same run, and restart recovery time per GB. Prints a table of medians.
//!
//! Run: `cargo bench -p tierkv --bench disk [-- --quick]`, with `TIERKV_BENCH_DIR`
//! naming a directory on the disk to measure (default `target/bench-disk`) and
//! optionally `TIERKV_DISK_THREADS` (default 4).
//! Cases (blocks shaped like SmolLM2-135M's fp32 KV, 1,474,560 bytes):
//! 1. `disk_write`: offload a batch of blocks to disk (the caller copies each block
//!    into a staging buffer; 4 I/O threads checksum, add the header and write it
//!    with one O_DIRECT write each), against
//!    `dd if=/dev/zero bs=<block> oflag=direct` of the same bytes.
//! 2. `disk_read`: load them back in batches of 32 into engine blocks (parallel
//!    reads, each I/O thread verifying its block while copying it into the
//!    engine's block: what a load delivers), against
//!    `dd of=/dev/null bs=<block> iflag=direct`.
//! 3. `recovery_headers` / `recovery_full`: reopening the filled tier, per GB of file.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tierkv::config::Config;
use tierkv::movement::AdmitMode;
use tierkv::prefix::BlockHash;
use tierkv::tier::disk::{DiskGeometry, DiskRead, DiskTier};

const BLOCK: u64 = 1_474_560;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs dd and returns its throughput in bytes per second.
fn dd(args: &[String], bytes: u64) -> f64 {
    let t = Instant::now();
    let out = Command::new("dd").args(args).output().expect("dd runs");
    assert!(
        out.status.success(),
        "dd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    bytes as f64 / t.elapsed().as_secs_f64()
}

fn config(shm: &Path, dir: &Path, blocks: u64, recovery: &str) -> Config {
    let g = DiskGeometry::fit(BLOCK, u64::MAX / 2).unwrap();
    let map = [
        ("TIERKV_SHM_DIR", shm.display().to_string()),
        ("TIERKV_STORE_NAME", "bench".into()),
        ("TIERKV_DISK_PATH", dir.display().to_string()),
        ("TIERKV_DISK_BYTES", format!("{}", 4096 + blocks * g.slot_bytes)),
        ("TIERKV_DISK_QUEUE", format!("{}", blocks)),
        ("TIERKV_DISK_RECOVERY", recovery.into()),
        ("TIERKV_LOG", "off".into()),
        (
            "TIERKV_DISK_THREADS",
            std::env::var("TIERKV_DISK_THREADS").unwrap_or_else(|_| "4".into()),
        ),
    ];
    let mut c = Config::from_lookup(|k| map.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())).unwrap();
    c.disk_admit = AdmitMode::Always;
    c
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (reps, blocks) = if quick { (1, 32u64) } else { (5, 256u64) };
    let base = std::env::var_os("TIERKV_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-disk"));
    std::fs::create_dir_all(&base).unwrap();
    let dir = tempfile::tempdir_in(&base).unwrap();
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let bytes = blocks * BLOCK;
    let cfg = config(shm.path(), dir.path(), blocks, "headers");
    let none = tracing::Dispatch::none();
    let mut payload = vec![0u8; BLOCK as usize];
    let ddf = dir.path().join("dd.bin").display().to_string();
    let (mut w, mut wdd, mut r, mut rdd) = (vec![], vec![], vec![], vec![]);
    for rep in 0..reps {
        let d = DiskTier::open(&cfg.disk_settings().expect("disk configured"), BLOCK, &none, false).unwrap();
        let keys: Vec<BlockHash> = (0..blocks)
            .map(|i| BlockHash(u128::from(rep * 1_000_000 + i + 1)))
            .collect();
        let t = Instant::now();
        d.begin_request();
        for (i, &h) in keys.iter().enumerate() {
            payload.iter_mut().step_by(4096).for_each(|b| *b = i as u8);
            d.offload(h, 0, 0, &[&payload]);
        }
        assert!(d.wait_idle(Duration::from_secs(600)));
        w.push(bytes as f64 / t.elapsed().as_secs_f64());
        assert_eq!(
            d.stats().written_blocks.load(std::sync::atomic::Ordering::Relaxed),
            blocks
        );
        let bs = format!("bs={BLOCK}");
        let count = format!("count={blocks}");
        wdd.push(dd(
            &[
                "if=/dev/zero".into(),
                format!("of={ddf}"),
                bs.clone(),
                count.clone(),
                "oflag=direct".into(),
            ],
            bytes,
        ));
        // Engine blocks to load into (two segments each, as K and V).
        let mut engine: Vec<(Vec<u8>, Vec<u8>)> = (0..32)
            .map(|_| (vec![0u8; BLOCK as usize / 2], vec![0u8; BLOCK as usize / 2]))
            .collect();
        let t = Instant::now();
        let mut ok = 0;
        for chunk in keys.chunks(32) {
            let mut dsts: Vec<Vec<&mut [u8]>> = engine
                .iter_mut()
                .take(chunk.len())
                .map(|(a, b)| vec![&mut a[..], &mut b[..]])
                .collect();
            for r in d.load_batch_into(chunk, 0, &mut dsts) {
                if matches!(r, DiskRead::Delivered) {
                    ok += 1;
                }
            }
        }
        r.push(bytes as f64 / t.elapsed().as_secs_f64());
        assert_eq!(ok as u64, blocks, "every block reads back verified");
        rdd.push(dd(
            &[
                format!("if={ddf}"),
                "of=/dev/null".into(),
                bs,
                count,
                "iflag=direct".into(),
            ],
            bytes,
        ));
        drop(d);
    }
    let gbs = |x: f64| x / 1e9;
    println!("case\tunit\ttierkv\tdd\tratio");
    let (w, wdd, r, rdd) = (median(w), median(wdd), median(r), median(rdd));
    println!("disk_write\tGB/s\t{:.3}\t{:.3}\t{:.2}", gbs(w), gbs(wdd), w / wdd);
    println!("disk_read\tGB/s\t{:.3}\t{:.3}\t{:.2}", gbs(r), gbs(rdd), r / rdd);
    for mode in ["headers", "full"] {
        let c = config(shm.path(), dir.path(), blocks, mode);
        let mut v = vec![];
        for _ in 0..reps {
            let d = DiskTier::open(&c.disk_settings().expect("disk configured"), BLOCK, &none, false).unwrap();
            let s = d.stats();
            assert_eq!(s.recovered_blocks.load(std::sync::atomic::Ordering::Relaxed), blocks);
            let secs = s.recovery_ns.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e9;
            v.push(secs / (d.geometry().file_len as f64 / 1e9));
        }
        println!("recovery_{mode}\ts/GB\t{:.4}\t-\t-", median(v));
    }
}
