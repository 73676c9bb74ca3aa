use super::*;

fn acc(key: u64, request: u64, depth: u32) -> Access {
    Access {
        key,
        request,
        depth,
        last: false,
        now_ms: request,
    }
}

fn evict_all(p: &mut dyn Policy) -> Vec<u64> {
    std::iter::from_fn(|| p.evict(&mut |_| true)).collect()
}

#[test]
fn lru_evicts_least_recent_and_skips_pinned() {
    let mut p = Lru::default();
    for k in 1..=4 {
        p.on_insert(acc(k, k, 0));
    }
    p.on_hit(acc(1, 9, 0));
    // Order, victim first: 2 3 4 1. Key 2 is pinned, so 3 goes.
    assert_eq!(p.evict(&mut |k| k != 2), Some(3));
    p.on_remove(4);
    assert_eq!(evict_all(&mut p), [2, 1]);
    assert!(p.is_empty());
}

#[test]
fn chat_peels_chains_from_the_tail() {
    let mut p = Chat::new(100);
    // Request 1 inserts a chain 10 11 12 (probation, chain order: 12 11 10).
    for (d, k) in [10, 11, 12].into_iter().enumerate() {
        p.on_insert(acc(k, 1, d as u32));
    }
    // Request 2 hits 10 11 and extends with 13: all protected, order 13 11 10.
    p.on_hit(acc(10, 2, 0));
    p.on_hit(acc(11, 2, 1));
    p.on_insert(acc(13, 2, 2));
    // Probation (12) is below its target (capacity / 5 = 20), so protected goes
    // first, tail first: 13 11 10, then 12.
    assert_eq!(evict_all(&mut p), [13, 11, 10, 12]);
}

#[test]
fn chat_ghost_returns_to_protected() {
    let mut p = Chat::new(5); // probation target 1
    p.on_insert(acc(1, 1, 0));
    p.on_insert(acc(2, 2, 0));
    assert_eq!(p.evict(&mut |_| true), Some(1)); // probation FIFO head
    p.on_insert(acc(1, 3, 0)); // returns from the ghost list: protected
    p.on_insert(acc(3, 4, 0)); // probation: 2 3
                               // Probation holds 2 >= target 1: probation first (2, 3), then protected (1).
    assert_eq!(evict_all(&mut p), [2, 3, 1]);
}

#[test]
fn s3fifo_promotes_used_keys_and_remembers_ghosts() {
    let mut p = S3Fifo::new(10); // small target 1
    p.on_insert(acc(1, 1, 0));
    p.on_insert(acc(2, 2, 0));
    p.on_hit(acc(1, 3, 0));
    // Small: 1(f1) 2(f0). Evict: 1 moves to main, 2 is evicted to the ghost.
    assert_eq!(p.evict(&mut |_| true), Some(2));
    p.on_insert(acc(2, 4, 0)); // ghost hit: straight to main (after 1)
    p.on_insert(acc(3, 5, 0)); // small
    assert_eq!(evict_all(&mut p), [3, 1, 2]);
}

#[test]
fn every_policy_keeps_the_contract_under_random_use() {
    use proptest::prelude::*;
    let kinds = PolicyKind::ALL;
    proptest!(ProptestConfig::with_cases(64), |(ops in proptest::collection::vec((0u64..40, 0u8..4, 0u32..4), 1..400))| {
        for kind in kinds {
            let cap = 16;
            let mut p = kind.build(cap);
            let mut resident = std::collections::HashSet::new();
            for (i, &(key, op, depth)) in ops.iter().enumerate() {
                let a = acc(key, i as u64 / 3, depth);
                match op {
                    0 if resident.contains(&key) => { p.on_remove(key); resident.remove(&key); }
                    _ if resident.contains(&key) => p.on_hit(a),
                    _ => {
                        if resident.len() == cap {
                            let pinned = key % 3;
                            if !p.admit(a, &mut |k| k % 3 != pinned) {
                                prop_assert_eq!(p.len(), resident.len());
                                continue;
                            }
                            let v = p.evict(&mut |k| k % 3 != pinned);
                            if let Some(v) = v {
                                prop_assert!(resident.remove(&v), "{kind:?} evicted non-resident {v}");
                                prop_assert!(v % 3 != pinned, "{kind:?} evicted a pinned key");
                            } else {
                                continue;
                            }
                        }
                        p.on_insert(a);
                        resident.insert(key);
                    }
                }
                prop_assert_eq!(p.len(), resident.len());
            }
        }
    });
}

/// Held keys ([`Policy::set_held`]) under random use: never evicted while held
/// (whatever `evictable` says), evictable again once released, and a held key can
/// be used, removed and released without breaking the lists (every policy; hazard
/// takes held keys off its lists, the others ignore the call).
#[test]
fn held_keys_are_never_victims_and_come_back_when_released() {
    use proptest::prelude::*;
    proptest!(ProptestConfig::with_cases(128), |(ops in proptest::collection::vec((0u64..30, 0u8..6), 1..500))| {
        for kind in PolicyKind::ALL {
            let cap = 12;
            let mut p = kind.build(cap);
            let mut resident = std::collections::HashSet::new();
            let mut held = std::collections::HashSet::new();
            for (i, &(key, op)) in ops.iter().enumerate() {
                let a = Access { now_ms: i as u64 * 10, ..acc(key, i as u64 / 2, (i % 2) as u32) };
                match op {
                    0 | 1 if resident.contains(&key) => {
                        let h = op == 0;
                        p.set_held(key, h);
                        if h { held.insert(key); } else { held.remove(&key); }
                    }
                    2 if resident.contains(&key) => {
                        p.on_remove(key);
                        resident.remove(&key);
                        held.remove(&key);
                    }
                    _ if resident.contains(&key) => p.on_hit(a),
                    _ => {
                        if resident.len() == cap {
                            let Some(v) = p.evict(&mut |k| !held.contains(&k)) else { continue };
                            prop_assert!(resident.remove(&v), "{kind:?} evicted non-resident {v}");
                            prop_assert!(!held.contains(&v), "{kind:?} evicted held key {v}");
                        }
                        p.on_insert(a);
                        resident.insert(key);
                    }
                }
                prop_assert_eq!(p.len(), resident.len());
            }
            // Released, every key can leave again.
            for &k in &held {
                p.set_held(k, false);
            }
            let mut left = 0;
            while p.evict(&mut |_| true).is_some() {
                left += 1;
            }
            prop_assert_eq!(left, resident.len(), "{:?}", kind);
        }
    });
}

/// Replays `(key, request, depth, last, now_ms)` accesses as a full cache of
/// `cap` keys would (admission, eviction, insertion); returns whether each access
/// found its key resident.
fn drive(p: &mut dyn Policy, cap: usize, accesses: &[Access]) -> Vec<bool> {
    let mut resident = std::collections::HashSet::new();
    accesses
        .iter()
        .map(|&a| {
            if resident.contains(&a.key) {
                p.on_hit(a);
                return true;
            }
            if resident.len() >= cap {
                if !p.admit(a, &mut |_| true) {
                    return false;
                }
                let v = p.evict(&mut |_| true).expect("something to evict");
                assert!(resident.remove(&v));
            }
            p.on_insert(a);
            resident.insert(a.key);
            assert_eq!(p.len(), resident.len());
            false
        })
        .collect()
}

#[test]
fn hazard_learns_which_keys_come_back_where_lru_cannot() {
    // Every second: a one-off key (never used again). Every 10 s: four keys used
    // over and over. A cache of 8 keys under LRU forgets the four before they
    // return (8 one-offs pass in between); the hazard policy learns that keys used
    // twice come back within its horizon and one-offs never do, so it keeps the
    // four (refusing or evicting one-offs instead).
    let mut accesses = Vec::new();
    for step in 0..3000u64 {
        if step % 10 == 0 {
            for d in 0..4u32 {
                accesses.push(Access {
                    key: 1 + d as u64,
                    request: 2 * step,
                    depth: d,
                    last: d == 3,
                    now_ms: step * 1000,
                });
            }
        }
        accesses.push(Access {
            key: 1000 + step,
            request: 2 * step + 1,
            depth: 0,
            last: true,
            now_ms: step * 1000,
        });
    }
    let late_hot_hits = |hits: &[bool]| {
        let (mut n, mut hit) = (0, 0);
        for (a, &h) in accesses.iter().zip(hits).skip(accesses.len() / 2) {
            if a.key < 1000 {
                n += 1;
                hit += h as u32;
            }
        }
        hit as f64 / n as f64
    };
    let lru = late_hot_hits(&drive(&mut Lru::default(), 8, &accesses));
    let hazard = late_hot_hits(&drive(&mut Hazard::new(8), 8, &accesses));
    assert!(
        lru < 0.05,
        "LRU kept the reused keys: the scenario does not separate policies ({lru})"
    );
    assert!(hazard > 0.95, "the hazard policy lost reused keys: {hazard}");
}

#[test]
fn hazard_peels_chains_from_the_tail_and_is_deterministic() {
    let chain: Vec<Access> = (0..3).map(|d| acc(10 + d as u64, 1, d)).collect();
    let mut p = Hazard::new(8);
    drive(&mut p, 8, &chain);
    assert_eq!(evict_all(&mut p), [12, 11, 10]);
    // The same accesses give the same decisions (no randomness, no wall clock).
    let accesses: Vec<Access> = (0..500u64)
        .map(|i| acc((i * 7919) % 97, i / 3, (i % 3) as u32))
        .collect();
    let a = drive(&mut Hazard::new(16), 16, &accesses);
    let b = drive(&mut Hazard::new(16), 16, &accesses);
    assert_eq!(a, b);
}

/// Four keys used every 10 s; between their uses a flood of keys used once,
/// larger than the cache, driven as the disk tier drives a policy (admission
/// first). LRU lets the flood push the hot keys out every round; hazard keeps
/// them. (The host tier's flood test is the same without admission.)
#[test]
fn hazard_keeps_hot_keys_through_a_flood_larger_than_the_cache() {
    const CAP: usize = 16;
    let mut stream = Vec::new();
    let (mut now, mut request, mut next) = (0u64, 0u64, 1000u64);
    for _ in 0..40 {
        now += 10_000;
        request += 1;
        for d in 0..4u32 {
            now += 10;
            stream.push(Access {
                key: u64::from(d) + 1,
                request,
                depth: d,
                last: d == 3,
                now_ms: now,
            });
        }
        request += 1;
        for d in 0..40u32 {
            now += 10;
            next += 1;
            stream.push(Access {
                key: next,
                request,
                depth: d,
                last: d == 39,
                now_ms: now,
            });
        }
    }
    let late_hot_hits = |kind: PolicyKind| {
        let hit = drive(kind.build(CAP).as_mut(), CAP, &stream);
        let half = stream.len() / 2;
        (half..stream.len()).filter(|&i| stream[i].key <= 4 && hit[i]).count()
    };
    assert_eq!(late_hot_hits(PolicyKind::Lru), 0, "LRU");
    let h = late_hot_hits(PolicyKind::Hazard);
    assert!(h >= 76, "hazard keeps the hot keys (of 80 uses): {h}");
}
