//! Manager tests that need to steer the scheduler: placement of new blocks.

use super::*;
use crate::hw::{Decisions, Telemetry};
use crate::offload::AdmitMode;

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
        hw_interval: None, // decisions are set by hand below
        ..Config::default()
    };
    const BYTES: usize = 8192;
    let params = ManagerParams {
        block_tokens: 4,
        block_bytes: BYTES as u64,
        namespace: None,
        pool_blocks: 0,
        disk_reader: false,
    };
    let m = Manager::new(cfg, params).unwrap();
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
    m.hw().publish("trace", Telemetry::default(), pressure);
    let mut out = vec![StoreOutcome::NoSpace; 3];
    // SAFETY: `mem` is valid for reads and not written meanwhile.
    unsafe { m.store_blocks(&hs, &[0, 1, 2], &mut out) }.unwrap();
    assert_eq!(out, vec![StoreOutcome::Stored; 3]);
    let d = m.disk().unwrap();
    assert!(d.wait_idle(std::time::Duration::from_secs(10)));
    assert_eq!(m.host().lookup(&hs).unwrap(), 0, "nothing went to the host tier");
    let mut tiers = vec![TierId::Engine; 3];
    assert_eq!(m.lookup(&hs, &mut tiers).unwrap(), 3);
    assert_eq!(tiers, vec![TierId::Disk; 3]);
    let mut loaded = vec![LoadOutcome::Miss; 3];
    // SAFETY: blocks 4..7 of `mem` are ours to write.
    unsafe { m.load_blocks(&hs, &[4, 5, 6], &mut loaded) }.unwrap();
    assert_eq!(loaded, vec![LoadOutcome::Loaded; 3]);
    assert_eq!(mem[..3 * BYTES], mem[4 * BYTES..7 * BYTES]);
    // Pressure gone: back to the host tier.
    m.hw().publish("trace", Telemetry::default(), Decisions::default());
    // SAFETY: as above.
    unsafe { m.store_blocks(&[BlockHash(9)], &[3], &mut out[..1]) }.unwrap();
    assert_eq!(m.host().lookup(&[BlockHash(9)]).unwrap(), 1);
}
