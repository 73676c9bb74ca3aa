//! The scrape: every part adds its own series to one [`Report`]; the manager adds
//! only what is its own (the GPU data path).

use std::sync::atomic::Ordering;

use super::Manager;
use crate::block::BlockPool;
use crate::metrics::Report;

impl Manager {
    /// Every metric in Prometheus text format.
    pub fn metrics_text(&self) -> String {
        let mut r = Report::new();
        self.movement.report_host(&mut r);
        match &self.pool {
            Some(p) => p.lock().report(&mut r),
            None => BlockPool::report_absent(&mut r),
        }
        self.movement.report_lower(&mut r);
        self.hw.report(&mut r);
        r.gauge(
            "tierkv_gpu_data_path",
            "Whether the engine's KV is registered in GPU memory (tierkv_register_device_layout).",
            &[("", u64::from(self.device_active()))],
        );
        r.counter(
            "tierkv_store_deferred_blocks_total",
            "Device blocks not stored because the engine was saturating the PCIe link (offload budget).",
            &[("", self.deferred_blocks.load(Ordering::Relaxed))],
        );
        if let Some(ix) = &self.semantic {
            ix.report(&mut r);
        }
        crate::pq::report(&self.pq_stats, &mut r);
        self.report_events(&mut r);
        self.report_pool_shadow(&mut r);
        r.finish()
    }
}
