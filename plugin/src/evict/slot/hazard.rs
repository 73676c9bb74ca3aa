//! [`SlotHazard`]: the hazard policy ([`Model`]) over slots whose state lives in
//! shared memory (the host arena): the model and one chain-ordered list per class
//! in the arena's header, each slot's uses in its metadata, departed keys in a
//! fixed table of the arena ([`Departed`]).
//!
//! Contract: the caller holds the arena lock; [`SlotHazard::inserted`] once for a
//! slot that became evictable, then [`SlotHazard::accessed`] for its uses, and
//! [`SlotHazard::removed`] or [`SlotHazard::evicted`] when it stops being one.
//! Admission, when full: [`SlotHazard::victim`], then [`SlotHazard::admits`] for
//! the new block; a refused block is [`SlotHazard::refused`] (remembered as
//! departed, its refusal a use), an admitted one takes the victim's slot.
//! Everything read back from shared memory is bounded ([`bounded_class`], the
//! store's checked links); a damaged list is the store's to report and rebuild
//! ([`SlotHazard::rebuild`]).
//!
//! Departed keys: a set-associative table of [`WAYS`] entries per bucket (bucket:
//! the key's low bits); a new entry replaces the bucket's oldest. Close to the
//! keyed policy's FIFO of departed keys, with no allocation and O(1) bounds.

use crate::evict::list::{ChainList, LinkStore, NIL};
use crate::evict::model::{bounded_class, class, Candidate, Model, CLASSES};

/// Entries per bucket of the departed table.
const WAYS: usize = 4;

/// What the policy keeps about a slot, in the slot's metadata.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlotUse {
    /// Time of the last use (ms, the policy's clock).
    pub last_ms: u64,
    /// Uses so far (departed lives included).
    pub uses: u32,
    /// The class the last use put it in (the list it is on).
    pub class: u32,
}

/// A key the tier let go of, in the departed table (`key` 0: empty).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Departed {
    /// The block's key (never 0: a key that folds to 0 is kept as 1).
    pub key: u64,
    /// What was known of it when it left.
    pub used: SlotUse,
}

/// One use, as the tier sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotAccess {
    /// The chain (engine call) it came in; one chain's slots are kept in chain order.
    pub request: u64,
    /// Whether it ended its chain.
    pub last: bool,
    /// Now, in ms on a clock every process of the arena shares.
    pub now_ms: u64,
}

/// The arena's side of the policy.
pub trait HazardStore: LinkStore {
    /// The policy's record of `slot`.
    fn slot_use(&self, slot: u32) -> SlotUse;
    /// Sets it.
    fn set_slot_use(&mut self, slot: u32, u: SlotUse);
    /// The block key of `slot` (its identity folded to 64 bits).
    fn slot_key(&self, slot: u32) -> u64;
    /// Whether `slot` may be evicted now (not pinned); `None` when it should not be
    /// on a list at all (the index is damaged: the caller rebuilds it).
    fn evictable(&self, slot: u32) -> Option<bool>;
    /// The departed table (a multiple of [`WAYS`] entries; may be empty).
    fn departed(&mut self) -> &mut [Departed];
}

/// Key 0 marks an empty entry; a block whose key folds to 0 is remembered as 1.
fn departed_key(key: u64) -> u64 {
    key.max(1)
}

/// The bucket of `key` in a table of `len` entries.
fn bucket(key: u64, len: usize) -> std::ops::Range<usize> {
    let buckets = len / WAYS;
    let b = (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize % buckets.max(1);
    b * WAYS..(b * WAYS + WAYS).min(len)
}

/// The hazard policy of a slot arena (see the module overview). Zeroed memory is
/// NOT a valid value (empty lists end in [`NIL`]): create it with
/// [`SlotHazard::default`].
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct SlotHazard {
    model: Model,
    lists: [ChainList; CLASSES],
}

impl SlotHazard {
    /// Slots on the lists (evictable or pinned `Ready` slots).
    pub fn len(&self) -> u32 {
        self.lists.iter().map(|l| l.ends.len).fold(0u32, u32::saturating_add)
    }

    /// Whether no slot is on a list.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn take_departed(s: &mut impl HazardStore, key: u64) -> Option<SlotUse> {
        let key = departed_key(key);
        let t = s.departed();
        let r = bucket(key, t.len());
        let e = t[r].iter_mut().find(|e| e.key == key)?;
        e.key = 0;
        Some(e.used)
    }

    fn push_departed(s: &mut impl HazardStore, key: u64, used: SlotUse) {
        let key = departed_key(key);
        let t = s.departed();
        let r = bucket(key, t.len());
        let ways = &mut t[r];
        let at = ways
            .iter()
            .position(|e| e.key == key || e.key == 0)
            .or_else(|| (0..ways.len()).min_by_key(|&i| ways[i].used.last_ms));
        if let Some(i) = at {
            ways[i] = Departed { key, used };
        }
    }

    /// A use of `key`, which is not resident: takes what the departed table
    /// remembers of it, learns the gap since its last use, and returns its use
    /// count and class now.
    fn use_departed(&mut self, s: &mut impl HazardStore, key: u64, a: SlotAccess) -> (u32, usize) {
        self.model.tick(a.now_ms);
        let before = Self::take_departed(s, key);
        let uses = before.map_or(0, |u| u.uses).saturating_add(1);
        let to = class(uses, a.last);
        self.model
            .learn(before.map(|u| (bounded_class(u.class), u.last_ms)), to);
        (uses, to)
    }

    /// `slot` (holding the block `key`) became evictable: its first use here, or
    /// its return after it departed (learned as a reuse).
    pub fn inserted(&mut self, s: &mut impl HazardStore, slot: u32, a: SlotAccess) {
        let (uses, to) = self.use_departed(s, s.slot_key(slot), a);
        self.settle(s, slot, uses, to, a.request);
    }

    /// Admission when the arena is full and `victim` (from [`SlotHazard::victim`])
    /// would make room: whether the block `key`, arriving with `a`, is worth it
    /// (its odds at age 0 against the victim's, as the keyed form decides). A
    /// refusal is then recorded with [`SlotHazard::refused`].
    pub fn admits(&mut self, s: &mut impl HazardStore, key: u64, a: SlotAccess, victim: u32) -> bool {
        self.model.tick(a.now_ms);
        let key = departed_key(key);
        let t = s.departed();
        let r = bucket(key, t.len());
        let before = t[r].iter().find(|e| e.key == key).map(|e| e.used);
        let uses = before.map_or(0, |u| u.uses).saturating_add(1);
        let v = s.slot_use(victim);
        let victim = self.model.candidate(bounded_class(v.class), v.last_ms);
        self.model.admits(class(uses, a.last), &victim)
    }

    /// The block `key` was refused: the refusal counts as a use, and the key is
    /// remembered as departed, so that its return is learned.
    pub fn refused(&mut self, s: &mut impl HazardStore, key: u64, a: SlotAccess) {
        let (uses, to) = self.use_departed(s, key, a);
        let used = SlotUse {
            last_ms: self.model.now(),
            uses,
            class: to as u32,
        };
        Self::push_departed(s, key, used);
    }

    /// Records `slot`'s use now (its `uses`-th, into class `to`) and places it on
    /// that class's list for `request`.
    fn settle(&mut self, s: &mut impl HazardStore, slot: u32, uses: u32, to: usize, request: u64) {
        s.set_slot_use(
            slot,
            SlotUse {
                last_ms: self.model.now(),
                uses,
                class: to as u32,
            },
        );
        self.lists[to].place(s, slot, request);
    }

    /// `slot` was used again.
    pub fn accessed(&mut self, s: &mut impl HazardStore, slot: u32, a: SlotAccess) {
        self.model.tick(a.now_ms);
        let u = s.slot_use(slot);
        let from = bounded_class(u.class);
        let uses = u.uses.saturating_add(1);
        let to = class(uses, a.last);
        self.model.learn(Some((from, u.last_ms)), to);
        self.lists[from].remove(s, slot);
        self.settle(s, slot, uses, to, a.request);
    }

    /// `slot` stopped being evictable for another reason than eviction (dropped
    /// after a failed verification).
    pub fn removed(&mut self, s: &mut impl HazardStore, slot: u32) {
        let c = bounded_class(s.slot_use(slot).class);
        self.lists[c].remove(s, slot);
    }

    /// The evictable slot with the lowest odds, looking at most `scan` slots from
    /// the head of each class's list; `None` when every one looked at is pinned or
    /// the lists are damaged (a slot that should not be on them).
    pub fn victim(&mut self, s: &impl HazardStore, scan: usize, now_ms: u64) -> Option<u32> {
        self.model.tick(now_ms);
        self.model.refresh();
        let mut best: Option<(u32, Candidate)> = None;
        for c in 0..CLASSES {
            let mut cur = self.lists[c].ends.head;
            for _ in 0..scan {
                if cur == NIL {
                    break;
                }
                match s.evictable(cur) {
                    None => return None,
                    Some(true) => {
                        let cand = self.model.candidate(c, s.slot_use(cur).last_ms);
                        if best.is_none_or(|(_, b)| cand.before(&b)) {
                            best = Some((cur, cand));
                        }
                        break;
                    }
                    Some(false) => cur = s.links(cur).1,
                }
            }
        }
        best.map(|(slot, _)| slot)
    }

    /// `slot` (from [`SlotHazard::victim`]) is evicted: off its list, remembered as
    /// departed, its age taught to the horizon.
    pub fn evicted(&mut self, s: &mut impl HazardStore, slot: u32) {
        let u = s.slot_use(slot);
        self.lists[bounded_class(u.class)].remove(s, slot);
        self.model.evicted(self.model.now().saturating_sub(u.last_ms));
        let key = s.slot_key(slot);
        Self::push_departed(s, key, u);
    }

    /// Whether every list ends within `limit` steps with as many members as it
    /// says; then how many they hold (`None`: damaged underneath).
    pub fn walked_len(&self, s: &impl LinkStore, limit: u32) -> Option<u32> {
        let mut total = 0u32;
        for l in &self.lists {
            let n = l.ends.iter(s).take(limit as usize + 1).count() as u32;
            if n != l.ends.len || n > limit {
                return None;
            }
            total = total.checked_add(n)?;
        }
        Some(total)
    }

    /// Rebuilds the lists from `ready` (every `Ready` slot), each on its class's
    /// list in the order of its last use; the model is kept.
    pub fn rebuild(&mut self, s: &mut impl HazardStore, ready: &[u32]) {
        let mut order: Vec<(u64, u32)> = ready.iter().map(|&r| (s.slot_use(r).last_ms, r)).collect();
        order.sort_unstable();
        self.lists.iter_mut().for_each(ChainList::clear);
        for (_, slot) in order {
            let c = bounded_class(s.slot_use(slot).class);
            self.lists[c].ends.push_back(s, slot);
        }
    }

    /// The slots in the order they would leave if none were used meanwhile
    /// (tests and tools): repeatedly the best victim among the lists' heads.
    pub fn order(&self, s: &impl HazardStore, limit: usize) -> Vec<u32> {
        let mut model = self.model;
        model.refresh();
        let mut cursors: Vec<u32> = self.lists.iter().map(|l| l.ends.head).collect();
        let mut out = Vec::new();
        while out.len() < limit {
            let mut best: Option<(usize, Candidate)> = None;
            for (c, &cur) in cursors.iter().enumerate() {
                if cur == NIL {
                    continue;
                }
                let cand = model.candidate(c, s.slot_use(cur).last_ms);
                if best.is_none_or(|(_, b)| cand.before(&b)) {
                    best = Some((c, cand));
                }
            }
            let Some((c, _)) = best else { break };
            out.push(cursors[c]);
            cursors[c] = s.links(cursors[c]).1;
        }
        out
    }
}

#[cfg(test)]
mod tests;
