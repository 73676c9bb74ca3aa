//! Admission: what goes to disk ([`Admission`]).
//!
//! Core types: [`Admission`] (write-through, or admit a block once it has been used
//! a given number of times, counted in a small aging count-min sketch).
//!
//! Workflow of an offload decision (host tier -> disk tier):
//! 1. Every host-tier store of a new block and every host hit calls
//!    [`Admission::observe`] with the block's key.
//! 2. [`Admission::admit`] says whether the block has proved its worth (its count
//!    reached the threshold, or write-through); the disk tier then queues the write.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

/// When a block is written to the disk tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdmitMode {
    /// Every block stored in the host tier is also written to disk.
    Always,
    /// A block is written once it has been used this many times (stored, then hit).
    Reuse(u8),
}

/// Blocks a sketch is sized for when the tier does not say.
pub const UNSIZED: u64 = 1 << 16;
/// Rows of the sketch (independent hash functions).
const ROWS: usize = 4;
/// Counters saturate here (4 bits' worth; enough for any threshold we accept).
const MAX_COUNT: u8 = 15;

/// Reuse counting for disk admission: a count-min sketch of `u8` counters, `width`
/// about four times the tier's capacity, that halves every counter after
/// `width / 2` increments, so old popularity fades and counters stay sparse (a
/// one-time block passes a threshold of 2 by collisions in all rows about 3% of
/// the time).
/// Lock-free: counters are atomics (a lost increment under a race only delays an
/// admission).
#[derive(Debug)]
pub struct Admission {
    mode: AdmitMode,
    counters: Vec<AtomicU8>,
    mask: u64,
    increments: AtomicU64,
    admitted: AtomicU64,
    rejected: AtomicU64,
}

impl Admission {
    /// A sketch sized for about `capacity` distinct blocks (0: a tier that does
    /// not know its capacity, such as a remote store: sized for [`UNSIZED`]).
    pub fn new(mode: AdmitMode, capacity: u64) -> Self {
        let capacity = if capacity == 0 { UNSIZED } else { capacity };
        let width = (capacity.max(64) * 4).next_power_of_two().min(1 << 24);
        Self {
            mode,
            counters: (0..width as usize * ROWS).map(|_| AtomicU8::new(0)).collect(),
            mask: width - 1,
            increments: AtomicU64::new(0),
            admitted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        }
    }

    /// The mode.
    pub fn mode(&self) -> AdmitMode {
        self.mode
    }

    fn slots(&self, key: u64) -> [usize; ROWS] {
        let width = self.mask + 1;
        std::array::from_fn(|row| {
            let h = xxhash_rust::xxh3::xxh3_64_with_seed(&key.to_le_bytes(), row as u64);
            row * width as usize + (h & self.mask) as usize
        })
    }

    /// Records one use of `key`.
    pub fn observe(&self, key: u64) {
        if self.mode == AdmitMode::Always {
            return;
        }
        for i in self.slots(key) {
            let c = &self.counters[i];
            let v = c.load(Ordering::Relaxed);
            if v < MAX_COUNT {
                c.store(v + 1, Ordering::Relaxed);
            }
        }
        let n = self.increments.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_multiple_of((self.mask + 1).div_ceil(2)) {
            for c in &self.counters {
                c.store(c.load(Ordering::Relaxed) / 2, Ordering::Relaxed);
            }
        }
    }

    /// Estimated uses of `key` (never below the truth, barring races and aging).
    pub fn estimate(&self, key: u64) -> u8 {
        self.slots(key)
            .iter()
            .map(|&i| self.counters[i].load(Ordering::Relaxed))
            .min()
            .unwrap_or(0)
    }

    /// Whether `key` goes to disk now; counts the decision.
    pub fn admit(&self, key: u64) -> bool {
        let yes = match self.mode {
            AdmitMode::Always => true,
            AdmitMode::Reuse(n) => self.estimate(key) >= n,
        };
        let c = if yes { &self.admitted } else { &self.rejected };
        c.fetch_add(1, Ordering::Relaxed);
        yes
    }

    /// `(admitted, rejected)` decisions so far.
    pub fn decisions(&self) -> (u64, u64) {
        (
            self.admitted.load(Ordering::Relaxed),
            self.rejected.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuse_admission_waits_for_the_threshold() {
        let a = Admission::new(AdmitMode::Reuse(2), 1000);
        a.observe(7);
        assert!(!a.admit(7));
        a.observe(7);
        assert!(a.admit(7));
        assert!(!a.admit(8));
        assert_eq!(a.decisions(), (1, 2));
        let w = Admission::new(AdmitMode::Always, 10);
        assert!(w.admit(1));
    }

    #[test]
    fn counts_fade_with_age() {
        let a = Admission::new(AdmitMode::Reuse(2), 16); // width 256, halving every 128
        a.observe(1);
        a.observe(1);
        assert_eq!(a.estimate(1), 2);
        for k in 1000..1126u64 {
            a.observe(k);
        }
        assert!(a.estimate(1) <= 1, "aged: {}", a.estimate(1));
    }
}
