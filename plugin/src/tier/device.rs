//! Engine KV in GPU memory (feature `cuda`): the manager moves blocks between the
//! engine's device blocks and the tiers through a pinned staging buffer.
//!
//! Core type: [`DeviceLink`] (a `tierkv_cuda::gpu::Gpu`, the engine's paged
//! device layout, and a pool of staging buffers of `STAGING_BLOCKS` blocks:
//! anonymous memory placed on the GPU's NUMA node, then registered pinned; each
//! operation takes its own, so stores and loads on several threads run side by
//! side).
//!
//! Workflow of a store (device -> tiers), per chunk of at most `STAGING_BLOCKS`:
//! 1. the offload budget (scheduler's offload rate, token bucket) admits k blocks;
//!    the rest are `Deferred` (not stored now; the engine never waits);
//! 2. one batched D2H copy gathers the k device blocks into staging slots 0..k;
//! 3. the manager's host-memory store runs on the staging slots (checksummed into
//!    the host tier, offloaded to disk by admission, placement respected).
//!
//! Workflow of a load (tiers -> device), per chunk:
//! 1. the manager's host-memory load fills staging slots 0..k (verified; disk
//!    hits read, verified and onboarded as usual);
//! 2. one batched H2D copy scatters the loaded slots into the device blocks.
//!
//! Workflow of a layer-by-layer load ([`DeviceLink::load_layers`]):
//! 1. staging buffers for all n blocks come from the pool (registered once, kept
//!    for the next operation, at most `POOL_KEEP` idle);
//! 2. the manager's host-memory load fills them (verified, as above);
//! 3. layer l's regions of the loaded blocks are copied on the copy stream, then
//!    an event is recorded; the engine's compute stream waits on layer l's event
//!    right before computing layer l ([`LayerLoad::wait_stream`]);
//! 4. dropping the [`LayerLoad`] waits for the last layer, then hands the buffers
//!    back to the pool.
//!
//! Layer loads hold at most `TIERKV_STAGING_BYTES` of staging at once
//! ([`StagingBudget`]): past it, a load's remaining blocks go through one borrowed
//! buffer chunk by chunk, copied whole before the load returns.
//!
//! Staging costs one extra host copy per block compared with copying straight
//! into arena slots; it keeps the arena's checksum-while-copying protocol intact.

use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use tierkv_cuda::gpu::{Gpu, LayerwiseLoad, PinnedRegion};
use tierkv_cuda::segments::{self, PagedLayout, Segment};
use tierkv_cuda::CudaError;

use super::layout::{EngineLayout, Region};
use crate::hw::pace::TokenBucket;

/// Blocks the staging buffer holds (one chunk of a store or load).
pub const STAGING_BLOCKS: usize = 64;

/// Idle staging buffers the layer-load pool keeps registered.
const POOL_KEEP: usize = 8;

/// Anonymous memory registered pinned; unregistered, then unmapped, on drop.
struct Staging {
    ptr: *mut u8,
    len: usize,
    pinned: Option<PinnedRegion>,
}

// SAFETY: a buffer is used by one operation at a time (taken out of the pool).
unsafe impl Send for Staging {}
// SAFETY: as above.
unsafe impl Sync for Staging {}

impl Staging {
    /// Anonymous memory for `STAGING_BLOCKS` blocks, placed on `numa` when given
    /// (before the first touch), then registered pinned with `gpu`.
    fn new(gpu: &Gpu, block_bytes: u64, numa: Option<u32>) -> Result<Self, String> {
        let len = STAGING_BLOCKS * block_bytes as usize;
        let p = crate::hw::numa::map_anonymous(len).map_err(|e| format!("staging buffer: {e}"))?;
        let mut staging = Staging {
            ptr: p,
            len,
            pinned: None,
        };
        if let Some(node) = numa {
            // SAFETY: our mapping, not yet touched: pages land on `node`.
            if let Err(e) = unsafe { crate::hw::numa::prefer_node(staging.ptr, len, node) } {
                tracing::info!(node, error = %e, "staging buffer not placed on the GPU's NUMA node");
            }
        }
        // SAFETY: the mapping lives as long as `staging`, which drops the
        // registration first.
        staging.pinned = Some(unsafe { gpu.register_host(staging.ptr, len) }.map_err(unavailable)?);
        Ok(staging)
    }

    /// The address copies use for byte `off` of the buffer.
    fn copy_addr(&self, gpu: &Gpu, off: u64) -> Result<u64, String> {
        let pinned = self.pinned.as_ref().ok_or("staging buffer not registered")?;
        gpu.copy_addr(pinned, self.ptr as u64 + off)
            .ok_or_else(|| format!("staging offset {off} outside the buffer"))
    }

    /// The buffer as a host layout of `STAGING_BLOCKS` blocks.
    fn layout(&self, block_bytes: u64) -> Result<EngineLayout, String> {
        let region = Region {
            base: self.ptr as u64,
            block_stride: block_bytes,
            bytes_per_block: block_bytes,
        };
        EngineLayout::new(&[region], STAGING_BLOCKS as u64, block_bytes).map_err(|e| e.to_string())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        self.pinned.take();
        // SAFETY: our own mapping, no longer registered.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// The engine's device memory and the machinery to reach it.
pub struct DeviceLink {
    gpu: Gpu,
    layout: PagedLayout,
    block_bytes: u64,
    /// Idle staging buffers. An operation takes its own (a layer load keeps its
    /// buffers until the engine has consumed the last layer) and gives them back.
    pool: Mutex<Vec<Staging>>,
    numa: Option<u32>,
    bucket: Mutex<TokenBucket>,
    /// Staging memory held by layer loads, within `TIERKV_STAGING_BYTES`.
    budget: StagingBudget,
}

/// Bytes of staging that layer loads may hold at once (`TIERKV_STAGING_BYTES`).
/// A load always gets its first buffer; past the cap, its remaining blocks are
/// loaded chunk by chunk through one borrowed buffer (whole blocks, copied before
/// the load returns) instead of holding a buffer per 64 blocks until the engine
/// has consumed the last layer.
#[derive(Debug)]
pub struct StagingBudget {
    cap: u64,
    held: std::sync::atomic::AtomicU64,
}

impl StagingBudget {
    /// A budget of `cap` bytes.
    pub fn new(cap: u64) -> Self {
        Self {
            cap,
            held: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Takes `bytes` if they fit (or if `first`, the load's first buffer).
    pub fn try_take(&self, bytes: u64, first: bool) -> bool {
        use std::sync::atomic::Ordering;
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| {
                let next = h.saturating_add(bytes);
                (first || next <= self.cap).then_some(next)
            })
            .is_ok()
    }

    /// Gives `bytes` back.
    pub fn release(&self, bytes: u64) {
        self.held.fetch_sub(bytes, std::sync::atomic::Ordering::AcqRel);
    }

    /// Bytes held now.
    pub fn held(&self) -> u64 {
        self.held.load(std::sync::atomic::Ordering::Acquire)
    }
}

fn unavailable(e: CudaError) -> String {
    e.to_string()
}

impl DeviceLink {
    /// Opens GPU `device` (CUDA ordinal) for an engine layout of `regions` (device
    /// addresses) and prepares staging on NUMA node `numa` when given.
    pub fn open(
        device: u32,
        regions: &[Region],
        num_blocks: u64,
        block_bytes: u64,
        numa: Option<u32>,
        staging_bytes: u64,
    ) -> Result<Self, String> {
        let layout = PagedLayout::new(
            regions
                .iter()
                .map(|r| segments::Region {
                    base: r.base,
                    stride: r.block_stride,
                    bytes: r.bytes_per_block,
                })
                .collect(),
            num_blocks,
        )
        .map_err(unavailable)?;
        if layout.block_bytes() != block_bytes {
            return Err(format!(
                "device layout blocks are {} bytes, the manager's {block_bytes}",
                layout.block_bytes()
            ));
        }
        let gpu = Gpu::open(device as usize, None).map_err(unavailable)?;
        let staging = Staging::new(&gpu, block_bytes, numa)?;
        Ok(Self {
            gpu,
            layout,
            block_bytes,
            pool: Mutex::new(vec![staging]),
            numa,
            bucket: Mutex::new(TokenBucket::new(Instant::now())),
            budget: StagingBudget::new(staging_bytes),
        })
    }

    /// Engine blocks in the device layout.
    pub fn num_blocks(&self) -> u64 {
        self.layout.num_blocks()
    }

    /// How many of `n` blocks the offload budget lets through now.
    pub fn admit(&self, rate: Option<u64>, n: usize) -> usize {
        self.bucket.lock().take(Instant::now(), rate, n, self.block_bytes)
    }

    /// Runs `f` with exclusive use of a staging buffer, described as a host
    /// layout of `STAGING_BLOCKS` blocks.
    pub fn with_staging<R>(&self, f: impl FnOnce(&EngineLayout, &StagingOps<'_>) -> R) -> Result<R, String> {
        let st = self.take_buffer()?;
        let run = || -> Result<R, String> {
            let layout = st.layout(self.block_bytes)?;
            let ops = StagingOps {
                link: self,
                base: st.copy_addr(&self.gpu, 0)?,
            };
            Ok(f(&layout, &ops))
        };
        let r = run();
        self.give_back(st);
        r
    }

    /// An idle staging buffer, or a new one.
    fn take_buffer(&self) -> Result<Staging, String> {
        let pooled = self.pool.lock().pop();
        match pooled {
            Some(b) => Ok(b),
            None => Staging::new(&self.gpu, self.block_bytes, self.numa),
        }
    }

    /// Back to the pool (released beyond `POOL_KEEP` idle buffers). Every copy
    /// that touches it must have run.
    fn give_back(&self, b: Staging) {
        let mut pool = self.pool.lock();
        if pool.len() < POOL_KEEP {
            pool.push(b);
        }
    }

    /// Checks that the layout's regions split into `layers` equal groups.
    pub fn check_layers(&self, layers: usize) -> Result<(), String> {
        let r = self.layout.regions().len();
        if layers == 0 || !r.is_multiple_of(layers) {
            return Err(format!(
                "the device layout's {r} regions do not split into {layers} layers"
            ));
        }
        Ok(())
    }

    /// A layer-by-layer load of `block_ids.len()` blocks: `fill(layout, start, end)`
    /// loads blocks `start..end` into slots `0..end - start` of one staging buffer
    /// (a host layout) and says which slots hold verified blocks; then each layer's
    /// copies are queued with an event. See the module's workflow.
    pub fn load_layers<E: From<DeviceError>>(
        self: &Arc<Self>,
        block_ids: &[u64],
        layers: usize,
        mut fill: impl FnMut(&EngineLayout, usize, usize) -> Result<Vec<bool>, E>,
    ) -> Result<LayerLoad, E> {
        self.check_layers(layers).map_err(DeviceError)?;
        let mut lease = Lease {
            link: Arc::clone(self),
            buffers: Vec::new(),
            held: 0,
        };
        let (mut blocks, mut addrs) = (Vec::new(), Vec::new());
        let buf_bytes = STAGING_BLOCKS as u64 * self.block_bytes;
        for start in (0..block_ids.len()).step_by(STAGING_BLOCKS) {
            let end = (start + STAGING_BLOCKS).min(block_ids.len());
            if !self.budget.try_take(buf_bytes, lease.buffers.is_empty()) {
                // Over TIERKV_STAGING_BYTES: these blocks are loaded whole, now.
                self.load_chunk_now(&block_ids[start..end], start, &mut fill)?;
                continue;
            }
            lease.held += buf_bytes;
            lease.buffers.push(self.take_buffer().map_err(DeviceError)?);
            let buf = lease.buffers.last().expect("just pushed");
            let loaded = fill(&buf.layout(self.block_bytes).map_err(DeviceError)?, start, end)?;
            for (j, ok) in loaded.into_iter().enumerate() {
                if ok {
                    addrs.push(
                        buf.copy_addr(&self.gpu, j as u64 * self.block_bytes)
                            .map_err(DeviceError)?,
                    );
                    blocks.push(block_ids[start + j]);
                }
            }
        }
        let per_layer: Vec<Vec<Segment>> =
            segments::scatter_layers(&self.layout, layers, &blocks, &addrs).map_err(|e| DeviceError(e.to_string()))?;
        // SAFETY: the engine's device memory (registered by it, not accessed
        // meanwhile per the load's contract) and staging buffers that the returned
        // load keeps until its last layer has arrived.
        match unsafe { self.gpu.load_layerwise(&per_layer) } {
            Ok(load) => Ok(LayerLoad { load, lease }),
            Err(e) => {
                // Copies may be queued: the buffers go back only once they ran.
                let _ = self.gpu.synchronize();
                Err(DeviceError(e.to_string()).into())
            }
        }
    }
}

/// A failure of the device path (no driver, a failed copy, a bad layer split).
#[derive(Debug)]
pub struct DeviceError(pub String);

impl DeviceLink {
    /// A chunk of a layer load past the staging budget: filled into a borrowed
    /// buffer and copied whole into the device blocks before returning.
    fn load_chunk_now<E: From<DeviceError>>(
        &self,
        ids: &[u64],
        start: usize,
        fill: &mut impl FnMut(&EngineLayout, usize, usize) -> Result<Vec<bool>, E>,
    ) -> Result<(), E> {
        let end = start + ids.len();
        self.with_staging(|layout, ops| -> Result<(), E> {
            let loaded = fill(layout, start, end)?;
            let which: Vec<usize> = (0..loaded.len()).filter(|&j| loaded[j]).collect();
            ops.scatter(ids, &which).map_err(|e| DeviceError(e).into())
        })
        .map_err(DeviceError)?
    }
}

/// Staging buffers lent to one layer load (and the budget they take); back to
/// the pool on drop.
struct Lease {
    link: Arc<DeviceLink>,
    buffers: Vec<Staging>,
    held: u64,
}

impl Drop for Lease {
    fn drop(&mut self) {
        for b in self.buffers.drain(..) {
            self.link.give_back(b);
        }
        self.link.budget.release(self.held);
    }
}

/// A layer-by-layer load in flight (see [`DeviceLink::load_layers`]).
pub struct LayerLoad {
    load: LayerwiseLoad,
    lease: Lease,
}

impl LayerLoad {
    /// Layers in this load.
    pub fn layers(&self) -> usize {
        self.load.layers()
    }

    /// Makes the engine's stream `raw` (a `CUstream`) wait for layer `l`, without
    /// blocking the host.
    ///
    /// # Safety
    /// `raw` must be a live stream of the device's primary context (or a special
    /// handle: 0, `CU_STREAM_LEGACY`, `CU_STREAM_PER_THREAD`).
    pub unsafe fn wait_stream(&self, l: usize, raw: u64) -> Result<(), String> {
        let gpu = &self.lease.link.gpu;
        // SAFETY: the caller's contract; the wrapper is dropped before we return.
        let stream = unsafe { gpu.borrow_stream(raw) };
        self.load.wait_on(l, &stream).map_err(unavailable)
    }

    /// Blocks the host until layer `l` has arrived.
    pub fn wait_host(&self, l: usize) -> Result<(), String> {
        self.load.wait_host(l).map_err(unavailable)
    }
}

impl Drop for LayerLoad {
    fn drop(&mut self) {
        // The staging buffers may only be reused once every copy has read them.
        if let Err(e) = self.load.wait_all() {
            tracing::warn!(error = %e, "layer load: waiting for the last layer failed; synchronizing the copy stream");
            let _ = self.lease.link.gpu.synchronize();
        }
    }
}

/// Copies between the staging buffer (held) and device blocks.
pub struct StagingOps<'a> {
    link: &'a DeviceLink,
    base: u64,
}

impl StagingOps<'_> {
    /// Device blocks `ids[j]` -> staging slot j, waited for.
    pub fn gather(&self, ids: &[u64]) -> Result<(), String> {
        let segs = segments::gather(&self.link.layout, ids, self.base).map_err(unavailable)?;
        self.run(&segs)
    }

    /// Staging slots `which[..]` -> device blocks `ids[which[..]]`, waited for.
    pub fn scatter(&self, ids: &[u64], which: &[usize]) -> Result<(), String> {
        let bb = self.link.block_bytes;
        let mut segs = Vec::new();
        for &j in which {
            let one =
                segments::scatter(&self.link.layout, &ids[j..=j], self.base + j as u64 * bb).map_err(unavailable)?;
            segs.extend(one);
        }
        self.run(&segs)
    }

    /// Copies and waits, also when the copy fails part way: the buffer goes back
    /// to the pool afterwards and must not be written by a copy still queued.
    fn run(&self, segs: &[Segment]) -> Result<(), String> {
        // SAFETY: the layout's device memory is the engine's (registered by it);
        // staging is registered pinned and held by the caller for the whole copy.
        let copied = unsafe { self.link.gpu.copy(segs) }.map_err(unavailable);
        let waited = self.link.gpu.synchronize().map_err(unavailable);
        copied.and(waited)
    }
}

#[cfg(test)]
mod tests {
    use super::StagingBudget;

    #[test]
    fn the_staging_budget_caps_what_layer_loads_hold() {
        let b = StagingBudget::new(100);
        assert!(b.try_take(60, true));
        assert!(!b.try_take(60, false), "over the cap: fall back to chunked loads");
        assert!(b.try_take(40, false));
        assert!(b.try_take(60, true), "a load's first buffer always");
        assert_eq!(b.held(), 160);
        b.release(160);
        assert_eq!(b.held(), 0);
        assert!(b.try_take(100, false));
    }
}
