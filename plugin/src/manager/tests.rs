//! Manager tests that need to steer the scheduler: placement of new blocks.

use super::*;
use crate::hw::{Decisions, Telemetry};
use crate::movement::AdmitMode;

/// A manager with telemetry off (decisions are set by hand) over `cfg`, for
/// blocks of `bytes`.
fn manager(cfg: Config, bytes: u64) -> Manager {
    let cfg = Config {
        hw_interval: None,
        ..cfg
    };
    let params = ManagerParams {
        block_tokens: 4,
        block_bytes: bytes,
        namespace: None,
        pool_blocks: 0,
        disk_reader: false,
        pool_engine_order: false,
    };
    Manager::new(cfg, params).unwrap()
}

#[test]
fn under_host_memory_pressure_new_blocks_go_straight_to_disk_and_load_back() {
    let shm = tempfile::tempdir().unwrap();
    let disk = tempfile::tempdir().unwrap();
    let cfg = Config {
        shm_dir: shm.path().to_path_buf(),
        cpu_bytes: 1 << 20,
        disk_path: Some(disk.path().to_path_buf()),
        disk_bytes: 4 << 20,
        disk_admit: AdmitMode::Always,
        ..Config::default()
    };
    const BYTES: usize = 8192;
    let m = manager(cfg, BYTES as u64);
    let mut mem: Vec<u8> = (0..8 * BYTES).map(|i| (i * 7 % 253) as u8).collect();
    let region = Region {
        base: mem.as_mut_ptr() as u64,
        block_stride: BYTES as u64,
        bytes_per_block: BYTES as u64,
    };
    m.register_layout(&[region], 8).unwrap();
    let hs: Vec<BlockHash> = (1..=3u128).map(BlockHash).collect();
    // What the scheduler decides when MemAvailable is below 5% of RAM.
    let pressure = Decisions {
        placement: Placement::Disk,
        ..Decisions::default()
    };
    m.hw.publish("trace", Telemetry::default(), pressure);
    let mut out = vec![StoreOutcome::NoSpace; 3];
    // SAFETY: `mem` is valid for reads and not written meanwhile.
    unsafe { m.store_blocks(&hs, &[0, 1, 2], &mut out) }.unwrap();
    assert_eq!(out, vec![StoreOutcome::Stored; 3]);
    assert!(m.flush(std::time::Duration::from_secs(10)));
    assert_eq!(
        m.movement.host().lookup(&hs).unwrap(),
        0,
        "nothing went to the host tier"
    );
    let mut tiers = vec![TierId::Engine; 3];
    assert_eq!(m.lookup(&hs, &mut tiers).unwrap(), 3);
    assert_eq!(tiers, vec![TierId::Disk; 3]);
    let mut loaded = vec![LoadOutcome::Miss; 3];
    // SAFETY: blocks 4..7 of `mem` are ours to write.
    unsafe { m.load_blocks(&hs, &[4, 5, 6], &mut loaded) }.unwrap();
    assert_eq!(loaded, vec![LoadOutcome::Loaded; 3]);
    assert_eq!(mem[..3 * BYTES], mem[4 * BYTES..7 * BYTES]);
    // Pressure gone: back to the host tier.
    m.hw.publish("trace", Telemetry::default(), Decisions::default());
    // SAFETY: as above.
    unsafe { m.store_blocks(&[BlockHash(9)], &[3], &mut out[..1]) }.unwrap();
    assert_eq!(m.movement.host().lookup(&[BlockHash(9)]).unwrap(), 1);
}

/// With the `cuda` feature: without a driver, a device layout is refused with the
/// reason and the host layout keeps working; with a GPU, blocks stored from device
/// memory come back into other device blocks byte for byte (set
/// `TIERKV_REQUIRE_GPU=1` on a GPU machine so that a missing GPU fails).
#[cfg(feature = "cuda")]
#[test]
fn device_layouts_round_trip_on_a_gpu_and_are_refused_without_one() {
    use tierkv_cuda::gpu::{probe, DeviceBuffer, Gpu};
    let shm = tempfile::tempdir().unwrap();
    let cfg = Config {
        shm_dir: shm.path().to_path_buf(),
        cpu_bytes: 4 << 20,
        ..Config::default()
    };
    const BYTES: usize = 16384;
    let m = manager(cfg, BYTES as u64);
    if !probe().available {
        assert!(
            std::env::var("TIERKV_REQUIRE_GPU").as_deref() != Ok("1"),
            "TIERKV_REQUIRE_GPU=1 but no GPU: {}",
            probe().reason
        );
        let r = Region {
            base: 1 << 40,
            block_stride: BYTES as u64,
            bytes_per_block: BYTES as u64,
        };
        match m.register_device_layout(&[r], 8, 0) {
            Err(ManagerError::Unavailable(why)) => assert!(why.contains("libcuda"), "{why}"),
            other => panic!("{other:?}"),
        }
        return;
    }
    // K and V regions of 8 blocks each, 8 KiB per block per region.
    let gpu = Gpu::open(0, None).unwrap();
    let dev = DeviceBuffer::new(&gpu, 2 * 8 * BYTES / 2 * 2).unwrap();
    let pattern: Vec<u8> = (0..8 * BYTES).map(|i| (i * 31 % 251) as u8).collect();
    dev.write(&pattern).unwrap();
    let half = (BYTES / 2) as u64;
    let regions = [
        Region {
            base: dev.ptr(),
            block_stride: half,
            bytes_per_block: half,
        },
        Region {
            base: dev.ptr() + 8 * half,
            block_stride: half,
            bytes_per_block: half,
        },
    ];
    m.register_device_layout(&regions, 8, 0).unwrap();
    let hs: Vec<BlockHash> = (1..=3u128).map(BlockHash).collect();
    let mut out = vec![StoreOutcome::NoSpace; 3];
    // SAFETY: the device blocks are not written meanwhile.
    unsafe { m.store_blocks(&hs, &[0, 1, 2], &mut out) }.unwrap();
    assert_eq!(out, vec![StoreOutcome::Stored; 3]);
    let mut loaded = vec![LoadOutcome::Miss; 3];
    // SAFETY: blocks 5..8 are ours.
    unsafe { m.load_blocks(&hs, &[5, 6, 7], &mut loaded) }.unwrap();
    assert_eq!(loaded, vec![LoadOutcome::Loaded; 3]);
    let mut back = vec![0u8; 8 * BYTES];
    dev.read(&mut back).unwrap();
    let same = |back: &[u8], pairs: &[(usize, usize)]| {
        for &(src, dst) in pairs {
            for r in 0..2 {
                let (a, b) = (r * 8 * BYTES / 2 + src * BYTES / 2, r * 8 * BYTES / 2 + dst * BYTES / 2);
                assert_eq!(back[a..a + BYTES / 2], back[b..b + BYTES / 2], "block {src} region {r}");
            }
        }
    };
    same(&back, &[(0, 5), (1, 6), (2, 7)]);
    // Layer by layer (one region per layer), twice: the second load reuses the
    // pooled staging. A missing block is reported and its device block untouched.
    for _ in 0..2 {
        dev.write(&pattern).unwrap();
        let want: Vec<BlockHash> = vec![hs[1], hs[2], BlockHash(99)];
        let mut outs = vec![LoadOutcome::Miss; 3];
        // SAFETY: blocks 3..6 are ours until the load is dropped.
        let load = unsafe { m.load_blocks_layerwise(&want, &[3, 4, 5], 2, &mut outs) }.unwrap();
        assert_eq!(outs, vec![LoadOutcome::Loaded, LoadOutcome::Loaded, LoadOutcome::Miss]);
        assert_eq!(load.layers(), 2);
        load.wait_host(1).unwrap();
        load.wait_host(0).unwrap();
        drop(load);
        dev.read(&mut back).unwrap();
        same(&back, &[(1, 3), (2, 4)]);
        assert_eq!(
            back[5 * BYTES / 2..6 * BYTES / 2],
            pattern[5 * BYTES / 2..6 * BYTES / 2]
        );
    }
    let mut outs = vec![LoadOutcome::Miss; 1];
    // SAFETY: refused before any copy.
    let three = unsafe { m.load_blocks_layerwise(&hs[..1], &[3], 3, &mut outs) };
    assert!(
        matches!(three, Err(ManagerError::InvalidArgument(_))),
        "2 regions are not 3 layers"
    );
}

/// A manager with every part that has metrics: host and disk tiers, an engine
/// pool, semantic sharing (telemetry off, so the figures are the same each run).
/// The directories must outlive it.
fn full_manager(shm: &std::path::Path, disk: &std::path::Path) -> Manager {
    let cfg = Config {
        shm_dir: shm.to_path_buf(),
        cpu_bytes: 1 << 20,
        disk_path: Some(disk.to_path_buf()),
        disk_bytes: 4 << 20,
        hw_interval: None,
        semantic: crate::semantic::SemanticPolicy {
            enabled: true,
            ..Default::default()
        },
        // A remote tier whose store is not there: its series are present, at zero.
        remote: Config::from_lookup(|v| (v == "TIERKV_REMOTE_URL").then(|| "redis://127.0.0.1:1".into()))
            .unwrap()
            .remote,
        ..Config::default()
    };
    let params = ManagerParams {
        block_tokens: 4,
        block_bytes: 8192,
        pool_blocks: 8,
        ..ManagerParams::default()
    };
    Manager::new(cfg, params).unwrap()
}

/// Every sample line parses as `name{labels} value`, every family has one TYPE
/// line, and the series of a family are together, whichever part added them.
#[test]
fn the_scrape_is_well_formed_with_every_part_present() {
    let (shm, disk) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let m = full_manager(shm.path(), disk.path());
    let text = m.metrics_text();
    let mut typed = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap().to_string();
            assert!(!typed.contains(&name), "{name} has two TYPE lines");
            typed.push(name.clone());
            current = name;
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        value.parse::<f64>().unwrap();
        let name = series.split('{').next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| *f == current))
            .unwrap_or(name);
        assert_eq!(family, current, "{line} is outside its family");
    }
    for want in [
        "tierkv_block_ops_total{tier=\"host\",op=\"store\"} 0",
        "tierkv_block_ops_total{tier=\"engine\",op=\"allocate\"} 0",
        "tierkv_block_ops_total{tier=\"disk\",op=\"store\"} 0",
        "tierkv_tier_up{tier=\"disk\"} 1",
        "tierkv_engine_pool_blocks 8",
        "tierkv_transfer_seconds_count{src=\"disk\",dst=\"engine\"} 0",
    ] {
        assert!(text.contains(want), "{want} missing:\n{text}");
    }
}

/// Metrics are an API: every family a scrape can show (all parts present) is
/// documented in docs/metrics.md.
#[test]
fn every_metric_family_is_documented() {
    let (shm, disk) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let m = full_manager(shm.path(), disk.path());
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md")).unwrap();
    let text = m.metrics_text();
    let missing: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .filter(|name| !docs.contains(&format!("`{name}`")))
        .collect();
    assert!(missing.is_empty(), "families missing from docs/metrics.md: {missing:?}");
}

/// KV events through the facade: every block the host tier stores and evicts and
/// every block the disk tier writes is reported once, under the engine's names,
/// in batches that fit the smallest buffer; blocks never named are counted, not
/// reported.
#[test]
fn kv_events_report_each_tier_change_once_under_the_engines_names() {
    use crate::events::wire::decode;
    let shm = tempfile::tempdir().unwrap();
    let disk = tempfile::tempdir().unwrap();
    const BYTES: usize = 64 << 10;
    let cfg = Config {
        shm_dir: shm.path().to_path_buf(),
        cpu_bytes: 1 << 20,
        disk_path: Some(disk.path().to_path_buf()),
        disk_bytes: 64 << 20,
        disk_admit: AdmitMode::Always,
        ..Config::default()
    };
    let m = manager(cfg, BYTES as u64);
    let mut mem = vec![5u8; 4 * BYTES];
    let region = Region {
        base: mem.as_mut_ptr() as u64,
        block_stride: BYTES as u64,
        bytes_per_block: BYTES as u64,
    };
    m.register_layout(&[region], 4).unwrap();
    let n = 40u64;
    let hs: Vec<BlockHash> = (1..=u128::from(n)).map(BlockHash).collect();
    let keys: Vec<u64> = (1..=n).map(|i| u64::MAX - i).collect();
    let parents: Vec<u64> = (0..n).map(|i| if i == 0 { 0 } else { u64::MAX - i }).collect();
    // Not started: naming is a no-op, nothing is recorded.
    m.name_blocks(&hs, &keys, Some(&parents)).unwrap();
    assert!(!m.events_on());
    m.events_start(0);
    m.name_blocks(&hs, &keys, Some(&parents)).unwrap();
    assert!(m.name_blocks(&hs, &keys[1..], None).is_err());
    for (i, h) in hs.iter().enumerate() {
        let mut out = [StoreOutcome::NoSpace];
        // SAFETY: `mem` is valid for reads and not written meanwhile.
        unsafe { m.store_blocks(&[*h], &[(i % 4) as u64], &mut out) }.unwrap();
        assert_eq!(out[0], StoreOutcome::Stored);
    }
    // A block the engine never named.
    let mut out = [StoreOutcome::NoSpace];
    // SAFETY: as above.
    unsafe { m.store_blocks(&[BlockHash(999)], &[0], &mut out) }.unwrap();
    assert!(m.flush(std::time::Duration::from_secs(10)));
    let host_slots = m.tier_status(TierId::Host).unwrap().capacity_blocks;
    assert!(host_slots < n, "the host tier must evict in this test");

    let mut events = Vec::new();
    let mut buf = vec![0u8; crate::events::MIN_BATCH_BYTES];
    loop {
        let t = m.take_events(&mut buf).unwrap();
        if t.events == 0 {
            assert_eq!(t.remaining, 0);
            break;
        }
        events.extend(decode(&buf[..t.bytes]));
    }
    let count = |ty: &str, medium: &str| -> Vec<u64> {
        events
            .iter()
            .filter(|e| e.0 == ty && e.1 == medium)
            .flat_map(|e| e.3.clone())
            .collect()
    };
    let mut host_stored = count("BlockStored", "CPU");
    host_stored.sort_unstable();
    let mut want = keys.clone();
    want.sort_unstable();
    assert_eq!(host_stored, want, "each host store once");
    let mut disk_stored = count("BlockStored", "STORAGE");
    disk_stored.sort_unstable();
    assert_eq!(disk_stored, want, "each disk write once");
    // The host tier evicted the oldest blocks: the named ones, in store order
    // (block 999 is the one that stays unnamed).
    let removed = count("BlockRemoved", "CPU");
    let evictions = n + 1 - m.tier_status(TierId::Host).unwrap().blocks;
    assert_eq!(removed.len() as u64, evictions);
    assert_eq!(removed, keys[..removed.len()].to_vec());
    assert!(events
        .iter()
        .all(|e| e.2 == if e.1 == "CPU" { "tierkv:host" } else { "tierkv:disk" }));
    // Parents travel with the chain's first block.
    let first = events.iter().find(|e| e.0 == "BlockStored" && e.1 == "CPU").unwrap();
    assert_eq!((first.3[0], first.4), (keys[0], None));
    let text = m.metrics_text();
    assert!(text.contains("tierkv_events_total{outcome=\"unnamed\"} 2"), "{text}");
    assert!(text.contains("tierkv_events_enabled 1"));
    let mut small = [0u8; 16];
    assert!(m.take_events(&mut small).is_ok(), "nothing queued: nothing to encode");
}

/// Two engines on one host tier: the one that stores a block reports it, the
/// other's store of the same block is no event; the engine whose store evicts a
/// block reports its removal under the name the first engine gave it.
#[test]
fn shared_host_tier_each_change_is_reported_once_by_the_engine_that_made_it() {
    use crate::events::wire::decode;
    let shm = tempfile::tempdir().unwrap();
    const BYTES: usize = 64 << 10;
    let cfg = || Config {
        shm_dir: shm.path().to_path_buf(),
        cpu_bytes: 1 << 20,
        store_name: "shared-events".into(),
        ..Config::default()
    };
    let (a, b) = (manager(cfg(), BYTES as u64), manager(cfg(), BYTES as u64));
    let mut mem = vec![1u8; 2 * BYTES];
    let region = Region {
        base: mem.as_mut_ptr() as u64,
        block_stride: BYTES as u64,
        bytes_per_block: BYTES as u64,
    };
    for m in [&a, &b] {
        m.register_layout(&[region], 2).unwrap();
        m.events_start(0);
    }
    let take = |m: &Manager| {
        let mut buf = vec![0u8; 1 << 16];
        let t = m.take_events(&mut buf).unwrap();
        assert_eq!(t.remaining, 0);
        if t.events == 0 {
            Vec::new()
        } else {
            decode(&buf[..t.bytes])
        }
    };
    let store = |m: &Manager, h: u128, key: u64| {
        m.name_blocks(&[BlockHash(h)], &[key], None).unwrap();
        let mut out = [StoreOutcome::NoSpace];
        // SAFETY: `mem` is valid for reads and not written meanwhile.
        unsafe { m.store_blocks(&[BlockHash(h)], &[0], &mut out) }.unwrap();
        out[0]
    };
    assert_eq!(store(&a, 1, 11), StoreOutcome::Stored);
    assert_eq!(store(&b, 1, 11), StoreOutcome::AlreadyPresent);
    assert_eq!(
        take(&a).iter().map(|e| (e.0.as_str(), e.3.clone())).collect::<Vec<_>>(),
        vec![("BlockStored", vec![11])]
    );
    assert!(take(&b).is_empty(), "B stored nothing");
    // B fills the tier: its stores evict block 1, which B reports under A's name.
    let slots = b.tier_status(TierId::Host).unwrap().capacity_blocks as u128;
    for h in 2..=slots + 1 {
        assert_eq!(store(&b, h, 100 + h as u64), StoreOutcome::Stored);
    }
    let removed: Vec<u64> = take(&b)
        .into_iter()
        .filter(|e| e.0 == "BlockRemoved")
        .flat_map(|e| e.3)
        .collect();
    assert_eq!(removed, vec![11]);
    assert!(take(&a).is_empty(), "A saw nothing happen");
}

/// Two managers standing for two machines (separate host tiers, no disk) share
/// one Redis cluster: blocks machine A computed are found by B's lookup (first
/// "ask again later", never a wait), loaded from the remote tier verified byte
/// for byte, and onboarded into B's host tier.
#[test]
fn a_block_stored_on_one_machine_is_served_on_another_through_the_remote_tier() {
    let Some(store) = crate::tier::test_util::RedisStore::start("cluster") else {
        return;
    };
    const BYTES: usize = 8192;
    let machine = |shm: &std::path::Path, name: &str| {
        let cfg = Config::from_lookup(|v| match v {
            "TIERKV_REMOTE_URL" => Some(store.url.clone()),
            "TIERKV_REMOTE_ADMIT" => Some("always".into()),
            "TIERKV_REMOTE_PREFIX" => Some("mgr-test".into()),
            "TIERKV_SHM_DIR" => Some(shm.to_str().unwrap().into()),
            "TIERKV_STORE_NAME" => Some(name.into()),
            "TIERKV_CPU_BYTES" => Some("1MiB".into()),
            _ => None,
        })
        .unwrap();
        manager(cfg, BYTES as u64)
    };
    let (shm_a, shm_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = machine(shm_a.path(), "a");
    let b = machine(shm_b.path(), "b");
    let mut mem_a: Vec<u8> = (0..4 * BYTES).map(|i| (i * 13 % 251) as u8).collect();
    let mut mem_b = vec![0u8; 4 * BYTES];
    for (m, mem) in [(&a, &mut mem_a), (&b, &mut mem_b)] {
        let region = Region {
            base: mem.as_mut_ptr() as u64,
            block_stride: BYTES as u64,
            bytes_per_block: BYTES as u64,
        };
        m.register_layout(&[region], 4).unwrap();
    }
    let hs: Vec<BlockHash> = (1..=3u128).map(|k| BlockHash(k << 70 | 5)).collect();
    let mut out = vec![StoreOutcome::NoSpace; 3];
    // SAFETY: `mem_a` is valid for reads and not written meanwhile.
    unsafe { a.store_blocks(&hs, &[0, 1, 2], &mut out) }.unwrap();
    assert!(a.flush(std::time::Duration::from_secs(10)));
    let mut tiers = vec![TierId::Engine; 3];
    let first = b.lookup_run(&hs, &mut tiers, true).unwrap();
    assert_eq!(first, Run { end: 0, pending: true });
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let run = loop {
        let r = b.lookup_run(&hs, &mut tiers, true).unwrap();
        if !r.pending {
            break r;
        }
        assert!(std::time::Instant::now() < end, "still pending");
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    assert_eq!(run.end, 3);
    assert_eq!(tiers, vec![TierId::Remote; 3]);
    let mut loaded = vec![LoadOutcome::Miss; 3];
    // SAFETY: blocks 1..4 of `mem_b` are ours to write.
    unsafe { b.load_blocks(&hs, &[1, 2, 3], &mut loaded) }.unwrap();
    assert_eq!(loaded, vec![LoadOutcome::Loaded; 3]);
    assert_eq!(mem_a[..3 * BYTES], mem_b[BYTES..]);
    // Onboarded: B's host tier has them now.
    assert_eq!(b.movement.host().lookup(&hs).unwrap(), 3);
    assert_eq!(b.lookup(&hs, &mut tiers).unwrap(), 3);
    assert_eq!(tiers, vec![TierId::Host; 3]);
    let text = b.metrics_text();
    assert!(
        text.contains("tierkv_lookup_blocks_total{tier=\"remote\",result=\"hit\"} 3"),
        "{text}"
    );
}

/// A PQ index built from blocks that spilled from a small host tier to disk
/// gathers every selected token's K and V from wherever its block lives
/// (verified loads), through its block cache or, with none, the tiers each time.
#[test]
fn pq_gathers_rows_from_blocks_in_the_host_and_disk_tiers() {
    use tierkv_cuda::reference::{KeyDtype, RopeSpec};
    let (shm, disk) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cfg = Config {
        shm_dir: shm.path().to_path_buf(),
        cpu_bytes: 1 << 20,
        disk_path: Some(disk.path().to_path_buf()),
        disk_bytes: 8 << 20,
        disk_admit: AdmitMode::Always,
        ..Config::default()
    };
    // One layer, 8 KV heads of 64 floats, 4 tokens a block: K rows then V rows.
    const HEADS: usize = 8;
    const DIM: usize = 64;
    const BT: usize = 4;
    const ROW: usize = DIM * 4;
    const BYTES: usize = 2 * BT * HEADS * ROW;
    const N: usize = 120; // ~60 blocks fit the host tier: the rest only on disk
    let m = manager(cfg, BYTES as u64);
    let val = |kind: usize, t: usize, h: usize, d: usize| ((kind * 7 + t * 13 + h * 31 + d) % 97) as f32 - 48.0;
    let mut mem = vec![0u8; N * BYTES];
    for t in 0..N * BT {
        for h in 0..HEADS {
            for d in 0..DIM {
                for kind in 0..2 {
                    let at = (t / BT) * BYTES + kind * BT * HEADS * ROW + ((t % BT) * HEADS + h) * ROW + d * 4;
                    mem[at..at + 4].copy_from_slice(&val(kind, t, h, d).to_le_bytes());
                }
            }
        }
    }
    let region = Region {
        base: mem.as_mut_ptr() as u64,
        block_stride: BYTES as u64,
        bytes_per_block: BYTES as u64,
    };
    m.register_layout(&[region], N as u64).unwrap();
    let rows = |is_key: u32| TokenRows {
        region: 0,
        is_key,
        offset: if is_key == 1 { 0 } else { (BT * HEADS * ROW) as u64 },
        token_stride: (HEADS * ROW) as u64,
        head_stride: ROW as u64,
        heads: HEADS as u32,
        row_bytes: ROW as u32,
        elem_stride: 0,
    };
    let rope = RopeSpec::standard(1, DIM as u32, DIM as u32, 10000.0, true).unwrap();
    m.register_token_layout(&[rows(1), rows(0)], KeyDtype::F32, rope)
        .unwrap();
    let hs: Vec<BlockHash> = (1..=N as u128).map(|i| BlockHash(i * 0x9e37_79b9)).collect();
    let ids: Vec<u64> = (0..N as u64).collect();
    let mut out = vec![StoreOutcome::NoSpace; N];
    // SAFETY: `mem` is valid for reads and not written meanwhile.
    unsafe { m.store_blocks(&hs, &ids, &mut out) }.unwrap();
    assert!(m.flush(std::time::Duration::from_secs(20)));
    let in_host = (0..N)
        .filter(|&i| m.movement.host().lookup(&hs[i..=i]).unwrap() == 1)
        .count();
    assert!(
        in_host < N,
        "some blocks live on disk only ({in_host} of {N} in the host tier)"
    );
    mem.fill(0); // the engine's copy is gone
    let tokens = N * BT - 3;
    for cache_bytes in [0, 8 * BYTES as u64] {
        let s = PqSettings {
            cache_bytes,
            sink: 4,
            ..m.pq_settings()
        };
        let pq = m.pq_build_blocks(&hs, tokens, Some(s)).unwrap();
        assert_eq!(pq.info().value_dim, DIM);
        for step in 0..3u32 {
            // Every KV head: a spread of tokens over all blocks, then one past the stored ones.
            let lists: Vec<Vec<u32>> = (0..HEADS as u32)
                .map(|h| {
                    let mut l: Vec<u32> = (0..tokens as u32).filter(|t| (t + h + step) % 7 == 0).collect();
                    l.push(tokens as u32 + 1);
                    l
                })
                .collect();
            let cap = lists.iter().map(Vec::len).max().unwrap();
            let refs: Vec<&[u32]> = lists.iter().map(|l| &l[..]).collect();
            let (mut k, mut v, mut n) = (
                vec![0f32; HEADS * cap * DIM],
                vec![0f32; HEADS * cap * DIM],
                vec![0; HEADS],
            );
            m.pq_gather(&pq, 0, &refs, cap, &mut k, &mut v, &mut n).unwrap();
            for (h, l) in lists.iter().enumerate() {
                assert_eq!(n[h], l.len() - 1, "the token past the blocks ends the rows");
                for (r, &t) in l[..n[h]].iter().enumerate() {
                    let at = (h * cap + r) * DIM;
                    for d in 0..DIM {
                        assert_eq!(k[at + d], val(0, t as usize, h, d), "K token {t} head {h}");
                        assert_eq!(v[at + d], val(1, t as usize, h, d), "V token {t} head {h}");
                    }
                }
            }
        }
        assert!(pq.info().cached_blocks <= (cache_bytes / BYTES as u64) as usize);
        // Layer out of range, a list longer than its rows, not ascending: refused.
        let one: Vec<&[u32]> = vec![&[1, 2][..]; HEADS];
        let (mut k, mut v, mut n) = (vec![0f32; HEADS * 2 * DIM], vec![0f32; HEADS * 2 * DIM], vec![0; HEADS]);
        assert!(m.pq_gather(&pq, 1, &one, 2, &mut k, &mut v, &mut n).is_err());
        assert!(m.pq_gather(&pq, 0, &one, 1, &mut k, &mut v, &mut n).is_err());
        let back: Vec<&[u32]> = vec![&[2, 1][..]; HEADS];
        assert!(m.pq_gather(&pq, 0, &back, 2, &mut k, &mut v, &mut n).is_err());
    }
    let text = m.metrics_text();
    assert!(text.contains("tierkv_pq_block_cache_total{result=\"hit\"}"), "{text}");
    // Every host-tier copy corrupted behind the tier's back after the build: a
    // gather's region read fails its digest, the block comes from disk instead.
    let pq = m.pq_build_blocks(&hs, tokens, None).unwrap();
    pq.set_cache_bytes(0);
    let host = m.movement.host();
    let g = host.arena().geometry();
    let mut f = std::fs::read(host.arena().path()).unwrap();
    for slot in 0..u64::from(g.n_slots) {
        f[(g.data_off + slot * g.slot_stride) as usize + 100] ^= 0x40;
    }
    std::fs::write(host.arena().path(), &f).unwrap();
    let all: Vec<u32> = (0..tokens as u32).step_by(5).collect();
    let lists: Vec<&[u32]> = vec![&all[..]; HEADS];
    let cap = all.len();
    let (mut k, mut v, mut n) = (
        vec![0f32; HEADS * cap * DIM],
        vec![0f32; HEADS * cap * DIM],
        vec![0; HEADS],
    );
    m.pq_gather(&pq, 0, &lists, cap, &mut k, &mut v, &mut n).unwrap();
    for h in 0..HEADS {
        for (r, &t) in all.iter().enumerate() {
            let at = (h * cap + r) * DIM;
            assert_eq!(
                k[at..at + DIM],
                (0..DIM).map(|d| val(0, t as usize, h, d)).collect::<Vec<_>>()[..]
            );
            assert_eq!(
                v[at..at + DIM],
                (0..DIM).map(|d| val(1, t as usize, h, d)).collect::<Vec<_>>()[..]
            );
        }
    }
    assert!(
        host.stats()
            .checksum_failures
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
}
