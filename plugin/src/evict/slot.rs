//! Eviction over slots whose state lives in shared memory (the host arena's slot
//! table and header): [`SlotLru`], least-recently-used order over links in a
//! [`LinkStore`], and [`SlotHazard`] (`hazard.rs`), the hazard policy's slot form.
//!
//! Contract: the caller (holding the arena lock) calls [`SlotLru::inserted`] once
//! for a slot before any [`SlotLru::accessed`] or [`SlotLru::removed`], and removes
//! a slot before inserting it again. Every method is O(1); candidates come best
//! victim first, each slot once, without changing state.
//!
//! ```text
//!   head (evicted first)                 tail (used last)
//!    [7] <-> [2] <-> [9] <-> ... <-> [4]
//! ```

use super::list::{LinkStore, ListEnds, NIL};

mod hazard;
pub use hazard::{Departed, HazardStore, SlotAccess, SlotHazard, SlotUse};

/// Least recently used: a list ordered by last use, head evicted first.
#[derive(Debug, Clone, Copy, Default)]
pub struct SlotLru(pub ListEnds);

impl SlotLru {
    /// A slot became evictable.
    pub fn inserted(&mut self, s: &mut impl LinkStore, slot: u32) {
        self.0.push_back(s, slot);
    }

    /// A slot was used.
    pub fn accessed(&mut self, s: &mut impl LinkStore, slot: u32) {
        self.0.move_to_back(s, slot);
    }

    /// A slot stopped being evictable.
    pub fn removed(&mut self, s: &mut impl LinkStore, slot: u32) {
        self.0.remove(s, slot);
    }

    /// The best victim, or `NIL`.
    pub fn first_candidate(&self) -> u32 {
        self.0.head
    }

    /// The candidate after `slot`, or `NIL`.
    pub fn next_candidate(&self, s: &impl LinkStore, slot: u32) -> u32 {
        if slot == NIL {
            NIL
        } else {
            s.links(slot).1
        }
    }
}
