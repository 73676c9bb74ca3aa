//! The host tier under other users, containers, dead and stuck processes, and a
//! damaged shared index: nothing wrong served, nothing acknowledged lost, nobody in.

use super::tests::cfg;
use super::*;
use crate::evict::SlotAccess;
use crate::tier::arena::{Geometry, WRITE_DEADLINE};
use std::os::unix::fs::PermissionsExt;

fn bytes_for(len: u64, n: u32) -> u64 {
    let mut bytes = 4096;
    while Geometry::fit(len, bytes).map_or(0, |g| g.n_slots) < n {
        bytes += 4096;
    }
    bytes
}

use crate::tier::test_util::{is_root, pattern as block};

/// Runs `f` in a forked child and returns its exit status (0 = the child's checks
/// held).
fn in_child(f: impl FnOnce() -> i32) -> libc::pid_t {
    // SAFETY: the child runs `f` and leaves with _exit, never returning into the
    // test harness.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(101);
        // SAFETY: ends the child at once.
        unsafe { libc::_exit(code) };
    }
    pid
}

fn wait(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    }
}

#[test]
fn a_foreign_owned_arena_is_refused() {
    if !is_root() {
        eprintln!("skipped: making a file another uid's needs root");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let planted = HostTier::open(&cfg(d.path(), 1 << 20), 4096, 16).unwrap();
    planted.store(BlockHash(1), &[&block(1, 4096)]).unwrap();
    let path = planted.arena().path().to_path_buf();
    drop(planted);
    std::os::unix::fs::chown(&path, Some(4242), Some(4242)).unwrap();
    let e = HostTier::open(&cfg(d.path(), 1 << 20), 4096, 16).err().unwrap();
    assert!(e.to_string().contains("uid 4242"), "{e}");
}

#[test]
fn a_world_writable_arena_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let t = HostTier::open(&cfg(d.path(), 1 << 20), 4096, 16).unwrap();
    let path = t.arena().path().to_path_buf();
    drop(t);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let e = HostTier::open(&cfg(d.path(), 1 << 20), 4096, 16).err().unwrap();
    assert!(e.to_string().contains("0666"), "{e}");
}

#[test]
fn a_symlinked_arena_is_refused_and_its_target_unchanged() {
    let d = tempfile::tempdir().unwrap();
    let target = d.path().join("victim");
    std::fs::write(&target, b"not an arena").unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink(&target, d.path().join("tierkv-t.arena")).unwrap();
    let e = HostTier::open(&cfg(d.path(), 1 << 20), 4096, 16).err().unwrap();
    assert!(e.to_string().contains("symbolic link"), "{e}");
    assert_eq!(std::fs::read(&target).unwrap(), b"not an arena");
}

/// A writer that died mid-store does not keep its identity unstorable until the
/// next open: the next store of that identity reclaims the slot at once.
#[test]
fn a_dead_writers_slot_does_not_block_its_identity() {
    let d = tempfile::tempdir().unwrap();
    let c = cfg(d.path(), bytes_for(4096, 4));
    let t = HostTier::open(&c, 4096, 16).unwrap();
    let child = in_child(|| {
        let Ok(mine) = HostTier::open(&c, 4096, 16) else {
            return 1;
        };
        let mut l = mine.arena().lock().unwrap();
        let Some((s, _)) = l.take_slot(8, Locked::now_ms(), None).unwrap() else {
            return 2;
        };
        let _ = l.begin_write(s, BlockHash(99), 0);
        drop(l);
        std::mem::forget(mine); // dies mid-write, holding its lease until exit
        0
    });
    assert_eq!(wait(child), 0);
    assert_eq!(t.lookup(&[BlockHash(99)]).unwrap(), 0, "a write in flight is not a hit");
    assert_eq!(
        t.store(BlockHash(99), &[&block(99, 4096)]).unwrap(),
        StoreOutcome::Stored
    );
    let mut out = vec![0u8; 4096];
    assert_eq!(t.load(BlockHash(99), &mut [&mut out]).unwrap(), LoadOutcome::Loaded);
    assert_eq!(out, block(99, 4096));
    assert!(t.stats().dead_writer_reclaims.load(Ordering::Relaxed) >= 1);
}

/// A writer past its deadline loses its slot to the next store of the identity,
/// and can never commit it afterwards: its store reports "not stored".
#[test]
fn a_reclaimed_slot_is_never_committed_by_its_old_writer() {
    let d = tempfile::tempdir().unwrap();
    let c = cfg(d.path(), bytes_for(4096, 2));
    let slow = HostTier::open(&c, 4096, 16).unwrap();
    let other = HostTier::open(&c, 4096, 16).unwrap();
    let ticket = {
        let mut l = slow.arena().lock().unwrap();
        let (s, _) = l.take_slot(8, Locked::now_ms(), None).unwrap().unwrap();
        let t = l.begin_write(s, BlockHash(7), 0);
        // Stuck past the deadline (a stopped process).
        l.meta_mut(s).write_started -= WRITE_DEADLINE.as_nanos() as u64 + 1;
        t
    };
    assert_eq!(
        other.store(BlockHash(7), &[&block(7, 4096)]).unwrap(),
        StoreOutcome::Stored
    );
    assert!(!slow.arena().lock().unwrap().commit_write(
        ticket,
        0,
        4096,
        SlotAccess {
            request: 1,
            last: false,
            now_ms: 0
        }
    ));
    let mut out = vec![0u8; 4096];
    assert_eq!(slow.load(BlockHash(7), &mut [&mut out]).unwrap(), LoadOutcome::Loaded);
    assert_eq!(out, block(7, 4096));
    assert_eq!(other.eviction_order().unwrap(), [BlockHash(7)], "listed once");
    assert_eq!(other.block_count().unwrap(), 1);
    let (ready, writing, free) = other.arena().lock().unwrap().census();
    assert_eq!((ready, writing, free), (1, 0, 1));
}

/// The hazard policy's state is the store's, not a process's: uses by other
/// processes count, and a block that another process's stores pushed out keeps
/// its count when it returns through this one.
#[test]
fn every_process_of_a_store_feeds_one_eviction_policy() {
    let d = tempfile::tempdir().unwrap();
    let c = cfg(d.path(), bytes_for(4096, 2));
    let t = HostTier::open(&c, 4096, 16).unwrap();
    assert_eq!(t.arena().eviction(), crate::tier::arena::HostEviction::Hazard);
    t.store(BlockHash(1), &[&block(1, 4096)]).unwrap();
    let uses = |t: &HostTier, h: u128| {
        let mut l = t.arena().lock().unwrap();
        let s = l.find(BlockHash(h)).unwrap();
        l.meta(s).used.uses
    };
    assert_eq!(uses(&t, 1), 1);
    // Three processes read block 1 as engines do (a use each).
    for _ in 0..3 {
        let c = c.clone();
        let pid = in_child(move || {
            let Ok(mine) = HostTier::open(&c, 4096, 16) else {
                return 1;
            };
            let mut out = vec![0u8; 4096];
            match mine.load_at(BlockHash(1), &mut [&mut out], 0, 1) {
                Ok(LoadOutcome::Loaded) if out == block(1, 4096) => 0,
                _ => 2,
            }
        });
        assert_eq!(wait(pid), 0);
    }
    assert_eq!(uses(&t, 1), 4, "the children's reads counted");
    // Another store: block 2 is stored here, then another process stores blocks
    // until it departs (every block used once: the oldest leaves first).
    let c2 = HostSettings {
        store_name: "t2".into(),
        ..c.clone()
    };
    let t2 = HostTier::open(&c2, 4096, 16).unwrap();
    t2.store(BlockHash(2), &[&block(2, 4096)]).unwrap();
    let pid = in_child(move || {
        let Ok(mine) = HostTier::open(&c2, 4096, 16) else {
            return 1;
        };
        for k in 10..20u128 {
            if mine.store(BlockHash(k), &[&block(k, 4096)]).is_err() {
                return 2;
            }
            if mine.lookup_run(&[BlockHash(2)]).is_ok_and(|n| n == 0) {
                return 0;
            }
        }
        3
    });
    assert_eq!(wait(pid), 0, "block 2 departed");
    // It returns through this process: the store remembered it.
    t2.store(BlockHash(2), &[&block(2, 4096)]).unwrap();
    assert_eq!(uses(&t2, 2), 2, "the departed count came back");
}

/// Hot shared prompts: many processes read one block at once; no small fixed
/// reader limit turns the seventh into a recompute.
#[test]
fn eight_processes_load_one_block_at_once() {
    let d = tempfile::tempdir().unwrap();
    let c = cfg(d.path(), bytes_for(4096, 4));
    let t = HostTier::open(&c, 4096, 16).unwrap();
    t.store(BlockHash(5), &[&block(5, 4096)]).unwrap();
    let mut ready = [0i32; 2];
    let mut go = [0i32; 2];
    // SAFETY: pipe writes two descriptors into each array.
    unsafe {
        assert_eq!(libc::pipe(ready.as_mut_ptr()), 0);
        assert_eq!(libc::pipe(go.as_mut_ptr()), 0);
    }
    let children: Vec<_> = (0..8)
        .map(|_| {
            let c = c.clone();
            in_child(move || {
                let Ok(mine) = HostTier::open(&c, 4096, 16) else {
                    return 1;
                };
                let slot = {
                    let mut l = mine.arena().lock().unwrap();
                    let Some(s) = l.find(BlockHash(5)) else { return 2 };
                    if !l.pin(s, None) {
                        return 3;
                    }
                    s
                };
                // SAFETY: plain pipe I/O on descriptors inherited from the parent.
                unsafe {
                    libc::write(ready[1], [1u8].as_ptr().cast(), 1);
                    let mut b = [0u8];
                    libc::close(go[1]);
                    libc::read(go[0], b.as_mut_ptr().cast(), 1);
                }
                mine.arena().lock().unwrap().unpin(slot);
                let mut out = vec![0u8; 4096];
                match mine.load(BlockHash(5), &mut [&mut out]) {
                    Ok(LoadOutcome::Loaded) if out == block(5, 4096) => 0,
                    _ => 4,
                }
            })
        })
        .collect();
    let mut got = 0;
    while got < 8 {
        let mut b = [0u8; 8];
        // SAFETY: reading into our buffer from our pipe.
        let n = unsafe { libc::read(ready[0], b.as_mut_ptr().cast(), 8) };
        assert!(n > 0, "a child died before pinning");
        got += n;
    }
    {
        let mut l = t.arena().lock().unwrap();
        let s = l.find(BlockHash(5)).unwrap();
        assert_eq!(l.meta(s).pins, 8, "all eight pinned at once");
    }
    let mut out = vec![0u8; 4096];
    assert_eq!(t.load(BlockHash(5), &mut [&mut out]).unwrap(), LoadOutcome::Loaded);
    // SAFETY: closing our write end releases the children (EOF).
    unsafe { libc::close(go[1]) };
    for pid in children {
        assert_eq!(wait(pid), 0);
    }
    let mut l = t.arena().lock().unwrap();
    let s = l.find(BlockHash(5)).unwrap();
    assert_eq!(l.meta(s).pins, 0);
}

/// A reader that dies holding a pin does not keep the block unevictable.
#[test]
fn a_dead_readers_pin_is_dropped() {
    let d = tempfile::tempdir().unwrap();
    let c = cfg(d.path(), bytes_for(4096, 1));
    let t = HostTier::open(&c, 4096, 16).unwrap();
    t.store(BlockHash(1), &[&block(1, 4096)]).unwrap();
    let child = in_child(|| {
        let Ok(mine) = HostTier::open(&c, 4096, 16) else {
            return 1;
        };
        let mut l = mine.arena().lock().unwrap();
        let s = l.find(BlockHash(1)).unwrap();
        i32::from(!l.pin(s, None))
    });
    assert_eq!(wait(child), 0);
    assert_eq!(t.store(BlockHash(2), &[&block(2, 4096)]).unwrap(), StoreOutcome::Stored);
}

/// A damaged shared index (a table with no empty entry, slot numbers out of
/// range, garbage list heads) never hangs or panics: it is rebuilt, counted.
#[test]
fn a_corrupted_index_never_hangs_and_is_rebuilt() {
    let d = tempfile::tempdir().unwrap();
    let t = HostTier::open(&cfg(d.path(), bytes_for(4096, 4)), 4096, 16).unwrap();
    for k in 1..=3u128 {
        t.store(BlockHash(k), &[&block(k, 4096)]).unwrap();
    }
    let g = t.arena().geometry();
    let mut f = std::fs::OpenOptions::new().write(true).open(t.arena().path()).unwrap();
    use std::io::{Seek, SeekFrom, Write};
    // Every table entry points at slot 0: a probe for anything else never meets
    // an empty entry.
    let table: Vec<u8> = (0..g.table_cap).flat_map(|_| 1u32.to_le_bytes()).collect();
    f.seek(SeekFrom::Start(g.table_off)).unwrap();
    f.write_all(&table).unwrap();
    assert_eq!(t.lookup(&[BlockHash(77)]).unwrap(), 0);
    assert!(t.stats().index_repairs.load(Ordering::Relaxed) >= 1);
    let mut out = vec![0u8; 4096];
    for k in 1..=3u128 {
        assert_eq!(t.load(BlockHash(k), &mut [&mut out]).unwrap(), LoadOutcome::Loaded);
        assert_eq!(out, block(k, 4096));
    }
    // Slot numbers far out of range in the table.
    let table: Vec<u8> = (0..g.table_cap).flat_map(|_| 0xffff_fff0u32.to_le_bytes()).collect();
    f.seek(SeekFrom::Start(g.table_off)).unwrap();
    f.write_all(&table).unwrap();
    assert_eq!(t.lookup(&[BlockHash(1)]).unwrap(), 0, "a damaged table is a miss");
    assert_eq!(t.lookup(&[BlockHash(1)]).unwrap(), 1, "and rebuilt afterwards");
    // Links out of range in every slot's metadata.
    for s in 0..g.n_slots {
        let off = g.meta_off + u64::from(s) * std::mem::size_of::<crate::tier::arena::SlotMeta>() as u64;
        let links = std::mem::offset_of!(crate::tier::arena::SlotMeta, prev) as u64;
        f.seek(SeekFrom::Start(off + links)).unwrap(); // prev, next
        f.write_all(&[0xee; 8]).unwrap();
    }
    assert_eq!(t.store(BlockHash(4), &[&block(4, 4096)]).unwrap(), StoreOutcome::Stored);
    assert_eq!(t.store(BlockHash(5), &[&block(5, 4096)]).unwrap(), StoreOutcome::Stored);
    let (ready, writing, free) = t.arena().lock().unwrap().census();
    assert_eq!(ready + writing + free, g.n_slots);
    assert!(t.block_count().unwrap() <= u64::from(g.n_slots));
    assert_eq!(t.load(BlockHash(5), &mut [&mut out]).unwrap(), LoadOutcome::Loaded);
    assert_eq!(out, block(5, 4096));
}

/// Garbage where the eviction policy keeps its state (the header's model and
/// lists, the policy field, every slot's record, the departed table): nothing
/// panics or hangs, every block still loads with its own bytes, and the store
/// goes on storing and evicting.
#[test]
fn garbage_in_the_eviction_state_is_survived() {
    let d = tempfile::tempdir().unwrap();
    let t = HostTier::open(&cfg(d.path(), bytes_for(4096, 4)), 4096, 16).unwrap();
    for k in 1..=4u128 {
        t.store(BlockHash(k), &[&block(k, 4096)]).unwrap();
    }
    let g = t.arena().geometry();
    let (policy, hazard, hazard_len) = crate::tier::arena::policy_state_offsets();
    let mut f = std::fs::OpenOptions::new().write(true).open(t.arena().path()).unwrap();
    use std::io::{Seek, SeekFrom, Write};
    let mut scribble = |off: u64, len: u64, byte: u8| {
        f.seek(SeekFrom::Start(off)).unwrap();
        f.write_all(&vec![byte; len as usize]).unwrap();
    };
    let used = std::mem::offset_of!(crate::tier::arena::SlotMeta, used) as u64;
    let meta = std::mem::size_of::<crate::tier::arena::SlotMeta>() as u64;
    let departed = u64::from(g.departed_len) * std::mem::size_of::<crate::evict::Departed>() as u64;
    let mut out = vec![0u8; 4096];
    for byte in [0xff, 0x00, 0x5a] {
        scribble(hazard, hazard_len, byte);
        scribble(g.departed_off, departed, byte);
        for s in 0..g.n_slots {
            scribble(g.meta_off + u64::from(s) * meta + used, 16, byte);
        }
        for k in 1..=4u128 {
            let o = t.load(BlockHash(k), &mut [&mut out]).unwrap();
            assert!(o != LoadOutcome::Corrupt);
            if o == LoadOutcome::Loaded {
                assert_eq!(out, block(k, 4096));
            }
        }
        for k in 10..20u128 {
            t.store(BlockHash(k), &[&block(k, 4096)]).unwrap();
        }
        let (ready, writing, free) = t.arena().lock().unwrap().census();
        assert_eq!(ready + writing + free, g.n_slots);
        assert_eq!(
            t.load(BlockHash(19), &mut [&mut out]).unwrap(),
            LoadOutcome::Loaded,
            "storing goes on"
        );
        assert_eq!(out, block(19, 4096));
    }
    // A policy value that names none: rebuilt as the default, storing goes on.
    scribble(policy, 4, 0x77);
    for k in 30..40u128 {
        t.store(BlockHash(k), &[&block(k, 4096)]).unwrap();
    }
    assert_eq!(t.arena().eviction(), crate::tier::arena::HostEviction::default());
    assert_eq!(t.load(BlockHash(39), &mut [&mut out]).unwrap(), LoadOutcome::Loaded);
    // The other valid policy, its list empty: the ready slots on no list are found
    // and the lists rebuilt for it.
    scribble(policy, 1, crate::tier::arena::HostEviction::Lru as u8);
    for k in 40..50u128 {
        t.store(BlockHash(k), &[&block(k, 4096)]).unwrap();
    }
    assert_eq!(t.load(BlockHash(49), &mut [&mut out]).unwrap(), LoadOutcome::Loaded);
    assert_eq!(out, block(49, 4096));
}

/// A truncated arena is never mapped past its end (no SIGBUS): refused while
/// others use it, recreated when nobody does.
#[test]
fn a_truncated_arena_is_not_mapped() {
    let d = tempfile::tempdir().unwrap();
    let c = cfg(d.path(), bytes_for(4096, 8));
    let first = HostTier::open(&c, 4096, 16).unwrap();
    first.store(BlockHash(1), &[&block(1, 4096)]).unwrap();
    let path = first.arena().path().to_path_buf();
    let len = first.arena().geometry().file_len;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 8192)
        .unwrap();
    let e = HostTier::open(&c, 4096, 16).err().unwrap();
    assert!(e.to_string().contains("truncated"), "{e}");
    drop(first);
    let again = HostTier::open(&c, 4096, 16).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
    assert_eq!(again.lookup(&[BlockHash(1)]).unwrap(), 0, "started empty");
}

/// `TIERKV_CPU_BYTES` is not silently overridden by an old store: with nobody
/// attached the store is recreated at the configured size; with live users it is
/// joined as it is (and a warning names both sizes).
#[test]
fn a_store_of_another_size_is_resized_when_nobody_uses_it() {
    let d = tempfile::tempdir().unwrap();
    let big = cfg(d.path(), bytes_for(4096, 32));
    let small = cfg(d.path(), bytes_for(4096, 4));
    let a = HostTier::open(&big, 4096, 16).unwrap();
    let b = HostTier::open(&small, 4096, 16).unwrap();
    assert_eq!(
        b.arena().geometry().n_slots,
        a.arena().geometry().n_slots,
        "joined while in use"
    );
    drop((a, b));
    let c = HostTier::open(&small, 4096, 16).unwrap();
    assert_eq!(c.arena().geometry().n_slots, 4, "recreated at the configured size");
}

/// Two containers with their own PID namespaces (so pids repeat and neither sees
/// the other's) store into one small arena at once: no live write is reclaimed,
/// every block served is the one stored, the count stays within capacity.
#[test]
fn two_pid_namespaces_share_one_arena_safely() {
    let d = tempfile::tempdir().unwrap();
    const LEN: usize = 256 * 1024;
    let c = cfg(d.path(), bytes_for(LEN as u64, 4));
    let t = HostTier::open(&c, LEN as u64, 16).unwrap();
    let trees: Vec<_> = (0..2u128)
        .map(|tree| {
            let c = c.clone();
            in_child(move || {
                // SAFETY: unshare only changes the namespace of this process's children.
                if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
                    return 77;
                }
                // The namespace's init (pid 1) runs one worker itself and forks
                // another (pid 2), and reaps it: a namespace ends with its init.
                let c = c.clone();
                let init = in_child(move || {
                    let c2 = c.clone();
                    let second = in_child(move || namespace_worker(&c2, tree * 2 + 1, LEN));
                    let first = namespace_worker(&c, tree * 2, LEN);
                    first.max(wait(second))
                });
                wait(init)
            })
        })
        .collect();
    let codes: Vec<i32> = trees.into_iter().map(wait).collect();
    if codes.contains(&77) {
        eprintln!("skipped: unshare(CLONE_NEWPID) is not permitted here");
        return;
    }
    assert_eq!(
        codes,
        [0, 0],
        "a worker served wrong bytes or lost an acknowledged write"
    );
    let s = t.stats();
    assert_eq!(s.checksum_failures.load(Ordering::Relaxed), 0);
    assert_eq!(s.writes_lost.load(Ordering::Relaxed), 0, "no live write was reclaimed");
    let (ready, writing, free) = t.arena().lock().unwrap().census();
    assert_eq!(ready + writing + free, 4);
    assert_eq!(writing, 0);
    assert_eq!(u64::from(ready), t.block_count().unwrap());
}

fn namespace_worker(c: &HostSettings, worker: u128, len: usize) -> i32 {
    let Ok(t) = HostTier::open(c, len as u64, 16) else {
        return 1;
    };
    let mut out = vec![0u8; len];
    let until = std::time::Instant::now() + std::time::Duration::from_millis(1500);
    let mut i = 0u128;
    while std::time::Instant::now() < until {
        let key = (worker << 32) | (i % 6);
        let data = block(key, len);
        if t.store(BlockHash(key), &[&data]).is_err() {
            return 2;
        }
        for back in 0..3u128 {
            let k = (worker << 32) | (i.saturating_sub(back) % 6);
            match t.load(BlockHash(k), &mut [&mut out]) {
                Ok(LoadOutcome::Loaded) if out != block(k, len) => return 3,
                Ok(LoadOutcome::Corrupt) | Err(_) => return 4,
                _ => {}
            }
        }
        i += 1;
    }
    0
}
