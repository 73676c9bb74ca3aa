//! Soak: several engine processes store, load and evict through one small host
//! arena and one small disk tier while a killer SIGKILLs a random worker every few
//! hundred milliseconds (and starts a new one) and a flipper flips payload bytes
//! in the arena and disk files. Afterwards: no wrong byte was ever served, the
//! arena's slots all add up, nothing hung, and verification failures never
//! exceed the corruptions injected.
//!
//! Bounded: 30 s by default, `TIERKV_SOAK_S` seconds otherwise.
//! `TIERKV_SOAK_FLIPS=0` injects no corruption (then nothing may fail verification).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tierkv::config::Config;
use tierkv::movement::AdmitMode;
use tierkv::prefix::BlockHash;
use tierkv::tier::layout::Region;
use tierkv::tier::{HostTier, LoadOutcome, StoreOutcome};
use tierkv::{Manager, ManagerParams};

const BLOCK: usize = 16 * 1024;
const KEYS: u64 = 48;
const WORKERS: usize = 4;

/// Counters shared by the parent and every worker (an anonymous shared mapping
/// made before the forks).
#[repr(C)]
struct Shared {
    wrong: AtomicU64,
    loaded: AtomicU64,
    failed_verify: AtomicU64,
    stored: AtomicU64,
    ops: AtomicU64,
}

fn shared() -> &'static Shared {
    // SAFETY: a fresh anonymous shared mapping of the struct's size, zeroed, never
    // unmapped (lives for the test process and its children).
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            std::mem::size_of::<Shared>(),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        &*(p as *const Shared)
    }
}

fn content(key: u64) -> Vec<u8> {
    let mut x = key.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..BLOCK)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn config(shm: &std::path::Path, disk: &std::path::Path) -> Config {
    Config {
        cpu_bytes: 16 * BLOCK as u64 + (64 << 10),
        shm_dir: shm.to_path_buf(),
        store_name: "soak".into(),
        disk_path: Some(disk.to_path_buf()),
        disk_bytes: 40 * (BLOCK as u64 + 4096) + 4096,
        disk_admit: AdmitMode::Always,
        disk_direct: false,
        hw_interval: None,
        ..Config::default()
    }
}

/// One engine process: random stores and loads through a manager, every loaded
/// block compared with what its identity must hold. Never returns.
fn worker(cfg: &Config, seed: u64, s: &Shared) -> ! {
    let params = ManagerParams {
        block_tokens: 16,
        block_bytes: BLOCK as u64,
        namespace: Some("soak".into()),
        pool_blocks: 0,
        disk_reader: false,
        pool_engine_order: false,
    };
    let Ok(m) = Manager::new(cfg.clone(), params) else {
        // SAFETY: ends the child.
        unsafe { libc::_exit(3) }
    };
    let mut mem = vec![0u8; BLOCK * 4];
    let region = Region {
        base: mem.as_mut_ptr() as u64,
        block_stride: BLOCK as u64,
        bytes_per_block: BLOCK as u64,
    };
    if m.register_layout(&[region], 4).is_err() {
        // SAFETY: ends the child.
        unsafe { libc::_exit(4) }
    }
    let mut x = seed | 1;
    loop {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let key = 1 + (x >> 16) % KEYS;
        let h = [BlockHash(u128::from(key) << 32 | 7)];
        if x.is_multiple_of(3) {
            mem[..BLOCK].copy_from_slice(&content(key));
            let mut out = [StoreOutcome::NoSpace];
            // SAFETY: block 0 of our own buffer, registered above; nothing else
            // writes it during the call.
            let r = unsafe { m.store_blocks(&h, &[0], &mut out) };
            if r.is_ok() && out[0] == StoreOutcome::Stored {
                s.stored.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            mem[BLOCK..2 * BLOCK].fill(0xAA);
            let mut out = [LoadOutcome::Miss];
            // SAFETY: block 1 of our own buffer, exclusively ours during the call.
            let r = unsafe { m.load_blocks(&h, &[1], &mut out) };
            match (r, out[0]) {
                (Ok(()), LoadOutcome::Loaded) => {
                    s.loaded.fetch_add(1, Ordering::Relaxed);
                    if mem[BLOCK..2 * BLOCK] != content(key)[..] {
                        s.wrong.fetch_add(1, Ordering::Relaxed);
                    }
                }
                (Ok(()), LoadOutcome::Corrupt) => {
                    s.failed_verify.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
        s.ops.fetch_add(1, Ordering::Relaxed);
    }
}

fn spawn(cfg: &Config, seed: u64, s: &'static Shared) -> libc::pid_t {
    // SAFETY: the child runs `worker` and never returns into the test harness.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        worker(cfg, seed, s);
    }
    pid
}

/// Flips one byte inside the payload area of `path` (past `skip` bytes of
/// metadata); returns whether it did.
fn flip(path: &std::path::Path, skip: u64, x: u64) -> bool {
    use std::os::unix::fs::FileExt;
    let Ok(f) = std::fs::OpenOptions::new().read(true).write(true).open(path) else {
        return false;
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len <= skip {
        return false;
    }
    let at = skip + x % (len - skip);
    let mut b = [0u8];
    if f.read_exact_at(&mut b, at).is_err() {
        return false;
    }
    f.write_all_at(&[b[0] ^ 0x5a], at).is_ok()
}

#[test]
fn soak_kills_and_corruption_never_serve_a_wrong_byte() {
    let secs: u64 = std::env::var("TIERKV_SOAK_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let corrupt = std::env::var("TIERKV_SOAK_FLIPS").map_or(true, |v| v != "0");
    let shm = tempfile::tempdir().unwrap();
    let disk = tempfile::tempdir().unwrap();
    let cfg = config(shm.path(), disk.path());
    let s = shared();
    // The parent creates the store (fixing its geometry) and keeps it open.
    let host = HostTier::open(&cfg.host_settings(), BLOCK as u64, 16).unwrap();
    let data_off = host.arena().geometry().data_off;
    let mut workers: Vec<libc::pid_t> = (0..WORKERS).map(|i| spawn(&cfg, 17 + i as u64, s)).collect();
    let arena = shm.path().join("tierkv-soak.arena");
    let g3 = disk.path().join("tierkv-soak.g3");
    let (mut kills, mut flips, mut seed) = (0u64, 0u64, 99u64);
    let end = Instant::now() + Duration::from_secs(secs);
    let (mut last_ops, mut last_progress) = (0u64, Instant::now());
    while Instant::now() < end {
        let ops = s.ops.load(Ordering::Relaxed);
        if ops > last_ops {
            (last_ops, last_progress) = (ops, Instant::now());
        }
        assert!(
            last_progress.elapsed() < Duration::from_secs(5),
            "no worker made progress for 5 s: something hangs"
        );
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(150 + seed % 300));
        let i = (seed % WORKERS as u64) as usize;
        // SAFETY: signalling and reaping our own child.
        unsafe {
            libc::kill(workers[i], libc::SIGKILL);
            libc::waitpid(workers[i], std::ptr::null_mut(), 0);
        }
        kills += 1;
        workers[i] = spawn(&cfg, seed, s);
        // Corrupt payloads (past the arena's metadata; past the disk superblock).
        if corrupt && flip(&arena, data_off, seed >> 8) {
            flips += 1;
        }
        if corrupt && flip(&g3, 4096, seed >> 16) {
            flips += 1;
        }
    }
    for pid in &workers {
        // SAFETY: as above.
        unsafe {
            libc::kill(*pid, libc::SIGKILL);
            libc::waitpid(*pid, std::ptr::null_mut(), 0);
        }
    }
    let (wrong, loaded, failed, stored, ops) = (
        s.wrong.load(Ordering::Relaxed),
        s.loaded.load(Ordering::Relaxed),
        s.failed_verify.load(Ordering::Relaxed),
        s.stored.load(Ordering::Relaxed),
        s.ops.load(Ordering::Relaxed),
    );
    eprintln!(
        "soak {secs}s: {ops} ops, {stored} stored, {loaded} loaded, {failed} failed verification, \
         {flips} bytes flipped, {kills} workers killed"
    );
    assert_eq!(wrong, 0, "a LOADED block held other bytes than its identity's");
    assert!(loaded > 0 && stored > 0, "the soak did no work");
    // Without corruption nothing fails verification (a reader that raced the disk
    // owner's reuse of a slot counts a miss). With it, each process fails on a
    // corrupted block at most once: the host tier unlists it at the first failed
    // verification, the disk owner drops it, a disk reader stops reading it. So
    // failed verifications never exceed the corruptions injected times the
    // processes that ran (measured: fewer than the corruptions themselves).
    if !corrupt {
        assert_eq!(failed, 0, "nothing was corrupted, yet loads failed verification");
    }
    let procs = WORKERS as u64 + kills;
    assert!(
        failed <= flips * procs,
        "{failed} failed verification for {flips} corruptions injected"
    );
    // Every slot of the arena is accounted for once the dead are swept.
    let mut l = host.arena().lock().unwrap();
    l.sweep_dead();
    let (ready, writing, free) = l.census();
    let n = host.arena().geometry().n_slots;
    assert_eq!(ready + writing + free, n);
    assert_eq!(writing, 0, "no reservation of a dead writer survives a sweep");
    assert_eq!(
        l.eviction_order().len() as u32,
        ready,
        "the eviction list holds exactly the ready blocks"
    );
    assert_eq!(l.free_count(), free, "the free list holds exactly the free slots");
    drop(l);
    // The disk tier, reopened by a new owner, accounts for every slot too.
    let d = tierkv::tier::disk::DiskTier::open(
        &cfg.disk_settings().expect("disk configured"),
        BLOCK as u64,
        &tracing::Dispatch::none(),
        false,
    )
    .unwrap();
    assert!(d.is_owner());
    let c = d.census();
    assert!(c.consistent(), "{c:?}");
}
