//! Telemetry sources: NVML, the host's `/proc`, and recorded traces.
//!
//! Trace format (one sample per line, `#` comments; keys may be omitted, and a
//! line without `gpu_mem_total` has no GPU):
//!
//! ```text
//! t_ms=0 host_mem_total=68719476736 host_mem_avail=34359738368 gpu_mem_total=85899345920
//!   gpu_mem_used=10737418240 gpu_util=35 pcie_tx=2000000000 pcie_rx=500000000
//!   link_gen=5 link_width=16 temp=55 throttle=0 gpu_numa=1      (one line)
//! ```
//! Units: bytes, bytes/s, percent, Celsius.

use std::time::Instant;

use nvml_wrapper::enum_wrappers::device::{PcieUtilCounter, TemperatureSensor};
use nvml_wrapper::Nvml;

use super::{GpuSample, Telemetry, TelemetrySource};

/// Host memory from `/proc/meminfo`: (total, available) bytes.
fn meminfo() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

/// Samples host memory only (no GPU, or no NVML).
pub struct HostSource {
    start: Instant,
}

impl HostSource {
    /// A host source.
    pub fn new() -> Self {
        Self { start: Instant::now() }
    }
}

impl Default for HostSource {
    fn default() -> Self {
        Self::new()
    }
}

impl TelemetrySource for HostSource {
    fn name(&self) -> &'static str {
        "host"
    }

    fn sample(&mut self) -> Telemetry {
        let (total, avail) = meminfo();
        Telemetry {
            t_ms: self.start.elapsed().as_millis() as u64,
            gpu: None,
            host_mem_total: total,
            host_mem_available: avail,
        }
    }
}

/// Samples one GPU through NVML (`libnvidia-ml.so`, loaded at run time).
pub struct NvmlSource {
    nvml: Nvml,
    index: u32,
    numa_node: Option<u32>,
    start: Instant,
}

impl NvmlSource {
    /// Opens NVML and checks that GPU `index` answers. Errors (no driver, no such
    /// GPU) come back as text for the log; NVML's `init` returns them, it does
    /// not panic, and a panic would still be caught here.
    pub fn open(index: u32) -> Result<Self, String> {
        let opened = std::panic::catch_unwind(|| -> Result<Self, String> {
            let nvml = Nvml::init().map_err(|e| format!("NVML unavailable: {e}"))?;
            let numa_node = {
                let d = nvml
                    .device_by_index(index)
                    .map_err(|e| format!("NVML sees no GPU {index}: {e}"))?;
                d.numa_node_id().ok().or_else(|| {
                    let bus = d.pci_info().ok()?.bus_id.to_ascii_lowercase();
                    let sys = bus.get(bus.len().saturating_sub(12)..)?.to_string();
                    let node = std::fs::read_to_string(format!("/sys/bus/pci/devices/{sys}/numa_node")).ok()?;
                    node.trim().parse::<i64>().ok().and_then(|n| u32::try_from(n).ok())
                })
            };
            Ok(Self {
                nvml,
                index,
                numa_node,
                start: Instant::now(),
            })
        });
        opened.unwrap_or_else(|_| Err("NVML panicked while opening".into()))
    }
}

impl TelemetrySource for NvmlSource {
    fn name(&self) -> &'static str {
        "nvml"
    }

    fn sample(&mut self) -> Telemetry {
        let (total, avail) = meminfo();
        let gpu = self.nvml.device_by_index(self.index).ok().map(|d| {
            let mem = d.memory_info().ok();
            GpuSample {
                mem_total: mem.as_ref().map_or(0, |m| m.total),
                mem_used: mem.as_ref().map_or(0, |m| m.used),
                util_pct: d.utilization_rates().map_or(0, |u| u.gpu),
                // NVML reports KB/s.
                pcie_tx: d
                    .pcie_throughput(PcieUtilCounter::Send)
                    .map_or(0, |k| u64::from(k) * 1024),
                pcie_rx: d
                    .pcie_throughput(PcieUtilCounter::Receive)
                    .map_or(0, |k| u64::from(k) * 1024),
                link_gen: d.current_pcie_link_gen().unwrap_or(0),
                link_width: d.current_pcie_link_width().unwrap_or(0),
                temp_c: d.temperature(TemperatureSensor::Gpu).unwrap_or(0),
                throttle: d.current_throttle_reasons().map_or(0, |r| r.bits()),
                numa_node: self.numa_node,
            }
        });
        Telemetry {
            t_ms: self.start.elapsed().as_millis() as u64,
            gpu,
            host_mem_total: total,
            host_mem_available: avail,
        }
    }
}

/// Replays a recorded trace, one sample per call; the last sample repeats.
pub struct TraceSource {
    samples: Vec<Telemetry>,
    next: usize,
}

impl TraceSource {
    /// Parses a trace; errors name the line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut samples = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut t = Telemetry::default();
            let mut g = GpuSample::default();
            let mut has_gpu = false;
            for kv in line.split_whitespace() {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| format!("line {}: {kv:?} is not key=value", n + 1))?;
                let v: u64 = v
                    .parse()
                    .map_err(|_| format!("line {}: {k}={v:?} is not an integer", n + 1))?;
                let small = || u32::try_from(v).map_err(|_| format!("line {}: {k} too large", n + 1));
                match k {
                    "t_ms" => t.t_ms = v,
                    "host_mem_total" => t.host_mem_total = v,
                    "host_mem_avail" => t.host_mem_available = v,
                    "gpu_mem_total" => {
                        g.mem_total = v;
                        has_gpu = true;
                    }
                    "gpu_mem_used" => g.mem_used = v,
                    "gpu_util" => g.util_pct = small()?,
                    "pcie_tx" => g.pcie_tx = v,
                    "pcie_rx" => g.pcie_rx = v,
                    "link_gen" => g.link_gen = small()?,
                    "link_width" => g.link_width = small()?,
                    "temp" => g.temp_c = small()?,
                    "throttle" => g.throttle = v,
                    "gpu_numa" => g.numa_node = Some(small()?),
                    other => return Err(format!("line {}: unknown key {other:?}", n + 1)),
                }
            }
            t.gpu = has_gpu.then_some(g);
            samples.push(t);
        }
        if samples.is_empty() {
            return Err("empty trace".into());
        }
        Ok(Self { samples, next: 0 })
    }

    /// Samples in the trace.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether the trace is empty (never: `parse` refuses that).
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

impl TelemetrySource for TraceSource {
    fn name(&self) -> &'static str {
        "trace"
    }

    fn sample(&mut self) -> Telemetry {
        let t = self.samples[self.next.min(self.samples.len() - 1)].clone();
        self.next += 1;
        t
    }
}
