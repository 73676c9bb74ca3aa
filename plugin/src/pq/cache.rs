//! [`BlockCache`]: PQCache's block cache, the hot block regions (a layer's K and
//! V, in vLLM's layout) of one request kept near the compute, least frequently
//! used first out (ties: least recently used), so that a decode step's gather
//! reads only the regions it misses.

use std::collections::{BTreeSet, HashMap};

/// Buffers of evicted blocks kept for reuse at most.
const SPARE: usize = 8;

/// One cached buffer.
#[derive(Debug)]
struct Entry {
    bytes: Vec<u8>,
    /// Uses counted when it came in (its place in `order`).
    uses: u64,
    last: u64,
}

/// An LFU cache of byte buffers (block regions) by a key (the region's place in
/// its request). Frequencies are kept for every key used, held or not, so that
/// a buffer comes in only when its key is used more often than the one it
/// would push out: a decode step's scan over more regions than fit then keeps
/// a stable set (an LFU that forgot evicted keys' counts would cycle and never
/// hit).
#[derive(Debug, Default)]
pub struct BlockCache {
    capacity: usize,
    entries: HashMap<u32, Entry>,
    /// Uses of every key seen.
    uses: HashMap<u32, u64>,
    /// `(uses, last use, key)` of the held entries: the first is the next out.
    order: BTreeSet<(u64, u64, u32)>,
    clock: u64,
    /// Buffers of evicted entries, reused by the next fetch.
    spare: Vec<Vec<u8>>,
}

impl BlockCache {
    /// A cache of at most `capacity` buffers (0: nothing is kept).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            ..Self::default()
        }
    }

    /// Buffers it keeps at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Keeps at most `capacity` buffers from now on, the least frequently used
    /// going first.
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity;
        while self.entries.len() > capacity {
            let Some(first) = self.order.pop_first() else { break };
            if let Some(e) = self.entries.remove(&first.2) {
                self.recycle(e.bytes);
            }
        }
    }

    /// Buffers it holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `key` is held (no use counted).
    pub fn contains(&self, key: u32) -> bool {
        self.entries.contains_key(&key)
    }

    /// Counts a use of `key`; whether it is held.
    pub fn touch(&mut self, key: u32) -> bool {
        self.clock += 1;
        let n = self.uses.entry(key).or_insert(0);
        *n += 1;
        let n = *n;
        let Some(e) = self.entries.get_mut(&key) else {
            return false;
        };
        self.order.remove(&(e.uses, e.last, key));
        (e.uses, e.last) = (n, self.clock);
        self.order.insert((n, self.clock, key));
        true
    }

    /// The bytes of `key` when held.
    pub fn get(&self, key: u32) -> Option<&[u8]> {
        self.entries.get(&key).map(|e| &e.bytes[..])
    }

    /// A buffer of `len` bytes for a fetch (an evicted entry's when there is one).
    pub fn buffer(&mut self, len: usize) -> Vec<u8> {
        let mut b = self.spare.pop().unwrap_or_default();
        b.resize(len, 0);
        b
    }

    /// Offers `bytes` (just fetched) for `key`: kept when there is room, or when
    /// `key` has been used more often than the least frequently used entry
    /// (which goes); otherwise only the buffer is kept for reuse.
    pub fn insert(&mut self, key: u32, bytes: Vec<u8>) {
        let n = self.uses.get(&key).copied().unwrap_or(0);
        if self.capacity == 0 || self.entries.contains_key(&key) {
            self.recycle(bytes);
            return;
        }
        if self.entries.len() >= self.capacity {
            match self.order.first() {
                Some(&(u, _, _)) if u < n => {
                    let first = self.order.pop_first().unwrap_or_default();
                    if let Some(e) = self.entries.remove(&first.2) {
                        self.recycle(e.bytes);
                    }
                }
                _ => {
                    self.recycle(bytes);
                    return;
                }
            }
        }
        self.clock += 1;
        self.order.insert((n, self.clock, key));
        self.entries.insert(
            key,
            Entry {
                bytes,
                uses: n,
                last: self.clock,
            },
        );
    }

    /// Keeps `bytes` (a buffer no longer used) for a later [`BlockCache::buffer`].
    pub fn recycle(&mut self, bytes: Vec<u8>) {
        if self.spare.len() < SPARE {
            self.spare.push(bytes);
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.entries.values().map(|e| e.bytes.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A use, then the fetch a miss brings.
    fn access(c: &mut BlockCache, k: u32) -> bool {
        let hit = c.touch(k);
        if !hit {
            c.insert(k, vec![k as u8]);
        }
        hit
    }

    #[test]
    fn a_key_comes_in_only_when_used_more_often_than_the_one_it_pushes_out() {
        let mut c = BlockCache::new(2);
        assert!(!access(&mut c, 1) && !access(&mut c, 2));
        assert!(access(&mut c, 1)); // 1: two uses
        assert!(!access(&mut c, 3)); // one use, not more than 2's: not kept
        assert!(!c.contains(3));
        assert!(!access(&mut c, 3)); // two uses now: in, 2 (one use) out
        assert!(c.contains(1) && c.contains(3) && !c.contains(2));
        assert_eq!(c.get(3), Some(&[3u8][..]));
        c.set_capacity(1); // the less used of 1 and 3 (equal: the older, 1) goes
        assert!(c.contains(3) && !c.contains(1) && c.len() == 1);
    }

    #[test]
    fn a_cyclic_scan_larger_than_the_cache_still_hits_a_stable_part() {
        let mut c = BlockCache::new(10);
        let mut hits = 0;
        for round in 0..20 {
            for k in 0..40 {
                if access(&mut c, k) && round > 0 {
                    hits += 1;
                }
            }
        }
        // An LFU without history would hit nothing; here the first 10 stay.
        assert_eq!(hits, 19 * 10);
    }

    #[test]
    fn zero_capacity_keeps_nothing_and_reuses_buffers() {
        let mut c = BlockCache::new(0);
        c.insert(1, vec![0; 8]);
        assert!(c.is_empty() && !c.touch(1));
        assert_eq!(c.buffer(8).capacity(), 8);
    }
}
