//! [`Hazard`]: eviction and admission by the learned chance that a key is used
//! again before the cache would let it go.
//!
//! What it learns, online and per class (a key's class: how often it was used,
//! 1, 2, 3 or 4+, and whether its last use ended its request's chain): how long
//! keys of the class waited until their next use (a histogram of reuse gaps, two
//! bins per doubling of milliseconds) and how many keys entered the class. From
//! those, for a key of age `a` (time since its last use) and the cache's horizon
//! `h` (how old victims are when they leave, a moving average):
//!
//! ```text
//!   odds(class, a) = reused with a gap in [a, a + h] / still unused at age a
//! ```
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

/// Histogram bins: two per doubling of the gap in milliseconds (about 3 days).
const BINS: usize = 56;
/// Classes: uses 1, 2, 3, 4+, times whether the last use ended a chain.
const CLASSES: usize = 8;
/// Histograms are halved once this many uses were counted (recent traffic weighs
/// more).
const DECAY_AFTER: u64 = 1 << 18;
/// Cumulative sums are refreshed after this many new observations in a class.
const REFRESH_AFTER: u32 = 32;
/// Departed keys remembered per resident key.
const DEPARTED_PER_SLOT: usize = 4;
/// Odds within this share of each other are a tie, broken by age (older leaves
/// first): when the classes' estimates barely differ, recency decides, as in LRU.
const TIE: f32 = 0.25;
/// A new key is refused only when its odds are below the victim's by this share.
const ADMIT_MARGIN: f32 = 0.15;
/// A class caps the odds of less-used classes only once this many keys entered it.
const MIN_EVIDENCE: u32 = 64;

/// The histogram bin of a gap: `floor(2 * log2(ms + 1))`, approximately.
fn bin(ms: u64) -> usize {
    let x = ms.saturating_add(1);
    let e = 63 - x.leading_zeros() as usize;
    let upper = e > 0 && (x >> (e - 1)) & 1 == 1;
    (2 * e + upper as usize).min(BINS - 1)
}

/// A key's class after a use.
fn class(uses: u32, last: bool) -> usize {
    (uses.clamp(1, 4) as usize - 1) * 2 + last as usize
}

#[derive(Debug, Clone)]
struct ClassStats {
    /// Reuses by gap bin, of keys whose previous use was in this class.
    gaps: [u32; BINS],
    /// Uses that put a key in this class.
    entered: u32,
    /// `cum[b]`: reuses with a gap below bin `b`.
    cum: [u32; BINS + 1],
    /// Observations since `cum` was computed.
    stale: u32,
}

impl Default for ClassStats {
    fn default() -> Self {
        Self {
            gaps: [0; BINS],
            entered: 0,
            cum: [0; BINS + 1],
            stale: 0,
        }
    }
}

impl ClassStats {
    /// Recomputes `cum` once enough has changed (or nothing was counted yet).
    fn refresh(&mut self) {
        if self.stale >= REFRESH_AFTER || (self.stale > 0 && self.cum[BINS] == 0) {
            self.recompute();
        }
    }

    fn recompute(&mut self) {
        for b in 0..BINS {
            self.cum[b + 1] = self.cum[b] + self.gaps[b];
        }
        self.stale = 0;
    }

    /// Chance that a key of this class, unused for `age` ms, is used within the
    /// next `horizon` ms.
    fn odds(&self, age: u64, horizon: u64) -> f32 {
        let lo = bin(age);
        let hi = bin(age.saturating_add(horizon));
        let within = self.cum[hi + 1] - self.cum[lo];
        let alive = self.entered.saturating_sub(self.cum[lo]);
        (within as f32 + 0.01) / (alive as f32 + 1.0)
    }

    fn halve(&mut self) {
        for g in &mut self.gaps {
            *g /= 2;
        }
        self.entered /= 2;
        self.recompute();
    }
}

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
    stats: [ClassStats; CLASSES],
    /// Keys let go of or refused: their last use and class.
    departed: Ghost<(Meta, u8)>,
    /// Moving average of the victims' ages (ms): how long the cache keeps a key.
    horizon_ms: f64,
    now_ms: u64,
    counted: u64,
    /// The request whose chain was refused, and the depth refused last: the next
    /// block of that walk is refused too (a prefix match could never reach it).
    refused: Option<(u64, u32)>,
    /// The victim [`Policy::admit`] found, for the [`Policy::evict`] that follows it
    /// (cleared by every other call).
    chosen: Option<(u32, u64)>,
}

impl Hazard {
    /// For `capacity` resident keys (it remembers [`DEPARTED_PER_SLOT`] times as
    /// many departed ones: about 300 bytes per resident key in all).
    pub fn new(capacity: usize) -> Self {
        Self {
            n: Nodes::default(),
            lists: Default::default(),
            meta: Vec::new(),
            stats: Default::default(),
            departed: Ghost::new(capacity.max(1) * DEPARTED_PER_SLOT),
            horizon_ms: 0.0,
            now_ms: 0,
            counted: 0,
            refused: None,
            chosen: None,
        }
    }

    fn tick(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
    }

    /// A use of a key whose previous use was in class `from` at `prev`; it now
    /// enters class `to`.
    fn learn(&mut self, from: Option<(usize, u64)>, to: usize) {
        if let Some((c, prev)) = from {
            let s = &mut self.stats[c];
            s.gaps[bin(self.now_ms.saturating_sub(prev))] += 1;
            s.stale += 1;
        }
        self.stats[to].entered += 1;
        self.stats[to].stale += 1;
        self.counted += 1;
        if self.counted >= DECAY_AFTER {
            self.counted = 0;
            self.stats.iter_mut().for_each(ClassStats::halve);
        }
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
        self.learn(before.map(|(m, c)| (c as usize, m.last_ms)), to);
        (uses, to)
    }

    /// The odds of a key of class `c` at `age`, never above those of a key used
    /// more often (of the same last flag) at the same age: a chain's earlier blocks
    /// were used at least as often as its later ones, so this keeps chains peeled
    /// from their tails when the estimates are noisy.
    fn odds(&self, c: usize, age: u64, horizon: u64) -> f32 {
        let mut o = self.stats[c].odds(age, horizon);
        for up in (c + 2..CLASSES).step_by(2) {
            if self.stats[up].entered >= MIN_EVIDENCE {
                o = o.min(self.stats[up].odds(age, horizon));
            }
        }
        o
    }

    /// The evictable key with the lowest odds: (node, odds, age).
    fn candidate(&mut self, evictable: &mut dyn FnMut(u64) -> bool) -> Option<(u32, f32, u64)> {
        let horizon = self.horizon_ms as u64;
        let mut best: Option<(u32, f32, u64)> = None;
        self.stats.iter_mut().for_each(ClassStats::refresh);
        for c in 0..CLASSES {
            let Some(i) = find_victim(&self.lists[c].ends, &self.n, evictable) else {
                continue;
            };
            let age = self.now_ms.saturating_sub(self.meta[i as usize].last_ms);
            let odds = self.odds(c, age, horizon);
            if best.is_none_or(|(_, o, a)| {
                if (odds - o).abs() <= TIE * odds.max(o) {
                    age > a
                } else {
                    odds < o
                }
            }) {
                best = Some((i, odds, age));
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
        self.tick(a.now_ms);
        let from = self.n.tag(i) as usize;
        let m = *self.meta_mut(i);
        let to = class(m.uses.saturating_add(1), a.last);
        self.learn(Some((from, m.last_ms)), to);
        *self.meta_mut(i) = Meta {
            last_ms: self.now_ms,
            uses: m.uses.saturating_add(1),
        };
        self.lists[from].remove(&mut self.n, i);
        self.n.set_tag(i, to as u8);
        self.lists[to].place(&mut self.n, i, a.request);
    }
    fn on_insert(&mut self, a: Access) {
        self.chosen = None;
        if self.n.get(a.key).is_some() {
            // Idempotent: a key inserted twice is one resident key, now used.
            return self.on_hit(a);
        }
        self.tick(a.now_ms);
        let (uses, to) = self.use_departed(&a);
        let i = self.n.add(a.key, to as u8);
        *self.meta_mut(i) = Meta {
            last_ms: self.now_ms,
            uses,
        };
        self.lists[to].place(&mut self.n, i, a.request);
    }
    fn on_remove(&mut self, key: u64) {
        self.chosen = None;
        if let Some(i) = self.n.get(key) {
            self.lists[self.n.tag(i) as usize].remove(&mut self.n, i);
            self.n.release(i);
        }
    }
    fn admit(&mut self, a: Access, evictable: &mut dyn FnMut(u64) -> bool) -> bool {
        self.chosen = None;
        if self.n.get(a.key).is_some() {
            return true;
        }
        self.tick(a.now_ms);
        // The next block of a chain walk refused at the previous depth is refused
        // without asking: a prefix match could never reach it.
        if self.refused != Some((a.request, a.depth.wrapping_sub(1))) {
            let Some((i, victim, age)) = self.candidate(evictable) else {
                return true;
            };
            let uses = self.departed.peek(a.key).map_or(0, |(m, _)| m.uses).saturating_add(1);
            let odds = self.odds(class(uses, a.last), 0, self.horizon_ms as u64);
            if odds >= victim * (1.0 - ADMIT_MARGIN) {
                self.chosen = Some((i, age));
                return true;
            }
        }
        self.refused = Some((a.request, a.depth));
        // Refused: counted as a use, remembered so that a return is learned.
        let (uses, to) = self.use_departed(&a);
        let meta = Meta {
            last_ms: self.now_ms,
            uses,
        };
        self.departed.push(a.key, (meta, to as u8));
        false
    }
    fn evict(&mut self, evictable: &mut dyn FnMut(u64) -> bool) -> Option<u64> {
        let (i, age) = match self.chosen.take() {
            Some((i, age)) if evictable(self.n.key(i)) => (i, age),
            _ => self.candidate(evictable).map(|(i, _, age)| (i, age))?,
        };
        self.horizon_ms = if self.horizon_ms == 0.0 {
            age as f64
        } else {
            0.99 * self.horizon_ms + 0.01 * age as f64
        };
        let c = self.n.tag(i) as usize;
        self.lists[c].remove(&mut self.n, i);
        let meta = self.meta[i as usize];
        let key = self.n.release(i);
        self.departed.push(key, (meta, c as u8));
        Some(key)
    }
}
