//! [`Model`]: what the hazard policy learns and how it decides, apart from where
//! its keys live. The keyed [`super::Hazard`] (disk tier, replayer) keeps it in a
//! process; the host arena's [`super::SlotHazard`] keeps it in shared memory, so
//! it is plain old data (`repr(C)`, integers and one float, no pointers) and
//! every value read back is bounded before use (another process, or a hostile
//! one, may have written it).
//!
//! What it learns, online and per class (a key's class: how often it was used,
//! 1, 2, 3 or 4+, and whether its last use ended its request's chain): how long
//! keys of the class waited until their next use (a histogram of reuse gaps, two
//! bins per doubling of milliseconds) and how many keys entered the class. From
//! those, for a key of age `a` (time since its last use), the uses per unit of
//! cache time it promises (a hit density, as in LHD):
//!
//! ```text
//!   odds(class, a) = reused with a gap in [a, a + w] / still unused at age a / w
//!   w = max(h, the class's first-quartile reuse gap)
//! ```
//!
//! `h` is the cache's horizon (how old victims are when they leave, a moving
//! average). The window is never shorter than the gaps the class actually shows:
//! with the horizon alone, a cache whose victims leave young (a flood of blocks
//! used once, larger than the cache) judged a block reused every 10 s by a 100 ms
//! window, found no reuse in it, and evicted the hot blocks for the flood's oldest
//! (the host tier's flood test; the replayer's traces gain or hold, see
//! docs/benchmarks.md).
//!
//! Decisions: the victim is the candidate with the lowest odds (within [`TIE`]
//! of each other, the older: recency decides when the estimates barely differ);
//! a new key whose odds at age 0 are [`ADMIT_MARGIN`] below the victim's is not
//! worth it.

/// Histogram bins: two per doubling of the gap in milliseconds (about 3 days).
const BINS: usize = 56;
/// Classes: uses 1, 2, 3, 4+, times whether the last use ended a chain.
pub const CLASSES: usize = 8;
/// Histograms are halved once this many uses were counted (recent traffic weighs
/// more).
const DECAY_AFTER: u64 = 1 << 18;
/// Cumulative sums are refreshed after this many new observations in a class.
const REFRESH_AFTER: u32 = 32;
/// Odds within this share of each other are a tie, broken by age (older leaves
/// first): when the classes' estimates barely differ, recency decides, as in LRU.
const TIE: f32 = 0.25;
/// A new key is refused only when its odds are below the victim's by this share.
const ADMIT_MARGIN: f32 = 0.15;
/// Departed keys (evicted or refused) a policy remembers per resident key, so
/// that a return counts as a reuse (both forms: keyed and the arena's).
pub const DEPARTED_PER_RESIDENT: usize = 4;
/// A class caps the odds of less-used classes only once this many keys entered it.
const MIN_EVIDENCE: u32 = 64;

/// The histogram bin of a gap: `floor(2 * log2(ms + 1))`, approximately.
fn bin(ms: u64) -> usize {
    let x = ms.saturating_add(1);
    let e = 63 - x.leading_zeros() as usize;
    let upper = e > 0 && (x >> (e - 1)) & 1 == 1;
    (2 * e + upper as usize).min(BINS - 1)
}

/// The upper end (ms) of gap bin `b`, about (bins are half doublings).
fn bin_ms(b: usize) -> u64 {
    2f64.powf((b.min(BINS) + 1) as f64 / 2.0) as u64
}

/// A key's class after its `uses`-th use (`last`: the use ended its chain).
pub fn class(uses: u32, last: bool) -> usize {
    (uses.clamp(1, 4) as usize - 1) * 2 + last as usize
}

/// A class read back from shared memory, bounded.
pub fn bounded_class(c: u32) -> usize {
    (c as usize).min(CLASSES - 1)
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct ClassStats {
    /// Reuses by gap bin, of keys whose previous use was in this class.
    gaps: [u32; BINS],
    /// Uses that put a key in this class.
    entered: u32,
    /// `cum[b]`: reuses with a gap below bin `b`.
    cum: [u32; BINS + 1],
    /// Observations since `cum` was computed.
    stale: u32,
    /// The first quartile of the reuse gaps, ms (with `cum`; 0: none yet).
    quartile_ms: u64,
}

impl ClassStats {
    const EMPTY: Self = Self {
        gaps: [0; BINS],
        entered: 0,
        cum: [0; BINS + 1],
        stale: 0,
        quartile_ms: 0,
    };

    /// Recomputes `cum` once enough has changed (or nothing was counted yet).
    fn refresh(&mut self) {
        if self.stale >= REFRESH_AFTER || (self.stale > 0 && self.cum[BINS] == 0) {
            self.recompute();
        }
    }

    fn recompute(&mut self) {
        for b in 0..BINS {
            self.cum[b + 1] = self.cum[b].saturating_add(self.gaps[b]);
        }
        let q = self.cum[BINS].div_ceil(4);
        self.quartile_ms = (0..BINS).find(|&b| q > 0 && self.cum[b + 1] >= q).map_or(0, bin_ms);
        self.stale = 0;
    }

    /// Uses per ms to expect of a key of this class unused for `age` ms: the
    /// chance that it is used within the next `w` ms, over `w`, where `w` is the
    /// horizon or the class's first-quartile reuse gap, whichever is longer.
    fn odds(&self, age: u64, horizon: u64) -> f32 {
        let window = horizon.max(self.quartile_ms).max(1);
        let lo = bin(age);
        let hi = bin(age.saturating_add(window));
        let within = self.cum[hi + 1].saturating_sub(self.cum[lo]);
        let alive = self.entered.saturating_sub(self.cum[lo]);
        (within as f32 + 0.01) / (alive as f32 + 1.0) / window as f32
    }

    fn halve(&mut self) {
        for g in &mut self.gaps {
            *g /= 2;
        }
        self.entered /= 2;
        self.recompute();
    }
}

/// The learned statistics and the clock of one hazard policy (see the module
/// overview). Zeroed memory is a valid, empty model.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Model {
    stats: [ClassStats; CLASSES],
    /// Moving average of the victims' ages (ms): how long the cache keeps a key.
    horizon_ms: f64,
    now_ms: u64,
    counted: u64,
}

impl Default for Model {
    fn default() -> Self {
        Self {
            stats: [ClassStats::EMPTY; CLASSES],
            horizon_ms: 0.0,
            now_ms: 0,
            counted: 0,
        }
    }
}

/// A victim candidate: its odds and its age (ms).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Learned chance of a use within the horizon.
    pub odds: f32,
    /// Time since its last use.
    pub age: u64,
}

impl Candidate {
    /// Whether `self` should leave before `other`: lower odds, or, within [`TIE`],
    /// older.
    pub fn before(&self, other: &Self) -> bool {
        if (self.odds - other.odds).abs() <= TIE * self.odds.max(other.odds) {
            self.age > other.age
        } else {
            self.odds < other.odds
        }
    }
}

impl Model {
    /// Advances the clock to `now_ms` (it never goes back, except from a time more
    /// than a day ahead of the caller's, which only garbage in shared memory can
    /// leave: the clock would stand still until then).
    pub fn tick(&mut self, now_ms: u64) {
        const DAY_MS: u64 = 86_400_000;
        self.now_ms = if self.now_ms > now_ms.saturating_add(DAY_MS) {
            now_ms
        } else {
            self.now_ms.max(now_ms)
        };
    }

    /// The clock.
    pub fn now(&self) -> u64 {
        self.now_ms
    }

    /// The horizon in ms (0 until a first eviction). A value another process
    /// left unusable (not finite, negative) reads as 0.
    fn horizon(&self) -> u64 {
        if self.horizon_ms.is_finite() && self.horizon_ms > 0.0 {
            self.horizon_ms as u64
        } else {
            0
        }
    }

    /// A use now of a key whose previous use put it in class `from` at time
    /// `prev` (`None`: first use known); it now enters class `to`.
    pub fn learn(&mut self, from: Option<(usize, u64)>, to: usize) {
        if let Some((c, prev)) = from {
            let s = &mut self.stats[c.min(CLASSES - 1)];
            let g = &mut s.gaps[bin(self.now_ms.saturating_sub(prev))];
            *g = g.saturating_add(1);
            s.stale = s.stale.saturating_add(1);
        }
        let s = &mut self.stats[to.min(CLASSES - 1)];
        s.entered = s.entered.saturating_add(1);
        s.stale = s.stale.saturating_add(1);
        self.counted = self.counted.saturating_add(1);
        if self.counted >= DECAY_AFTER {
            self.counted = 0;
            self.stats.iter_mut().for_each(ClassStats::halve);
        }
    }

    /// Brings the cumulative sums up to date (before a round of [`Model::odds`]).
    pub fn refresh(&mut self) {
        self.stats.iter_mut().for_each(ClassStats::refresh);
    }

    /// The odds of a key of class `c` at `age`, never above those of a key used
    /// more often (of the same last flag) at the same age: a chain's earlier blocks
    /// were used at least as often as its later ones, so this keeps chains peeled
    /// from their tails when the estimates are noisy.
    pub fn odds(&self, c: usize, age: u64) -> f32 {
        let c = c.min(CLASSES - 1);
        let horizon = self.horizon();
        let mut o = self.stats[c].odds(age, horizon);
        for up in (c + 2..CLASSES).step_by(2) {
            if self.stats[up].entered >= MIN_EVIDENCE {
                o = o.min(self.stats[up].odds(age, horizon));
            }
        }
        o
    }

    /// A candidate of class `c` last used at `last_ms`.
    pub fn candidate(&self, c: usize, last_ms: u64) -> Candidate {
        let age = self.now_ms.saturating_sub(last_ms);
        Candidate {
            odds: self.odds(c, age),
            age,
        }
    }

    /// Whether a new key of class `c` is worth evicting `victim` for.
    pub fn admits(&self, c: usize, victim: &Candidate) -> bool {
        self.odds(c, 0) >= victim.odds * (1.0 - ADMIT_MARGIN)
    }

    /// A victim of `age` left: the horizon follows.
    pub fn evicted(&mut self, age: u64) {
        let h = if self.horizon_ms.is_finite() && self.horizon_ms > 0.0 {
            self.horizon_ms
        } else {
            0.0
        };
        self.horizon_ms = if h == 0.0 {
            age as f64
        } else {
            0.99 * h + 0.01 * age as f64
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroed_memory_is_an_empty_model() {
        // SAFETY: Model is repr(C) of integers and one f64; all-zero is valid.
        let z: Model = unsafe { std::mem::zeroed() };
        let d = Model::default();
        assert_eq!(z.odds(0, 0), d.odds(0, 0));
        assert_eq!(z.horizon(), 0);
    }

    #[test]
    fn garbage_is_bounded() {
        // What another process may have written: every byte 0xff.
        let mut m: Model = Model::default();
        // SAFETY: any bit pattern is a valid Model (integers and one f64).
        unsafe { std::ptr::write_bytes(&mut m as *mut Model as *mut u8, 0xff, std::mem::size_of::<Model>()) };
        assert_eq!(m.horizon(), 0, "a NaN horizon reads as 0");
        m.refresh();
        for c in 0..CLASSES + 3 {
            let o = m.odds(c, 12_345);
            assert!(o.is_finite() && o >= 0.0);
        }
        m.tick(5);
        assert_eq!(m.now(), 5, "a clock far in the future is garbage: reset");
        m.tick(3);
        assert_eq!(m.now(), 5, "otherwise it never goes back");
        m.learn(Some((99, 0)), 99);
        m.evicted(10);
        assert!(m.candidate(3, 0).odds.is_finite());
    }

    #[test]
    fn reused_classes_get_higher_odds() {
        let mut m = Model::default();
        // 1,000 keys each enter classes 0 and 2; 100 of class 0 and 900 of class 2
        // come back 1 s later (into class 1, which caps neither).
        for _ in 0..1000 {
            m.learn(None, 0);
            m.learn(None, 2);
        }
        m.tick(1_000);
        for i in 0..1000 {
            if i < 100 {
                m.learn(Some((0, 0)), 1);
            }
            if i < 900 {
                m.learn(Some((2, 0)), 1);
            }
        }
        m.refresh();
        m.evicted(5_000);
        assert!(m.odds(2, 0) > 3.0 * m.odds(0, 0));
    }
}
