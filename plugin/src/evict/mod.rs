//! Eviction: which resident block leaves a full tier. One module for every tier that
//! evicts, with one written contract per kind of state.
//!
//! Core types:
//! - [`Policy`] (the contract), [`Access`], [`PolicyKind`] and the policies [`Hazard`]
//!   (the default: learned reuse odds, with admission), [`Lru`], [`S3Fifo`], [`Chat`]:
//!   eviction and admission over identity keys ([`crate::prefix::BlockHash::fold64`]),
//!   the choice of every tier whose index lives in one process (the disk tier
//!   today; a remote tier evicts in its store), and what the trace replayer
//!   (`integration/replay`) compares with Belady's optimum.
//! - [`SlotLru`]: the recency order of the host tier's arena. Its state lives in
//!   shared memory (links in the arena's slot table, ends in its header), written by
//!   every process that maps the arena, so it cannot be a boxed object of one
//!   process: it is an intrusive list over [`list::LinkStore`].
//! - [`list`]: the O(1) intrusive doubly linked list both are built on (also the
//!   engine block pool's free queue).
//!
//! Workflow (a tier's index, holding its lock):
//! 1. A resident block used again: [`Policy::on_hit`] / [`SlotLru::accessed`].
//! 2. A block that becomes resident: [`Policy::on_insert`] / [`SlotLru::inserted`],
//!    after making room with [`Policy::evict`] / the first unpinned candidate of
//!    [`SlotLru::first_candidate`]. When full, a keyed tier first asks
//!    [`Policy::admit`] whether the block is worth a victim at all.
//! 3. A block that leaves for another reason (corrupt, dropped):
//!    [`Policy::on_remove`] / [`SlotLru::removed`].

mod keyed;
pub mod list;
mod slot;

pub use keyed::{Access, Chat, Hazard, Lru, Policy, PolicyKind, S3Fifo};
pub use slot::SlotLru;
