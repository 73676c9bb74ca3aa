//! Disk-tier tests, many of them fault tests at the I/O seam. Each asserts that
//! nothing wrong is served, the tier (or the library) stays up or goes down as it
//! should, and the counters say what happened.

use super::*;
use crate::config::Config;
use crate::evict::PolicyKind;
use crate::movement::AdmitMode;
use crate::tier::{BlockCtx, HostTier, LoadOutcome, StoreOutcome};
use std::os::unix::fs::PermissionsExt;

/// Payload bytes of a test block: not a multiple of the sector size.
const LEN: u64 = 3 * 4096 + 100;
const NS: u64 = 77;

fn config(shm: &Path, disk: &Path, slots: u64) -> Config {
    let g = DiskGeometry::fit(LEN, u64::MAX / 2).unwrap();
    Config {
        cpu_bytes: 64 << 20,
        shm_dir: shm.to_path_buf(),
        store_name: "t".into(),
        disk_path: Some(disk.to_path_buf()),
        disk_bytes: SECTOR as u64 + slots * g.slot_bytes,
        disk_admit: AdmitMode::Always,
        disk_eviction: PolicyKind::Lru,
        disk_threads: 2,
        disk_queue: 64,
        ..Config::default()
    }
}

/// The payload of block `h`: a function of its identity, so any mix-up shows.
fn payload(h: u128) -> Vec<u8> {
    crate::tier::test_util::pattern(h, LEN as usize)
}

struct Env {
    _shm: tempfile::TempDir,
    dir: tempfile::TempDir,
    cfg: Config,
    host: Arc<HostTier>,
}

fn env(slots: u64) -> Env {
    let shm = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(shm.path(), &dir.path().join("g3"), slots);
    let host = Arc::new(HostTier::open(&cfg.host_settings(), LEN, 16).unwrap());
    Env {
        _shm: shm,
        dir,
        cfg,
        host,
    }
}

impl Env {
    fn open(&self) -> Result<Arc<DiskTier>, DiskError> {
        DiskTier::open(
            &self.cfg.disk_settings().unwrap(),
            LEN,
            &tracing::Dispatch::none(),
            false,
        )
    }

    fn file(&self) -> PathBuf {
        self.dir.path().join("g3").join("tierkv-t.g3")
    }

    /// Stores blocks in the host tier and offloads them, waiting for the writes.
    fn put(&self, d: &DiskTier, keys: impl IntoIterator<Item = u128>) {
        d.begin_request();
        for (i, k) in keys.into_iter().enumerate() {
            let h = BlockHash(k);
            let o = self.host.store(h, &[&payload(k)]).unwrap();
            assert_ne!(o, StoreOutcome::NoSpace);
            d.offload(h, NS, i as u32, &[&payload(k)]);
            assert!(d.wait_idle(Duration::from_secs(10)));
        }
    }
}

/// Loads `keys` from disk; asserts every loaded block is exactly right and returns
/// how many loaded.
fn check_loads(d: &DiskTier, keys: &[u128]) -> usize {
    let hs: Vec<BlockHash> = keys.iter().map(|&k| BlockHash(k)).collect();
    let mut loaded = 0;
    for (k, r) in keys.iter().zip(d.load_batch(&hs, NS)) {
        if let DiskRead::Loaded(buf) = r {
            assert_eq!(
                &buf.as_slice()[SECTOR..SECTOR + LEN as usize],
                &payload(*k)[..],
                "block {k} wrong"
            );
            loaded += 1;
        }
    }
    loaded
}

fn flip_byte(path: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x20;
    f.write_all_at(&b, at).unwrap();
}

#[test]
fn blocks_survive_a_restart_and_files_are_private() {
    let e = env(8);
    let d = e.open().unwrap();
    assert!(d.direct_io(), "ext4 under /tmp takes O_DIRECT");
    e.put(&d, 1..=5);
    assert_eq!(d.block_count(), 5);
    assert_eq!(check_loads(&d, &[1, 2, 3, 4, 5, 6]), 5);
    assert_eq!(d.stats().read_misses.load(Ordering::Relaxed), 1);
    drop(d);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&e.file()), 0o600);
    assert_eq!(mode(e.file().parent().unwrap()), 0o700);
    assert!(std::fs::metadata(e.file()).unwrap().len() <= e.cfg.disk_bytes);
    let d = e.open().unwrap();
    assert_eq!(d.stats().recovered_blocks.load(Ordering::Relaxed), 5);
    assert_eq!(d.lookup_run(&[BlockHash(1), BlockHash(2), BlockHash(9)]), 2);
    assert_eq!(check_loads(&d, &[1, 2, 3, 4, 5]), 5);
}

/// A block's KV-event key is written with it: after a restart, the process that
/// evicts it names it as the engine did when storing it, and a dropped corrupt
/// block is reported removed too.
#[test]
fn the_engines_key_survives_a_restart_and_names_the_eviction() {
    use crate::events::{BlockEvent, EventKind, EventLog, EventTier};
    let e = env(2);
    let log = Arc::new(EventLog::new());
    log.start(0);
    let d = e.open().unwrap();
    d.attach_events(&log);
    for k in 1..=2u128 {
        let ctx = BlockCtx {
            namespace: NS,
            depth: 0,
            last: true,
            key: 1000 + k as u64,
            parent: 0,
        };
        assert_eq!(d.store_ctx(BlockHash(k), ctx, &[&payload(k)]), StoreOutcome::Stored);
        assert!(d.wait_idle(Duration::from_secs(10)));
    }
    let stored: Vec<BlockEvent> = log.take(10);
    assert_eq!(
        stored.iter().map(|e| (e.kind, e.tier, e.key)).collect::<Vec<_>>(),
        vec![
            (EventKind::Stored, EventTier::Disk, 1001),
            (EventKind::Stored, EventTier::Disk, 1002)
        ]
    );
    drop(d);

    let later = Arc::new(EventLog::new());
    later.start(0);
    let d = e.open().unwrap();
    d.attach_events(&later);
    // Unnamed block 3 evicts block 1 (LRU): removal named 1001, store unnamed.
    e.put(&d, [3]);
    let got = later.take(10);
    assert_eq!(
        got.iter().map(|e| (e.kind, e.key)).collect::<Vec<_>>(),
        vec![(EventKind::Removed, 1001)]
    );
    assert_eq!(later.counts().unnamed, 1);
    // Block 2 corrupt on disk: the failed read drops it, reported removed.
    flip_byte(&e.file(), d.geometry().slot_offset(1) + SECTOR as u64 + 7);
    assert_eq!(check_loads(&d, &[2]), 0);
    assert!(d.wait_idle(Duration::from_secs(10)));
    let got = later.take(10);
    assert_eq!(
        got.iter().map(|e| (e.kind, e.key)).collect::<Vec<_>>(),
        vec![(EventKind::Removed, 1002)]
    );
}

#[test]
fn capacity_is_hard_and_the_policy_evicts() {
    let e = env(4);
    let d = e.open().unwrap();
    e.put(&d, 1..=4);
    check_loads(&d, &[1]); // 1 is now the most recent
    e.put(&d, 5..=6);
    // LRU, victim first: 2 3 4 1 -> 5 evicts 2, 6 evicts 3.
    assert_eq!(d.block_count(), 4);
    assert_eq!(d.stats().evictions.load(Ordering::Relaxed), 2);
    assert!(!d.contains(BlockHash(2)) && !d.contains(BlockHash(3)));
    assert_eq!(check_loads(&d, &[1, 4, 5, 6]), 4);
    assert!(std::fs::metadata(e.file()).unwrap().len() <= e.cfg.disk_bytes);
}

#[test]
fn flipped_payload_bit_is_dropped_never_served() {
    let e = env(4);
    let d = e.open().unwrap();
    e.put(&d, [1, 2]);
    let slot = d.inner.index.lock().ready(BlockHash(1)).unwrap();
    flip_byte(&e.file(), d.geometry().slot_offset(slot) + SECTOR as u64 + 5000);
    let r = d.load_batch(&[BlockHash(1), BlockHash(2)], NS);
    assert!(matches!(r[0], DiskRead::Corrupt));
    assert!(matches!(r[1], DiskRead::Loaded(_)));
    assert_eq!(d.stats().checksum_failures.load(Ordering::Relaxed), 1);
    assert!(!d.contains(BlockHash(1)), "dropped from the index");
    assert!(d.wait_idle(Duration::from_secs(5)));
    drop(d);
    // Its header was cleared: a restart does not bring it back.
    let d = e.open().unwrap();
    assert_eq!(d.stats().recovered_blocks.load(Ordering::Relaxed), 1);
    assert!(d.is_up());
}

/// The engine's path: each block verified while copied into its destination (two
/// segments, as K and V); a flipped byte is caught in that one pass, the other
/// block is delivered byte for byte.
#[test]
fn loads_into_engine_blocks_verify_while_copying() {
    let e = env(4);
    let d = e.open().unwrap();
    e.put(&d, [1, 2]);
    let slot = d.inner.index.lock().ready(BlockHash(2)).unwrap();
    flip_byte(&e.file(), d.geometry().slot_offset(slot) + SECTOR as u64 + 9000);
    let half = LEN as usize / 2;
    let mut bufs: Vec<(Vec<u8>, Vec<u8>)> = (0..2).map(|_| (vec![0; half], vec![0; LEN as usize - half])).collect();
    let mut dsts: Vec<Vec<&mut [u8]>> = bufs.iter_mut().map(|(a, b)| vec![&mut a[..], &mut b[..]]).collect();
    let r = d.load_batch_into(&[BlockHash(1), BlockHash(2)], NS, &mut dsts);
    assert!(matches!(r[0], DiskRead::Delivered));
    assert!(matches!(r[1], DiskRead::Corrupt));
    drop(dsts);
    assert_eq!([bufs[0].0.clone(), bufs[0].1.clone()].concat(), payload(1));
    assert_eq!(d.stats().checksum_failures.load(Ordering::Relaxed), 1);
    assert!(!d.contains(BlockHash(2)));
}

#[test]
fn flipped_header_bit_is_dropped_by_recovery() {
    let e = env(4);
    let d = e.open().unwrap();
    e.put(&d, [1, 2]);
    let slot = d.inner.index.lock().ready(BlockHash(2)).unwrap();
    let at = d.geometry().slot_offset(slot) + 20; // inside the identity
    drop(d);
    flip_byte(&e.file(), at);
    let d = e.open().unwrap();
    assert_eq!(d.stats().recovered_blocks.load(Ordering::Relaxed), 1);
    assert_eq!(d.stats().recovery_dropped.load(Ordering::Relaxed), 1);
    assert_eq!(check_loads(&d, &[1, 2]), 1);
}

#[test]
fn other_namespace_or_identity_never_loads() {
    let e = env(4);
    let d = e.open().unwrap();
    e.put(&d, [1]);
    let r = d.load_batch(&[BlockHash(1)], NS + 1);
    assert!(
        matches!(r[0], DiskRead::Corrupt),
        "a header of another namespace does not verify"
    );
}

#[test]
fn torn_write_is_never_served() {
    for keep in [0u64, 100, 4096, 6000, LEN / 2] {
        let e = env(4);
        let d = e.open().unwrap();
        e.put(&d, [1]);
        d.inject(Fault::TornWrite { bytes: keep });
        e.put(&d, [2]);
        // The writer believed it succeeded; the load must not.
        let r = d.load_batch(&[BlockHash(2)], NS);
        assert!(!matches!(r[0], DiskRead::Loaded(_)), "torn at {keep} served");
        drop(d);
        let d = e.open().unwrap();
        assert_eq!(check_loads(&d, &[1, 2]), 1, "torn at {keep}");
    }
}

#[test]
fn disk_full_mid_write_takes_the_tier_down_and_host_keeps_serving() {
    let e = env(8);
    let d = e.open().unwrap();
    e.put(&d, [1]);
    d.inject(Fault::WriteError {
        errno: libc::ENOSPC,
        n: 1,
    });
    e.put(&d, [2]);
    assert!(!d.is_up());
    assert!(d.down_reason().unwrap().contains("No space"), "{:?}", d.down_reason());
    assert_eq!(d.stats().write_errors.load(Ordering::Relaxed), 1);
    assert_eq!(d.lookup_run(&[BlockHash(1)]), 0, "a down tier reports no hits");
    assert!(matches!(d.load_batch(&[BlockHash(1)], NS)[0], DiskRead::Miss));
    let mut out = vec![0u8; LEN as usize];
    assert_eq!(e.host.load(BlockHash(2), &mut [&mut out]).unwrap(), LoadOutcome::Loaded);
}

#[test]
fn read_errors_are_misses_and_many_take_the_tier_down() {
    let e = env(16);
    let d = e.open().unwrap();
    e.put(&d, 1..=12);
    d.inject(Fault::ReadError { errno: libc::EIO, n: 1 });
    let r = d.load_batch(&[BlockHash(1)], NS);
    assert!(matches!(r[0], DiskRead::Failed));
    assert!(d.is_up(), "one EIO drops the block, not the tier");
    assert!(!d.contains(BlockHash(1)));
    d.inject(Fault::ReadError {
        errno: libc::EIO,
        n: 100,
    });
    let rest: Vec<u128> = (2..=12).collect();
    assert_eq!(check_loads(&d, &rest), 0);
    assert!(!d.is_up());
    assert!(d.down_reason().unwrap().contains("in a row"), "{:?}", d.down_reason());
    assert_eq!(d.stats().read_errors.load(Ordering::Relaxed), 12);
}

#[test]
fn truncated_or_removed_file_takes_the_tier_down() {
    let e = env(4);
    let d = e.open().unwrap();
    e.put(&d, [1, 2]);
    std::fs::OpenOptions::new()
        .write(true)
        .open(e.file())
        .unwrap()
        .set_len(SECTOR as u64)
        .unwrap();
    assert_eq!(check_loads(&d, &[1, 2]), 0);
    assert!(!d.is_up());
    assert!(d.down_reason().unwrap().contains("truncated"), "{:?}", d.down_reason());
    drop(d);
    // A restart restores the length; the blocks are gone, the tier works again.
    let d = e.open().unwrap();
    assert_eq!(d.block_count(), 0);
    e.put(&d, [3]);
    assert_eq!(check_loads(&d, &[3]), 1);
    std::fs::remove_file(e.file()).unwrap();
    *d.inner.last_health.lock() = Instant::now() - HEALTH_INTERVAL;
    e.put(&d, [4]);
    assert!(!d.is_up());
    assert!(d.down_reason().unwrap().contains("gone"), "{:?}", d.down_reason());
}

#[test]
fn unusable_directories_and_locked_files_are_reported() {
    let e = env(4);
    // A directory that cannot be created (its parent is a file).
    let file = e.dir.path().join("plain");
    std::fs::write(&file, b"x").unwrap();
    let cfg = Config {
        disk_path: Some(file.join("sub")),
        ..e.cfg.clone()
    };
    let err = DiskTier::open(&cfg.disk_settings().unwrap(), LEN, &tracing::Dispatch::none(), false)
        .err()
        .unwrap();
    assert!(err.why.contains("cannot create the directory"), "{err}");
    // Another holder of the file lock (another process, as far as flock knows):
    // this process reads through the owner's shared directory, and writes nothing.
    let d = e.open().unwrap();
    e.put(&d, [1, 2]);
    drop(d);
    let f = std::fs::File::open(e.file()).unwrap();
    // SAFETY: flock on our own descriptor.
    let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX) };
    assert_eq!(rc, 0);
    let r = e.open().unwrap();
    assert!(!r.is_owner());
    assert_eq!(r.lookup_run(&[BlockHash(1), BlockHash(2), BlockHash(3)]), 2);
    assert_eq!(check_loads(&r, &[1, 2]), 2);
    e.host.store(BlockHash(5), &[&payload(5)]).unwrap();
    r.offload(BlockHash(5), NS, 0, &[&payload(5)]);
    assert!(!r.contains(BlockHash(5)), "a reader never writes");
    drop(r);
    drop(f);
    // Another geometry while nobody else owns the file: the configuration wins, the
    // file is recreated empty (a warning names both geometries).
    let other = DiskTier::open(
        &e.cfg.disk_settings().unwrap(),
        LEN + 4096,
        &tracing::Dispatch::none(),
        false,
    )
    .unwrap();
    assert!(other.is_owner());
    assert_eq!(other.geometry().block_bytes, LEN + 4096);
    assert_eq!(other.lookup_run(&[BlockHash(1), BlockHash(2)]), 0);
    drop(other);
    // Too small a budget.
    let cfg = Config {
        disk_bytes: 8192,
        ..e.cfg.clone()
    };
    let err = DiskTier::open(&cfg.disk_settings().unwrap(), LEN, &tracing::Dispatch::none(), false)
        .err()
        .unwrap();
    assert!(err.why.contains("cannot hold one block"), "{err}");
}

#[test]
fn permission_denied_is_reported() {
    let e = env(4);
    let locked = e.dir.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o500)).unwrap();
    let cfg = Config {
        disk_path: Some(locked.join("g3")),
        ..e.cfg.clone()
    };
    // SAFETY: the child calls async-signal-safe setuid, then opens and _exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // Root ignores permission bits: drop to nobody first.
        // SAFETY: plain syscalls in the child.
        unsafe {
            if libc::geteuid() == 0 && (libc::setgid(65534) != 0 || libc::setuid(65534) != 0) {
                libc::_exit(2);
            }
        }
        let code = match DiskTier::open(&cfg.disk_settings().unwrap(), LEN, &tracing::Dispatch::none(), false) {
            Err(e) if e.why.contains("ermission denied") => 0,
            _ => 1,
        };
        // SAFETY: leave without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "status {status}"
    );
}

#[test]
fn write_queue_full_drops_offloads_without_blocking() {
    let e = env(64);
    let cfg = Config {
        disk_queue: 1,
        disk_threads: 1,
        ..e.cfg.clone()
    };
    let d = DiskTier::open(&cfg.disk_settings().unwrap(), LEN, &tracing::Dispatch::none(), false).unwrap();
    // The only worker is held busy, so the queue of one fills with the first
    // offload whatever the speed of the machine; the rest must come back at once.
    let (started_tx, started) = crossbeam_channel::bounded::<()>(1);
    let (release, gate) = crossbeam_channel::bounded::<()>(1);
    let busy = Box::new(move || {
        started_tx.send(()).unwrap();
        // Bounded so that an offload that wrongly blocks fails below, not hangs.
        let _ = gate.recv_timeout(Duration::from_secs(20));
    });
    assert!(d.pool.try_submit_write(busy).is_ok());
    started.recv().unwrap();
    let keys: Vec<u128> = (1..=40).collect();
    let start = Instant::now();
    for &k in &keys {
        d.offload(BlockHash(k), NS, 0, &[&payload(k)]);
    }
    let queued = start.elapsed();
    release.send(()).unwrap();
    assert!(
        queued < Duration::from_secs(15),
        "offloads waited for the worker ({queued:?})"
    );
    assert!(d.wait_idle(Duration::from_secs(10)));
    let s = d.stats();
    let (ok, dropped) = (
        s.written_blocks.load(Ordering::Relaxed),
        s.offload_dropped_full.load(Ordering::Relaxed),
    );
    assert_eq!(
        (ok, dropped),
        (1, 39),
        "one fits in the queue, the rest are counted as dropped"
    );
    assert_eq!(check_loads(&d, &keys), 1);
}

#[test]
fn offloads_are_staged_so_host_evictions_before_the_write_lose_nothing() {
    // The host tier holds a few blocks; 12 are offloaded back to back, so most
    // are evicted from it before a worker writes them: each must still reach disk.
    let e = env(16);
    let cfg = Config {
        cpu_bytes: 100_000,
        store_name: "small".into(),
        ..e.cfg.clone()
    };
    let host = HostTier::open(&cfg.host_settings(), LEN, 16).unwrap();
    let d = DiskTier::open(&e.cfg.disk_settings().unwrap(), LEN, &tracing::Dispatch::none(), false).unwrap();
    let keys: Vec<u128> = (1..=12).collect();
    for &k in &keys {
        host.store(BlockHash(k), &[&payload(k)]).unwrap();
        d.offload(BlockHash(k), NS, 0, &[&payload(k)]);
    }
    assert!(d.wait_idle(Duration::from_secs(10)));
    assert!(host.lookup(&[BlockHash(1)]).unwrap() == 0, "block 1 left the host tier");
    assert_eq!(d.stats().offload_dropped_full.load(Ordering::Relaxed), 0);
    assert_eq!(check_loads(&d, &keys), 12);
}

/// Run only as the child of `killed_writers_leave_only_verifiable_blocks`: writes
/// blocks to the disk tier until killed.
#[test]
#[ignore = "child process of the crash test"]
fn crash_child_writer() {
    let (Ok(shm), Ok(disk), Ok(seed)) = (
        std::env::var("TIERKV_TEST_SHM"),
        std::env::var("TIERKV_TEST_DISK"),
        std::env::var("TIERKV_TEST_SEED"),
    ) else {
        return;
    };
    let seed: u128 = seed.parse().unwrap();
    let cfg = config(Path::new(&shm), Path::new(&disk), 24);
    let host = Arc::new(HostTier::open(&cfg.host_settings(), LEN, 16).unwrap());
    let d = DiskTier::open(&cfg.disk_settings().unwrap(), LEN, &tracing::Dispatch::none(), false).unwrap();
    for i in 0u128.. {
        let k = 1 + (seed * 7919 + i) % 60;
        host.store(BlockHash(k), &[&payload(k)]).unwrap();
        d.offload(BlockHash(k), NS, 0, &[&payload(k)]);
        if i % 8 == 0 {
            d.wait_idle(Duration::from_secs(1));
        }
    }
}

#[test]
fn killed_writers_leave_only_verifiable_blocks() {
    let shm = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("g3");
    let exe = std::env::current_exe().unwrap();
    let cfg = config(shm.path(), &disk, 24);
    let (mut kept, mut dropped) = (0u64, 0u64);
    for round in 0..16u64 {
        let mut child = std::process::Command::new(&exe)
            .args([
                "--exact",
                "tier::disk::tests::crash_child_writer",
                "--ignored",
                "--nocapture",
            ])
            .env("TIERKV_TEST_SHM", shm.path())
            .env("TIERKV_TEST_DISK", &disk)
            .env("TIERKV_TEST_SEED", round.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Let it get going, then kill it at a point that varies by round.
        std::thread::sleep(Duration::from_millis(60 + (round * 37) % 200));
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        child.wait().unwrap();
        let d = DiskTier::open(&cfg.disk_settings().unwrap(), LEN, &tracing::Dispatch::none(), false).unwrap();
        let s = d.stats();
        kept += s.recovered_blocks.load(Ordering::Relaxed);
        dropped += s.recovery_dropped.load(Ordering::Relaxed);
        // Every identity the child could have written: each one that loads is exact
        // (check_loads asserts it); the rest are misses or dropped.
        let all: Vec<u128> = (1..=60).collect();
        let loaded = check_loads(&d, &all);
        assert!(loaded as u64 <= s.recovered_blocks.load(Ordering::Relaxed));
        assert!(d.is_up());
    }
    assert!(kept > 0, "the writer never got a block to disk");
    eprintln!("recovered {kept} blocks, dropped {dropped} slots over 16 kills");
}

/// An identity offered again while its first write is still in flight (re-offers
/// are routine: every host hit offers again) is written once, in one slot.
#[test]
fn an_identity_offered_again_during_its_write_is_written_once() {
    let e = env(16);
    let cfg = Config {
        disk_admit: AdmitMode::Always,
        ..e.cfg.clone()
    };
    let d = DiskTier::open(&cfg.disk_settings().unwrap(), LEN, &tracing::Dispatch::none(), false).unwrap();
    d.inject(Fault::SlowWrite { ms: 300 });
    assert!(d.offload(BlockHash(1), NS, 0, &[&payload(1)]));
    // The worker has taken the job and is writing it.
    let until = Instant::now() + Duration::from_secs(10);
    while d.census().writing == 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(1));
    }
    for _ in 0..5 {
        assert!(d.offload(BlockHash(1), NS, 0, &[&payload(1)]), "on its way");
    }
    assert!(d.wait_idle(Duration::from_secs(10)));
    let c = d.census();
    assert!(c.consistent(), "{c:?}");
    assert_eq!((c.indexed, c.ready, c.free), (1, 1, c.capacity - 1), "{c:?}");
    assert_eq!(d.stats().written_blocks.load(Ordering::Relaxed), 1);
    assert_eq!(check_loads(&d, &[1]), 1);
}

/// Many threads re-offer a few identities while the tier evicts: afterwards every
/// slot is accounted for once and nothing is orphaned.
#[test]
fn the_census_holds_after_concurrent_reoffers_and_evictions() {
    // Every policy: the default (hazard) also refuses writes when full, which must
    // leave no slot or pending entry behind.
    for policy in PolicyKind::ALL {
        let e = env(8);
        let cfg = Config {
            disk_admit: AdmitMode::Always,
            disk_threads: 4,
            disk_eviction: policy,
            ..e.cfg.clone()
        };
        let d = DiskTier::open(&cfg.disk_settings().unwrap(), LEN, &tracing::Dispatch::none(), false).unwrap();
        std::thread::scope(|s| {
            for t in 0..4u128 {
                let d = &d;
                s.spawn(move || {
                    for i in 0..300u128 {
                        // Keys 1-4 are loaded between offloads, so they are used
                        // again; 5-40 mostly come once.
                        let k = if i % 3 == 0 {
                            1 + (i + t) % 4
                        } else {
                            5 + (i * 7 + t) % 36
                        };
                        d.offload(BlockHash(k), NS, 0, &[&payload(k)]);
                        if i % 5 == 0 {
                            let hot = [BlockHash(1 + t % 4)];
                            let _ = d.load_batch(&hot, NS);
                        }
                    }
                });
            }
        });
        assert!(d.wait_idle(Duration::from_secs(30)));
        let c = d.census();
        assert!(c.consistent(), "{policy:?}: {c:?}");
        assert!(c.indexed <= c.capacity);
        let keys: Vec<u128> = (1..=40).collect();
        assert_eq!(check_loads(&d, &keys) as u64, c.indexed, "{policy:?}");
        // Every offload landed, was dropped for a reason, or was already there.
        let st = d.stats();
        let queued = st.offload_queued.load(Ordering::Relaxed);
        let written = st.written_blocks.load(Ordering::Relaxed);
        let refused = st.offload_refused.load(Ordering::Relaxed);
        let no_slot = st.offload_dropped_no_slot.load(Ordering::Relaxed);
        assert_eq!(queued, written + refused + no_slot, "{policy:?}");
        if policy != PolicyKind::Hazard {
            assert_eq!(refused, 0, "{policy:?} has no admission");
        }
    }
}

/// A read job that dies (a panic in the read path) fails its block; the caller is
/// never left waiting and the worker lives on.
#[test]
fn a_read_job_that_panics_fails_its_block_without_hanging() {
    let e = env(16);
    let d = e.open().unwrap();
    e.put(&d, [1, 2]);
    d.inject(Fault::PanicRead { n: 1 });
    let start = Instant::now();
    let r = d.load_batch(&[BlockHash(1), BlockHash(2)], NS);
    assert!(start.elapsed() < Duration::from_secs(10));
    let failed = r.iter().filter(|x| matches!(x, DiskRead::Failed)).count();
    let loaded = r.iter().filter(|x| matches!(x, DiskRead::Loaded(_))).count();
    assert_eq!((failed, loaded), (1, 1));
    // The workers still serve.
    assert!(d.census().consistent());
    let left: Vec<u128> = [1u128, 2].into_iter().filter(|&k| d.contains(BlockHash(k))).collect();
    assert_eq!(check_loads(&d, &left), left.len());
}

/// A new owner replaces the shared directory by rename: a reader's mapping of the
/// old one stays valid (no SIGBUS), and the reader switches to the new one.
#[test]
fn a_new_owner_never_truncates_a_readers_directory() {
    let e = env(16);
    let owner = e.open().unwrap();
    e.put(&owner, [1, 2, 3]);
    // A reader as another process has it (not joined through this process's registry).
    let dir = e.dir.path().join("g3");
    let reader = DiskTier::create(
        &e.cfg.disk_settings().unwrap(),
        &dir,
        &e.file(),
        LEN,
        &tracing::Dispatch::none(),
        true,
    )
    .unwrap();
    assert!(!reader.is_owner());
    assert_eq!(reader.lookup_run(&[BlockHash(1), BlockHash(2)]), 2);
    let old_dir = reader.inner.directory().unwrap();
    drop(owner);
    let owner2 = e.open().unwrap();
    assert!(owner2.is_owner());
    // The old mapping is intact (a truncation would SIGBUS this read).
    assert!(old_dir.get(BlockHash(1)).is_some());
    std::thread::sleep(HEALTH_INTERVAL + Duration::from_millis(50));
    let new_dir = reader.inner.directory().unwrap();
    assert_ne!(new_dir.id(), old_dir.id(), "the reader re-mapped the new directory");
    assert_eq!(reader.lookup_run(&[BlockHash(1), BlockHash(2), BlockHash(3)]), 3);
}

#[test]
fn a_symlinked_disk_file_is_refused_and_its_target_unchanged() {
    let e = env(16);
    let target = e.dir.path().join("victim");
    std::fs::write(&target, b"precious").unwrap();
    std::fs::create_dir_all(e.dir.path().join("g3")).unwrap();
    std::os::unix::fs::symlink(&target, e.file()).unwrap();
    let err = e.open().err().unwrap();
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert_eq!(std::fs::read(&target).unwrap(), b"precious");
}

#[test]
fn a_world_writable_disk_file_is_refused() {
    let e = env(16);
    drop(e.open().unwrap());
    std::fs::set_permissions(e.file(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let err = e.open().err().unwrap();
    assert!(err.to_string().contains("0666"), "{err}");
}

/// Recovery finds an identity twice: a newer copy whose header verifies but whose
/// payload is torn, and an older valid one. The valid one is kept and served.
#[test]
fn recovery_prefers_an_older_valid_copy_over_a_torn_newer_one() {
    use std::os::unix::fs::FileExt;
    let e = env(16);
    let d = e.open().unwrap();
    e.put(&d, [5]);
    let g = d.geometry();
    let old_slot = d.inner.index.lock().ready(BlockHash(5)).unwrap();
    drop(d);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(e.file())
        .unwrap();
    let mut slot = vec![0u8; g.slot_bytes as usize];
    f.read_exact_at(&mut slot, g.slot_offset(old_slot)).unwrap();
    // A newer copy of the same block in another slot, then torn: its header is
    // intact (it verifies alone), its payload is not.
    let mut h = format::BlockHeader::decode(&slot).unwrap();
    h.generation += 100;
    let (hdr, rest) = slot.split_at_mut(SECTOR);
    h.encode(hdr, &rest[..g.block_bytes as usize]);
    rest[17] ^= 0xff;
    let new_slot = (old_slot + 1) % g.n_slots as u32;
    f.write_all_at(&slot, g.slot_offset(new_slot)).unwrap();
    drop(f);
    let d = e.open().unwrap();
    assert_eq!(d.inner.index.lock().ready(BlockHash(5)), Some(old_slot));
    assert_eq!(check_loads(&d, &[5]), 1, "the older valid copy is served");
    assert!(d.census().consistent());
}

/// A manager that started before any process owned the disk file gets the tier
/// once one does (it used to run its whole life without disk).
#[test]
fn a_reader_that_started_before_the_owner_gets_the_tier_later() {
    let e = env(16);
    let early = DiskHandle::open(&e.cfg.disk_settings().unwrap(), LEN, &tracing::Dispatch::none(), true);
    assert!(early.get().is_none());
    assert!(early.problem().is_some());
    let owner = e.open().unwrap();
    e.put(&owner, [1, 2]);
    std::thread::sleep(Duration::from_millis(1100));
    let d = early.get().expect("opened on retry");
    assert_eq!(d.lookup_run(&[BlockHash(1), BlockHash(2)]), 2);
    assert!(early.problem().is_none());
}

/// When the process that owns the disk file dies, a process that was reading it
/// takes it over (recovering its index from the file) instead of reading a frozen
/// directory for ever.
#[test]
fn a_reader_takes_over_when_the_owner_dies() {
    let e = env(16);
    let mut ready = [0i32; 2];
    // SAFETY: pipe writes two descriptors.
    assert_eq!(unsafe { libc::pipe(ready.as_mut_ptr()) }, 0);
    // SAFETY: the child opens the tier as owner, writes two blocks, says so, and
    // waits to be killed; it never returns into the harness.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let code = match e.open() {
            Ok(d) if d.is_owner() => {
                e.put(&d, [7, 8]);
                // SAFETY: plain pipe write.
                unsafe { libc::write(ready[1], [1u8].as_ptr().cast(), 1) };
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
            _ => 1,
        };
        // SAFETY: ends the child.
        unsafe { libc::_exit(code) };
    }
    let mut b = [0u8];
    // SAFETY: reading our pipe.
    assert_eq!(unsafe { libc::read(ready[0], b.as_mut_ptr().cast(), 1) }, 1);
    let h = DiskHandle::open(&e.cfg.disk_settings().unwrap(), LEN, &tracing::Dispatch::none(), false);
    let reader = h.get().unwrap();
    assert!(!reader.is_owner());
    assert_eq!(reader.lookup_run(&[BlockHash(7), BlockHash(8)]), 2);
    // SAFETY: killing and reaping our own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
    std::thread::sleep(Duration::from_millis(1100));
    let d = h.get().unwrap();
    assert!(d.is_owner(), "took the file over");
    assert_eq!(
        d.lookup_run(&[BlockHash(7), BlockHash(8)]),
        2,
        "recovered what the dead owner wrote"
    );
    assert_eq!(check_loads(&d, &[7, 8]), 2);
    assert!(d.census().consistent());
}
