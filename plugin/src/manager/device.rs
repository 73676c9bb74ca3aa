//! The manager's calls for engine KV in GPU memory (see [`crate::tier::device`]):
//! register a device layout, store and load through pinned staging, and
//! layer-by-layer loads that the engine's compute stream waits on per layer.
//! Without the `cuda` feature, registration and layer loads are `Unavailable`.

#[cfg(feature = "cuda")]
use std::sync::Arc;

use super::{Manager, ManagerError};
#[cfg(feature = "cuda")]
use crate::prefix::BlockHash;
#[cfg(feature = "cuda")]
use crate::tier::device::{DeviceError, DeviceLink, LayerLoad};
use crate::tier::layout::Region;
#[cfg(feature = "cuda")]
use crate::tier::{LoadOutcome, StoreOutcome};

#[cfg(feature = "cuda")]
impl From<DeviceError> for ManagerError {
    fn from(e: DeviceError) -> Self {
        ManagerError::Unavailable(e.0)
    }
}

impl Manager {
    /// Records the engine's KV layout in the memory of CUDA device `device`
    /// (region bases are device addresses), replacing any earlier layout. Needs a
    /// build with the `cuda` feature and a driver; otherwise `Unavailable`.
    pub fn register_device_layout(&self, regions: &[Region], num_blocks: u64, device: u32) -> Result<(), ManagerError> {
        #[cfg(feature = "cuda")]
        {
            let numa = self.hw.latest().and_then(|(_, d)| d.numa_node);
            let link = DeviceLink::open(
                device,
                regions,
                num_blocks,
                self.movement.host().block_bytes(),
                numa,
                self.config.staging_bytes,
            )
            .map_err(ManagerError::Unavailable)?;
            *self.device.write() = Some(Arc::new(link));
            self.layout.write().take();
            Ok(())
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (regions, num_blocks, device);
            Err(ManagerError::Unavailable(
                "this build has no GPU support: build tierkv with `--features cuda`".into(),
            ))
        }
    }

    /// Stores from device blocks through the staging buffer, paced by the
    /// scheduler's offload rate (see [`crate::tier::device`]).
    ///
    /// # Safety
    /// The device blocks must not be written during the call.
    #[cfg(feature = "cuda")]
    pub(super) unsafe fn store_device(
        &self,
        dev: &DeviceLink,
        hashes: &[BlockHash],
        block_ids: &[u64],
        outcomes: &mut [StoreOutcome],
    ) -> Result<(), ManagerError> {
        Self::check_blocks(dev.num_blocks(), hashes, block_ids)?;
        let rate = self.hw.latest().and_then(|(_, d)| d.offload_rate);
        let k = dev.admit(rate, hashes.len());
        for o in outcomes.iter_mut().skip(k) {
            *o = StoreOutcome::Deferred;
        }
        self.deferred_blocks
            .fetch_add((hashes.len() - k) as u64, std::sync::atomic::Ordering::Relaxed);
        for start in (0..k).step_by(crate::tier::device::STAGING_BLOCKS) {
            let end = (start + crate::tier::device::STAGING_BLOCKS).min(k);
            let slots: Vec<u64> = (0..(end - start) as u64).collect();
            let mut outs = vec![StoreOutcome::NoSpace; end - start];
            dev.with_staging(|staging, ops| {
                ops.gather(&block_ids[start..end]).map_err(ManagerError::Unavailable)?;
                // SAFETY: the staging buffer is ours while held and was just filled.
                unsafe { self.store_in(staging, &hashes[start..end], &slots, &mut outs) }
            })
            .map_err(ManagerError::Unavailable)??;
            for (o, r) in outcomes.iter_mut().skip(start).zip(outs) {
                *o = r;
            }
        }
        Ok(())
    }

    /// Loads into device blocks through the staging buffer.
    ///
    /// # Safety
    /// Nothing else may access these device blocks during the call.
    #[cfg(feature = "cuda")]
    pub(super) unsafe fn load_device(
        &self,
        dev: &DeviceLink,
        hashes: &[BlockHash],
        block_ids: &[u64],
        outcomes: &mut [LoadOutcome],
    ) -> Result<(), ManagerError> {
        Self::check_load_blocks(dev.num_blocks(), hashes, block_ids)?;
        for start in (0..hashes.len()).step_by(crate::tier::device::STAGING_BLOCKS) {
            let end = (start + crate::tier::device::STAGING_BLOCKS).min(hashes.len());
            let slots: Vec<u64> = (0..(end - start) as u64).collect();
            let mut outs = vec![LoadOutcome::Miss; end - start];
            dev.with_staging(|staging, ops| {
                // SAFETY: the staging buffer is ours while held.
                unsafe { self.load_in(staging, &hashes[start..end], &slots, &mut outs) }?;
                let loaded: Vec<usize> = (0..outs.len()).filter(|&j| outs[j] == LoadOutcome::Loaded).collect();
                ops.scatter(&block_ids[start..end], &loaded)
                    .map_err(ManagerError::Unavailable)
            })
            .map_err(ManagerError::Unavailable)??;
            for (o, r) in outcomes.iter_mut().skip(start).zip(outs) {
                *o = r;
            }
        }
        Ok(())
    }

    /// Loads host- or disk-tier blocks `hashes[i]` into device blocks
    /// `block_ids[i]` layer by layer: every block is read and verified into
    /// staging first (`outcomes` say which were loaded, as [`Manager::load_blocks`]),
    /// then layer l's regions of the loaded blocks are copied and an event is
    /// recorded. The regions split into `layers` equal groups in registration
    /// order. The engine waits per layer on the returned load; dropping it waits
    /// for the last layer.
    ///
    /// # Safety
    /// Nothing else may access these device blocks until the load is dropped.
    #[cfg(feature = "cuda")]
    pub unsafe fn load_blocks_layerwise(
        &self,
        hashes: &[BlockHash],
        block_ids: &[u64],
        layers: usize,
        outcomes: &mut [LoadOutcome],
    ) -> Result<LayerLoad, ManagerError> {
        let dev: Arc<DeviceLink> = self.device.read().clone().ok_or(ManagerError::State(
            "no device layout registered: layer-by-layer loads copy into GPU memory (tierkv_register_device_layout)",
        ))?;
        Self::check_load_blocks(dev.num_blocks(), hashes, block_ids)?;
        if outcomes.len() != hashes.len() {
            return Err(ManagerError::InvalidArgument(
                "outcomes and hashes differ in length".into(),
            ));
        }
        dev.check_layers(layers).map_err(ManagerError::InvalidArgument)?;
        let load = dev.load_layers(block_ids, layers, |staging, start, end| {
            let slots: Vec<u64> = (0..(end - start) as u64).collect();
            let outs = &mut outcomes[start..end];
            // SAFETY: the staging buffer is this load's until it is dropped.
            unsafe { self.load_in(staging, &hashes[start..end], &slots, outs) }?;
            Ok::<_, ManagerError>(outs.iter().map(|&o| o == LoadOutcome::Loaded).collect())
        });
        if load.is_ok() {
            self.count_loaded(outcomes);
        }
        load
    }
}
