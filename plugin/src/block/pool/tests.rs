use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::*;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

fn h(v: u128) -> BlockHash {
    BlockHash(v)
}

#[test]
fn allocate_is_all_or_nothing() {
    let mut p = BlockPool::new(4);
    let mut out = Vec::new();
    p.allocate(3, &mut out).unwrap();
    assert_eq!(out, [0, 1, 2]);
    // Expected: asking for 2 with 1 free fails and changes nothing.
    let err = p.allocate(2, &mut out).unwrap_err();
    assert_eq!(
        err,
        Insufficient {
            requested: 2,
            available: 1
        }
    );
    assert_eq!(out, [0, 1, 2]);
    assert_eq!(p.num_free(), 1);
    p.check_invariants();
}

#[test]
fn cached_free_blocks_are_evicted_least_recently_released_first() {
    let mut p = BlockPool::new(4);
    let mut a = Vec::new();
    p.allocate(4, &mut a).unwrap(); // [0, 1, 2, 3]
    for (i, &id) in a.iter().enumerate() {
        assert!(p.register(id, h(100 + i as u128)).unwrap());
    }
    // Release request A = [0, 1] last-first, then request B = [2, 3] last-first.
    p.free(&[1, 0]).unwrap();
    p.free(&[3, 2]).unwrap();
    // Expected free list: 1, 0, 3, 2 — allocation evicts 1 then 0.
    let mut b = Vec::new();
    p.allocate(2, &mut b).unwrap();
    assert_eq!(b, [1, 0]);
    assert_eq!(p.stats().evictions, 2);
    assert_eq!(p.lookup(&[h(100)]), 0, "block 0's identity was evicted");
    assert_eq!(p.lookup(&[h(102), h(103)]), 2);
    p.check_invariants();
}

#[test]
fn hit_reuses_cached_free_block_and_removes_it_from_free_list() {
    let mut p = BlockPool::new(3);
    let mut a = Vec::new();
    p.allocate(2, &mut a).unwrap();
    p.register(0, h(1)).unwrap();
    p.register(1, h(2)).unwrap();
    p.free(&[1, 0]).unwrap();
    let mut hit = Vec::new();
    // Expected: hashes [1, 2, 3] hit blocks 0 and 1, stop at 3.
    assert_eq!(p.acquire_cached(&[h(1), h(2), h(3)], &mut hit), 2);
    assert_eq!(hit, [0, 1]);
    assert_eq!(p.num_free(), 1);
    assert_eq!(p.ref_count(0).unwrap(), 1);
    p.check_invariants();
}

#[test]
fn touch_references_exactly_the_blocks_found() {
    let mut p = BlockPool::new(4);
    let mut a = Vec::new();
    p.allocate(3, &mut a).unwrap();
    p.register(0, h(1)).unwrap();
    p.register(1, h(2)).unwrap();
    // Block 2 is a second holder of identity 1: find names block 0.
    assert!(!p.register(2, h(1)).unwrap());
    p.free(&[2, 1, 0]).unwrap();
    let mut found = Vec::new();
    p.find(&[h(1), h(2)], &mut found);
    assert_eq!(found, [Some(0), Some(1)]);
    let before = p.stats().hits;
    // A free block leaves the free list; a held one gains a reference.
    p.touch(&[0, 1]).unwrap();
    p.touch(&[0]).unwrap();
    assert_eq!(p.ref_count(0).unwrap(), 2);
    assert_eq!(p.ref_count(1).unwrap(), 1);
    assert_eq!(p.num_free(), 2);
    assert_eq!(p.stats().hits - before, 3);
    // Validated first: an unknown id changes nothing.
    assert_eq!(p.touch(&[2, 9]), Err(PoolError::UnknownBlock { id: 9, num_blocks: 4 }));
    assert_eq!(p.ref_count(2).unwrap(), 0);
    p.check_invariants();
}

#[test]
fn fork_and_copy_on_write() {
    let mut p = BlockPool::new(3);
    let mut a = Vec::new();
    p.allocate(1, &mut a).unwrap();
    p.register(0, h(9)).unwrap();
    p.fork(&[0]).unwrap();
    assert_eq!(p.ref_count(0).unwrap(), 2);
    assert_eq!(p.copy_on_write(0).unwrap(), CowOutcome::Copied { src: 0, dst: 1 });
    assert_eq!(p.ref_count(0).unwrap(), 1);
    // Now exclusive: written in place, identity dropped.
    assert_eq!(p.copy_on_write(0).unwrap(), CowOutcome::Exclusive(0));
    assert_eq!(p.lookup(&[h(9)]), 0);
    p.check_invariants();
}

#[test]
fn contract_violations_change_nothing() {
    let mut p = BlockPool::new(3);
    let mut a = Vec::new();
    p.allocate(2, &mut a).unwrap();
    assert_eq!(p.free(&[0, 7]), Err(PoolError::UnknownBlock { id: 7, num_blocks: 3 }));
    assert_eq!(p.free(&[1, 0, 0]), Err(PoolError::NotAllocated { id: 0 }));
    assert_eq!(p.ref_count(0).unwrap(), 1);
    assert_eq!(p.ref_count(1).unwrap(), 1);
    assert_eq!(p.num_free(), 1);
    assert_eq!(p.fork(&[2]), Err(PoolError::NotAllocated { id: 2 }));
    assert_eq!(p.register(2, h(1)), Err(PoolError::NotAllocated { id: 2 }));
    p.register(0, h(1)).unwrap();
    assert_eq!(p.register(0, h(2)), Err(PoolError::AlreadyRegistered { id: 0 }));
    assert!(!p.register(1, h(1)).unwrap(), "first holder of an identity stays");
    p.check_invariants();
}

/// A simple reference model of vLLM 0.32's `BlockPool`: vectors and linear scans.
#[derive(Default)]
struct Model {
    refs: Vec<u32>,
    hash: Vec<Option<u128>>,
    free_order: Vec<u32>,
    /// (identity, block) in registration order: the first of an identity is found.
    holders: Vec<(u128, u32)>,
}

impl Model {
    fn new(n: usize) -> Self {
        Self {
            refs: vec![0; n],
            hash: vec![None; n],
            free_order: (0..n as u32).collect(),
            holders: Vec::new(),
        }
    }
    fn find(&self, v: u128) -> Option<u32> {
        self.holders.iter().find(|(h, _)| *h == v).map(|&(_, id)| id)
    }
    fn unindex(&mut self, id: u32) -> bool {
        let had = self.hash[id as usize].take().is_some();
        self.holders.retain(|&(_, b)| b != id);
        had
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    /// Random operation sequences agree with the model: same ids, same eviction order,
    /// same hits with duplicate holders, same identities dropped.
    #[test]
    fn matches_reference_model(ops in proptest::collection::vec((0u8..8, 0u32..8, 0u128..6), 1..200)) {
        drive(&ops, PolicyKind::Lru)?;
    }

    /// With a policy choosing the victims, every outcome but the choice of cached
    /// free block is the model's: a block nothing can hit still goes first, a
    /// victim is a free block and loses its identity, hits and counts agree.
    #[test]
    fn a_policy_changes_only_which_cached_block_goes(ops in proptest::collection::vec((0u8..8, 0u32..8, 0u128..6), 1..200)) {
        drive(&ops, PolicyKind::Hazard)?;
    }
}

/// Runs `ops` on a pool evicting by `policy` and on the reference model.
fn drive(ops: &[(u8, u32, u128)], policy: PolicyKind) -> Result<(), TestCaseError> {
    {
        let n = 6;
        let mut p = BlockPool::try_with_policy(n, policy).unwrap();
        let mut m = Model::new(n);
        for &(op, x, v) in ops {
            match op {
                0 => {
                    let k = (x % 4) as usize;
                    let mut out = Vec::new();
                    let refused_before: Vec<u32> = (0..n as u32).filter(|&b| p.refused(b)).collect();
                    let r = p.allocate(k, &mut out);
                    if k > m.free_order.len() {
                        prop_assert!(r.is_err());
                    } else if policy == PolicyKind::Lru {
                        let want: Vec<u32> = m.free_order.drain(..k).collect();
                        for &id in &want {
                            m.unindex(id);
                            m.refs[id as usize] = 1;
                        }
                        prop_assert_eq!(out, want);
                    } else {
                        // Blocks nothing can hit, or whose identity the policy refused, go first.
                        let first = m
                            .free_order
                            .iter()
                            .filter(|&&f| m.hash[f as usize].is_none() || refused_before.contains(&f))
                            .count();
                        for (i, &id) in out.iter().enumerate() {
                            prop_assert!(m.free_order.contains(&id), "block {} is not free", id);
                            prop_assert!(
                                i >= first || m.hash[id as usize].is_none() || refused_before.contains(&id),
                                "blank or refused blocks first"
                            );
                            m.free_order.retain(|&f| f != id);
                            m.unindex(id);
                            m.refs[id as usize] = 1;
                        }
                    }
                }
                1 => {
                    // Two blocks at once: the order of release decides the free order.
                    let ids = [x % n as u32, (x + v as u32) % n as u32];
                    let ok = if ids[0] == ids[1] {
                        m.refs[ids[0] as usize] >= 2
                    } else {
                        ids.iter().all(|&i| m.refs[i as usize] > 0)
                    };
                    let r = p.free(&ids);
                    prop_assert_eq!(r.is_ok(), ok);
                    if ok {
                        let mut front = Vec::new();
                        for &id in &ids {
                            m.refs[id as usize] -= 1;
                            if m.refs[id as usize] == 0 {
                                if m.hash[id as usize].is_some() {
                                    m.free_order.push(id);
                                } else {
                                    front.push(id);
                                }
                            }
                        }
                        front.append(&mut m.free_order);
                        m.free_order = front;
                    }
                }
                2 => {
                    let id = x % n as u32;
                    let r = p.register(id, BlockHash(v));
                    if m.refs[id as usize] == 0 {
                        prop_assert!(r.is_err());
                    } else if let Some(cur) = m.hash[id as usize] {
                        if cur == v {
                            prop_assert_eq!(r, Ok(m.find(v) == Some(id)));
                        } else {
                            prop_assert!(r.is_err());
                        }
                    } else {
                        prop_assert_eq!(r, Ok(m.find(v).is_none()));
                        m.hash[id as usize] = Some(v);
                        m.holders.push((v, id));
                    }
                }
                3 => {
                    let mut out = Vec::new();
                    let got = p.acquire_cached(&[BlockHash(v)], &mut out);
                    match m.find(v) {
                        Some(id) => {
                            prop_assert_eq!(got, 1);
                            prop_assert_eq!(out[0], id);
                            if m.refs[id as usize] == 0 {
                                m.free_order.retain(|&f| f != id);
                            }
                            m.refs[id as usize] += 1;
                        }
                        None => prop_assert_eq!(got, 0),
                    }
                }
                4 => {
                    let id = x % n as u32;
                    let dropped = p.forget(&[id]).unwrap();
                    prop_assert_eq!(dropped, usize::from(m.unindex(id)));
                }
                5 => {
                    let mut out = Vec::new();
                    p.find(&[BlockHash(v)], &mut out);
                    prop_assert_eq!(out[0], m.find(v));
                }
                7 => {
                    // Rare: a reset forgets every identity, the free order stays.
                    if x == 0 && v == 0 {
                        p.reset_prefix_cache();
                        m.hash.iter_mut().for_each(|h| *h = None);
                        m.holders.clear();
                    }
                }
                _ => {
                    let id = x % n as u32;
                    let r = p.fork(&[id]);
                    prop_assert_eq!(r.is_ok(), m.refs[id as usize] > 0);
                    if m.refs[id as usize] > 0 {
                        m.refs[id as usize] += 1;
                    }
                }
            }
            p.check_invariants();
            prop_assert_eq!(p.num_free(), m.free_order.len());
            prop_assert_eq!(p.num_cached(), m.holders.len());
        }
    }
    Ok(())
}

/// One round of the flood test: request `hashes` looks its prefix up, allocates
/// and registers the rest, and frees everything, last block first. Returns its hits.
fn serve(p: &mut BlockPool, hashes: &[BlockHash]) -> usize {
    let mut ids = Vec::new();
    let hits = p.acquire_cached(hashes, &mut ids);
    let mut fresh = Vec::new();
    p.allocate(hashes.len() - hits, &mut fresh).unwrap();
    let mut found = Vec::new();
    p.register_many(&fresh, &hashes[hits..], &mut found).unwrap();
    ids.extend(fresh);
    ids.reverse();
    p.free(&ids).unwrap();
    p.check_invariants();
    hits
}

/// A pool of `n` blocks evicting by `policy` on a test clock (ms, advanced by the
/// caller), its block 0 taken as vLLM's null block (never freed).
fn clocked(n: usize, policy: PolicyKind) -> (BlockPool, Arc<AtomicU64>) {
    let now = Arc::new(AtomicU64::new(0));
    let clock = Arc::clone(&now);
    let mut p = BlockPool::try_with_policy(n, policy)
        .unwrap()
        .with_clock(Arc::new(move || clock.load(Ordering::Relaxed)));
    let mut null = Vec::new();
    p.allocate(1, &mut null).unwrap();
    (p, now)
}

/// A 4-block prefix asked for again after every flood of 16 blocks used once, in
/// a pool of 16, one request a second: the engine's order (LRU of release) has
/// always evicted it by then; hazard learns that the flood never returns and
/// keeps the prefix.
#[test]
fn hazard_keeps_a_reused_prefix_through_a_flood_that_lru_evicts() {
    let mut hits = Vec::new();
    for policy in [PolicyKind::Lru, PolicyKind::Hazard] {
        let (mut p, now) = clocked(17, policy);
        let hot: Vec<BlockHash> = (1..=4).map(h).collect();
        let mut fresh = 1000u128;
        let mut late = 0;
        for round in 0..60 {
            now.fetch_add(1000, Ordering::Relaxed);
            let got = serve(&mut p, &hot);
            if round >= 20 {
                late += got;
            }
            for _ in 0..4 {
                now.fetch_add(1000, Ordering::Relaxed);
                let flood: Vec<BlockHash> = (0..4).map(|i| h(fresh + i)).collect();
                fresh += 4;
                assert_eq!(serve(&mut p, &flood), 0);
            }
        }
        assert_eq!(p.policy(), if policy == PolicyKind::Lru { "lru" } else { "hazard" });
        hits.push(late);
    }
    assert_eq!(hits[0], 0, "LRU: the flood evicts the prefix every round");
    assert_eq!(hits[1], 40 * 4, "hazard: every late round hits the whole prefix");
}

/// Four 4-block prefixes used round robin, then each round a request of 12 blocks
/// used once, in a pool of 24: room for 3 of the prefixes besides the one-off
/// request. The engine's order (LRU of release) loses every prefix every round.
/// Hazard learns that the one-off blocks never return and refuses them when they
/// register: once free they go first (the next one-off request takes them), and
/// 3 prefixes stay, all the room allows. A refused block is still found until its
/// block is taken.
#[test]
fn hazard_refuses_blocks_not_worth_a_victim_and_they_go_first() {
    let mut late = Vec::new();
    for policy in [PolicyKind::Lru, PolicyKind::Hazard] {
        let (mut p, now) = clocked(25, policy);
        let mut fresh = 1000u128;
        let mut hits = 0;
        for round in 0..60 {
            for c in 0..4u128 {
                now.fetch_add(1000, Ordering::Relaxed);
                let hot: Vec<BlockHash> = (0..4).map(|i| h(10 * c + i)).collect();
                let got = serve(&mut p, &hot);
                if round >= 20 {
                    hits += got;
                }
            }
            now.fetch_add(1000, Ordering::Relaxed);
            let once: Vec<BlockHash> = (0..12).map(|i| h(fresh + i)).collect();
            fresh += 12;
            assert_eq!(serve(&mut p, &once), 0);
            if policy == PolicyKind::Hazard && round >= 20 {
                // Refused, yet found while its block is not taken.
                assert!(p.refused(p.index[&once[11]]), "round {round}: the one-off was admitted");
                assert_eq!(p.lookup(&once[..1]), 1);
            }
        }
        late.push((hits, p.policy_refusals()));
    }
    assert_eq!(late[0], (0, 0), "LRU loses every prefix to the one-off requests");
    assert_eq!(late[1].0, 40 * 3 * 4, "hazard keeps 3 prefixes: {late:?}");
    assert!(late[1].1 >= 40 * 12, "hazard refuses the one-off blocks: {late:?}");
}

/// A pool size that needs absurd bookkeeping is an error under a memory limit
/// (`RLIMIT_AS`), never an abort of the host.
#[test]
fn a_huge_pool_under_a_memory_limit_is_an_error_not_an_abort() {
    // SAFETY: the child only sets a limit, tries the allocation and exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let limit = libc::rlimit {
            rlim_cur: 2 << 30,
            rlim_max: 2 << 30,
        };
        // SAFETY: setrlimit with a valid struct.
        unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) };
        let code = match BlockPool::try_new(4_000_000_000) {
            Err(PoolError::OutOfMemory { .. }) => 0,
            Err(_) => 2,
            Ok(_) => 3,
        };
        // SAFETY: ends the child at once.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(
        libc::WIFEXITED(status),
        "the child was killed (signal {})",
        libc::WTERMSIG(status)
    );
    assert_eq!(libc::WEXITSTATUS(status), 0);
    assert!(matches!(
        BlockPool::try_new(u32::MAX as usize),
        Err(PoolError::UnknownBlock { .. })
    ));
}

#[test]
fn reference_counts_never_wrap() {
    let mut p = BlockPool::new(2);
    let mut ids = Vec::new();
    p.allocate(1, &mut ids).unwrap();
    let id = ids[0];
    p.slots[id as usize].ref_cnt = u32::MAX - 1;
    p.fork(&[id]).unwrap();
    assert!(matches!(p.fork(&[id]), Err(PoolError::TooManyReferences { .. })));
    assert_eq!(p.slots[id as usize].ref_cnt, u32::MAX, "a refused fork changes nothing");
    let mut q = BlockPool::new(2);
    let mut ids = Vec::new();
    q.allocate(1, &mut ids).unwrap();
    q.slots[ids[0] as usize].ref_cnt = u32::MAX - 1;
    assert!(matches!(
        q.fork(&[ids[0], ids[0]]),
        Err(PoolError::TooManyReferences { .. })
    ));
    assert_eq!(q.slots[ids[0] as usize].ref_cnt, u32::MAX - 1);
}
