use super::*;
use proptest::prelude::*;

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
    fn matches_reference_model(ops in proptest::collection::vec((0u8..7, 0u32..8, 0u128..6), 1..200)) {
        let n = 6;
        let mut p = BlockPool::new(n);
        let mut m = Model::new(n);
        for (op, x, v) in ops {
            match op {
                0 => {
                    let k = (x % 4) as usize;
                    let mut out = Vec::new();
                    let r = p.allocate(k, &mut out);
                    if k > m.free_order.len() {
                        prop_assert!(r.is_err());
                    } else {
                        let want: Vec<u32> = m.free_order.drain(..k).collect();
                        for &id in &want {
                            m.unindex(id);
                            m.refs[id as usize] = 1;
                        }
                        prop_assert_eq!(out, want);
                    }
                }
                1 => {
                    // Two blocks at once: the order of release decides the free order.
                    let ids = [x % n as u32, (x + v as u32) % n as u32];
                    let ok = if ids[0] == ids[1] { m.refs[ids[0] as usize] >= 2 } else { ids.iter().all(|&i| m.refs[i as usize] > 0) };
                    let r = p.free(&ids);
                    prop_assert_eq!(r.is_ok(), ok);
                    if ok {
                        let mut front = Vec::new();
                        for &id in &ids {
                            m.refs[id as usize] -= 1;
                            if m.refs[id as usize] == 0 {
                                if m.hash[id as usize].is_some() { m.free_order.push(id); } else { front.push(id); }
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
                            if m.refs[id as usize] == 0 { m.free_order.retain(|&f| f != id); }
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
                _ => {
                    let id = x % n as u32;
                    let r = p.fork(&[id]);
                    prop_assert_eq!(r.is_ok(), m.refs[id as usize] > 0);
                    if m.refs[id as usize] > 0 { m.refs[id as usize] += 1; }
                }
            }
            p.check_invariants();
            prop_assert_eq!(p.num_free(), m.free_order.len());
            prop_assert_eq!(p.num_cached(), m.holders.len());
        }
    }
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
