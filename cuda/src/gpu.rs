//! A GPU context for tier transfers: dedicated copy stream, pinned host memory,
//! batched scattered copies, layer-by-layer loads, and the RoPE kernel.
//!
//! Core items: [`Gpu`], [`PinnedRegion`], [`CopyMethod`], [`LayerwiseLoad`],
//! [`probe`].
//!
//! Workflow of [`Gpu::copy`] (segments of any direction, addresses of device
//! memory or of registered pinned host memory; unified addressing makes both
//! valid `CUdeviceptr`s):
//! 1. `Batch` (driver >= 12.8): one `cuMemcpyBatchAsync` for all segments;
//! 2. `Kernel`: one launch of `tierkv_copy_segments` (pinned host memory is
//!    registered DEVICEMAP, so the kernel reads and writes it over PCIe);
//! 3. `PerSegment`: one `cuMemcpyAsync` per segment.
//!
//! Everything is asynchronous on the copy stream; [`Gpu::synchronize`] or the
//! events of a [`LayerwiseLoad`] say when it is done. Engine memory is only ever
//! addressed by raw `CUdeviceptr`: no `CudaSlice` wraps it (dropping one would
//! free the engine's memory).

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::sys;
use cudarc::driver::{CudaContext, CudaEvent, CudaFunction, CudaStream, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;

use crate::compile::compile_ptx;
use crate::reference::{KeyDtype, RopeSpec};
use crate::segments::Segment;
use crate::{driver_present, guard, CudaError, BLOCK_COPY, ROPE};

/// How a batch of segments is moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyMethod {
    /// `cuMemcpyBatchAsync` (driver 12.8 and later).
    Batch,
    /// One launch of the gather/scatter kernel.
    Kernel,
    /// One `cuMemcpyAsync` per segment.
    PerSegment,
}

/// What the driver says, without opening a context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// A usable driver with at least one device.
    pub available: bool,
    /// Why not, when not.
    pub reason: String,
    /// `cuDriverGetVersion` (e.g. 12080), 0 when unknown.
    pub driver_version: i32,
    /// Devices visible.
    pub devices: i32,
}

/// Turns a driver error of operation `op` into [`CudaError::Driver`].
fn derr(op: &'static str) -> impl FnOnce(cudarc::driver::DriverError) -> CudaError {
    move |e| CudaError::Driver { op, msg: e.to_string() }
}

fn drv(op: &'static str, r: sys::CUresult) -> Result<(), CudaError> {
    r.result().map_err(derr(op))
}

/// Looks for a driver and devices. Never panics; no driver is a value.
pub fn probe() -> Probe {
    let none = |reason: String| Probe {
        available: false,
        reason,
        driver_version: 0,
        devices: 0,
    };
    if !driver_present() {
        return none("no CUDA driver library (libcuda.so) found".into());
    }
    let r = guard("probe", || {
        // SAFETY: plain driver queries with valid out pointers.
        unsafe {
            drv("cuInit", sys::cuInit(0))?;
            let (mut v, mut n) = (0, 0);
            drv("cuDriverGetVersion", sys::cuDriverGetVersion(&mut v))?;
            drv("cuDeviceGetCount", sys::cuDeviceGetCount(&mut n))?;
            Ok((v, n))
        }
    });
    match r {
        Ok((v, n)) if n > 0 => Probe {
            available: true,
            reason: String::new(),
            driver_version: v,
            devices: n,
        },
        Ok((v, _)) => Probe {
            driver_version: v,
            ..none("the driver sees no device".into())
        },
        Err(e) => none(e.to_string()),
    }
}

/// Host memory registered with the driver (pinned, portable, device-mapped);
/// unregistered on drop. The memory itself stays the caller's.
pub struct PinnedRegion {
    ctx: Arc<CudaContext>,
    ptr: *mut c_void,
    len: usize,
    device_alias: u64,
}

// SAFETY: the region only holds addresses; registration is process-wide and the
// driver calls it makes are thread-safe.
unsafe impl Send for PinnedRegion {}
// SAFETY: as above; no interior mutation.
unsafe impl Sync for PinnedRegion {}

impl PinnedRegion {
    /// Host address of the region.
    pub fn host_ptr(&self) -> u64 {
        self.ptr as u64
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty (never: registration refuses that).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device-side address of host address `host` inside the region (equal to
    /// it under unified addressing).
    pub fn device_addr(&self, host: u64) -> Option<u64> {
        let off = host.checked_sub(self.ptr as u64)?;
        (off < self.len as u64).then_some(self.device_alias + off)
    }
}

impl Drop for PinnedRegion {
    fn drop(&mut self) {
        let ptr = self.ptr;
        let ctx = Arc::clone(&self.ctx);
        let _ = guard("unregister", move || {
            ctx.bind_to_thread().map_err(derr("bind"))?;
            // SAFETY: `ptr` was registered by `Gpu::register_host` and not since.
            drv("cuMemHostUnregister", unsafe { sys::cuMemHostUnregister(ptr) })
        });
    }
}

/// A device context with the transfer machinery.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    copy_stream: Arc<CudaStream>,
    copy_fn: Option<CudaFunction>,
    rope_fn: Option<CudaFunction>,
    driver_version: i32,
    method: CopyMethod,
    kernel_error: Option<String>,
    arch: String,
}

impl Gpu {
    /// Opens device `ordinal`, creates the copy stream and compiles the kernels
    /// for the device (without NVRTC the kernel paths are off, copies still work).
    /// `prefer` forces a copy method where the driver has it.
    pub fn open(ordinal: usize, prefer: Option<CopyMethod>) -> Result<Self, CudaError> {
        let p = probe();
        if !p.available {
            return Err(CudaError::Unavailable(p.reason));
        }
        guard("open", || {
            let ctx = CudaContext::new(ordinal).map_err(derr("context"))?;
            let copy_stream = ctx.new_stream().map_err(derr("stream"))?;
            let major = ctx
                .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
                .map_err(derr("attribute"))?;
            let minor = ctx
                .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)
                .map_err(derr("attribute"))?;
            let arch = format!("compute_{major}{minor}");
            let load = |k: &crate::Kernel| -> Result<CudaFunction, CudaError> {
                let ptx = compile_ptx(k, &arch)?;
                let m = ctx.load_module(Ptx::from_src(ptx)).map_err(derr("load_module"))?;
                m.load_function(k.functions[0]).map_err(derr("load_function"))
            };
            let (copy_fn, rope_fn) = (load(&BLOCK_COPY), load(&ROPE));
            let kernel_error = copy_fn.as_ref().err().map(|e| e.to_string());
            let batch = p.driver_version >= 12080;
            let method = match prefer {
                Some(CopyMethod::Batch) if batch => CopyMethod::Batch,
                Some(CopyMethod::Kernel) if copy_fn.is_ok() => CopyMethod::Kernel,
                Some(CopyMethod::PerSegment) => CopyMethod::PerSegment,
                Some(m) => {
                    return Err(CudaError::Unavailable(format!(
                        "copy method {m:?} not available (driver {}, kernels: {})",
                        p.driver_version,
                        kernel_error.as_deref().unwrap_or("ok")
                    )))
                }
                None if batch => CopyMethod::Batch,
                None if copy_fn.is_ok() => CopyMethod::Kernel,
                None => CopyMethod::PerSegment,
            };
            Ok(Self {
                ctx,
                copy_stream,
                copy_fn: copy_fn.ok(),
                rope_fn: rope_fn.ok(),
                driver_version: p.driver_version,
                method,
                kernel_error,
                arch,
            })
        })
    }

    /// The method [`Gpu::copy`] uses.
    pub fn method(&self) -> CopyMethod {
        self.method
    }

    /// The driver version.
    pub fn driver_version(&self) -> i32 {
        self.driver_version
    }

    /// Why the kernels are not available, if they are not.
    pub fn kernel_error(&self) -> Option<&str> {
        self.kernel_error.as_deref()
    }

    /// The device's virtual architecture (`compute_90` on an H100).
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// The address [`Gpu::copy`] must use for host address `host` inside
    /// `region`: the device mapping for the kernel method (the kernel dereferences
    /// it), the host address for the driver's copies.
    pub fn copy_addr(&self, region: &PinnedRegion, host: u64) -> Option<u64> {
        let inside = host >= region.host_ptr() && host < region.host_ptr() + region.len() as u64;
        match self.method {
            CopyMethod::Kernel => region.device_addr(host),
            _ if inside => Some(host),
            _ => None,
        }
    }

    /// A stream owned by the engine (a raw `CUstream`, e.g. PyTorch's
    /// `torch.cuda.current_stream().cuda_stream`), to make it wait for a
    /// [`LayerwiseLoad`]. Dropping the wrapper leaves the stream alone.
    ///
    /// # Safety
    /// `raw` must be a valid stream of this device's primary context (or one of
    /// the special handles 0, `CU_STREAM_LEGACY`, `CU_STREAM_PER_THREAD`) and
    /// outlive the wrapper.
    pub unsafe fn borrow_stream(&self, raw: u64) -> Arc<CudaStream> {
        // SAFETY: the caller's contract.
        unsafe { self.ctx.wrap_borrowed_stream(raw as sys::CUstream) }
    }

    /// The copy stream.
    pub fn copy_stream(&self) -> &Arc<CudaStream> {
        &self.copy_stream
    }

    /// The context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// Registers `len` bytes of host memory at `ptr` as pinned, portable and
    /// device-mapped.
    ///
    /// # Safety
    /// `ptr..ptr + len` must be valid host memory that outlives the region and is
    /// not registered already.
    pub unsafe fn register_host(&self, ptr: *mut u8, len: usize) -> Result<PinnedRegion, CudaError> {
        if ptr.is_null() || len == 0 {
            return Err(CudaError::InvalidArgument("empty or null host range".into()));
        }
        guard("register", || {
            self.bind()?;
            let flags = sys::CU_MEMHOSTREGISTER_PORTABLE | sys::CU_MEMHOSTREGISTER_DEVICEMAP;
            let p = ptr.cast::<c_void>();
            // SAFETY: the caller guarantees the range; flags are valid.
            drv("cuMemHostRegister", unsafe { sys::cuMemHostRegister_v2(p, len, flags) })?;
            let mut dev: sys::CUdeviceptr = 0;
            // SAFETY: `p` is registered just above; valid out pointer.
            if let Err(e) = drv("cuMemHostGetDevicePointer", unsafe {
                sys::cuMemHostGetDevicePointer_v2(&mut dev, p, 0)
            }) {
                // SAFETY: registered above, not used since.
                unsafe { sys::cuMemHostUnregister(p) };
                return Err(e);
            }
            Ok(PinnedRegion {
                ctx: Arc::clone(&self.ctx),
                ptr: p,
                len,
                device_alias: dev,
            })
        })
    }

    fn bind(&self) -> Result<(), CudaError> {
        self.ctx.bind_to_thread().map_err(derr("bind"))
    }

    /// Queues the copies of `segs` on the copy stream with [`Gpu::method`].
    ///
    /// # Safety
    /// Every segment's source and destination must be device memory or registered
    /// pinned host memory (device-mapped addresses for the kernel method), valid
    /// until the stream has passed this work, with no overlapping destinations.
    pub unsafe fn copy(&self, segs: &[Segment]) -> Result<(), CudaError> {
        if segs.is_empty() {
            return Ok(());
        }
        guard("copy", || {
            self.bind()?;
            // SAFETY: the caller's contract.
            unsafe { self.copy_on(&self.copy_stream, segs) }
        })
    }

    unsafe fn copy_on(&self, stream: &Arc<CudaStream>, segs: &[Segment]) -> Result<(), CudaError> {
        let s = stream.cu_stream();
        match (self.method, &self.copy_fn) {
            (CopyMethod::Batch, _) => {
                let mut dsts: Vec<sys::CUdeviceptr> = segs.iter().map(|x| x.dst).collect();
                let mut srcs: Vec<sys::CUdeviceptr> = segs.iter().map(|x| x.src).collect();
                let mut sizes: Vec<usize> = segs.iter().map(|x| x.len as usize).collect();
                // SAFETY: a plain-old-data struct; all-zero is a valid start.
                let mut attr: sys::CUmemcpyAttributes = unsafe { std::mem::zeroed() };
                attr.srcAccessOrder = sys::CUmemcpySrcAccessOrder::CU_MEMCPY_SRC_ACCESS_ORDER_STREAM;
                let (mut idx, mut fail) = (0usize, usize::MAX);
                // SAFETY: arrays of `segs.len()` entries, one attribute for all;
                // the caller guarantees the addresses.
                drv("cuMemcpyBatchAsync", unsafe {
                    sys::cuMemcpyBatchAsync(
                        dsts.as_mut_ptr(),
                        srcs.as_mut_ptr(),
                        sizes.as_mut_ptr(),
                        segs.len(),
                        &mut attr,
                        &mut idx,
                        1,
                        &mut fail,
                        s,
                    )
                })
            }
            (CopyMethod::Kernel, Some(f)) => {
                let n = segs.len() as u32;
                let mk = |v: Vec<u64>| stream.clone_htod(&v).map_err(derr("upload segments"));
                let src = mk(segs.iter().map(|x| x.src).collect())?;
                let dst = mk(segs.iter().map(|x| x.dst).collect())?;
                let len = mk(segs.iter().map(|x| x.len).collect())?;
                let cfg = LaunchConfig {
                    grid_dim: (n.min(65_535), 1, 1),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                };
                let mut b = stream.launch_builder(f);
                b.arg(&src).arg(&dst).arg(&len).arg(&n);
                // SAFETY: argument types match the kernel's signature; the caller
                // guarantees the addresses.
                unsafe { b.launch(cfg) }.map(|_| ()).map_err(derr("launch copy"))
            }
            _ => {
                for x in segs {
                    // SAFETY: the caller guarantees the addresses.
                    drv("cuMemcpyAsync", unsafe {
                        sys::cuMemcpyAsync(x.dst, x.src, x.len as usize, s)
                    })?;
                }
                Ok(())
            }
        }
    }

    /// Waits for everything queued on the copy stream.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        guard("synchronize", || {
            self.copy_stream.synchronize().map_err(derr("synchronize"))
        })
    }

    /// Starts a layer-by-layer load: `layers[l]` are layer l's segments; each
    /// layer's copies are followed by an event, so a consumer waits for exactly
    /// the layers it needs.
    ///
    /// # Safety
    /// As [`Gpu::copy`], for every layer's segments.
    pub unsafe fn load_layerwise(&self, layers: &[Vec<Segment>]) -> Result<LayerwiseLoad, CudaError> {
        guard("layerwise", || {
            self.bind()?;
            let mut events = Vec::with_capacity(layers.len());
            for segs in layers {
                // SAFETY: the caller's contract.
                unsafe { self.copy_on(&self.copy_stream, segs) }?;
                let ev = self.copy_stream.record_event(None).map_err(derr("record event"))?;
                events.push(ev);
            }
            Ok(LayerwiseLoad { events })
        })
    }

    /// Re-rotates `tokens` keys at device address `keys` in place by `delta`
    /// (see `reference::rerotate_keys`), on the copy stream.
    ///
    /// # Safety
    /// `keys` must be device memory of `tokens * heads * dim` elements of `dtype`.
    pub unsafe fn rerotate_keys(
        &self,
        keys: u64,
        dtype: KeyDtype,
        spec: &RopeSpec,
        delta: &[i32],
    ) -> Result<(), CudaError> {
        spec.validate()?;
        let f = self
            .rope_fn
            .as_ref()
            .ok_or_else(|| CudaError::Unavailable(self.kernel_error.clone().unwrap_or_default()))?;
        guard("rerotate", || {
            self.bind()?;
            let st = &self.copy_stream;
            let d = st.clone_htod(delta).map_err(derr("upload deltas"))?;
            let fr = st.clone_htod(&spec.inv_freq).map_err(derr("upload freqs"))?;
            let (tokens, neox, code) = (delta.len() as u32, i32::from(spec.neox), dtype.code());
            let pairs = u64::from(tokens) * u64::from(spec.heads) * u64::from(spec.rot_dim / 2);
            let cfg = LaunchConfig {
                grid_dim: (pairs.div_ceil(256).clamp(1, 65_535) as u32, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut b = st.launch_builder(f);
            b.arg(&keys)
                .arg(&d)
                .arg(&fr)
                .arg(&tokens)
                .arg(&spec.heads)
                .arg(&spec.dim)
                .arg(&spec.rot_dim)
                .arg(&neox)
                .arg(&code);
            // SAFETY: argument types match the kernel; the caller guarantees `keys`.
            unsafe { b.launch(cfg) }.map_err(derr("launch rope"))?;
            st.synchronize().map_err(derr("synchronize"))
        })
    }
}

/// Device memory owned by tierkv (tests, benchmarks); freed on drop. Engine
/// memory is never wrapped in one.
pub struct DeviceBuffer {
    ctx: Arc<CudaContext>,
    ptr: u64,
    len: usize,
}

impl DeviceBuffer {
    /// Allocates `len` bytes on `gpu`'s device.
    pub fn new(gpu: &Gpu, len: usize) -> Result<Self, CudaError> {
        guard("alloc", || {
            gpu.bind()?;
            let mut p: sys::CUdeviceptr = 0;
            // SAFETY: plain allocation with a valid out pointer.
            drv("cuMemAlloc", unsafe { sys::cuMemAlloc_v2(&mut p, len.max(1)) })?;
            Ok(Self {
                ctx: Arc::clone(&gpu.ctx),
                ptr: p,
                len,
            })
        })
    }

    /// Device address.
    pub fn ptr(&self) -> u64 {
        self.ptr
    }

    /// Copies `src` to the start of the buffer (synchronous).
    pub fn write(&self, src: &[u8]) -> Result<(), CudaError> {
        if src.len() > self.len {
            return Err(CudaError::InvalidArgument("write past the buffer".into()));
        }
        guard("write", || {
            self.ctx.bind_to_thread().map_err(derr("bind"))?;
            // SAFETY: in range of our allocation; `src` is valid for its length.
            drv("cuMemcpyHtoD", unsafe {
                sys::cuMemcpyHtoD_v2(self.ptr, src.as_ptr().cast(), src.len())
            })
        })
    }

    /// Copies the start of the buffer into `dst` (synchronous).
    pub fn read(&self, dst: &mut [u8]) -> Result<(), CudaError> {
        if dst.len() > self.len {
            return Err(CudaError::InvalidArgument("read past the buffer".into()));
        }
        guard("read", || {
            self.ctx.bind_to_thread().map_err(derr("bind"))?;
            // SAFETY: in range of our allocation; `dst` is valid for its length.
            drv("cuMemcpyDtoH", unsafe {
                sys::cuMemcpyDtoH_v2(dst.as_mut_ptr().cast(), self.ptr, dst.len())
            })
        })
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        let (ctx, p) = (Arc::clone(&self.ctx), self.ptr);
        let _ = guard("free", move || {
            ctx.bind_to_thread().map_err(derr("bind"))?;
            // SAFETY: allocated by `new`, freed once.
            drv("cuMemFree", unsafe { sys::cuMemFree_v2(p) })
        });
    }
}

/// A layer-by-layer load in flight: one event per layer.
pub struct LayerwiseLoad {
    events: Vec<CudaEvent>,
}

impl LayerwiseLoad {
    /// Layers in this load.
    pub fn layers(&self) -> usize {
        self.events.len()
    }

    /// Makes `stream` (the engine's compute stream) wait for layer `l` without
    /// blocking the host.
    pub fn wait_on(&self, l: usize, stream: &CudaStream) -> Result<(), CudaError> {
        let ev = self
            .events
            .get(l)
            .ok_or_else(|| CudaError::InvalidArgument(format!("layer {l} of {}", self.events.len())))?;
        guard("wait", || stream.wait(ev).map_err(derr("stream wait")))
    }

    /// Blocks the host until every layer has arrived.
    pub fn wait_all(&self) -> Result<(), CudaError> {
        // One stream, recorded in order: the last event covers every layer.
        match self.events.len() {
            0 => Ok(()),
            n => self.wait_host(n - 1),
        }
    }

    /// Blocks the host until layer `l` has arrived.
    pub fn wait_host(&self, l: usize) -> Result<(), CudaError> {
        let ev = self
            .events
            .get(l)
            .ok_or_else(|| CudaError::InvalidArgument(format!("layer {l} of {}", self.events.len())))?;
        guard("wait", || ev.synchronize().map_err(derr("event sync")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without a driver (this machine, CI): a value, not a panic.
    #[test]
    fn no_driver_is_an_error_value_not_a_panic() {
        let p = probe();
        if driver_present() {
            return; // a GPU machine: the GPU tests cover it
        }
        assert!(!p.available);
        assert!(p.reason.contains("libcuda"), "{}", p.reason);
        match Gpu::open(0, None) {
            Err(CudaError::Unavailable(r)) => assert!(r.contains("libcuda"), "{r}"),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("opened a GPU without a driver"),
        }
    }
}
