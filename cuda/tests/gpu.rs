//! GPU tests: each kernel and copy method against the CPU reference. Behind the
//! `cuda` feature; run on a GPU machine with
//! `cargo nextest run -p tierkv-cuda --features cuda` (DEVELOPERS.md). With the
//! feature on, a missing GPU is a failure, not a skip.
#![cfg(feature = "cuda")]

use cudarc::driver::sys;
use tierkv_cuda::gpu::{CopyMethod, Gpu};
use tierkv_cuda::reference::{self, KeyDtype, RopeSpec};
use tierkv_cuda::segments::{gather, scatter, scatter_layers, PagedLayout, Region};

struct DevBuf(u64);

impl DevBuf {
    fn new(gpu: &Gpu, bytes: usize) -> Self {
        gpu.context().bind_to_thread().unwrap();
        let mut p = 0;
        // SAFETY: plain allocation with a valid out pointer.
        unsafe { sys::cuMemAlloc_v2(&mut p, bytes) }.result().unwrap();
        DevBuf(p)
    }
}

impl Drop for DevBuf {
    fn drop(&mut self) {
        // SAFETY: allocated by `new`; tests synchronize before dropping.
        unsafe { sys::cuMemFree_v2(self.0) };
    }
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed)).collect()
}

/// The GPU opened once per copy method (batch copies only where the driver has
/// them; the others must open).
fn each_method() -> Vec<(CopyMethod, Gpu)> {
    let mut out = Vec::new();
    for m in [CopyMethod::Batch, CopyMethod::Kernel, CopyMethod::PerSegment] {
        match Gpu::open(0, Some(m)) {
            Ok(g) => out.push((m, g)),
            Err(e) if m == CopyMethod::Batch => eprintln!("batch copies unavailable on this driver: {e}"),
            Err(e) => panic!("{m:?}: {e}"),
        }
    }
    out
}

#[test]
fn every_copy_method_moves_scattered_blocks_exactly() {
    for (m, gpu) in each_method() {
        // Device pool: 2 regions (K, V) of 64 blocks of 4 KiB + 8 (unaligned tail).
        let (nb, bytes) = (64u64, 4096u64 + 8);
        let dev = DevBuf::new(&gpu, (2 * nb * bytes) as usize);
        let layout = PagedLayout::new(
            vec![
                Region {
                    base: dev.0,
                    stride: bytes,
                    bytes,
                },
                Region {
                    base: dev.0 + nb * bytes,
                    stride: bytes,
                    bytes,
                },
            ],
            nb,
        )
        .unwrap();
        let blocks = [5u64, 6, 7, 40, 2, 63];
        let mut host = pattern(blocks.len() * layout.block_bytes() as usize, 3);
        let want = host.clone();
        // SAFETY: `host` outlives the region.
        let pinned = unsafe { gpu.register_host(host.as_mut_ptr(), host.len()) }.unwrap();
        let base = if m == CopyMethod::Kernel {
            pinned.device_addr(pinned.host_ptr()).unwrap()
        } else {
            pinned.host_ptr()
        };
        // SAFETY: segments inside `dev` and the pinned buffer.
        unsafe { gpu.copy(&scatter(&layout, &blocks, base).unwrap()) }.unwrap();
        gpu.synchronize().unwrap();
        host.iter_mut().for_each(|b| *b = 0);
        // SAFETY: as above.
        unsafe { gpu.copy(&gather(&layout, &blocks, base).unwrap()) }.unwrap();
        gpu.synchronize().unwrap();
        drop(pinned);
        assert_eq!(host, want, "{m:?}: blocks differ after H2D + D2H");
    }
}

#[test]
fn layerwise_load_signals_each_layer() {
    let gpu = Gpu::open(0, None).unwrap();
    let (layers, nb, bytes) = (8usize, 32u64, 65_536u64);
    let dev = DevBuf::new(&gpu, layers * (nb * bytes) as usize);
    let mut host = pattern(layers * 4 * bytes as usize, 9);
    let want = host.clone();
    // SAFETY: `host` outlives the region.
    let pinned = unsafe { gpu.register_host(host.as_mut_ptr(), host.len()) }.unwrap();
    let blocks = [1u64, 9, 17, 30];
    let per_layer: Vec<_> = (0..layers)
        .map(|l| {
            let layout = PagedLayout::new(
                vec![Region {
                    base: dev.0 + (l as u64) * nb * bytes,
                    stride: bytes,
                    bytes,
                }],
                nb,
            )
            .unwrap();
            scatter(&layout, &blocks, pinned.host_ptr() + (l as u64) * 4 * bytes).unwrap()
        })
        .collect();
    // SAFETY: segments inside `dev` and the pinned buffer.
    let load = unsafe { gpu.load_layerwise(&per_layer) }.unwrap();
    for l in 0..layers {
        load.wait_host(l).unwrap();
    }
    assert!(load.wait_host(layers).is_err());
    host.iter_mut().for_each(|b| *b = 0);
    let back: Vec<_> = per_layer
        .iter()
        .flat_map(|segs| {
            segs.iter().map(|s| tierkv_cuda::segments::Segment {
                src: s.dst,
                dst: s.src,
                len: s.len,
            })
        })
        .collect();
    // SAFETY: as above.
    unsafe { gpu.copy(&back) }.unwrap();
    gpu.synchronize().unwrap();
    drop(pinned);
    assert_eq!(host, want);
}

/// The C ABI's path: tier blocks at per-block staging addresses, K and V regions
/// per layer, split by `scatter_layers`; an engine stream (borrowed by its raw
/// handle) waits for each layer's event before it reads that layer.
#[test]
fn layer_split_load_reaches_an_engine_stream_in_order() {
    for (m, gpu) in each_method() {
        let (layers, nb, bytes) = (4u64, 16u64, 2048u64);
        let dev = DevBuf::new(&gpu, (2 * layers * nb * bytes) as usize);
        let regions: Vec<Region> = (0..2 * layers)
            .map(|r| Region {
                base: dev.0 + r * nb * bytes,
                stride: bytes,
                bytes,
            })
            .collect();
        let layout = PagedLayout::new(regions, nb).unwrap();
        let blocks = [3u64, 4, 11, 0];
        let bb = layout.block_bytes();
        let mut host = pattern(blocks.len() * bb as usize, 5);
        let want = host.clone();
        // SAFETY: `host` outlives the region.
        let pinned = unsafe { gpu.register_host(host.as_mut_ptr(), host.len()) }.unwrap();
        let staging: Vec<u64> = (0..blocks.len() as u64)
            .map(|j| gpu.copy_addr(&pinned, pinned.host_ptr() + j * bb).unwrap())
            .collect();
        let per_layer = scatter_layers(&layout, layers as usize, &blocks, &staging).unwrap();
        let engine = gpu.context().new_stream().unwrap();
        // SAFETY: `engine` is a live stream of this context and outlives `borrowed`.
        let borrowed = unsafe { gpu.borrow_stream(engine.cu_stream() as u64) };
        // SAFETY: segments inside `dev` and the pinned buffer.
        let load = unsafe { gpu.load_layerwise(&per_layer) }.unwrap();
        for l in 0..layers as usize {
            load.wait_on(l, &borrowed).unwrap();
        }
        borrowed.synchronize().unwrap();
        load.wait_all().unwrap();
        drop(borrowed);
        host.iter_mut().for_each(|b| *b = 0);
        let base = gpu.copy_addr(&pinned, pinned.host_ptr()).unwrap();
        // SAFETY: as above.
        unsafe { gpu.copy(&gather(&layout, &blocks, base).unwrap()) }.unwrap();
        gpu.synchronize().unwrap();
        drop(pinned);
        assert_eq!(host, want, "{m:?}: layer-split load differs");
    }
}

#[test]
fn rope_kernel_equals_the_cpu_reference() {
    let gpu = Gpu::open(0, None).unwrap();
    let spec = RopeSpec::standard(3, 64, 64, 100_000.0, true).unwrap();
    let tokens = 100usize;
    let delta: Vec<i32> = (0..tokens as i32).map(|t| t * 37 - 1800).collect();
    for (dtype, tol) in [
        (KeyDtype::F32, 1e-5f32),
        (KeyDtype::F16, 2e-3),
        (KeyDtype::Bf16, 1.6e-2),
    ] {
        let n = tokens * spec.token_elems();
        let vals: Vec<f32> = (0..n).map(|i| ((i * 7919 % 2000) as f32 / 1000.0) - 1.0).collect();
        let mut cpu: Vec<u8> = vals
            .iter()
            .flat_map(|&f| match dtype {
                KeyDtype::F32 => f.to_ne_bytes().to_vec(),
                KeyDtype::F16 => reference::f32_to_f16(f).to_ne_bytes().to_vec(),
                KeyDtype::Bf16 => reference::f32_to_bf16(f).to_ne_bytes().to_vec(),
            })
            .collect();
        let dev = DevBuf::new(&gpu, cpu.len());
        gpu.context().bind_to_thread().unwrap();
        // SAFETY: `dev` holds `cpu.len()` bytes.
        unsafe { sys::cuMemcpyHtoD_v2(dev.0, cpu.as_ptr().cast(), cpu.len()) }
            .result()
            .unwrap();
        // SAFETY: `dev` holds the keys of `tokens` tokens of `dtype`.
        unsafe { gpu.rerotate_keys(dev.0, dtype, &spec, &delta) }.unwrap();
        let mut out = vec![0u8; cpu.len()];
        // SAFETY: as above.
        unsafe { sys::cuMemcpyDtoH_v2(out.as_mut_ptr().cast(), dev.0, out.len()) }
            .result()
            .unwrap();
        reference::rerotate_keys(&mut cpu, dtype, &spec, &delta).unwrap();
        let f = |b: &[u8], i: usize| match dtype {
            KeyDtype::F32 => f32::from_ne_bytes(b[i * 4..i * 4 + 4].try_into().unwrap()),
            KeyDtype::F16 => reference::f16_to_f32(u16::from_ne_bytes([b[2 * i], b[2 * i + 1]])),
            KeyDtype::Bf16 => reference::bf16_to_f32(u16::from_ne_bytes([b[2 * i], b[2 * i + 1]])),
        };
        for i in 0..n {
            let (g, c) = (f(&out, i), f(&cpu, i));
            assert!((g - c).abs() <= tol, "{dtype:?} element {i}: gpu {g} cpu {c}");
        }
    }
}
