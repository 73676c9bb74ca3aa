//! The scheduler: telemetry in, decisions out. Pure and deterministic (state is a
//! short window of past samples), so policies are tested on recorded traces.
//!
//! Decisions and the rules behind them (`link` = usable PCIe bytes/s per
//! direction from the link's generation and width):
//! - **offload rate** (device -> host bytes/s for moving blocks down): what the
//!   engine leaves of the link, `0.9 * link - smoothed TX`, never below a trickle
//!   of `0.05 * link` (offloads back off but never starve); no GPU: unlimited.
//! - **prefetch depth** (blocks to load ahead): what the free RX bandwidth moves
//!   in `prefetch_horizon`, capped by 10% of free device memory, 1..=1024; no
//!   GPU: `default_prefetch`.
//! - **free-block watermark** (engine blocks to keep free): the largest rise of
//!   used memory between two samples in the window, plus 2% of total, capped at
//!   25% of total, in blocks (device memory; host memory without a GPU).
//! - **NUMA node** of the host tier: the GPU's node; none without one.
//! - **placement** of new blocks: the disk tier while host `MemAvailable` is below
//!   5% of RAM (back to the host tier above 10%: hysteresis), else the host tier.
//!
//! ```text
//!   link  |--------------------------------------------| 0.9 * link
//!   TX    |==========engine========|<--offload rate--->|
//!                                   (>= 0.05 * link)
//! ```

use std::collections::VecDeque;
use std::time::Duration;

use super::Telemetry;

/// Where a new block goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Placement {
    /// The host tier (default).
    #[default]
    Host,
    /// Straight to the disk tier (host memory is short).
    Disk,
}

/// What the scheduler decided from one sample.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Decisions {
    /// Offload budget in bytes/s; `None`: unlimited (no link to share).
    pub offload_rate: Option<u64>,
    /// Blocks to load ahead.
    pub prefetch_depth: u64,
    /// Engine blocks to keep free.
    pub watermark_blocks: u64,
    /// NUMA node for the host tier.
    pub numa_node: Option<u32>,
    /// Tier for new blocks.
    pub placement: Placement,
}

/// Fixed inputs of the scheduler.
#[derive(Clone, Debug, PartialEq)]
pub struct SchedParams {
    /// Bytes of one block (all layers).
    pub block_bytes: u64,
    /// How far ahead prefetching looks.
    pub prefetch_horizon: Duration,
    /// Prefetch depth without a GPU.
    pub default_prefetch: u64,
    /// Samples in the window.
    pub window: usize,
    /// Whether a disk tier can take new blocks.
    pub disk_available: bool,
}

impl SchedParams {
    /// Defaults for blocks of `block_bytes`.
    pub fn new(block_bytes: u64, disk_available: bool) -> Self {
        Self {
            block_bytes: block_bytes.max(1),
            prefetch_horizon: Duration::from_millis(50),
            default_prefetch: 32,
            window: 30,
            disk_available,
        }
    }
}

/// The scheduler and its window of past samples.
#[derive(Debug)]
pub struct Scheduler {
    params: SchedParams,
    window: VecDeque<(u64, u64)>,
    tx_smoothed: Option<f64>,
    rx_smoothed: Option<f64>,
    placement: Placement,
}

impl Scheduler {
    /// A scheduler with an empty window.
    pub fn new(params: SchedParams) -> Self {
        Self {
            params,
            window: VecDeque::new(),
            tx_smoothed: None,
            rx_smoothed: None,
            placement: Placement::Host,
        }
    }

    /// Decides from one more sample.
    pub fn decide(&mut self, t: &Telemetry) -> Decisions {
        let p = &self.params;
        let ewma = |prev: Option<f64>, x: u64| Some(prev.map_or(x as f64, |p| 0.5 * p + 0.5 * x as f64));
        let (used, total) = match &t.gpu {
            Some(g) => (g.mem_used, g.mem_total),
            None => (t.host_mem_total.saturating_sub(t.host_mem_available), t.host_mem_total),
        };
        self.window.push_back((used, total));
        while self.window.len() > p.window.max(2) {
            self.window.pop_front();
        }
        let rise = self
            .window
            .iter()
            .zip(self.window.iter().skip(1))
            .map(|(a, b)| b.0.saturating_sub(a.0))
            .max()
            .unwrap_or(0);
        let watermark_bytes = (rise + total / 50).min(total / 4);
        let watermark_blocks = watermark_bytes.div_ceil(p.block_bytes);
        let (offload_rate, prefetch_depth, numa_node) = match &t.gpu {
            Some(g) if g.link_bytes_per_s() > 0 => {
                self.tx_smoothed = ewma(self.tx_smoothed, g.pcie_tx);
                self.rx_smoothed = ewma(self.rx_smoothed, g.pcie_rx);
                let link = g.link_bytes_per_s() as f64;
                let rate = (0.9 * link - self.tx_smoothed.unwrap_or(0.0)).max(0.05 * link);
                let rx_free = (0.9 * link - self.rx_smoothed.unwrap_or(0.0)).max(0.05 * link);
                let by_link = rx_free * p.prefetch_horizon.as_secs_f64() / p.block_bytes as f64;
                let by_mem = (g.mem_total.saturating_sub(g.mem_used) / 10 / p.block_bytes) as f64;
                let depth = by_link.min(by_mem).clamp(1.0, 1024.0) as u64;
                (Some(rate as u64), depth, g.numa_node)
            }
            Some(g) => (None, p.default_prefetch, g.numa_node),
            None => (None, p.default_prefetch, None),
        };
        if t.host_mem_total > 0 && p.disk_available {
            let avail = t.host_mem_available as f64 / t.host_mem_total as f64;
            self.placement = match self.placement {
                Placement::Host if avail < 0.05 => Placement::Disk,
                Placement::Disk if avail > 0.10 => Placement::Host,
                same => same,
            };
        } else {
            self.placement = Placement::Host;
        }
        Decisions {
            offload_rate,
            prefetch_depth,
            watermark_blocks,
            numa_node,
            placement: self.placement,
        }
    }
}
