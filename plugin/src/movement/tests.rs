//! Movement tests: admission is decided here, for every lower tier.

use super::*;
use crate::config::Config;
use crate::tier::disk::DiskHandle;

const LEN: u64 = 8192;

fn payload(k: u128) -> Vec<u8> {
    crate::tier::test_util::pattern(k, LEN as usize)
}

/// Host tier and disk tier under `mode`, with movement over both.
fn movement(shm: &std::path::Path, disk: &std::path::Path, mode: AdmitMode) -> Movement {
    let cfg = Config {
        shm_dir: shm.to_path_buf(),
        store_name: "m".into(),
        cpu_bytes: 4 << 20,
        disk_path: Some(disk.to_path_buf()),
        disk_bytes: 4 << 20,
        ..Config::default()
    };
    let host = Arc::new(HostTier::open(&cfg.host_settings(), LEN, 16).unwrap());
    let disk = DiskHandle::open(&cfg.disk_settings().unwrap(), LEN, &tracing::Dispatch::none(), false);
    Movement::new(host, Arc::new(HwState::default()), 7).with_lower(Box::new(disk), mode)
}

/// With reuse admission (2 uses), a block stored once stays in the host tier; a
/// second use (a host hit) sends it down. Decisions: block 1 rejected then
/// admitted, blocks 2 and 3 rejected.
#[test]
fn reuse_admission_sends_a_block_down_on_its_second_use() {
    let (shm, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let m = movement(shm.path(), dir.path(), AdmitMode::Reuse(2));
    let disk = m.lower(TierId::Disk).unwrap();
    for k in 1..=3u128 {
        let p = payload(k);
        m.host().store(BlockHash(k), &[&p]).unwrap();
        m.offer_down(BlockHash(k), 0, &[&p]).unwrap();
    }
    assert!(disk.wait_idle(Duration::from_secs(10)));
    assert_eq!(disk.lookup_run(&[BlockHash(1)]).unwrap(), 0, "one use is not enough");
    let p = payload(1);
    m.offer_down(BlockHash(1), 0, &[&p]).unwrap();
    assert!(disk.wait_idle(Duration::from_secs(10)));
    assert_eq!(disk.lookup_run(&[BlockHash(1)]).unwrap(), 1, "second use admits it");
    let decisions = m.lower[0].admission.get().unwrap().decisions();
    assert_eq!(decisions, (1, 3));
}

/// A block removed from a tier is gone from its lookups and loads, and may be
/// stored again; a block never stored is not removed.
#[test]
fn remove_drops_a_block_from_each_tier() {
    let (shm, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let m = movement(shm.path(), dir.path(), AdmitMode::Always);
    let p = payload(5);
    m.host().store(BlockHash(5), &[&p]).unwrap();
    m.offer_down(BlockHash(5), 0, &[&p]).unwrap();
    let disk = m.lower(TierId::Disk).unwrap();
    assert!(disk.wait_idle(Duration::from_secs(10)));
    let host: &dyn Tier = m.host();
    for t in [host, disk] {
        assert_eq!(t.lookup_run(&[BlockHash(5)]).unwrap(), 1, "{:?}", t.id());
        assert!(t.remove(BlockHash(5)).unwrap(), "{:?}", t.id());
        assert_eq!(t.lookup_run(&[BlockHash(5)]).unwrap(), 0, "{:?}", t.id());
        assert!(!t.remove(BlockHash(6)).unwrap(), "{:?}", t.id());
        let mut buf = vec![0u8; LEN as usize];
        let mut dsts = vec![vec![&mut buf[..]]];
        let mut out = [LoadOutcome::Loaded];
        t.load_into(&[BlockHash(5)], 7, &mut dsts, &mut out).unwrap();
        assert_eq!(out, [LoadOutcome::Miss], "{:?}", t.id());
        assert!(t.status().consistent, "{:?}", t.id());
    }
    m.offer_down(BlockHash(5), 0, &[&p]).unwrap();
    assert!(disk.wait_idle(Duration::from_secs(10)));
    assert_eq!(disk.lookup_run(&[BlockHash(5)]).unwrap(), 1, "stored again");
}
