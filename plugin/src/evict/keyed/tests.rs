use super::*;

fn acc(key: u64, request: u64, depth: u32) -> Access {
    Access { key, request, depth }
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
    let kinds = [PolicyKind::Lru, PolicyKind::S3Fifo, PolicyKind::Chat];
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
