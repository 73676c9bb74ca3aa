//! [`Hazard`]: eviction and admission by the learned chance that a key is used
//! again before the cache would let it go.
//!
//! What it learns and how it decides is [`crate::evict::model::Model`] (shared
//! with the host arena's [`crate::evict::SlotHazard`]); this is its keyed form,
//! with resident and departed keys in process memory.
//!
//! Workflow:
//! 1. A use (hit, insert, or the return of a key the cache let go of or refused)
//!    adds the gap since the key's previous use to that use's class, and moves the
//!    key to the list of its new class (chain order: a request's deepest block
//!    nearest the head, so chains are peeled from their tails).
//! 2. Eviction compares the oldest evictable key of each class and evicts the one
//!    with the lowest odds (the older on a tie).
//! 3. Admission, when full: a new key whose odds at age 0 are below the victim's is
//!    refused; it is remembered like an evicted key, so that its return is learned.
//!
//! Why: on real conversation traffic most blocks are never used again, the next
//! turn of a conversation comes minutes later, and blocks used more than once are
//! much more likely to be used again. A fixed order (LRU) keeps everything for the
//! same time; this keeps what its own history says is still likely to come back.
//! Deterministic (no randomness, no wall clock: time comes with each access), and
//! O(classes) per call.

use super::{find_victim, Access, ChainList, Ghost, Nodes, Policy};
use crate::evict::model::{class, Candidate, Model, CLASSES, DEPARTED_PER_RESIDENT};

/// What is kept about a resident key besides its links.
#[derive(Debug, Clone, Copy, Default)]
struct Meta {
    last_ms: u64,
    uses: u32,
}

/// Eviction and admission by learned reuse odds (see the module overview).
#[derive(Debug)]
pub struct Hazard {
    n: Nodes,
    lists: [ChainList; CLASSES],
    meta: Vec<Meta>,
    model: Model,
    /// Keys let go of or refused: their last use and class.
    departed: Ghost<(Meta, u8)>,
    /// The request whose chain was refused, and the depth refused last: the next
    /// block of that walk is refused too (a prefix match could never reach it).
    refused: Option<(u64, u32)>,
    /// The victim [`Policy::admit`] found, for the [`Policy::evict`] that follows it
    /// (cleared by every other call).
    chosen: Option<(u32, u64)>,
    /// Per node: held ([`Policy::set_held`]), so on no list until released.
    held: Vec<bool>,
    /// Releases so far: each is placed as a chain of its own.
    releases: u64,
}

impl Hazard {
    /// For `capacity` resident keys (it remembers [`DEPARTED_PER_RESIDENT`] times as
    /// many departed ones: about 300 bytes per resident key in all).
    pub fn new(capacity: usize) -> Self {
        Self {
            n: Nodes::default(),
            lists: Default::default(),
            meta: Vec::new(),
            model: Model::default(),
            departed: Ghost::new(capacity.max(1) * DEPARTED_PER_RESIDENT),
            refused: None,
            chosen: None,
            held: Vec::new(),
            releases: 0,
        }
    }

    /// Whether node `i` is held (on no list).
    fn is_held(&self, i: u32) -> bool {
        self.held.get(i as usize).copied().unwrap_or(false)
    }

    fn meta_mut(&mut self, i: u32) -> &mut Meta {
        if self.meta.len() <= i as usize {
            self.meta.resize(i as usize + 1, Meta::default());
        }
        &mut self.meta[i as usize]
    }

    /// A use of the key of `a`, which is not resident: takes what is remembered
    /// of it (if it departed), learns the gap since its last use, and returns its
    /// use count and class now.
    fn use_departed(&mut self, a: &Access) -> (u32, usize) {
        let before = self.departed.take(a.key);
        let uses = before.map_or(0, |(m, _)| m.uses).saturating_add(1);
        let to = class(uses, a.last);
        self.model.learn(before.map(|(m, c)| (c as usize, m.last_ms)), to);
        (uses, to)
    }

    /// The evictable key with the lowest odds: (node, candidate).
    fn candidate(&mut self, evictable: &mut dyn FnMut(u64) -> bool) -> Option<(u32, Candidate)> {
        let mut best: Option<(u32, Candidate)> = None;
        self.model.refresh();
        for c in 0..CLASSES {
            let Some(i) = find_victim(&self.lists[c].ends, &self.n, evictable) else {
                continue;
            };
            let cand = self.model.candidate(c, self.meta[i as usize].last_ms);
            if best.is_none_or(|(_, b)| cand.before(&b)) {
                best = Some((i, cand));
            }
        }
        best
    }
}

impl Policy for Hazard {
    fn name(&self) -> &'static str {
        "hazard"
    }
    fn len(&self) -> usize {
        self.n.map.len()
    }
    fn on_hit(&mut self, a: Access) {
        self.chosen = None;
        let Some(i) = self.n.get(a.key) else { return };
        self.model.tick(a.now_ms);
        let from = self.n.tag(i) as usize;
        let m = *self.meta_mut(i);
        let to = class(m.uses.saturating_add(1), a.last);
        self.model.learn(Some((from, m.last_ms)), to);
        *self.meta_mut(i) = Meta {
            last_ms: self.model.now(),
            uses: m.uses.saturating_add(1),
        };
        self.n.set_tag(i, to as u8);
        if !self.is_held(i) {
            self.lists[from].remove(&mut self.n, i);
            self.lists[to].place(&mut self.n, i, a.request);
        }
    }
    fn on_insert(&mut self, a: Access) {
        self.chosen = None;
        if self.n.get(a.key).is_some() {
            // Idempotent: a key inserted twice is one resident key, now used.
            return self.on_hit(a);
        }
        self.model.tick(a.now_ms);
        let (uses, to) = self.use_departed(&a);
        let i = self.n.add(a.key, to as u8);
        *self.meta_mut(i) = Meta {
            last_ms: self.model.now(),
            uses,
        };
        if let Some(h) = self.held.get_mut(i as usize) {
            *h = false;
        }
        self.lists[to].place(&mut self.n, i, a.request);
    }
    fn on_remove(&mut self, key: u64) {
        self.chosen = None;
        if let Some(i) = self.n.get(key) {
            if !self.is_held(i) {
                self.lists[self.n.tag(i) as usize].remove(&mut self.n, i);
            }
            self.n.release(i);
        }
    }
    fn set_held(&mut self, key: u64, held: bool) {
        self.chosen = None;
        let Some(i) = self.n.get(key) else { return };
        if self.is_held(i) == held {
            return;
        }
        if self.held.len() <= i as usize {
            self.held.resize(i as usize + 1, false);
        }
        self.held[i as usize] = held;
        let c = self.n.tag(i) as usize;
        if held {
            self.lists[c].remove(&mut self.n, i);
        } else {
            // At the tail as a chain of its own: a request released last block
            // first leaves its first block nearest the tail, its last nearest the
            // head (evicted first), as chain order wants.
            self.releases += 1;
            self.lists[c].place(&mut self.n, i, u64::MAX - self.releases);
        }
    }
    fn admit(&mut self, a: Access, evictable: &mut dyn FnMut(u64) -> bool) -> bool {
        self.chosen = None;
        if self.n.get(a.key).is_some() {
            return true;
        }
        self.model.tick(a.now_ms);
        // The next block of a chain walk refused at the previous depth is refused
        // without asking: a prefix match could never reach it.
        if self.refused != Some((a.request, a.depth.wrapping_sub(1))) {
            let Some((i, victim)) = self.candidate(evictable) else {
                return true;
            };
            let uses = self.departed.peek(a.key).map_or(0, |(m, _)| m.uses).saturating_add(1);
            if self.model.admits(class(uses, a.last), &victim) {
                self.chosen = Some((i, victim.age));
                return true;
            }
        }
        self.refused = Some((a.request, a.depth));
        // Refused: counted as a use, remembered so that a return is learned.
        let (uses, to) = self.use_departed(&a);
        let meta = Meta {
            last_ms: self.model.now(),
            uses,
        };
        self.departed.push(a.key, (meta, to as u8));
        false
    }
    fn evict(&mut self, evictable: &mut dyn FnMut(u64) -> bool) -> Option<u64> {
        let (i, age) = match self.chosen.take() {
            Some((i, age)) if evictable(self.n.key(i)) => (i, age),
            _ => self.candidate(evictable).map(|(i, c)| (i, c.age))?,
        };
        self.model.evicted(age);
        let c = self.n.tag(i) as usize;
        self.lists[c].remove(&mut self.n, i);
        let meta = self.meta[i as usize];
        let key = self.n.release(i);
        self.departed.push(key, (meta, c as u8));
        Some(key)
    }
}
