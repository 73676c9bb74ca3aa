//! Engine KV in GPU memory (feature `cuda`): the manager moves blocks between the
//! engine's device blocks and the tiers through a pinned staging buffer.
//!
//! Core type: [`DeviceLink`] (a `tierkv_cuda::gpu::Gpu`, the engine's paged
//! device layout, and a staging buffer of `STAGING_BLOCKS` blocks: anonymous
//! memory placed on the GPU's NUMA node, then registered pinned).
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
//! Staging costs one extra host copy per block compared with copying straight
//! into arena slots; it keeps the arena's checksum-while-copying protocol intact.

use std::time::Instant;

use parking_lot::Mutex;
use tierkv_cuda::gpu::{Gpu, PinnedRegion};
use tierkv_cuda::segments::{self, PagedLayout};
use tierkv_cuda::CudaError;

use super::layout::{EngineLayout, Region};
use crate::hw::pace::TokenBucket;

/// Blocks the staging buffer holds (one chunk of a store or load).
pub const STAGING_BLOCKS: usize = 64;

/// Anonymous memory registered pinned; unregistered, then unmapped, on drop.
struct Staging {
    ptr: *mut u8,
    len: usize,
    pinned: Option<PinnedRegion>,
}

// SAFETY: the buffer is only touched under `DeviceLink::staging`'s mutex.
unsafe impl Send for Staging {}
// SAFETY: as above.
unsafe impl Sync for Staging {}

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
    staging: Mutex<Staging>,
    bucket: Mutex<TokenBucket>,
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
        let len = STAGING_BLOCKS * block_bytes as usize;
        // SAFETY: a fresh private anonymous mapping.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!("staging buffer: {}", std::io::Error::last_os_error()));
        }
        let mut staging = Staging {
            ptr: p.cast(),
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
        Ok(Self {
            gpu,
            layout,
            block_bytes,
            staging: Mutex::new(staging),
            bucket: Mutex::new(TokenBucket::new(Instant::now())),
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

    /// Runs `f` with exclusive use of the staging buffer, described as a host
    /// layout of `STAGING_BLOCKS` blocks.
    pub fn with_staging<R>(&self, f: impl FnOnce(&EngineLayout, &StagingOps<'_>) -> R) -> Result<R, String> {
        let st = self.staging.lock();
        let region = Region {
            base: st.ptr as u64,
            block_stride: self.block_bytes,
            bytes_per_block: self.block_bytes,
        };
        let layout =
            EngineLayout::new(&[region], STAGING_BLOCKS as u64, self.block_bytes).map_err(|e| e.to_string())?;
        let ops = StagingOps {
            link: self,
            base: st.ptr as u64,
        };
        Ok(f(&layout, &ops))
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
        // SAFETY: the layout's device memory is the engine's (registered by it);
        // staging is registered pinned and held by the caller for the whole copy.
        unsafe { self.link.gpu.copy(&segs) }.map_err(unavailable)?;
        self.link.gpu.synchronize().map_err(unavailable)
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
        // SAFETY: as in `gather`.
        unsafe { self.link.gpu.copy(&segs) }.map_err(unavailable)?;
        self.link.gpu.synchronize().map_err(unavailable)
    }
}
