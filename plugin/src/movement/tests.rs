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
        m.offer_down(BlockHash(k), m.ctx(0, 1, BlockHash(k)), &[&p]).unwrap();
    }
    assert!(disk.wait_idle(Duration::from_secs(10)));
    assert_eq!(disk.lookup_run(&[BlockHash(1)]).unwrap(), 0, "one use is not enough");
    let p = payload(1);
    m.offer_down(BlockHash(1), m.ctx(0, 1, BlockHash(1)), &[&p]).unwrap();
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
    m.offer_down(BlockHash(5), m.ctx(0, 1, BlockHash(5)), &[&p]).unwrap();
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
    m.offer_down(BlockHash(5), m.ctx(0, 1, BlockHash(5)), &[&p]).unwrap();
    assert!(disk.wait_idle(Duration::from_secs(10)));
    assert_eq!(disk.lookup_run(&[BlockHash(5)]).unwrap(), 1, "stored again");
}

/// A lower tier that is nothing but a `Tier` implementation: blocks in a map,
/// verified by comparing bytes. Movement needs nothing else to use it.
struct MemTier {
    blocks: parking_lot::Mutex<std::collections::HashMap<BlockHash, Vec<u8>>>,
    hits: std::sync::atomic::AtomicU64,
}

impl MemTier {
    fn holding(keys: &[u128]) -> Self {
        let t = MemTier {
            blocks: Default::default(),
            hits: Default::default(),
        };
        for &k in keys {
            t.blocks.lock().insert(BlockHash(k), payload(k));
        }
        t
    }
}

/// Implemented for the `Arc` so that a test keeps a hold on the tier it hands over.
impl Tier for Arc<MemTier> {
    fn id(&self) -> TierId {
        TierId::Disk
    }
    fn lookup_run(&self, hashes: &[BlockHash]) -> Result<usize, TierError> {
        let b = self.blocks.lock();
        Ok(hashes.iter().take_while(|h| b.contains_key(h)).count())
    }
    fn record_hits(&self, blocks: u64) {
        self.hits.fetch_add(blocks, std::sync::atomic::Ordering::Relaxed);
    }
    fn writable(&self) -> bool {
        true
    }
    fn store(&self, hash: BlockHash, _ctx: BlockCtx, segs: &[&[u8]]) -> Result<StoreOutcome, TierError> {
        let mut b = self.blocks.lock();
        if b.contains_key(&hash) {
            return Ok(StoreOutcome::AlreadyPresent);
        }
        b.insert(hash, segs.concat());
        Ok(StoreOutcome::Stored)
    }
    fn load_into(
        &self,
        hashes: &[BlockHash],
        _namespace: u64,
        dsts: &mut [Vec<&mut [u8]>],
        outcomes: &mut [LoadOutcome],
    ) -> Result<(), TierError> {
        let b = self.blocks.lock();
        for ((h, dst), o) in hashes.iter().zip(dsts).zip(outcomes) {
            *o = match b.get(h) {
                Some(bytes) => {
                    let mut off = 0;
                    for seg in dst.iter_mut() {
                        seg.copy_from_slice(&bytes[off..off + seg.len()]);
                        off += seg.len();
                    }
                    LoadOutcome::Loaded
                }
                None => LoadOutcome::Miss,
            };
        }
        Ok(())
    }
    fn remove(&self, hash: BlockHash) -> Result<bool, TierError> {
        Ok(self.blocks.lock().remove(&hash).is_some())
    }
    fn status(&self) -> TierStatus {
        TierStatus {
            up: true,
            writable: true,
            blocks: self.blocks.lock().len() as u64,
            capacity_blocks: 1024,
            consistent: true,
            ..TierStatus::default()
        }
    }
    fn report(&self, _r: &mut Report) {}
}

/// A host tier with room for exactly `n` blocks.
fn small_host(shm: &std::path::Path, n: u32) -> Arc<HostTier> {
    let mut bytes = 4096;
    while crate::tier::arena::Geometry::fit(LEN, bytes).map_or(0, |g| g.n_slots) < n {
        bytes += 4096;
    }
    let cfg = Config {
        shm_dir: shm.to_path_buf(),
        store_name: "m".into(),
        cpu_bytes: bytes,
        // These tests are about tiers, and name the victims LRU picks.
        eviction: crate::config::HostEviction::Lru,
        ..Config::default()
    };
    Arc::new(HostTier::open(&cfg.host_settings(), LEN, 16).unwrap())
}

/// Engine memory of `n` blocks in one region, and its layout.
fn engine(n: usize) -> (Vec<u8>, EngineLayout) {
    let mut mem = vec![0u8; n * LEN as usize];
    let region = crate::tier::layout::Region {
        base: mem.as_mut_ptr() as u64,
        block_stride: LEN,
        bytes_per_block: LEN,
    };
    let layout = EngineLayout::new(&[region], n as u64, LEN).unwrap();
    (mem, layout)
}

/// Host tier of 2 blocks over an in-memory lower tier (write-through): storing
/// blocks 1-4 leaves 3 and 4 in the host tier and all four below. A lookup finds
/// [mem, mem, host, host]; loading them into engine blocks 4-7 serves all four
/// verified, and onboards 1 and 2 into the host tier (evicting 3 and 4).
#[test]
fn any_tier_serves_as_a_lower_tier() {
    let shm = tempfile::tempdir().unwrap();
    let mem_tier = Arc::new(MemTier::holding(&[]));
    let m = Movement::new(small_host(shm.path(), 2), Arc::new(HwState::default()), 7)
        .with_lower(Box::new(Arc::clone(&mem_tier)), AdmitMode::Always);
    let (mut mem, layout) = engine(8);
    for k in 1..=4u128 {
        let at = (k as usize - 1) * LEN as usize;
        mem[at..at + LEN as usize].copy_from_slice(&payload(k));
    }
    let hs: Vec<BlockHash> = (1..=4u128).map(BlockHash).collect();
    let mut stored = [StoreOutcome::NoSpace; 4];
    // SAFETY: `mem` is valid for reads and not written meanwhile.
    unsafe { m.store(&layout, &hs, &[0, 1, 2, 3], &mut stored) }.unwrap();
    assert_eq!(stored, [StoreOutcome::Stored; 4]);
    assert_eq!(mem_tier.blocks.lock().len(), 4, "every block offered down");
    let mut tiers = [TierId::Engine; 4];
    assert_eq!(m.lookup(&hs, &mut tiers, 0, true).unwrap().end, 4);
    assert_eq!(tiers, [TierId::Disk, TierId::Disk, TierId::Host, TierId::Host]);
    assert_eq!(mem_tier.hits.load(std::sync::atomic::Ordering::Relaxed), 2);
    let mut loaded = [LoadOutcome::Miss; 4];
    // SAFETY: blocks 4-7 of `mem` are ours to write, distinct.
    unsafe { m.load(&layout, &hs, &[4, 5, 6, 7], &mut loaded) }.unwrap();
    assert_eq!(loaded, [LoadOutcome::Loaded; 4]);
    let half = 4 * LEN as usize;
    assert_eq!(mem[..half], mem[half..], "every byte as stored");
    assert_eq!(m.host().lookup_run(&hs[..2]).unwrap(), 2, "1 and 2 onboarded");
}

/// A block held by several tiers is reported in the fastest, and a lower tier's
/// run stops where a faster one takes over. Host {1}, A {3}, B {2, 3, 4}: the run
/// of [1 2 3 4 5] is host, B, A, B (four blocks); hits A 1, B 2.
#[test]
fn lookups_report_each_block_in_its_fastest_tier() {
    let shm = tempfile::tempdir().unwrap();
    let host = small_host(shm.path(), 4);
    host.store(BlockHash(1), &[&payload(1)]).unwrap();
    let (a, b) = (Arc::new(MemTier::holding(&[3])), Arc::new(MemTier::holding(&[2, 3, 4])));
    let m = Movement::new(host, Arc::new(HwState::default()), 7)
        .with_lower(Box::new(Arc::clone(&a)), AdmitMode::Always)
        .with_lower(Box::new(Arc::clone(&b)), AdmitMode::Always);
    let hs: Vec<BlockHash> = (1..=5u128).map(BlockHash).collect();
    let mut tiers = [TierId::Engine; 5];
    assert_eq!(m.lookup(&hs, &mut tiers, 0, true).unwrap().end, 4);
    assert_eq!(tiers[0], TierId::Host);
    let hits = |t: &MemTier| t.hits.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!((hits(&a), hits(&b)), (1, 2));
}

/// A block the host tier cannot take (here: every slot pinned by loads in
/// flight; equally a refusal by its admission) is still offered to the lower
/// tiers, from the engine's memory: nothing the engine stored is dropped by a
/// full host tier alone.
#[test]
fn a_block_the_host_tier_refuses_goes_down() {
    let shm = tempfile::tempdir().unwrap();
    let mem_tier = Arc::new(MemTier::holding(&[]));
    let host = small_host(shm.path(), 2);
    for k in 1..=2u128 {
        host.store(BlockHash(k), &[&payload(k)]).unwrap();
    }
    let pinned: Vec<u32> = {
        let mut l = host.arena().lock().unwrap();
        (1..=2u128)
            .map(|k| {
                let s = l.find(BlockHash(k)).unwrap();
                assert!(l.pin(s, None));
                s
            })
            .collect()
    };
    let m = Movement::new(Arc::clone(&host), Arc::new(HwState::default()), 7)
        .with_lower(Box::new(Arc::clone(&mem_tier)), AdmitMode::Always);
    let (mut mem, layout) = engine(1);
    mem.copy_from_slice(&payload(3));
    let mut stored = [StoreOutcome::Stored; 1];
    // SAFETY: `mem` is valid for reads and not written meanwhile.
    unsafe { m.store(&layout, &[BlockHash(3)], &[0], &mut stored) }.unwrap();
    assert_eq!(stored, [StoreOutcome::NoSpace], "the host tier had no room");
    assert_eq!(m.host().lookup_run(&[BlockHash(3)]).unwrap(), 0);
    let below = mem_tier.blocks.lock();
    assert_eq!(below.len(), 1, "offered down all the same");
    assert_eq!(below.get(&BlockHash(3)), Some(&payload(3)), "the engine's bytes");
    drop(below);
    let mut l = host.arena().lock().unwrap();
    pinned.into_iter().for_each(|s| l.unpin(s));
}
