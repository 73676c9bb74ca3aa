//! The disk tier through the C ABI of the built library: blocks evicted from the
//! host tier come back from disk, verified, also after the manager (as a new
//! process would) starts again; a disk tier that cannot open leaves the host tier
//! serving and says why.

#[path = "common.rs"]
mod common;

use common::{api, create_in, destroy, hashes, metrics};
use tierkv_abi_tests::{code, status, DiskStatus, Mgr, Region};

const BLOCK_TOKENS: u32 = 16;
const BLOCK: usize = 64 * 1024;

fn disk_status(m: Mgr) -> (i32, DiskStatus) {
    let mut st = DiskStatus::default();
    // SAFETY: a live handle and a valid out pointer.
    let rc = unsafe { (api().tierkv_disk_status)(m, &mut st) };
    (rc, st)
}

/// Engine memory of `n` blocks, registered as one region.
fn engine(m: Mgr, n: usize) -> Vec<u8> {
    let mem = vec![0u8; n * BLOCK];
    let r = Region {
        base: mem.as_ptr() as u64,
        block_stride: BLOCK as u64,
        bytes_per_block: BLOCK as u64,
    };
    // SAFETY: one valid region over `mem`, which outlives the manager's use of it.
    let st = unsafe { (api().tierkv_register_layout)(m, &r, 1, n as u64) };
    assert_eq!(st, status::OK);
    mem
}

fn fill(mem: &mut [u8], b: usize, seed: u8) {
    for (i, x) in mem[b * BLOCK..(b + 1) * BLOCK].iter_mut().enumerate() {
        *x = seed.wrapping_mul(13).wrapping_add((i / 7) as u8);
    }
}

fn lookup(m: Mgr, hs: &[tierkv_abi_tests::Hash]) -> Vec<u8> {
    let mut tiers = vec![0u8; hs.len()];
    let mut n = 0usize;
    // SAFETY: buffers of the stated lengths.
    let st = unsafe { (api().tierkv_lookup)(m, hs.as_ptr(), hs.len(), tiers.as_mut_ptr(), &mut n) };
    assert_eq!(st, status::OK);
    tiers.truncate(n);
    tiers
}

fn load(m: Mgr, hs: &[tierkv_abi_tests::Hash], ids: &[u64]) -> Vec<u8> {
    let mut res = vec![9u8; hs.len()];
    let mut loaded = 0usize;
    // SAFETY: buffers of the stated lengths; the layout's memory is ours.
    let st =
        unsafe { (api().tierkv_load_blocks)(m, hs.as_ptr(), ids.as_ptr(), hs.len(), res.as_mut_ptr(), &mut loaded) };
    assert_eq!(st, status::OK, "{}", api().last_error());
    res
}

#[test]
fn host_evictions_come_back_from_disk_and_survive_a_restart() {
    let shm = tempfile::tempdir().unwrap();
    let disk = tempfile::tempdir().unwrap();
    let disk_path = disk.path().join("g3").display().to_string();
    let vars = [
        ("TIERKV_CPU_BYTES", "400KiB"), // a few 64 KiB blocks
        ("TIERKV_DISK_PATH", disk_path.as_str()),
        ("TIERKV_DISK_BYTES", "4MiB"),
        ("TIERKV_DISK_ADMIT", "always"),
    ];
    let (m, st) = create_in(shm.path(), BLOCK_TOKENS, BLOCK as u64, 0, &vars);
    assert_eq!(st, status::OK, "{}", api().last_error());
    let mut mem = engine(m, 24);
    let tokens: Vec<u32> = (0..12 * BLOCK_TOKENS).collect();
    let hs = hashes(m, &tokens);
    for b in 0..12 {
        fill(&mut mem, b, b as u8 + 1);
    }
    let ids: Vec<u64> = (0..12).collect();
    let mut res = vec![0u8; 12];
    // SAFETY: buffers of the stated lengths; the layout's memory is readable.
    let st = unsafe { (api().tierkv_store_blocks)(m, hs.as_ptr(), ids.as_ptr(), 12, res.as_mut_ptr()) };
    assert_eq!(st, status::OK);
    let mut idle = 0u8;
    // SAFETY: a live handle and a valid out pointer.
    assert_eq!(unsafe { (api().tierkv_disk_flush)(m, 10_000, &mut idle) }, status::OK);
    assert_eq!(idle, 1);
    let (rc, ds) = disk_status(m);
    assert_eq!((rc, ds.configured, ds.up, ds.blocks), (status::OK, 1, 1, 12));
    // Every slot accounted for once (indexed + free + writing == capacity).
    assert_eq!(ds.consistent, 1);
    assert_eq!(ds.blocks + ds.free_blocks + ds.writing_blocks, ds.capacity_blocks);
    // The host tier holds only the newest few; the older blocks come from disk.
    let tiers = lookup(m, &hs);
    assert_eq!(tiers.len(), 12);
    assert_eq!(tiers[0], 3, "block 0 was evicted from the host tier: disk");
    assert_eq!(tiers[11], 2, "the newest block is in the host tier");
    // Load everything into blocks 12..24 and compare with the originals.
    let dst: Vec<u64> = (12..24).collect();
    assert!(load(m, &hs, &dst).iter().all(|&r| r == code::LOADED), "all loaded");
    for b in 0..12 {
        assert!(
            mem[b * BLOCK..(b + 1) * BLOCK] == mem[(b + 12) * BLOCK..(b + 13) * BLOCK],
            "block {b} differs"
        );
    }
    let text = metrics(m);
    assert!(text.contains("tierkv_tier_up{tier=\"disk\"} 1"), "{text}");
    assert!(
        !text.contains("tierkv_lookup_blocks_total{tier=\"disk\",result=\"hit\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("tierkv_checksum_failures_total{tier=\"disk\"} 0"),
        "{text}"
    );
    destroy(m);
    drop(mem);

    // A restart with the host tier gone (a reboot empties /dev/shm): all from disk.
    let shm2 = tempfile::tempdir().unwrap();
    let (m, st) = create_in(shm2.path(), BLOCK_TOKENS, BLOCK as u64, 0, &vars);
    assert_eq!(st, status::OK, "{}", api().last_error());
    let mut mem2 = engine(m, 24);
    let (_, ds) = disk_status(m);
    assert_eq!((ds.recovered_blocks, ds.recovery_dropped), (12, 0));
    assert_eq!(lookup(m, &hs), vec![3u8; 12]);
    assert!(load(m, &hs, &ids).iter().all(|&r| r == code::LOADED));
    for b in 0..12 {
        fill(&mut mem2, b + 12, b as u8 + 1);
        assert!(
            mem2[b * BLOCK..(b + 1) * BLOCK] == mem2[(b + 12) * BLOCK..(b + 13) * BLOCK],
            "block {b} differs"
        );
    }
    // Loaded blocks were onboarded into the (new) host tier.
    assert_eq!(lookup(m, &hs[11..])[0], 2);
    destroy(m);
}

#[test]
fn a_disk_tier_that_cannot_open_leaves_the_host_tier_serving() {
    let shm = tempfile::tempdir().unwrap();
    let blocker = shm.path().join("a-file");
    std::fs::write(&blocker, b"x").unwrap();
    let bad = blocker.join("g3").display().to_string();
    let (m, st) = create_in(
        shm.path(),
        BLOCK_TOKENS,
        BLOCK as u64,
        0,
        &[("TIERKV_DISK_PATH", bad.as_str()), ("TIERKV_DISK_BYTES", "4MiB")],
    );
    assert_eq!(st, status::OK, "{}", api().last_error());
    let (rc, ds) = disk_status(m);
    assert_eq!((rc, ds.configured, ds.up), (status::UNAVAILABLE, 1, 0));
    assert!(
        api().last_error().contains("cannot create the directory"),
        "{}",
        api().last_error()
    );
    assert!(metrics(m).contains("tierkv_tier_up{tier=\"disk\"} 0"));
    let mut mem = engine(m, 2);
    fill(&mut mem, 0, 5);
    let hs = hashes(m, &(0..BLOCK_TOKENS).collect::<Vec<_>>());
    let mut res = [9u8];
    // SAFETY: one hash, one id, one result.
    let st = unsafe { (api().tierkv_store_blocks)(m, hs.as_ptr(), [0u64].as_ptr(), 1, res.as_mut_ptr()) };
    assert_eq!(st, status::OK);
    assert_eq!(lookup(m, &hs), [2]);
    assert_eq!(load(m, &hs, &[1]), [code::LOADED]);
    destroy(m);
    // A disk path without a budget is a configuration error naming the variable.
    let (_, st) = create_in(
        shm.path(),
        BLOCK_TOKENS,
        BLOCK as u64,
        0,
        &[("TIERKV_DISK_PATH", "/tmp/x")],
    );
    assert_eq!(st, status::CONFIG);
    assert!(
        api().last_error().contains("TIERKV_DISK_BYTES"),
        "{}",
        api().last_error()
    );
}
