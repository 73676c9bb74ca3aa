//! tierkv: a tiered KV cache manager that LLM serving engines load as a shared
//! library (`libtierkv.so`).
//!
//! Layers, top to bottom:
//! 1. [`ffi`]: the C ABI (opaque handles, status codes, per-thread last error).
//! 2. [`Manager`]: the one facade an engine sees.
//! 3. [`prefix`] (block identity), [`block`] (the engine block pool),
//!    [`tier`] (host tier over a shared arena, disk tier), [`offload`] (admission,
//!    eviction policies, trace replay), [`semantic`] (near-duplicate reuse plans),
//!    [`metrics`], [`config`].
//!
//! See `docs/architecture.md` for the design and its failure modes.

pub mod block;
pub mod config;
pub mod evict;
pub mod ffi;
pub mod hw;
mod log;
mod manager;
pub mod metrics;
pub mod offload;
pub mod prefix;
pub mod semantic;
pub mod tier;

pub use manager::{Manager, ManagerError, ManagerParams};
