//! An intrusive doubly linked list over slot indices, O(1) for every operation.
//!
//! Core types: [`LinkStore`] (where the `prev`/`next` links live: a `Vec` in the
//! engine pool, shared memory in the host tier) and [`ListEnds`] (head, tail and
//! length, `repr(C)` so that it can live in shared memory too).
//!
//! ```text
//!   head                                  tail
//!    |                                     |
//!    v                                     v
//!   [7] <-> [2] <-> [9] <-> ... <-> [4]      NIL ends both directions
//! ```
//!
//! Contract: an index is in at most one list at a time, and the caller tracks which
//! (the lists do not). Removing an index that is not in this list corrupts it; the
//! pool and the tiers guarantee this with their slot states.

/// "No slot": the end of a list.
pub const NIL: u32 = u32::MAX;

/// Storage of the links of every slot.
pub trait LinkStore {
    /// `(prev, next)` of slot `i`.
    fn links(&self, i: u32) -> (u32, u32);
    /// Sets `(prev, next)` of slot `i`.
    fn set_links(&mut self, i: u32, prev: u32, next: u32);

    /// Sets `prev` only.
    fn set_prev(&mut self, i: u32, prev: u32) {
        let (_, next) = self.links(i);
        self.set_links(i, prev, next);
    }

    /// Sets `next` only.
    fn set_next(&mut self, i: u32, next: u32) {
        let (prev, _) = self.links(i);
        self.set_links(i, prev, next);
    }
}

impl LinkStore for Vec<(u32, u32)> {
    fn links(&self, i: u32) -> (u32, u32) {
        self[i as usize]
    }

    fn set_links(&mut self, i: u32, prev: u32, next: u32) {
        self[i as usize] = (prev, next);
    }
}

/// The ends of one list.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListEnds {
    /// First slot (the next victim for an LRU list), or [`NIL`].
    pub head: u32,
    /// Last slot (most recently used), or [`NIL`].
    pub tail: u32,
    /// Number of slots in the list.
    pub len: u32,
}

impl Default for ListEnds {
    fn default() -> Self {
        Self::new()
    }
}

impl ListEnds {
    /// An empty list.
    pub const fn new() -> Self {
        Self {
            head: NIL,
            tail: NIL,
            len: 0,
        }
    }

    /// Appends `i` at the tail.
    pub fn push_back(&mut self, s: &mut impl LinkStore, i: u32) {
        s.set_links(i, self.tail, NIL);
        if self.tail == NIL {
            self.head = i;
        } else {
            s.set_next(self.tail, i);
        }
        self.tail = i;
        self.len += 1;
    }

    /// Prepends `i` at the head.
    pub fn push_front(&mut self, s: &mut impl LinkStore, i: u32) {
        s.set_links(i, NIL, self.head);
        if self.head == NIL {
            self.tail = i;
        } else {
            s.set_prev(self.head, i);
        }
        self.head = i;
        self.len += 1;
    }

    /// Inserts `i` (in no list) just before `at` (in this list).
    pub fn insert_before(&mut self, s: &mut impl LinkStore, at: u32, i: u32) {
        let (prev, _) = s.links(at);
        s.set_links(i, prev, at);
        s.set_prev(at, i);
        if prev == NIL {
            self.head = i;
        } else {
            s.set_next(prev, i);
        }
        self.len += 1;
    }

    /// Unlinks `i`, which must be in this list.
    pub fn remove(&mut self, s: &mut impl LinkStore, i: u32) {
        let (prev, next) = s.links(i);
        if prev == NIL {
            self.head = next;
        } else {
            s.set_next(prev, next);
        }
        if next == NIL {
            self.tail = prev;
        } else {
            s.set_prev(next, prev);
        }
        s.set_links(i, NIL, NIL);
        // Saturating: a list in shared memory may have been damaged underneath.
        self.len = self.len.saturating_sub(1);
    }

    /// Removes and returns the head.
    pub fn pop_front(&mut self, s: &mut impl LinkStore) -> Option<u32> {
        let h = self.head;
        if h == NIL {
            return None;
        }
        self.remove(s, h);
        Some(h)
    }

    /// Moves `i` (in this list) to the tail.
    pub fn move_to_back(&mut self, s: &mut impl LinkStore, i: u32) {
        if self.tail != i {
            self.remove(s, i);
            self.push_back(s, i);
        }
    }

    /// Iterates from head to tail.
    pub fn iter<'a, S: LinkStore>(&self, s: &'a S) -> impl Iterator<Item = u32> + 'a {
        let mut cur = self.head;
        std::iter::from_fn(move || {
            if cur == NIL {
                return None;
            }
            let out = cur;
            cur = s.links(cur).1;
            Some(out)
        })
    }
}

/// A list whose members touched by one request are kept in chain order (deepest
/// nearest the head), after everything touched before. `repr(C)` and without
/// pointers, so that it can live in shared memory (the host arena's hazard
/// lists); an anchor read back from there is used as it is, and an out-of-range
/// one is caught by the store's checked links (the index is then rebuilt).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ChainList {
    /// The list.
    pub ends: ListEnds,
    /// The member the current request placed nearest the head ([`NIL`]: none).
    anchor: u32,
    /// The current request.
    request: u64,
}

impl Default for ChainList {
    fn default() -> Self {
        Self {
            ends: ListEnds::new(),
            anchor: NIL,
            request: 0,
        }
    }
}

impl ChainList {
    /// Places `i` (in no list) for request `request`.
    pub fn place(&mut self, s: &mut impl LinkStore, i: u32, request: u64) {
        if self.anchor != NIL && self.request == request && self.anchor != i {
            self.ends.insert_before(s, self.anchor, i);
        } else {
            self.ends.push_back(s, i);
        }
        self.anchor = i;
        self.request = request;
    }

    /// Unlinks `i`, which must be in this list.
    pub fn remove(&mut self, s: &mut impl LinkStore, i: u32) {
        if self.anchor == i {
            self.anchor = NIL;
        }
        self.ends.remove(s, i);
    }

    /// Empties the list (its members' links are the caller's to reset).
    pub fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    proptest! {
        /// Random pushes, removes and moves agree with a VecDeque model.
        #[test]
        fn matches_vecdeque(ops in proptest::collection::vec((0u8..4, 0u32..16), 0..200)) {
            let mut links = vec![(NIL, NIL); 16];
            let mut list = ListEnds::new();
            let mut model: VecDeque<u32> = VecDeque::new();
            for (op, i) in ops {
                let present = model.contains(&i);
                match op {
                    0 if !present => { list.push_back(&mut links, i); model.push_back(i); }
                    1 if !present => { list.push_front(&mut links, i); model.push_front(i); }
                    2 if present => {
                        list.remove(&mut links, i);
                        model.retain(|&x| x != i);
                    }
                    3 if present => {
                        list.move_to_back(&mut links, i);
                        model.retain(|&x| x != i);
                        model.push_back(i);
                    }
                    _ => {
                        prop_assert_eq!(list.pop_front(&mut links), model.pop_front());
                    }
                }
                prop_assert_eq!(list.iter(&links).collect::<Vec<_>>(), model.iter().copied().collect::<Vec<_>>());
                prop_assert_eq!(list.len as usize, model.len());
            }
        }
    }
}
