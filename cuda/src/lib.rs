//! `tierkv-cuda`: the GPU data path of tierkv, usable without a GPU.
//!
//! Core items:
//! - [`KERNELS`]: the `.cu` sources in `cuda/kernels/` (block gather/scatter, RoPE
//!   re-rotation), compiled at run time by NVRTC ([`compile::compile_ptx`]).
//! - [`reference`]: CPU implementations with the kernels' exact semantics.
//! - [`segments`]: block lists over an engine's paged layout -> copy segments.
//! - [`gpu::Gpu`]: a device context with a dedicated copy stream, pinned host
//!   registration, batched scattered copies and layer-by-layer loads.
//!
//! Workflow of a load into GPU memory (host tier -> engine blocks):
//! 1. [`gpu::Gpu::open`] probes the driver (no driver: [`CudaError::Unavailable`],
//!    never a panic) and compiles the kernels for the device's architecture;
//! 2. the host memory copies touch (tierkv's staging buffers) is registered once
//!    ([`gpu::Gpu::register_host`]);
//! 3. [`segments::scatter`] turns (tier block, engine block) pairs into segments;
//! 4. [`gpu::Gpu::copy`] moves them with the best method the driver has
//!    (`cuMemcpyBatchAsync`, else one gather/scatter kernel launch, else one async
//!    copy per segment), or [`gpu::LayerwiseLoad`] does it per layer with an event
//!    per layer, so the engine computes layer l while layer l + 1 is in flight.
//!
//! Every entry point that touches CUDA runs inside [`guard`]: cudarc's dynamically
//! loaded entry points panic when a library or symbol is missing, and that panic
//! becomes an error here.

pub mod compile;
pub mod gpu;
pub mod reference;
pub mod segments;

use std::panic::{catch_unwind, AssertUnwindSafe};

/// One kernel source file and the functions it defines.
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    /// File name in `cuda/kernels/`.
    pub file: &'static str,
    /// The CUDA C++ source.
    pub source: &'static str,
    /// `extern "C"` entry points.
    pub functions: &'static [&'static str],
}

/// Block gather / scatter over copy segments.
pub const BLOCK_COPY: Kernel = Kernel {
    file: "block_copy.cu",
    source: include_str!("../kernels/block_copy.cu"),
    functions: &["tierkv_copy_segments"],
};

/// RoPE re-rotation of keys by a position delta.
pub const ROPE: Kernel = Kernel {
    file: "rope.cu",
    source: include_str!("../kernels/rope.cu"),
    functions: &["tierkv_rerotate_keys"],
};

/// Simulated per-layer compute for the transfer benchmark's overlap case (not
/// used by the library).
pub const SIM_COMPUTE: Kernel = Kernel {
    file: "sim_compute.cu",
    source: include_str!("../kernels/sim_compute.cu"),
    functions: &["tierkv_sim_compute"],
};

/// Every kernel; CI compiles each for every architecture in [`ARCHES`].
pub const KERNELS: &[Kernel] = &[BLOCK_COPY, ROPE, SIM_COMPUTE];

/// Architectures CI compiles for (A100 and H100 class).
pub const ARCHES: &[&str] = &["compute_80", "compute_90"];

/// Errors of the GPU data path.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// No driver, no device, no NVRTC, or a symbol this driver lacks.
    #[error("CUDA unavailable: {0}")]
    Unavailable(String),
    /// A bad shape, range or layout from the caller.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The driver returned an error.
    #[error("CUDA driver error in {op}: {msg}")]
    Driver {
        /// The operation.
        op: &'static str,
        /// The driver's message.
        msg: String,
    },
    /// NVRTC rejected a kernel.
    #[error("NVRTC could not compile {file} for {arch}: {log}")]
    Compile {
        /// Kernel file.
        file: &'static str,
        /// Target architecture.
        arch: String,
        /// Compiler log.
        log: String,
    },
}

/// Runs `f`, turning a panic (a missing library or symbol in cudarc's dynamic
/// loading) into [`CudaError::Unavailable`].
pub fn guard<T>(op: &str, f: impl FnOnce() -> Result<T, CudaError>) -> Result<T, CudaError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(CudaError::Unavailable(format!("{op}: {msg}")))
        }
    }
}

/// Whether the CUDA driver library can be loaded (never panics).
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the driver library by its known names.
    guard("probe", || Ok(unsafe { cudarc::driver::sys::is_culib_present() })).unwrap_or(false)
}

/// Whether the NVRTC library can be loaded (never panics).
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen the NVRTC library by its known names.
    guard("probe", || Ok(unsafe { cudarc::nvrtc::sys::is_culib_present() })).unwrap_or(false)
}
