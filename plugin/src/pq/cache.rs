//! [`BlockCache`]: PQCache's block cache, the hot blocks of one request kept
//! near the compute, least frequently used first out (ties: least recently
//! used), so that a decode step's gather fetches only the blocks it misses.

use std::collections::{BTreeSet, HashMap};

/// Buffers of evicted blocks kept for reuse at most.
const SPARE: usize = 8;

/// One cached block.
#[derive(Debug)]
struct Entry {
    bytes: Vec<u8>,
    uses: u64,
    last: u64,
}

/// An LFU cache of whole blocks (by the block's index in its request).
#[derive(Debug, Default)]
pub struct BlockCache {
    capacity: usize,
    entries: HashMap<u32, Entry>,
    /// `(uses, last use, block)`: the first is the next out.
    order: BTreeSet<(u64, u64, u32)>,
    clock: u64,
    /// Buffers of evicted blocks, reused by the next insert.
    spare: Vec<Vec<u8>>,
}

impl BlockCache {
    /// A cache of at most `capacity` blocks (0: nothing is kept).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            ..Self::default()
        }
    }

    /// Blocks it keeps at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Keeps at most `capacity` blocks from now on, the least frequently used
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

    /// Blocks it holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `block` is held (no use counted).
    pub fn contains(&self, block: u32) -> bool {
        self.entries.contains_key(&block)
    }

    /// Counts a use of `block` when held; whether it was.
    pub fn touch(&mut self, block: u32) -> bool {
        self.clock += 1;
        let Some(e) = self.entries.get_mut(&block) else {
            return false;
        };
        self.order.remove(&(e.uses, e.last, block));
        e.uses += 1;
        e.last = self.clock;
        self.order.insert((e.uses, e.last, block));
        true
    }

    /// The bytes of `block` when held.
    pub fn get(&self, block: u32) -> Option<&[u8]> {
        self.entries.get(&block).map(|e| &e.bytes[..])
    }

    /// A buffer of `len` bytes for a block about to be fetched (an evicted
    /// block's when there is one).
    pub fn buffer(&mut self, len: usize) -> Vec<u8> {
        let mut b = self.spare.pop().unwrap_or_default();
        b.resize(len, 0);
        b
    }

    /// Keeps `block` (just fetched, one use), evicting the least frequently used
    /// block when full; with capacity 0 the buffer is kept for reuse only.
    pub fn insert(&mut self, block: u32, bytes: Vec<u8>) {
        if self.capacity == 0 || self.entries.contains_key(&block) {
            self.recycle(bytes);
            return;
        }
        if self.entries.len() >= self.capacity {
            if let Some(first) = self.order.pop_first() {
                if let Some(e) = self.entries.remove(&first.2) {
                    self.recycle(e.bytes);
                }
            }
        }
        self.clock += 1;
        self.order.insert((1, self.clock, block));
        self.entries.insert(
            block,
            Entry {
                bytes,
                uses: 1,
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

    /// Bytes held (the blocks' buffers).
    pub fn bytes(&self) -> usize {
        self.entries.values().map(|e| e.bytes.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_frequent_goes_first_then_least_recent() {
        let mut c = BlockCache::new(2);
        c.insert(1, vec![1]);
        c.insert(2, vec![2]);
        assert!(c.touch(1));
        c.insert(3, vec![3]); // 2 (one use) goes
        assert!(c.contains(1) && c.contains(3) && !c.contains(2));
        assert!(c.touch(3));
        c.insert(4, vec![4]); // 1 and 3 have two uses; 1 is older
        assert!(!c.contains(1) && c.contains(3) && c.contains(4));
        assert_eq!(c.get(3), Some(&[3u8][..]));
        assert_eq!(c.len(), 2);
        assert!(!c.touch(9));
        c.set_capacity(1); // 4 (one use) goes
        assert!(c.contains(3) && !c.contains(4));
    }

    #[test]
    fn zero_capacity_keeps_nothing_and_reuses_buffers() {
        let mut c = BlockCache::new(0);
        c.insert(1, vec![0; 8]);
        assert!(c.is_empty() && !c.touch(1));
        assert_eq!(c.buffer(8).capacity(), 8);
    }
}
