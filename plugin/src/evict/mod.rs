//! Eviction: which resident block leaves a full tier. One module for every tier that
//! evicts, with one written contract per kind of state.
//!
//! Core types:
//! - `model::Model` (`model.rs`): what the hazard policy learns (per-class
//!   reuse-gap histograms, the horizon, its clock) and how it decides (a hit
//!   density per candidate, the victim, admission). Plain data, so that it can
//!   live in a process or in shared memory; both forms below run it.
//! - [`Policy`] (the contract), [`Access`], [`PolicyKind`] and the policies [`Hazard`]
//!   (the default: the model over keys, with admission), [`Lru`], [`S3Fifo`],
//!   [`Chat`]: eviction and admission over identity keys
//!   ([`crate::prefix::BlockHash::fold64`]), the choice of every tier whose index
//!   lives in one process (the disk tier today; a remote tier evicts in its store),
//!   and what the trace replayer (`integration/replay`) compares with Belady's
//!   optimum.
//! - [`SlotHazard`] and [`SlotLru`]: the policies of the host tier's arena. Their
//!   state lives in shared memory (the model and list ends in the arena's header,
//!   links and each slot's uses in its slot table, departed keys in a table of the
//!   arena), written by every process that maps the arena, so they cannot be boxed
//!   objects of one process: they work through [`HazardStore`] /
//!   [`list::LinkStore`] and bound every value they read back.
//! - [`list`]: the O(1) intrusive doubly linked list both are built on (also the
//!   engine block pool's free queue).
//!
//! Workflow (a tier's index, holding its lock):
//! 1. A resident block used again: [`Policy::on_hit`] / [`SlotHazard::accessed`] /
//!    [`SlotLru::accessed`].
//! 2. A block that becomes resident: [`Policy::on_insert`] / [`SlotHazard::inserted`]
//!    / [`SlotLru::inserted`], after making room with [`Policy::evict`] /
//!    [`SlotHazard::victim`] then [`SlotHazard::evicted`] / the first unpinned
//!    candidate of [`SlotLru::first_candidate`]. When full, a tier first asks
//!    [`Policy::admit`] / [`SlotHazard::admits`] whether the block is worth a victim
//!    at all (a refusal: [`SlotHazard::refused`] in the arena).
//! 3. A block that leaves for another reason (corrupt, dropped):
//!    [`Policy::on_remove`] / [`SlotHazard::removed`] / [`SlotLru::removed`].

mod keyed;
pub mod list;
pub(crate) mod model;
mod slot;

pub use keyed::{Access, Chat, Hazard, KeyHash, KeyMap, Lru, Policy, PolicyKind, S3Fifo};
pub use model::DEPARTED_PER_RESIDENT;
pub use slot::{Departed, HazardStore, SlotAccess, SlotHazard, SlotLru, SlotUse};
