//! [`Known`]: what this process knows about the store's keys, so that a lookup
//! answers without a network round trip. Entries age: a block seen present is
//! trusted for [`PRESENT_FOR`] (a load that then misses is a recompute, counted),
//! a block seen absent for [`ABSENT_FOR`] (another node of the fleet may store it
//! meanwhile), a probe in flight for as long as a probe may take.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::prefix::BlockHash;

/// How long a block seen in the store is taken to be there.
pub const PRESENT_FOR: Duration = Duration::from_secs(60);
/// How long a block seen missing is taken to be missing.
pub const ABSENT_FOR: Duration = Duration::from_secs(2);
/// Entries kept at most (about 40 bytes each).
const MAX_ENTRIES: usize = 1 << 20;

/// What is known of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// In the store (a probe, a load or this process's write said so).
    Present,
    /// Not in the store.
    Absent,
    /// A probe is asking the store now.
    Probing,
    /// Queued for writing by this process.
    Queued,
}

/// The known keys, with when each was learned.
#[derive(Debug)]
pub struct Known {
    map: HashMap<BlockHash, (State, Instant)>,
    probe_for: Duration,
}

impl Known {
    /// Empty; a probe older than `probe_for` is taken to have failed.
    pub fn new(probe_for: Duration) -> Self {
        Self {
            map: HashMap::new(),
            probe_for,
        }
    }

    /// The current state of `h`, `None` when unknown or aged out.
    pub fn get(&self, h: BlockHash, now: Instant) -> Option<State> {
        let &(s, at) = self.map.get(&h)?;
        let age = now.saturating_duration_since(at);
        let fresh = match s {
            State::Present => age < PRESENT_FOR,
            State::Absent => age < ABSENT_FOR,
            State::Probing => age < self.probe_for,
            State::Queued => true,
        };
        fresh.then_some(s)
    }

    /// Records `s` for `h`.
    pub fn set(&mut self, h: BlockHash, s: State, now: Instant) {
        if self.map.len() >= MAX_ENTRIES && !self.map.contains_key(&h) {
            self.shrink(now);
        }
        self.map.insert(h, (s, now));
    }

    /// Forgets `h`.
    pub fn forget(&mut self, h: BlockHash) {
        self.map.remove(&h);
    }

    /// Drops aged entries; when that is not enough, everything but queued writes
    /// (it is only a cache of the store's answers).
    fn shrink(&mut self, now: Instant) {
        let probe_for = self.probe_for;
        self.map.retain(|_, &mut (s, at)| {
            let age = now.saturating_duration_since(at);
            match s {
                State::Present => age < PRESENT_FOR,
                State::Absent => age < ABSENT_FOR,
                State::Probing => age < probe_for,
                State::Queued => true,
            }
        });
        if self.map.len() >= MAX_ENTRIES / 2 {
            self.map.retain(|_, &mut (s, _)| s == State::Queued);
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_age_out() {
        let t0 = Instant::now();
        let mut k = Known::new(Duration::from_secs(1));
        k.set(BlockHash(1), State::Present, t0);
        k.set(BlockHash(2), State::Absent, t0);
        k.set(BlockHash(3), State::Probing, t0);
        k.set(BlockHash(4), State::Queued, t0);
        assert_eq!(k.get(BlockHash(1), t0), Some(State::Present));
        assert_eq!(k.get(BlockHash(5), t0), None);
        let later = t0 + ABSENT_FOR;
        assert_eq!(k.get(BlockHash(2), later), None);
        assert_eq!(k.get(BlockHash(3), later), None);
        assert_eq!(k.get(BlockHash(1), later), Some(State::Present));
        assert_eq!(k.get(BlockHash(4), t0 + PRESENT_FOR * 2), Some(State::Queued));
        assert_eq!(k.get(BlockHash(1), t0 + PRESENT_FOR), None);
        k.forget(BlockHash(4));
        assert_eq!(k.get(BlockHash(4), t0), None);
        assert_eq!(k.len(), 3);
    }
}
