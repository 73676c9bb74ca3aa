use super::*;
use crate::tier::arena::HostEviction;
use std::sync::Arc;

pub(super) fn cfg(dir: &std::path::Path, bytes: u64) -> HostSettings {
    HostSettings {
        capacity: bytes,
        shm_dir: dir.to_path_buf(),
        store_name: "t".into(),
        share_group: None,
        lock_timeout: std::time::Duration::from_secs(10),
        eviction: HostEviction::default(),
    }
}

fn block(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_mul(31).wrapping_add(i as u8)).collect()
}

/// A tier with room for exactly `n` blocks of `len` bytes (the default policy).
fn tier_for(dir: &std::path::Path, len: u64, n: u32) -> HostTier {
    tier_with(dir, len, n, HostEviction::default())
}

/// [`tier_for`] with the store's policy `eviction`.
fn tier_with(dir: &std::path::Path, len: u64, n: u32, eviction: HostEviction) -> HostTier {
    let mut bytes = 4096;
    while crate::tier::arena::Geometry::fit(len, bytes).map_or(0, |g| g.n_slots) < n {
        bytes += 4096;
    }
    let c = HostSettings {
        eviction,
        ..cfg(dir, bytes)
    };
    let t = HostTier::open(&c, len, 16).unwrap();
    assert_eq!(t.arena().geometry().n_slots, n);
    t
}

#[test]
fn store_then_load_round_trips_through_segments() {
    let d = tempfile::tempdir().unwrap();
    let t = tier_for(d.path(), 10_000, 4);
    let data = block(1, 10_000);
    let (a, b) = data.split_at(3_000);
    assert_eq!(t.store(BlockHash(7), &[a, b]).unwrap(), StoreOutcome::Stored);
    assert_eq!(t.store(BlockHash(7), &[a, b]).unwrap(), StoreOutcome::AlreadyPresent);
    let mut out = vec![0u8; 10_000];
    let (x, y) = out.split_at_mut(6_000);
    assert_eq!(t.load(BlockHash(7), &mut [x, y]).unwrap(), LoadOutcome::Loaded);
    assert_eq!(out, data);
    let mut out2 = vec![0u8; 10_000];
    assert_eq!(t.load(BlockHash(8), &mut [&mut out2]).unwrap(), LoadOutcome::Miss);
    assert!(matches!(
        t.load(BlockHash(7), &mut [&mut out2[..5]]),
        Err(TierError::SizeMismatch { got: 5, want: 10_000 })
    ));
    assert_eq!(t.lookup(&[BlockHash(7), BlockHash(8), BlockHash(7)]).unwrap(), 1);
}

#[test]
fn capacity_is_hard_and_eviction_is_lru() {
    let d = tempfile::tempdir().unwrap();
    let t = tier_with(d.path(), 4096, 3, HostEviction::Lru);
    let file_len = t.arena().geometry().file_len;
    for h in 1..=3u128 {
        t.store(BlockHash(h), &[&block(h as u8, 4096)]).unwrap();
    }
    // Expected order (first victim first): 1, 2, 3. Loading 1 makes it most recent.
    let mut buf = vec![0u8; 4096];
    assert_eq!(t.load(BlockHash(1), &mut [&mut buf]).unwrap(), LoadOutcome::Loaded);
    assert_eq!(t.eviction_order().unwrap(), [BlockHash(2), BlockHash(3), BlockHash(1)]);
    // Storing 4 evicts 2, the least recently used.
    t.store(BlockHash(4), &[&block(4, 4096)]).unwrap();
    assert_eq!(t.eviction_order().unwrap(), [BlockHash(3), BlockHash(1), BlockHash(4)]);
    assert_eq!(t.lookup(&[BlockHash(2)]).unwrap(), 0);
    assert_eq!(t.block_count().unwrap(), 3);
    assert_eq!(t.stats().evictions.load(Ordering::Relaxed), 1);
    let on_disk = std::fs::metadata(t.arena().path()).unwrap().len();
    assert_eq!(on_disk, file_len);
    assert!(on_disk <= cfg(d.path(), 0).capacity.max(file_len));
}

#[test]
fn flipped_payload_byte_is_a_miss_never_served() {
    let d = tempfile::tempdir().unwrap();
    let t = tier_for(d.path(), 8192, 2);
    t.store(BlockHash(5), &[&block(5, 8192)]).unwrap();
    // Flip one byte of the payload behind the tier's back.
    let g = t.arena().geometry();
    let mut f = std::fs::read(t.arena().path()).unwrap();
    f[g.data_off as usize + 100] ^= 0x40;
    std::fs::write(t.arena().path(), &f).unwrap();
    let mut out = vec![0u8; 8192];
    assert_eq!(t.load(BlockHash(5), &mut [&mut out]).unwrap(), LoadOutcome::Corrupt);
    assert_eq!(t.stats().checksum_failures.load(Ordering::Relaxed), 1);
    // The bad block was dropped: the next load is a plain miss.
    assert_eq!(t.load(BlockHash(5), &mut [&mut out]).unwrap(), LoadOutcome::Miss);
}

#[test]
fn pinned_block_is_not_evicted() {
    let d = tempfile::tempdir().unwrap();
    let t = tier_for(d.path(), 4096, 1);
    t.store(BlockHash(1), &[&block(1, 4096)]).unwrap();
    let slot = {
        let mut l = t.arena().lock().unwrap();
        let s = l.find(BlockHash(1)).unwrap();
        assert!(l.pin(s, None));
        s
    };
    assert_eq!(
        t.store(BlockHash(2), &[&block(2, 4096)]).unwrap(),
        StoreOutcome::NoSpace
    );
    t.arena().lock().unwrap().unpin(slot);
    assert_eq!(t.store(BlockHash(2), &[&block(2, 4096)]).unwrap(), StoreOutcome::Stored);
    assert_eq!(t.lookup(&[BlockHash(1)]).unwrap(), 0);
}

#[test]
fn two_opens_share_one_store_and_geometry_mismatch_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    let a = HostTier::open(&cfg(d.path(), 1 << 20), 4096, 16).unwrap();
    let b = HostTier::open(&cfg(d.path(), 1 << 20), 4096, 16).unwrap();
    a.store(BlockHash(3), &[&block(3, 4096)]).unwrap();
    let mut out = vec![0u8; 4096];
    assert_eq!(b.load(BlockHash(3), &mut [&mut out]).unwrap(), LoadOutcome::Loaded);
    assert_eq!(out, block(3, 4096));
    let e = HostTier::open(&cfg(d.path(), 1 << 20), 8192, 16).err().unwrap();
    assert!(e.to_string().contains("TIERKV_STORE_NAME"), "{e}");
    let e = HostTier::open(&cfg(d.path(), 8192), 1 << 20, 16).err().unwrap();
    assert!(e.to_string().contains("TIERKV_CPU_BYTES"), "{e}");
}

#[test]
fn many_threads_store_and_load_without_wrong_data() {
    let d = tempfile::tempdir().unwrap();
    let t = Arc::new(tier_for(d.path(), 4096, 16));
    let threads: Vec<_> = (0..8u8)
        .map(|k| {
            let t = t.clone();
            std::thread::spawn(move || {
                let mut out = vec![0u8; 4096];
                for i in 0..400u32 {
                    let id = (i * 7 + u32::from(k)) % 40;
                    let h = BlockHash(u128::from(id) + 1);
                    let want = block(id as u8, 4096);
                    if i % 3 == 0 {
                        t.store(h, &[&want]).unwrap();
                    } else if t.load(h, &mut [&mut out]).unwrap() == LoadOutcome::Loaded {
                        assert_eq!(out, want, "wrong bytes served for block {id}");
                    }
                }
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    assert!(t.block_count().unwrap() <= 16);
    assert_eq!(t.stats().checksum_failures.load(Ordering::Relaxed), 0);
}

/// A process that dies holding the arena lock, or in the middle of a write, leaves
/// neither a stuck lock nor a lost slot.
#[test]
fn crashed_process_leaves_store_usable() {
    let d = tempfile::tempdir().unwrap();
    let t = tier_for(d.path(), 4096, 2);
    t.store(BlockHash(1), &[&block(1, 4096)]).unwrap();
    // SAFETY: the child only takes a lock, reserves a slot and exits with _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let child = HostTier::open(&cfg(d.path(), 0).clone_with(t.arena().geometry().file_len), 4096, 16);
        if let Ok(c) = child {
            let mut l = c.arena().lock().unwrap();
            if let Some((s, _)) = l.take_slot(8, Locked::now_ms(), None).unwrap() {
                let _ = l.begin_write(s, BlockHash(99), 0);
            }
            std::mem::forget(l);
            // Keep the mapping: a crashing process dies with its mappings in place,
            // which is what lets the kernel mark the robust mutex's owner dead.
            std::mem::forget(c);
        }
        // SAFETY: terminate the child immediately, holding the lock.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    // The lock is recovered, the dead writer's slot reclaimed, block 1 still served.
    let mut out = vec![0u8; 4096];
    assert_eq!(t.load(BlockHash(1), &mut [&mut out]).unwrap(), LoadOutcome::Loaded);
    assert_eq!(t.stats().lock_recoveries.load(Ordering::Relaxed), 1);
    assert_eq!(t.lookup(&[BlockHash(99)]).unwrap(), 0);
    assert_eq!(t.store(BlockHash(2), &[&block(2, 4096)]).unwrap(), StoreOutcome::Stored);
    assert_eq!(t.block_count().unwrap(), 2);
}

trait CloneWith {
    fn clone_with(&self, bytes: u64) -> HostSettings;
}

impl CloneWith for HostSettings {
    fn clone_with(&self, bytes: u64) -> HostSettings {
        HostSettings {
            capacity: bytes,
            ..self.clone()
        }
    }
}

mod model {
    use super::*;
    use proptest::prelude::*;

    /// Identities that collide in the index's home slot (low bits 0..3), so probing
    /// and backward-shift deletion are exercised.
    fn key(h: u128) -> BlockHash {
        BlockHash((h << 64) | (h % 3))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Random stores, loads and lookups on a 4-block tier agree with a reference
        /// model (a vector in LRU order): same hits, same victims, same bytes.
        #[test]
        fn matches_lru_model(ops in proptest::collection::vec((0u8..3, 1u128..9), 1..120)) {
            let d = tempfile::tempdir().unwrap();
            let t = tier_with(d.path(), 4096, 4, HostEviction::Lru);
            let mut lru: Vec<u128> = Vec::new(); // first = next victim
            let mut out = vec![0u8; 4096];
            for (op, h) in ops {
                match op {
                    0 => {
                        let r = t.store(key(h), &[&block(h as u8, 4096)]).unwrap();
                        if lru.contains(&h) {
                            prop_assert_eq!(r, StoreOutcome::AlreadyPresent);
                        } else {
                            prop_assert_eq!(r, StoreOutcome::Stored);
                            if lru.len() == 4 {
                                lru.remove(0);
                            }
                            lru.push(h);
                        }
                    }
                    1 => {
                        let r = t.load(key(h), &mut [&mut out]).unwrap();
                        if let Some(i) = lru.iter().position(|&x| x == h) {
                            prop_assert_eq!(r, LoadOutcome::Loaded);
                            prop_assert_eq!(&out, &block(h as u8, 4096));
                            lru.remove(i);
                            lru.push(h);
                        } else {
                            prop_assert_eq!(r, LoadOutcome::Miss);
                        }
                    }
                    _ => {
                        let want = usize::from(lru.contains(&h));
                        prop_assert_eq!(t.lookup(&[key(h)]).unwrap(), want);
                    }
                }
                let order: Vec<u128> = t.eviction_order().unwrap().iter().map(|b| b.0).collect();
                let lru_keys: Vec<u128> = lru.iter().map(|&h| key(h).0).collect();
                prop_assert_eq!(&order, &lru_keys);
            }
        }
    }
}

/// An arena written by another format version is refused, never re-initialised
/// under the processes that may be using it.
#[test]
fn other_format_version_is_refused_not_overwritten() {
    let d = tempfile::tempdir().unwrap();
    let t = tier_for(d.path(), 4096, 2);
    t.store(BlockHash(1), &[&block(1, 4096)]).unwrap();
    let path = t.arena().path().to_path_buf();
    let mut f = std::fs::read(&path).unwrap();
    f[8..12].copy_from_slice(&1u32.to_le_bytes()); // header.version
    std::fs::write(&path, &f).unwrap();
    let e = HostTier::open(&cfg(d.path(), 1 << 20), 4096, 16).err().unwrap();
    assert!(e.to_string().contains("format version 1"), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), f, "the file was left as it was");
}

/// An arena of the previous format (version 3, leases as now) is recreated in this
/// format once nobody is attached (the cache is empty then), and refused while an
/// engine of that version uses it.
#[test]
fn a_store_of_the_previous_format_is_recreated_once_nobody_uses_it() {
    let d = tempfile::tempdir().unwrap();
    let t = tier_for(d.path(), 4096, 2);
    t.store(BlockHash(1), &[&block(1, 4096)]).unwrap();
    let path = t.arena().path().to_path_buf();
    let mut f = std::fs::read(&path).unwrap();
    f[8..12].copy_from_slice(&3u32.to_le_bytes()); // header.version
    std::fs::write(&path, &f).unwrap();
    let e = HostTier::open(&cfg(d.path(), 1 << 20), 4096, 16).err().unwrap();
    assert!(e.to_string().contains("format version 3"), "{e}");
    drop(t);
    let t = HostTier::open(&cfg(d.path(), 1 << 20), 4096, 16).unwrap();
    assert_eq!(t.lookup(&[BlockHash(1)]).unwrap(), 0, "a new, empty store");
    t.store(BlockHash(2), &[&block(2, 4096)]).unwrap();
    assert_eq!(t.lookup(&[BlockHash(2)]).unwrap(), 1);
}

/// Block `i` of an engine call of `n` blocks.
fn chain_ctx(i: u32, n: u32) -> BlockCtx {
    BlockCtx {
        namespace: 0,
        depth: i,
        last: i + 1 == n,
        key: 0,
        parent: 0,
    }
}

/// One engine call reading `hot` as a chain (each block's payload is `block(h)`):
/// every hit checked, every miss recomputed and stored again, as an engine
/// would. Returns the hits and the stores refused.
fn read_chain(t: &HostTier, hot: &[u128]) -> (usize, u64) {
    let (mut hits, mut refused) = (0, 0);
    let mut out = vec![0u8; 4096];
    Tier::begin_request(t);
    for (i, &h) in hot.iter().enumerate() {
        match t.load_at(BlockHash(h), &mut [&mut out], i, hot.len()).unwrap() {
            LoadOutcome::Loaded => {
                assert_eq!(out, block(h as u8, 4096));
                hits += 1;
            }
            o => {
                assert_eq!(o, LoadOutcome::Miss);
                let ctx = chain_ctx(i as u32, hot.len() as u32);
                let r = Tier::store(t, BlockHash(h), ctx, &[&block(h as u8, 4096)]).unwrap();
                refused += u64::from(r == StoreOutcome::NoSpace);
            }
        }
    }
    (hits, refused)
}

/// Hot blocks read every round, between rounds a flood of blocks stored once and
/// never read: LRU lets the flood push the hot blocks out every round; the
/// hazard store learns that blocks read again come back and the flood does not,
/// and keeps the hot ones (the same policy code as the disk tier's).
#[test]
fn the_hazard_store_keeps_reused_blocks_through_a_flood_lru_does_not() {
    // The test's clock: 10 ms per operation, a round about 10 s (no waiting).
    static NOW: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    fn now() -> u64 {
        NOW.fetch_add(10, Ordering::Relaxed)
    }
    // Blocks stored once per round, more than the tier holds.
    const FLOOD: u32 = 40;
    let mut hits = Vec::new();
    for eviction in [HostEviction::Lru, HostEviction::Hazard] {
        let d = tempfile::tempdir().unwrap();
        let mut t = tier_with(d.path(), 4096, 16, eviction);
        t.set_clock(now);
        assert_eq!(t.arena().eviction(), eviction);
        let hot: Vec<u128> = (1..=4).collect();
        let mut next = 1000u128;
        let mut late_hits = 0;
        for round in 0..40 {
            NOW.fetch_add(10_000, Ordering::Relaxed);
            // One engine call reads the hot chain, one stores the flood.
            let (h, _) = read_chain(&t, &hot);
            late_hits += if round >= 20 { h } else { 0 };
            Tier::begin_request(&t);
            for i in 0..FLOOD {
                next += 1;
                let r = Tier::store(&t, BlockHash(next), chain_ctx(i, FLOOD), &[&block(next as u8, 4096)]).unwrap();
                // Every victim is the flood's own kind: admission lets it in.
                assert_eq!(r, StoreOutcome::Stored);
            }
            let (ready, busy, free) = t.arena().lock().unwrap().census();
            assert_eq!((ready, busy, free), (16, 0, 0));
            assert_eq!(t.block_count().unwrap(), 16, "the lists hold every ready slot");
        }
        hits.push(late_hits);
    }
    assert_eq!(hits[0], 0, "LRU: the flood evicts the hot blocks every round");
    assert!(hits[1] >= 76, "hazard keeps the hot blocks (of 80 reads): {}", hits[1]);
}

/// Admission: every resident is read every round, and a flood of blocks stored
/// once comes in between. LRU admits the flood, which evicts every resident each
/// round; the hazard store, once it has seen that blocks stored once do not come
/// back, refuses the flood (not stored, counted as rejected) rather than evict a
/// block that is read again.
#[test]
fn the_hazard_store_refuses_a_flood_when_its_residents_are_reused() {
    static NOW: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    fn now() -> u64 {
        NOW.fetch_add(10, Ordering::Relaxed)
    }
    const SLOTS: u32 = 16;
    const FLOOD: u32 = 40;
    let mut results = Vec::new();
    for eviction in [HostEviction::Lru, HostEviction::Hazard] {
        let d = tempfile::tempdir().unwrap();
        let mut t = tier_with(d.path(), 4096, SLOTS, eviction);
        t.set_clock(now);
        let hot: Vec<u128> = (1..=u128::from(SLOTS)).collect();
        let mut next = 1000u128;
        let (mut late_hits, mut refused, mut others_refused) = (0, 0u64, 0);
        for round in 0..40 {
            NOW.fetch_add(10_000, Ordering::Relaxed);
            let (h, r) = read_chain(&t, &hot);
            late_hits += if round >= 20 { h } else { 0 };
            others_refused += r;
            Tier::begin_request(&t);
            for i in 0..FLOOD {
                next += 1;
                let r = Tier::store(&t, BlockHash(next), chain_ctx(i, FLOOD), &[&block(next as u8, 4096)]).unwrap();
                if r == StoreOutcome::NoSpace {
                    refused += 1;
                    let found = t.lookup(&[BlockHash(next)]).unwrap();
                    assert_eq!(found, 0, "a refused block is not stored");
                } else {
                    assert_eq!(r, StoreOutcome::Stored);
                }
            }
        }
        let rejected = t.stats().store_rejected.load(Ordering::Relaxed);
        assert_eq!(rejected, refused + others_refused, "every refusal is counted");
        assert_eq!(
            t.block_count().unwrap(),
            u64::from(SLOTS),
            "the lists hold every ready slot"
        );
        results.push((late_hits, refused));
    }
    eprintln!(
        "(late hits, flood refused): LRU {:?}, hazard {:?}",
        results[0], results[1]
    );
    assert_eq!(results[0], (0, 0), "LRU admits the flood, which evicts every resident");
    let (hits, refused) = results[1];
    // 20 late rounds of 16 reads; the flood's 1,600 blocks mostly refused.
    assert!(hits >= 300, "hazard keeps the residents (of 320 reads): {hits}");
    assert!(refused >= 1200, "hazard refuses the flood (of 1,600 blocks): {refused}");
}

/// A store keeps the policy it was created with: a process configured otherwise
/// joins it and evicts alike.
#[test]
fn a_store_keeps_its_policy_for_every_process() {
    let d = tempfile::tempdir().unwrap();
    let a = tier_with(d.path(), 4096, 4, HostEviction::Lru);
    let bytes = a.arena().geometry().file_len;
    let b = HostTier::open(
        &HostSettings {
            eviction: HostEviction::Hazard,
            ..cfg(d.path(), bytes)
        },
        4096,
        16,
    )
    .unwrap();
    assert_eq!(b.arena().eviction(), HostEviction::Lru);
}
