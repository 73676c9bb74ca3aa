//! Hardware telemetry and the scheduling decisions it drives.
//!
//! Core items:
//! - [`Telemetry`]: one sample (GPU memory, utilization, PCIe throughput and link,
//!   temperature, throttle reasons, NUMA node; host memory).
//! - [`TelemetrySource`]: where samples come from: [`sources::NvmlSource`] (NVML,
//!   loaded at run time; `init` fails cleanly without a driver),
//!   [`sources::HostSource`] (`/proc/meminfo`, for machines without NVML) and
//!   [`sources::TraceSource`] (a recorded or scripted trace, for tests).
//! - [`sched::Scheduler`]: turns samples into [`Decisions`] (offload rate,
//!   prefetch depth, free-block watermark, NUMA node of the host tier, tier for
//!   new blocks).
//! - [`Sampler`]: a thread per manager that samples every `TIERKV_HW_INTERVAL`,
//!   decides, and publishes into [`HwState`], which the manager reads on its hot
//!   path (atomics) and the exporter renders.
//!
//! Workflow:
//! 1. `Manager::new` starts a [`Sampler`] with NVML if it loads, else the host
//!    source (`tierkv_telemetry_source` says which; `tierkv_gpu_available 0`
//!    without a driver);
//! 2. every interval: `sample()` -> `Scheduler::decide()` -> [`HwState::publish`];
//! 3. `Manager::store_blocks` reads the placement (new blocks go straight to disk
//!    while host memory is short); engines read every decision through
//!    `tierkv_hw_hints`; the exporter renders them all;
//! 4. dropping the manager stops the thread.

pub mod numa;
pub mod pace;
mod report;
pub mod sched;
pub mod sources;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, RecvTimeoutError, Sender};
use parking_lot::Mutex;

pub use sched::{Decisions, Placement, SchedParams, Scheduler};

/// One GPU's sample.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GpuSample {
    /// Device memory, bytes.
    pub mem_total: u64,
    /// Device memory in use, bytes.
    pub mem_used: u64,
    /// Share of time a kernel ran, 0-100.
    pub util_pct: u32,
    /// PCIe bytes per second sent by the GPU (device -> host).
    pub pcie_tx: u64,
    /// PCIe bytes per second received by the GPU (host -> device).
    pub pcie_rx: u64,
    /// PCIe generation of the link now.
    pub link_gen: u32,
    /// PCIe lanes of the link now.
    pub link_width: u32,
    /// Core temperature, Celsius.
    pub temp_c: u32,
    /// NVML throttle-reason bits (0: not throttled).
    pub throttle: u64,
    /// NUMA node the GPU hangs off, if known.
    pub numa_node: Option<u32>,
}

impl GpuSample {
    /// Usable bytes per second per direction of the link (after encoding
    /// overhead), from generation and width; 0 when unknown.
    pub fn link_bytes_per_s(&self) -> u64 {
        // Per lane, per direction, after 8b/10b (gen 1-2) or 128b/130b (gen 3-5).
        let lane: u64 = match self.link_gen {
            1 => 250_000_000,
            2 => 500_000_000,
            3 => 984_615_384,
            4 => 1_969_230_769,
            5 => 3_938_461_538,
            6 => 7_563_000_000,
            _ => 0,
        };
        lane * u64::from(self.link_width)
    }
}

/// One telemetry sample.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Telemetry {
    /// Milliseconds since the source started.
    pub t_ms: u64,
    /// The GPU, when NVML sees one.
    pub gpu: Option<GpuSample>,
    /// Host memory, bytes.
    pub host_mem_total: u64,
    /// Host memory available to new allocations, bytes (`MemAvailable`).
    pub host_mem_available: u64,
}

/// A source of samples. Implementations never panic; a failed read is `None`
/// for that part of the sample.
pub trait TelemetrySource: Send {
    /// Short name for metrics (`nvml`, `host`, `trace`).
    fn name(&self) -> &'static str;
    /// Takes one sample.
    fn sample(&mut self) -> Telemetry;
}

/// The latest sample and decisions, shared between the sampler thread, the
/// manager's hot path (the placement, an atomic) and the exporter and
/// `tierkv_hw_hints` (a locked copy of the rest).
#[derive(Debug, Default)]
pub struct HwState {
    placement_disk: AtomicBool,
    source: AtomicU8,
    samples: AtomicU64,
    last: Mutex<Option<(Telemetry, Decisions)>>,
}

/// Source codes of [`HwState`].
const SOURCES: [&str; 4] = ["none", "nvml", "host", "trace"];

impl HwState {
    /// Publishes a sample and what was decided from it.
    pub fn publish(&self, source: &str, t: Telemetry, d: Decisions) {
        self.placement_disk
            .store(d.placement == Placement::Disk, Ordering::Relaxed);
        let code = SOURCES.iter().position(|s| *s == source).unwrap_or(0);
        self.source.store(code as u8, Ordering::Relaxed);
        self.samples.fetch_add(1, Ordering::Relaxed);
        *self.last.lock() = Some((t, d));
    }

    /// Where new blocks go now.
    pub fn placement(&self) -> Placement {
        if self.placement_disk.load(Ordering::Relaxed) {
            Placement::Disk
        } else {
            Placement::Host
        }
    }

    /// The latest sample and decisions, if any.
    pub fn latest(&self) -> Option<(Telemetry, Decisions)> {
        self.last.lock().clone()
    }

    /// Name of the source of the latest sample.
    pub fn source(&self) -> &'static str {
        SOURCES[usize::from(self.source.load(Ordering::Relaxed)).min(SOURCES.len() - 1)]
    }

    /// Samples taken so far.
    pub fn samples(&self) -> u64 {
        self.samples.load(Ordering::Relaxed)
    }
}

/// The sampling thread; stops when dropped.
pub struct Sampler {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Sampler {
    /// Takes a first sample now (so metrics and hints are valid right after
    /// start), then samples every `interval` on a thread.
    pub fn start(
        mut source: Box<dyn TelemetrySource>,
        mut sched: Scheduler,
        state: Arc<HwState>,
        interval: Duration,
        dispatch: tracing::Dispatch,
    ) -> std::io::Result<Self> {
        let step = move |source: &mut Box<dyn TelemetrySource>, sched: &mut Scheduler| {
            let t = source.sample();
            let d = sched.decide(&t);
            state.publish(source.name(), t, d);
        };
        step(&mut source, &mut sched);
        let (tx, rx) = bounded::<()>(1);
        let thread = std::thread::Builder::new().name("tierkv-hw".into()).spawn(move || {
            tracing::dispatcher::with_default(&dispatch, || loop {
                match rx.recv_timeout(interval) {
                    Err(RecvTimeoutError::Timeout) => step(&mut source, &mut sched),
                    _ => return,
                }
            })
        })?;
        Ok(Self {
            stop: Some(tx),
            thread: Some(thread),
        })
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Opens the best source here: NVML for GPU `device` if it loads and sees it,
/// else the host source. Returns the reason NVML is not used, for the log.
pub fn open_source(device: u32) -> (Box<dyn TelemetrySource>, Option<String>) {
    match sources::NvmlSource::open(device) {
        Ok(s) => (Box::new(s), None),
        Err(why) => (Box::new(sources::HostSource::new()), Some(why)),
    }
}

#[cfg(test)]
mod tests;
