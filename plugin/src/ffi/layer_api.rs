//! Layer-by-layer loads into GPU memory through the C ABI (engines whose KV lives
//! on the GPU, registered with `tierkv_register_device_layout`).
//!
//! Workflow, per forward pass of an engine that computes layer by layer:
//! 1. `tierkv_load_blocks_layerwise` reads and verifies every block into pinned
//!    staging (per-block results come back at once: a block not `LOADED` is
//!    recomputed), then queues each layer's copies on tierkv's copy stream with an
//!    event per layer, and returns a `TierkvLayerLoad`;
//! 2. before computing layer l, the engine calls `tierkv_layer_load_wait_stream`
//!    with its compute stream: the stream waits for layer l's copies, the host does
//!    not (`tierkv_layer_load_wait` blocks the host instead);
//! 3. `tierkv_layer_load_destroy` once the forward pass is queued: it waits for the
//!    last layer's copies, then frees the handle (staging goes back to a pool).

#[cfg(feature = "cuda")]
use super::api::load_code;
use super::api::TIERKV_LOAD_FAILED;
use super::{guard, prefill, FfiError, Held, Registry, TierkvHash, TierkvManager, TierkvStatus};
#[cfg(feature = "cuda")]
use super::{manager, out_ptr, slice_in};
#[cfg(feature = "cuda")]
use crate::manager::BlockHash;
#[cfg(feature = "cuda")]
use crate::manager::LoadOutcome;
use parking_lot::Mutex;

/// A layer-by-layer load in flight (opaque; free with `tierkv_layer_load_destroy`).
pub struct TierkvLayerLoad {
    #[cfg(feature = "cuda")]
    inner: crate::manager::LayerLoad,
}

#[cfg(not(feature = "cuda"))]
fn no_cuda() -> FfiError {
    FfiError {
        status: TierkvStatus::Unavailable,
        message: "this build has no GPU support: build tierkv with `--features cuda`".into(),
    }
}

fn load_ref(load: *const TierkvLayerLoad) -> Result<Held<Mutex<TierkvLayerLoad>>, FfiError> {
    LOADS
        .get(load as usize as u64)
        .ok_or_else(|| FfiError::invalid("unknown or already destroyed load handle"))
}

/// Loads blocks `hashes[i]` into device blocks `block_ids[i]` layer by layer. The
/// registered device layout's regions split into `layers` equal groups in
/// registration order (layer l: regions `l*r/layers .. (l+1)*r/layers`). Every
/// block is read and verified first: `out_results` gets a `TIERKV_LOAD_*` code
/// per block and `*out_loaded` the number loaded before this returns; a block not
/// `LOADED` is not written and must be recomputed. Then each layer's copies are
/// queued with an event, and `*out_load` receives the load (free it with
/// `tierkv_layer_load_destroy`). Returns `TIERKV_STATUS_STATE` without a device
/// layout, `TIERKV_STATUS_INVALID_ARGUMENT` when the regions do not split into
/// `layers`, `TIERKV_STATUS_UNAVAILABLE` in a build without the `cuda` feature.
///
/// # Safety
/// `hashes`, `block_ids` valid for `n` reads; `out_results` valid for `n`
/// writes; `out_loaded`, `out_load` valid for one write each. Nothing else may
/// access these device blocks until the load is destroyed.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn tierkv_load_blocks_layerwise(
    mgr: *const TierkvManager,
    hashes: *const TierkvHash,
    block_ids: *const u64,
    n: usize,
    layers: u32,
    out_results: *mut u8,
    out_loaded: *mut usize,
    out_load: *mut *mut TierkvLayerLoad,
) -> TierkvStatus {
    guard(|| {
        // SAFETY: validated pointer, caller contract; FAILED until each block is done.
        let out = unsafe { prefill(out_results, n, TIERKV_LOAD_FAILED) }?
            .ok_or_else(|| FfiError::invalid("out_results is null"))?;
        #[cfg(feature = "cuda")]
        {
            // SAFETY: validated pointers, caller contract.
            let (out_loaded, out_load) =
                unsafe { (out_ptr(out_loaded, "out_loaded")?, out_ptr(out_load, "out_load")?) };
            *out_loaded = 0;
            *out_load = std::ptr::null_mut();
            let m = manager(mgr)?;
            // SAFETY: as above.
            let (hs, ids) = unsafe { (slice_in(hashes, n, "hashes")?, slice_in(block_ids, n, "block_ids")?) };
            let hs: Vec<BlockHash> = hs.iter().map(|&h| h.into()).collect();
            let mut outcomes = vec![LoadOutcome::Miss; n];
            // SAFETY: the device layout's memory is the engine's, exclusively ours
            // until the load is destroyed per this function's contract.
            let inner = m.in_scope(|| unsafe { m.load_blocks_layerwise(&hs, ids, layers as usize, &mut outcomes) })?;
            for (o, r) in out.iter_mut().zip(&outcomes) {
                *o = load_code(*r);
            }
            *out_loaded = outcomes.iter().filter(|&&o| o == LoadOutcome::Loaded).count();
            *out_load = LOADS.insert(std::sync::Arc::new(Mutex::new(TierkvLayerLoad { inner }))) as usize
                as *mut TierkvLayerLoad;
            Ok(())
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (mgr, hashes, block_ids, layers, out, out_loaded, out_load);
            Err(no_cuda())
        }
    })
}

/// Makes the engine's CUDA stream `stream` (a `CUstream` of the device's primary
/// context, e.g. PyTorch's `torch.cuda.current_stream().cuda_stream`; 0 is the
/// legacy default stream) wait for layer `layer` of `load` without blocking the
/// host. Call it right before computing that layer.
///
/// # Safety
/// `load` a live load; `stream` a live stream (or 0) of the load's device.
#[no_mangle]
pub unsafe extern "C" fn tierkv_layer_load_wait_stream(
    load: *const TierkvLayerLoad,
    layer: u32,
    stream: *mut std::ffi::c_void,
) -> TierkvStatus {
    guard(|| {
        let held = load_ref(load)?;
        let l = held.lock();
        check_layer(&l, layer)?;
        #[cfg(feature = "cuda")]
        {
            // SAFETY: the caller's contract.
            unsafe { l.inner.wait_stream(layer as usize, stream as u64) }.map_err(unavailable)
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = stream;
            Err(no_cuda())
        }
    })
}

/// Blocks the calling thread until layer `layer` of `load` is in GPU memory.
///
/// # Safety
/// `load` a live load.
#[no_mangle]
pub unsafe extern "C" fn tierkv_layer_load_wait(load: *const TierkvLayerLoad, layer: u32) -> TierkvStatus {
    guard(|| {
        let held = load_ref(load)?;
        let l = held.lock();
        check_layer(&l, layer)?;
        #[cfg(feature = "cuda")]
        {
            l.inner.wait_host(layer as usize).map_err(unavailable)
        }
        #[cfg(not(feature = "cuda"))]
        {
            Err(no_cuda())
        }
    })
}

/// Waits for the last layer's copies of `load`, then frees it. Null, an unknown or
/// an already destroyed handle is a no-op (handles are never reused).
///
/// # Safety
/// None beyond passing a value that was a load handle (or null).
#[no_mangle]
pub unsafe extern "C" fn tierkv_layer_load_destroy(load: *mut TierkvLayerLoad) {
    let _ = guard(|| {
        drop(LOADS.remove(load as usize as u64));
        Ok(())
    });
}

static LOADS: Registry<Mutex<TierkvLayerLoad>> = Registry::new();

fn check_layer(l: &TierkvLayerLoad, layer: u32) -> Result<(), FfiError> {
    #[cfg(feature = "cuda")]
    if layer as usize >= l.inner.layers() {
        return Err(FfiError::invalid(format!(
            "layer {layer} of a load of {} layers",
            l.inner.layers()
        )));
    }
    let _ = (l, layer);
    Ok(())
}

#[cfg(feature = "cuda")]
fn unavailable(e: String) -> FfiError {
    FfiError {
        status: TierkvStatus::Unavailable,
        message: e,
    }
}
