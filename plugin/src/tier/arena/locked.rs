//! The arena's index while its mutex is held: the open-addressing table, the free
//! and eviction lists, leases and pins, and the repair after a process died holding
//! the lock or the index was found damaged.
//!
//! Table: linear probing over `u32` entries (`slot + 1`, 0 = empty), home slot = low
//! bits of the identity; deletion shifts later entries back, so there are no
//! tombstones. Every probe is bounded by the table size:
//!
//! ```text
//!   home(h) = h & (cap - 1)      [.. | e1 | e2 | 0 | ..]  remove e1 -> e2 moves into
//!                                  its place unless e2's home lies in (hole, j]
//! ```
//!
//! Shared memory is input: a slot number read from the table, a list link or a pin
//! that is out of range marks the index damaged (never a panic or an endless loop);
//! the guard rebuilds the index from the slot metadata before it unlocks.

use std::cell::Cell;
use std::sync::atomic::Ordering;

use super::lease::{self, Lease, OwnerToken, MAX_LEASES};
use super::{boottime_ns, Arena, Header, HostEviction, SlotMeta, SlotState, WRITE_DEADLINE};
use crate::evict::list::{LinkStore, ListEnds, NIL};
use crate::evict::{Departed, HazardStore, SlotAccess, SlotHazard, SlotLru, SlotUse};
use crate::prefix::BlockHash;

/// The arena index while its mutex is held; unlocks on drop (repairing the index
/// first if it was found damaged).
pub struct Locked<'a> {
    pub(super) arena: &'a Arena,
    damaged: Cell<bool>,
}

/// A reservation of a slot for one write: commit and abort check that the slot is
/// still this reservation (same generation, same writer) and do nothing otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteTicket {
    /// The slot.
    pub slot: u32,
    /// Its generation when reserved.
    pub generation: u32,
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        if self.damaged.get() {
            tracing::warn!(path = %self.arena.path.display(), "host-tier index damaged; rebuilding it");
            self.repair();
            self.arena.stats().index_repairs.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: this guard exists only while the calling thread holds the mutex.
        unsafe { libc::pthread_mutex_unlock(self.arena.mutex_ptr()) };
    }
}

impl LinkStore for Locked<'_> {
    fn links(&self, i: u32) -> (u32, u32) {
        let m = self.meta(i);
        (self.checked_link(m.prev), self.checked_link(m.next))
    }

    fn set_links(&mut self, i: u32, prev: u32, next: u32) {
        let m = self.meta_mut(i);
        m.prev = prev;
        m.next = next;
    }
}

/// A new block asking [`Locked::take_slot`] for a slot (an engine's store), as
/// the policy's admission sees it.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    /// Its identity folded to 64 bits ([`BlockHash::fold64`]).
    pub key: u64,
    /// The use it is.
    pub access: SlotAccess,
    /// It comes right after a refused block of its chain.
    pub after_refusal: bool,
}

/// The policy's admission refused a block ([`Locked::take_slot`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused;

impl HazardStore for Locked<'_> {
    fn slot_use(&self, slot: u32) -> SlotUse {
        self.meta(slot).used
    }

    fn set_slot_use(&mut self, slot: u32, u: SlotUse) {
        self.meta_mut(slot).used = u;
    }

    fn slot_key(&self, slot: u32) -> u64 {
        self.meta(slot).block_hash().fold64()
    }

    fn evictable(&self, slot: u32) -> Option<bool> {
        if slot >= self.n_slots() {
            self.damage();
            return None;
        }
        let m = self.meta(slot);
        if m.state != SlotState::Ready as u32 {
            self.damage();
            return None;
        }
        Some(m.pins == 0)
    }

    fn departed(&mut self) -> &mut [Departed] {
        let g = self.arena.geo;
        // SAFETY: the table lies inside the mapping (see Geometry::layout), 8-byte
        // aligned; any bit pattern is a valid Departed (integers).
        unsafe { self.region(g.departed_off, g.departed_len as usize) }
    }
}

impl<'a> Locked<'a> {
    pub(super) fn new(arena: &'a Arena) -> Self {
        Self {
            arena,
            damaged: Cell::new(false),
        }
    }

    #[allow(clippy::mut_from_ref)]
    pub(super) fn header(&self) -> &mut Header {
        // SAFETY: the header is mapped; the mutex (held) serialises all access to its
        // non-atomic fields, and no other reference to it outlives a statement.
        unsafe { &mut *(self.arena.base as *mut Header) }
    }

    fn n_slots(&self) -> u32 {
        self.arena.geo.n_slots
    }

    /// Marks the index for a rebuild before the lock is released.
    fn damage(&self) {
        self.damaged.set(true);
    }

    fn checked_link(&self, s: u32) -> u32 {
        if s == NIL || s < self.n_slots() {
            s
        } else {
            self.damage();
            NIL
        }
    }

    fn meta_offset(&self, slot: u32) -> usize {
        let slot = if slot < self.n_slots() {
            slot
        } else {
            // Only shared memory can produce this: never touch memory out of range.
            self.damage();
            0
        };
        self.arena.geo.meta_off as usize + slot as usize * std::mem::size_of::<SlotMeta>()
    }

    /// Metadata of `slot` (an out-of-range slot marks the index damaged).
    pub fn meta(&self, slot: u32) -> &SlotMeta {
        let off = self.meta_offset(slot);
        // SAFETY: in bounds (clamped above) and aligned (offsets are multiples of 8);
        // the mutex serialises access.
        unsafe { &*(self.arena.base.add(off) as *const SlotMeta) }
    }

    /// Mutable metadata of `slot`.
    pub fn meta_mut(&mut self, slot: u32) -> &mut SlotMeta {
        let off = self.meta_offset(slot);
        // SAFETY: as in `meta`; &mut self makes this the only live reference.
        unsafe { &mut *(self.arena.base.add(off) as *mut SlotMeta) }
    }

    #[allow(clippy::mut_from_ref)]
    fn lease(&self, i: usize) -> &mut Lease {
        assert!(i < MAX_LEASES);
        let off = self.arena.geo.lease_off as usize + i * std::mem::size_of::<Lease>();
        // SAFETY: the lease table lies inside the mapping (Geometry::layout); the
        // mutex serialises access and no reference outlives a statement.
        unsafe { &mut *(self.arena.base.add(off) as *mut Lease) }
    }

    fn table(&mut self) -> &mut [u32] {
        let g = self.arena.geo;
        // SAFETY: the table lies inside the mapping (see Geometry::layout), 4-byte
        // aligned.
        unsafe { self.region(g.table_off, g.table_cap as usize) }
    }

    /// `len` values of `T` at byte `off` of the mapping, touched only under the
    /// mutex (held: `&mut self`).
    ///
    /// # Safety
    /// The range lies inside the mapping, aligned for `T`, and any bit pattern is
    /// a valid `T`.
    unsafe fn region<T>(&mut self, off: u64, len: usize) -> &mut [T] {
        // SAFETY: the caller's contract; `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.arena.base.add(off as usize) as *mut T, len) }
    }

    /// A table entry as a slot: `None` for empty; out of range marks damage.
    fn entry_slot(&mut self, i: u32) -> Option<u32> {
        let e = self.table()[i as usize];
        if e == 0 {
            return None;
        }
        if e > self.n_slots() {
            self.damage();
            return None;
        }
        Some(e - 1)
    }

    /// Number of slots in the `Ready` state.
    pub fn ready_count(&self) -> u32 {
        // The eviction lists hold exactly the Ready slots.
        let len = match self.eviction() {
            HostEviction::Lru => self.header().lru.len,
            HostEviction::Hazard => self.header().hazard.len(),
        };
        len.min(self.n_slots())
    }

    /// The store's eviction policy (a value that names none marks the index
    /// damaged; the repair makes it the default).
    fn eviction(&self) -> HostEviction {
        let raw = self.header().policy;
        if raw != HostEviction::Lru as u32 && raw != HostEviction::Hazard as u32 {
            self.damage();
        }
        HostEviction::from_raw(raw)
    }

    /// Now on the policy's clock (ms of `CLOCK_BOOTTIME`: one clock for every
    /// process on the host, whatever its PID namespace).
    pub fn now_ms() -> u64 {
        boottime_ns() / 1_000_000
    }

    /// Runs `f` on the hazard policy's state (copied out of the header and back:
    /// `f` also needs the slots).
    fn with_hazard<R>(&mut self, f: impl FnOnce(&mut SlotHazard, &mut Self) -> R) -> R {
        let mut h = self.header().hazard;
        let r = f(&mut h, self);
        self.header().hazard = h;
        r
    }

    /// A `Ready` slot became evictable (committed).
    fn order_inserted(&mut self, slot: u32, a: SlotAccess) {
        match self.eviction() {
            HostEviction::Lru => {
                let mut lru = SlotLru(self.header().lru);
                lru.inserted(self, slot);
                self.header().lru = lru.0;
            }
            HostEviction::Hazard => self.with_hazard(|h, l| h.inserted(l, slot, a)),
        }
    }

    /// A `Ready` slot was used (`None`: a read for the library's own use, which
    /// the hazard policy does not count; LRU refreshes it as before).
    fn order_accessed(&mut self, slot: u32, a: Option<SlotAccess>) {
        match (self.eviction(), a) {
            (HostEviction::Lru, _) => {
                let mut lru = SlotLru(self.header().lru);
                lru.accessed(self, slot);
                self.header().lru = lru.0;
            }
            (HostEviction::Hazard, Some(a)) => self.with_hazard(|h, l| h.accessed(l, slot, a)),
            (HostEviction::Hazard, None) => {}
        }
    }

    /// A `Ready` slot left its list: evicted (`evicted`), or dropped.
    fn order_removed(&mut self, slot: u32, evicted: bool) {
        match self.eviction() {
            HostEviction::Lru => {
                let mut lru = SlotLru(self.header().lru);
                lru.removed(self, slot);
                self.header().lru = lru.0;
            }
            HostEviction::Hazard if evicted => self.with_hazard(|h, l| h.evicted(l, slot)),
            HostEviction::Hazard => self.with_hazard(|h, l| h.removed(l, slot)),
        }
    }

    /// The policy's victim among at most `scan` candidates (per list); `None`
    /// when all are pinned or the lists are damaged (marked).
    fn victim(&mut self, scan: usize, now_ms: u64) -> Option<u32> {
        match self.eviction() {
            HostEviction::Lru => {
                let policy = SlotLru(self.header().lru);
                let mut cur = policy.first_candidate();
                for _ in 0..scan {
                    if cur == NIL {
                        break;
                    }
                    match self.evictable(cur) {
                        None => return None,
                        Some(true) => return Some(cur),
                        Some(false) => cur = policy.next_candidate(self, cur),
                    }
                }
                None
            }
            HostEviction::Hazard => self.with_hazard(|h, l| h.victim(l, scan, now_ms)),
        }
    }

    /// Whether the eviction lists end where they should and hold exactly `ready`
    /// slots (checked when no victim is found: O(slots)).
    fn lists_hold(&self, ready: u32) -> bool {
        let n = self.n_slots();
        let walked = match self.eviction() {
            HostEviction::Lru => {
                let l = self.header().lru;
                let c = l.iter(self).take(n as usize + 1).count() as u32;
                (c == l.len && c <= n).then_some(c)
            }
            HostEviction::Hazard => self.header().hazard.walked_len(self, n),
        };
        walked == Some(ready)
    }

    /// Advances and returns the logical clock.
    pub fn tick(&mut self) -> u64 {
        let h = self.header();
        h.clock = h.clock.wrapping_add(1);
        h.clock
    }

    /// The slot indexed under `hash`, in any non-free state.
    pub fn find(&mut self, hash: BlockHash) -> Option<u32> {
        self.find_entry(hash).map(|(_, s)| s)
    }

    /// `(table index, slot)` of `hash`; at most `table_cap` probes.
    fn find_entry(&mut self, hash: BlockHash) -> Option<(u32, u32)> {
        let mask = self.arena.geo.table_cap - 1;
        let mut i = (hash.0 as u32) & mask;
        for _ in 0..=mask {
            if self.table()[i as usize] == 0 {
                return None;
            }
            if let Some(s) = self.entry_slot(i) {
                if self.meta(s).block_hash() == hash {
                    return Some((i, s));
                }
            }
            i = (i + 1) & mask;
        }
        // A full table cannot happen (capacity is twice the slots): damage.
        self.damage();
        None
    }

    fn table_insert(&mut self, hash: BlockHash, slot: u32) {
        let mask = self.arena.geo.table_cap - 1;
        let mut i = (hash.0 as u32) & mask;
        for _ in 0..=mask {
            if self.table()[i as usize] == 0 {
                self.table()[i as usize] = slot + 1;
                return;
            }
            i = (i + 1) & mask;
        }
        self.damage();
    }

    /// Removes `hash` from the table (backward-shift deletion: no tombstones).
    fn table_remove(&mut self, hash: BlockHash) {
        let mask = self.arena.geo.table_cap - 1;
        let Some((i, _)) = self.find_entry(hash) else {
            return;
        };
        let mut hole = i;
        let mut j = (i + 1) & mask;
        for _ in 0..mask {
            let Some(s) = self.entry_slot(j) else { break };
            let home = (self.meta(s).hash[0] as u32) & mask;
            // Move the entry into the hole unless its home lies cyclically in (hole, j].
            let stays = if hole <= j {
                hole < home && home <= j
            } else {
                hole < home || home <= j
            };
            if !stays {
                let e = self.table()[j as usize];
                self.table()[hole as usize] = e;
                hole = j;
            }
            j = (j + 1) & mask;
        }
        self.table()[hole as usize] = 0;
    }

    /// Takes a free slot, or evicts the policy's victim among the unpinned `Ready`
    /// slots (looking at most `scan` entries from the head of each eviction list).
    /// Returns the slot and the evicted identity, if any (`None`: nothing free or
    /// evictable). `now_ms`: the policy's clock ([`Locked::now_ms`]).
    ///
    /// Admission, for an engine's store (`arrival`) when no slot is free: the
    /// `hazard` policy refuses a block less likely to be used again than the
    /// victim, and one that comes right after a refused block of its chain without
    /// asking (a prefix match could never reach it), as the keyed form does; a
    /// refusal is recorded ([`Locked::refuse`]). LRU admits everything.
    pub fn take_slot(
        &mut self,
        scan: usize,
        now_ms: u64,
        arrival: Option<Arrival>,
    ) -> Result<Option<(u32, Option<BlockHash>)>, Refused> {
        let mut free = self.header().free;
        let got = free.pop_front(self);
        self.header().free = free;
        if let Some(s) = got {
            if s < self.n_slots() && self.meta(s).state == SlotState::Free as u32 {
                return Ok(Some((s, None)));
            }
            self.damage();
            return Ok(None);
        }
        let arrival = arrival.filter(|_| self.eviction() == HostEviction::Hazard);
        if let Some(a) = arrival.filter(|a| a.after_refusal) {
            self.refuse(a.key, a.access);
            return Err(Refused);
        }
        let Some(victim) = self.victim(scan, now_ms) else {
            // Every candidate pinned, or Ready slots on no list (shared memory
            // written underneath): the latter is damage, rebuilt on unlock.
            if !self.lists_hold(self.census().0) {
                self.damage();
            }
            return Ok(None);
        };
        if let Some(a) = arrival {
            if !self.with_hazard(|h, l| h.admits(l, a.key, a.access, victim)) {
                self.refuse(a.key, a.access);
                return Err(Refused);
            }
        }
        let hash = self.meta(victim).block_hash();
        self.unlink_ready(victim, true);
        Ok(Some((victim, Some(hash))))
    }

    /// The block `key` was refused: the hazard policy counts it as a use and
    /// remembers it.
    fn refuse(&mut self, key: u64, a: SlotAccess) {
        if self.eviction() == HostEviction::Hazard {
            self.with_hazard(|h, l| h.refused(l, key, a));
        }
    }

    /// Reserves `slot` (just taken) for writing `hash` (the engine's `key` for it,
    /// 0: none) by this mapping's lease.
    pub fn begin_write(&mut self, slot: u32, hash: BlockHash, key: u64) -> WriteTicket {
        let me = self.arena.me;
        let now = boottime_ns();
        let m = self.meta_mut(slot);
        m.generation = m.generation.wrapping_add(1);
        m.hash = hash.to_parts();
        m.key = key;
        m.state = SlotState::Writing as u32;
        m.writer_lease = me.index_plus_one;
        m.writer_gen = me.generation;
        m.write_started = now;
        m.pins = 0;
        let generation = m.generation;
        self.table_insert(hash, slot);
        WriteTicket { slot, generation }
    }

    /// Whether `t` is still the reservation of its slot, by this mapping.
    fn owns(&self, t: WriteTicket) -> bool {
        if t.slot >= self.n_slots() {
            return false;
        }
        let m = self.meta(t.slot);
        m.state == SlotState::Writing as u32 && m.generation == t.generation && m.writer() == self.arena.me
    }

    /// Publishes a written slot. `false` (nothing changed) when the reservation was
    /// reclaimed meanwhile: the write is lost, never published over someone else's.
    /// `a` is the store as the eviction policy sees it.
    pub fn commit_write(&mut self, t: WriteTicket, checksum: u64, len: u64, a: SlotAccess) -> bool {
        if !self.owns(t) {
            return false;
        }
        let now = self.tick();
        let m = self.meta_mut(t.slot);
        m.checksum = checksum;
        m.len = len;
        m.last_access = now;
        m.writer_lease = 0;
        m.writer_gen = 0;
        m.state = SlotState::Ready as u32;
        self.order_inserted(t.slot, a);
        true
    }

    /// Abandons a reservation: unindexes the slot and frees it (if still ours).
    pub fn abort_write(&mut self, t: WriteTicket) {
        if self.owns(t) {
            self.abort_slot(t.slot);
        }
    }

    fn abort_slot(&mut self, slot: u32) {
        let hash = self.meta(slot).block_hash();
        self.table_remove(hash);
        self.release(slot);
    }

    /// Resets `slot` to free metadata; its generation moves on, so no earlier
    /// reservation of it can ever be committed.
    fn clear_slot(&mut self, slot: u32) {
        let generation = self.meta(slot).generation;
        *self.meta_mut(slot) = SlotMeta::free();
        self.meta_mut(slot).generation = generation.wrapping_add(1);
    }

    /// Clears `slot` and puts it on the free list.
    fn release(&mut self, slot: u32) {
        self.clear_slot(slot);
        let mut free = self.header().free;
        free.push_back(self, slot);
        self.header().free = free;
    }

    fn unlink_ready(&mut self, slot: u32, evicted: bool) {
        self.order_removed(slot, evicted);
        let hash = self.meta(slot).block_hash();
        self.table_remove(hash);
        self.meta_mut(slot).state = SlotState::Free as u32;
    }

    /// Removes a `Ready` slot still holding `hash` after a failed verification: no
    /// reader finds it from now on; it is freed at once, or when the readers still
    /// pinning it (each verifying for itself) are done.
    /// Returns the engine's key of the block when this call dropped it.
    pub fn discard(&mut self, slot: u32, hash: BlockHash) -> Option<u64> {
        let m = *self.meta(slot);
        if m.state != SlotState::Ready as u32 || m.block_hash() != hash {
            return None;
        }
        self.unlink_ready(slot, false);
        if m.pins == 0 {
            self.release(slot);
        } else {
            self.meta_mut(slot).state = SlotState::Dropped as u32;
        }
        Some(m.key)
    }

    /// One pin of `slot` is gone: a `Dropped` slot whose last pin it was is freed.
    fn pin_dropped(&mut self, slot: u32) {
        let m = self.meta_mut(slot);
        m.pins = m.pins.saturating_sub(1);
        if m.pins == 0 && m.state == SlotState::Dropped as u32 {
            self.release(slot);
        }
    }

    /// Pins the `Ready` `slot` for reading by this mapping and counts the read as a
    /// use (`a`; `None`: a read for the library's own use, see
    /// `order_accessed`). Returns `false` when this mapping already pins
    /// [`super::PINS_PER_LEASE`] slots (there is no limit on readers of one slot).
    pub fn pin(&mut self, slot: u32, a: Option<SlotAccess>) -> bool {
        let Some(me) = self.arena.me.index() else {
            return false;
        };
        if self.meta(slot).state != SlotState::Ready as u32 || self.meta(slot).pins == u32::MAX {
            return false;
        }
        let Some(e) = self.lease(me).pins.iter().position(|&p| p == 0) else {
            return false;
        };
        self.lease(me).pins[e] = slot + 1;
        self.meta_mut(slot).pins += 1;
        let t = self.tick();
        self.meta_mut(slot).last_access = t;
        self.order_accessed(slot, a);
        true
    }

    /// Drops one pin of this mapping on `slot`.
    pub fn unpin(&mut self, slot: u32) {
        let Some(me) = self.arena.me.index() else { return };
        if let Some(e) = self.lease(me).pins.iter().position(|&p| p == slot + 1) {
            self.lease(me).pins[e] = 0;
            self.pin_dropped(slot);
        }
    }

    /// Whether the holder of `t` is alive: this mapping, or a lease of the same
    /// generation whose lock another open file description holds.
    pub fn owner_alive(&self, t: OwnerToken) -> bool {
        if t == self.arena.me {
            return t != OwnerToken::NONE;
        }
        let Some(i) = t.index() else { return false };
        let l = self.lease(i);
        l.held == 1 && l.generation == t.generation && lease::held_elsewhere(&self.arena.fd, i)
    }

    /// Whether the `Writing` slot is abandoned: its writer is dead, or it has been
    /// writing longer than [`WRITE_DEADLINE`].
    fn writer_gone(&self, slot: u32) -> bool {
        let m = self.meta(slot);
        let age = boottime_ns().saturating_sub(m.write_started);
        age > WRITE_DEADLINE.as_nanos() as u64 || !self.owner_alive(m.writer())
    }

    /// Frees `slot` if it is `Writing` for a writer that is gone. Returns whether it
    /// did (then the identity may be stored again at once).
    pub fn reclaim_if_abandoned(&mut self, slot: u32) -> bool {
        if self.meta(slot).state == SlotState::Writing as u32 && self.writer_gone(slot) {
            self.abort_slot(slot);
            return true;
        }
        false
    }

    /// Takes a free lease for this mapping, reaping dead ones. `None` when every
    /// lease is held by a live mapping.
    pub(super) fn take_lease(&mut self) -> Option<OwnerToken> {
        for i in 0..MAX_LEASES {
            if self.lease_dead(i) {
                self.reap_lease(i);
            }
            if self.lease(i).held == 1 {
                continue;
            }
            if !lease::lock(&self.arena.fd, i) {
                continue;
            }
            let l = self.lease(i);
            l.generation = l.generation.wrapping_add(1).max(1);
            l.held = 1;
            l.pins = [0; super::PINS_PER_LEASE];
            return Some(OwnerToken {
                index_plus_one: i as u32 + 1,
                generation: l.generation,
            });
        }
        None
    }

    /// Gives this mapping's lease back (its pins dropped, its writes abandoned).
    pub(super) fn release_lease(&mut self) {
        let Some(i) = self.arena.me.index() else { return };
        for s in 0..self.n_slots() {
            let m = self.meta(s);
            if m.state == SlotState::Writing as u32 && m.writer() == self.arena.me {
                self.abort_slot(s);
            }
        }
        self.reap_lease(i);
        lease::unlock(&self.arena.fd, i);
    }

    /// Whether lease `i` is taken but its holder is gone (its lock is free). This
    /// mapping's own lease is never dead.
    fn lease_dead(&self, i: usize) -> bool {
        self.lease(i).held == 1 && self.arena.me.index() != Some(i) && !lease::held_elsewhere(&self.arena.fd, i)
    }

    /// Drops the pins of lease `i` and marks it free.
    fn reap_lease(&mut self, i: usize) {
        let pins = self.lease(i).pins;
        for p in pins.into_iter().filter(|&p| p != 0) {
            if p - 1 < self.n_slots() {
                self.pin_dropped(p - 1);
            }
        }
        let l = self.lease(i);
        l.pins = [0; super::PINS_PER_LEASE];
        l.held = 0;
    }

    /// Frees slots whose writer is gone and drops pins of dead mappings. Returns
    /// how many slots were reclaimed.
    pub fn sweep_dead(&mut self) -> u32 {
        for i in 0..MAX_LEASES {
            if self.lease_dead(i) {
                self.reap_lease(i);
            }
        }
        let mut reclaimed = 0;
        for s in 0..self.n_slots() {
            if self.reclaim_if_abandoned(s) {
                reclaimed += 1;
            }
        }
        reclaimed
    }

    /// Rebuilds the table, both lists and the pin counts from the slot metadata and
    /// the live leases, after a process died holding the mutex or the index was
    /// found damaged. Slots of gone writers, unknown states and duplicate identities
    /// are freed; eviction order is restored from `last_access`.
    pub(super) fn repair(&mut self) {
        let n = self.n_slots();
        self.table().fill(0);
        for s in 0..n {
            self.meta_mut(s).pins = 0;
        }
        let mut ready = Vec::new();
        let mut free_slots = Vec::new();
        for s in 0..n {
            let m = *self.meta(s);
            let keep = match m.state {
                x if x == SlotState::Ready as u32 => true,
                x if x == SlotState::Writing as u32 => !self.writer_gone(s),
                _ => false,
            };
            if keep && self.find(m.block_hash()).is_none() {
                self.table_insert(m.block_hash(), s);
                if m.state == SlotState::Ready as u32 {
                    ready.push((m.last_access, s));
                }
            } else {
                free_slots.push(s);
            }
        }
        for &s in &free_slots {
            self.clear_slot(s);
        }
        self.rebuild_pins();
        ready.sort_unstable();
        let mut lru = SlotLru::default();
        let raw = self.header().policy;
        if raw != HostEviction::Lru as u32 && raw != HostEviction::Hazard as u32 {
            self.header().policy = HostEviction::default() as u32;
        }
        match self.eviction() {
            HostEviction::Lru => {
                for &(_, s) in &ready {
                    lru.inserted(self, s);
                }
                // The other policy's lists hold nothing.
                self.with_hazard(|h, l| h.rebuild(l, &[]));
            }
            HostEviction::Hazard => {
                let slots: Vec<u32> = ready.iter().map(|r| r.1).collect();
                self.with_hazard(|h, l| h.rebuild(l, &slots));
            }
        }
        let mut free = ListEnds::new();
        for &s in &free_slots {
            free.push_back(self, s);
        }
        let h = self.header();
        h.lru = lru.0;
        h.free = free;
        h.clock = h.clock.max(ready.last().map_or(0, |r| r.0));
        self.damaged.set(false);
    }

    /// Pin counts from the pin lists of live leases (dead leases reaped; pins of
    /// slots that are not `Ready` dropped).
    fn rebuild_pins(&mut self) {
        for i in 0..MAX_LEASES {
            if self.lease(i).held != 1 || self.lease_dead(i) {
                let l = self.lease(i);
                l.pins = [0; super::PINS_PER_LEASE];
                l.held = 0;
                continue;
            }
            for e in 0..super::PINS_PER_LEASE {
                let p = self.lease(i).pins[e];
                if p == 0 {
                    continue;
                }
                if p - 1 < self.n_slots() && self.meta(p - 1).state == SlotState::Ready as u32 {
                    self.meta_mut(p - 1).pins += 1;
                } else {
                    self.lease(i).pins[e] = 0;
                }
            }
        }
    }

    /// Identities of the `Ready` slots in eviction order, if none were used
    /// meanwhile (tests and tools).
    pub fn eviction_order(&self) -> Vec<BlockHash> {
        let n = self.n_slots() as usize;
        let slots: Vec<u32> = match self.eviction() {
            HostEviction::Lru => self.header().lru.iter(self).take(n).collect(),
            HostEviction::Hazard => self.header().hazard.order(self, n),
        };
        slots.into_iter().map(|s| self.meta(s).block_hash()).collect()
    }

    /// Number of free slots.
    pub fn free_count(&self) -> u32 {
        self.header().free.len.min(self.n_slots())
    }

    /// Counts of slots by state, from the metadata: `(ready, busy, free)`, busy
    /// being `Writing` or `Dropped` (waiting for its readers). They always add up
    /// to the capacity; the lists must agree with them.
    pub fn census(&self) -> (u32, u32, u32) {
        let (mut ready, mut writing, mut free) = (0, 0, 0);
        for s in 0..self.n_slots() {
            match self.meta(s).state {
                x if x == SlotState::Ready as u32 => ready += 1,
                x if x == SlotState::Writing as u32 || x == SlotState::Dropped as u32 => writing += 1,
                _ => free += 1,
            }
        }
        (ready, writing, free)
    }
}
