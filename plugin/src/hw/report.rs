//! Telemetry and the scheduler's decisions as series.

use super::{HwState, Placement};
use crate::metrics::Report;

impl HwState {
    /// Adds telemetry and scheduling series to `r`.
    pub fn report(&self, r: &mut Report) {
        let latest = self.latest();
        let gpu = latest.as_ref().and_then(|(t, _)| t.gpu.clone());
        r.gauge(
            "tierkv_gpu_available",
            "Whether NVML sees the engine's GPU (TIERKV_GPU_DEVICE); 0 without a driver.",
            &[("", u64::from(gpu.is_some()))],
        );
        r.gauge(
            "tierkv_telemetry_source",
            "Where telemetry comes from (nvml, host: /proc, none: sampling off).",
            &[(&format!("source=\"{}\"", self.source()), 1)],
        );
        r.counter(
            "tierkv_telemetry_samples_total",
            "Telemetry samples taken.",
            &[("", self.samples())],
        );
        let Some((t, d)) = latest else { return };
        r.gauge(
            "tierkv_host_memory_bytes",
            "Host memory (/proc/meminfo).",
            &[
                ("kind=\"total\"", t.host_mem_total),
                ("kind=\"available\"", t.host_mem_available),
            ],
        );
        if let Some(g) = &gpu {
            r.gauge(
                "tierkv_gpu_memory_bytes",
                "GPU memory (NVML).",
                &[("kind=\"total\"", g.mem_total), ("kind=\"used\"", g.mem_used)],
            );
            r.gauge(
                "tierkv_gpu_utilization_percent",
                "Share of time a kernel ran (NVML).",
                &[("", u64::from(g.util_pct))],
            );
            r.gauge(
                "tierkv_pcie_throughput_bytes_per_second",
                "PCIe traffic of the GPU (NVML; tx = device to host).",
                &[("dir=\"tx\"", g.pcie_tx), ("dir=\"rx\"", g.pcie_rx)],
            );
            r.gauge(
                "tierkv_pcie_link",
                "PCIe link now: generation, lanes, usable bytes/s per direction.",
                &[
                    ("kind=\"generation\"", u64::from(g.link_gen)),
                    ("kind=\"width\"", u64::from(g.link_width)),
                    ("kind=\"bytes_per_second\"", g.link_bytes_per_s()),
                ],
            );
            r.gauge(
                "tierkv_gpu_temperature_celsius",
                "GPU core temperature (NVML).",
                &[("", u64::from(g.temp_c))],
            );
            r.gauge(
                "tierkv_gpu_throttle_reasons",
                "NVML throttle-reason bits (0: not throttled).",
                &[("", g.throttle)],
            );
        }
        let rate = d.offload_rate.map_or_else(|| "+Inf".to_string(), |r| r.to_string());
        r.gauge_value(
            "tierkv_sched_offload_rate_bytes_per_second",
            "Offload budget the scheduler leaves beside the engine's PCIe traffic (+Inf: no link to share).",
            rate,
        );
        r.gauge(
            "tierkv_sched_prefetch_depth_blocks",
            "Blocks to load ahead.",
            &[("", d.prefetch_depth)],
        );
        r.gauge(
            "tierkv_sched_watermark_blocks",
            "Engine blocks to keep free (from measured memory headroom).",
            &[("", d.watermark_blocks)],
        );
        r.gauge_value(
            "tierkv_sched_numa_node",
            "NUMA node for the host tier (the GPU's; -1: no preference).",
            d.numa_node.map_or(-1, i64::from),
        );
        r.gauge(
            "tierkv_sched_placement",
            "Tier new blocks go to (1 = this one).",
            &[
                ("tier=\"host\"", u64::from(d.placement == Placement::Host)),
                ("tier=\"disk\"", u64::from(d.placement == Placement::Disk)),
            ],
        );
    }
}
