//! The arena's index while its mutex is held: the open-addressing table, the free
//! and eviction lists, pins, and the repair after a process died holding the lock.
//!
//! Table: linear probing over `u32` entries (`slot + 1`, 0 = empty), home slot = low
//! bits of the identity; deletion shifts later entries back, so there are no
//! tombstones:
//!
//! ```text
//!   home(h) = h & (cap - 1)      [.. | e1 | e2 | 0 | ..]  remove e1 -> e2 moves into
//!                                  its place unless e2's home lies in (hole, j]
//! ```

use super::{pid_alive, Arena, Header, SlotMeta, SlotState, MAX_READERS};
use crate::block::list::{LinkStore, ListEnds, NIL};
use crate::prefix::BlockHash;
use crate::tier::{EvictionPolicy, Lru};

/// The arena index while its mutex is held; unlocks on drop.
pub struct Locked<'a> {
    pub(super) arena: &'a Arena,
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        // SAFETY: this guard exists only while the calling thread holds the mutex.
        unsafe { libc::pthread_mutex_unlock(self.arena.mutex_ptr()) };
    }
}

impl LinkStore for Locked<'_> {
    fn links(&self, i: u32) -> (u32, u32) {
        let m = self.meta(i);
        (m.prev, m.next)
    }

    fn set_links(&mut self, i: u32, prev: u32, next: u32) {
        let m = self.meta_mut(i);
        m.prev = prev;
        m.next = next;
    }
}

impl Locked<'_> {
    #[allow(clippy::mut_from_ref)]
    pub(super) fn header(&self) -> &mut Header {
        // SAFETY: the header is mapped; the mutex (held) serialises all access to its
        // non-atomic fields, and no other reference to it outlives a statement.
        unsafe { &mut *(self.arena.base as *mut Header) }
    }

    /// Metadata of `slot`.
    pub fn meta(&self, slot: u32) -> &SlotMeta {
        assert!(slot < self.arena.geo.n_slots);
        let off = self.arena.geo.meta_off as usize + slot as usize * std::mem::size_of::<SlotMeta>();
        // SAFETY: in bounds (checked) and aligned (offsets are multiples of 8); the
        // mutex serialises access.
        unsafe { &*(self.arena.base.add(off) as *const SlotMeta) }
    }

    /// Mutable metadata of `slot`.
    pub fn meta_mut(&mut self, slot: u32) -> &mut SlotMeta {
        assert!(slot < self.arena.geo.n_slots);
        let off = self.arena.geo.meta_off as usize + slot as usize * std::mem::size_of::<SlotMeta>();
        // SAFETY: as in `meta`; &mut self makes this the only live reference.
        unsafe { &mut *(self.arena.base.add(off) as *mut SlotMeta) }
    }

    fn table(&mut self) -> &mut [u32] {
        let g = self.arena.geo;
        // SAFETY: the table lies inside the mapping (see Geometry::layout) and is
        // only touched under the mutex.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.arena.base.add(g.table_off as usize) as *mut u32,
                g.table_cap as usize,
            )
        }
    }

    /// Number of slots in the `Ready` state.
    pub fn ready_count(&self) -> u32 {
        // The eviction list holds exactly the Ready slots.
        self.header().lru.len
    }

    /// Advances and returns the logical clock.
    pub fn tick(&mut self) -> u64 {
        let h = self.header();
        h.clock += 1;
        h.clock
    }

    /// The slot indexed under `hash`, in any non-free state.
    pub fn find(&mut self, hash: BlockHash) -> Option<u32> {
        let mask = self.arena.geo.table_cap - 1;
        let mut i = (hash.0 as u32) & mask;
        loop {
            let e = self.table()[i as usize];
            if e == 0 {
                return None;
            }
            if self.meta(e - 1).block_hash() == hash {
                return Some(e - 1);
            }
            i = (i + 1) & mask;
        }
    }

    fn table_insert(&mut self, hash: BlockHash, slot: u32) {
        let mask = self.arena.geo.table_cap - 1;
        let mut i = (hash.0 as u32) & mask;
        while self.table()[i as usize] != 0 {
            i = (i + 1) & mask;
        }
        self.table()[i as usize] = slot + 1;
    }

    /// Removes `hash` from the table (backward-shift deletion: no tombstones).
    fn table_remove(&mut self, hash: BlockHash) {
        let mask = self.arena.geo.table_cap - 1;
        let mut i = (hash.0 as u32) & mask;
        loop {
            let e = self.table()[i as usize];
            if e == 0 {
                return;
            }
            if self.meta(e - 1).block_hash() == hash {
                break;
            }
            i = (i + 1) & mask;
        }
        let mut hole = i;
        let mut j = (i + 1) & mask;
        loop {
            let e = self.table()[j as usize];
            if e == 0 {
                break;
            }
            let home = (self.meta(e - 1).hash[0] as u32) & mask;
            // Move e into the hole unless its home lies cyclically in (hole, j].
            let stays = if hole <= j {
                hole < home && home <= j
            } else {
                hole < home || home <= j
            };
            if !stays {
                self.table()[hole as usize] = e;
                hole = j;
            }
            j = (j + 1) & mask;
        }
        self.table()[hole as usize] = 0;
    }

    /// Takes a free slot, or evicts the least recently used unpinned `Ready` slot
    /// (looking at most `scan` entries from the LRU head). Returns the slot and the
    /// evicted identity, if any.
    pub fn take_slot(&mut self, scan: usize) -> Option<(u32, Option<BlockHash>)> {
        let mut free = self.header().free;
        let got = free.pop_front(self);
        self.header().free = free;
        if let Some(s) = got {
            return Some((s, None));
        }
        let policy = Lru(self.header().lru);
        let mut cur = policy.first_candidate();
        for _ in 0..scan {
            if cur == NIL {
                break;
            }
            let next = policy.next_candidate(self, cur);
            self.drop_dead_readers(cur);
            if self.meta(cur).readers.iter().all(|&r| r == 0) {
                let victim = self.meta(cur).block_hash();
                self.unlink_ready(cur);
                return Some((cur, Some(victim)));
            }
            cur = next;
        }
        None
    }

    /// Reserves `slot` (just taken) for writing `hash` by this process.
    pub fn begin_write(&mut self, slot: u32, hash: BlockHash) {
        let pid = std::process::id();
        let m = self.meta_mut(slot);
        m.hash = hash.to_parts();
        m.state = SlotState::Writing as u32;
        m.writer = pid;
        m.readers = [0; MAX_READERS];
        self.table_insert(hash, slot);
    }

    /// Publishes a written slot.
    pub fn commit_write(&mut self, slot: u32, checksum: u64, len: u64) {
        let t = self.tick();
        let m = self.meta_mut(slot);
        m.checksum = checksum;
        m.len = len;
        m.last_access = t;
        m.writer = 0;
        m.state = SlotState::Ready as u32;
        let mut lru = Lru(self.header().lru);
        lru.inserted(self, slot);
        self.header().lru = lru.0;
    }

    /// Abandons a `Writing` slot: unindexes it and returns it to the free list.
    pub fn abort_write(&mut self, slot: u32) {
        let hash = self.meta(slot).block_hash();
        self.table_remove(hash);
        self.release(slot);
    }

    fn release(&mut self, slot: u32) {
        *self.meta_mut(slot) = SlotMeta::free();
        let mut free = self.header().free;
        free.push_back(self, slot);
        self.header().free = free;
    }

    fn unlink_ready(&mut self, slot: u32) {
        let mut lru = Lru(self.header().lru);
        lru.removed(self, slot);
        self.header().lru = lru.0;
        let hash = self.meta(slot).block_hash();
        self.table_remove(hash);
        self.meta_mut(slot).state = SlotState::Free as u32;
    }

    /// Removes a `Ready`, unpinned-by-others slot (after a failed verification).
    pub fn discard(&mut self, slot: u32) {
        if self.meta(slot).state == SlotState::Ready as u32 {
            self.unlink_ready(slot);
            self.release(slot);
        }
    }

    /// Pins `slot` for reading by this process and marks it recently used. Returns
    /// `false` when every reader entry is taken.
    pub fn pin(&mut self, slot: u32) -> bool {
        let pid = std::process::id();
        self.drop_dead_readers(slot);
        let Some(e) = self.meta(slot).readers.iter().position(|&r| r == 0) else {
            return false;
        };
        self.meta_mut(slot).readers[e] = pid;
        let t = self.tick();
        self.meta_mut(slot).last_access = t;
        let mut lru = Lru(self.header().lru);
        lru.accessed(self, slot);
        self.header().lru = lru.0;
        true
    }

    /// Drops one pin of this process on `slot`.
    pub fn unpin(&mut self, slot: u32) {
        let pid = std::process::id();
        if let Some(e) = self.meta(slot).readers.iter().position(|&r| r == pid) {
            self.meta_mut(slot).readers[e] = 0;
        }
    }

    fn drop_dead_readers(&mut self, slot: u32) {
        for e in 0..MAX_READERS {
            let r = self.meta(slot).readers[e];
            if r != 0 && !pid_alive(r) {
                self.meta_mut(slot).readers[e] = 0;
            }
        }
    }

    /// Frees slots whose writer died and drops pins of dead readers. Returns how
    /// many slots were reclaimed.
    pub fn sweep_dead(&mut self) -> u32 {
        let mut reclaimed = 0;
        for s in 0..self.arena.geo.n_slots {
            let m = *self.meta(s);
            if m.state == SlotState::Writing as u32 && !pid_alive(m.writer) {
                self.abort_write(s);
                reclaimed += 1;
            } else if m.state == SlotState::Ready as u32 {
                self.drop_dead_readers(s);
            }
        }
        reclaimed
    }

    /// Rebuilds the table and both lists from the slot metadata after a process
    /// died holding the mutex. Slots of dead writers and duplicate identities are
    /// freed; eviction order is restored from `last_access`.
    pub(super) fn repair(&mut self) {
        let n = self.arena.geo.n_slots;
        self.table().fill(0);
        let mut ready = Vec::new();
        let mut free_slots = Vec::new();
        for s in 0..n {
            let m = *self.meta(s);
            let keep = match m.state {
                x if x == SlotState::Ready as u32 => true,
                x if x == SlotState::Writing as u32 => pid_alive(m.writer),
                _ => false,
            };
            if keep && self.find(m.block_hash()).is_none() {
                self.table_insert(m.block_hash(), s);
                if m.state == SlotState::Ready as u32 {
                    self.drop_dead_readers(s);
                    ready.push((m.last_access, s));
                }
            } else {
                free_slots.push(s);
            }
        }
        ready.sort_unstable();
        let mut lru = Lru::default();
        for &(_, s) in &ready {
            lru.inserted(self, s);
        }
        let mut free = ListEnds::new();
        for &s in &free_slots {
            *self.meta_mut(s) = SlotMeta::free();
            free.push_back(self, s);
        }
        let h = self.header();
        h.lru = lru.0;
        h.free = free;
        h.clock = h.clock.max(ready.last().map_or(0, |r| r.0));
    }

    /// Identities of the `Ready` slots in eviction order (tests and tools).
    pub fn eviction_order(&self) -> Vec<BlockHash> {
        self.header()
            .lru
            .iter(self)
            .map(|s| self.meta(s).block_hash())
            .collect()
    }

    /// Number of free slots.
    pub fn free_count(&self) -> u32 {
        self.header().free.len
    }
}
