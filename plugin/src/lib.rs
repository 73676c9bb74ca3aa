//! tierkv: a tiered KV cache manager that LLM serving engines load as a shared
//! library (`libtierkv.so`).
//!
//! Layers, top to bottom (each imports only from the layers below it; a test,
//! `tests/layers.rs`, fails on an import that runs back up):
//! 1. [`ffi`]: the C ABI (opaque handles, status codes, per-thread last error).
//!    It talks to the facade only.
//! 2. [`Manager`]: the one facade an engine sees (`manager/`), and [`config`],
//!    which reads `TIERKV_*` once and builds each part's settings.
//! 3. [`movement`]: block movement between tiers (placement, admission,
//!    write-behind, onboarding).
//! 4. The parts: [`semantic`] (near-duplicate reuse plans), [`tier`] (one
//!    [`tier::Tier`] trait; the host tier over a shared arena, the disk tier),
//!    [`block`] (the engine block pool), [`hw`] (telemetry and scheduling).
//! 5. Primitives: [`evict`] (eviction policies), [`pq`] (PQ key retrieval),
//!    [`prefix`] (block identity),
//!    [`metrics`] (histograms, the text writer, the exporter), `log`.
//!
//! The supported API is the facade ([`Manager`] and the types it names) and the C
//! ABI; the parts are public for the benches, the soak test and the tools
//! (`tierkv-replay`, `tierkv-admin`).
//!
//! See `docs/architecture.md` for the picture and the failure modes.

// The C header is generated from `ffi/` alone: cbindgen skips every other module.

/// cbindgen:ignore
pub mod block;
/// cbindgen:ignore
pub mod config;
/// cbindgen:ignore
pub mod events;
/// cbindgen:ignore
pub mod evict;
pub mod ffi;
/// cbindgen:ignore
pub mod hw;
/// cbindgen:ignore
mod log;
/// cbindgen:ignore
mod manager;
/// cbindgen:ignore
pub mod metrics;
/// cbindgen:ignore
pub mod movement;
/// cbindgen:ignore
pub mod pq;
/// cbindgen:ignore
pub mod prefix;
/// cbindgen:ignore
pub mod semantic;
/// cbindgen:ignore
pub mod tier;

pub use manager::{ErrorKind, EventsTaken, Manager, ManagerError, ManagerParams, PoolState, PqHandle};
