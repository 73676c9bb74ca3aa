//! GPU transfer benchmark (needs a GPU; without one it says so and exits 0).
//!
//! Run: `cargo bench -p tierkv-cuda --bench transfer`, optionally with
//! `TIERKV_BENCH_BLOCK_BYTES` (default 2 MiB: 16 tokens of a Llama-3-8B-shaped
//! model, 32 layers x K,V x 8 heads x 128 x bf16) and `TIERKV_GPU_COPY`
//! (`batch|kernel|per_segment`; default: each method in turn).
//! Cases, medians of 9, side by side in one run:
//! 1. H2D / D2H of 1, 16, 128 and 1024 blocks scattered over a device pool of 4096
//!    block slots, from / to pinned host memory, against one `cuMemcpyAsync` of a
//!    contiguous pinned buffer of the same size (the link's practical peak);
//! 2. layer-wise overlap: 32 layers, each a copy of 128 blocks' layer slice and a
//!    simulated compute kernel of about the copy's duration; reports the share of
//!    transfer time hidden behind compute.

use std::time::Instant;

use cudarc::driver::{sys, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;
use tierkv_cuda::compile::compile_ptx;
use tierkv_cuda::gpu::{probe, CopyMethod, Gpu};
use tierkv_cuda::segments::{scatter_layers, PagedLayout, Region, Segment};
use tierkv_cuda::SIM_COMPUTE;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let p = probe();
    if !p.available {
        println!("no GPU: {} (nothing measured)", p.reason);
        return;
    }
    let block: u64 = std::env::var("TIERKV_BENCH_BLOCK_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2 << 20);
    let methods: Vec<CopyMethod> = match std::env::var("TIERKV_GPU_COPY").as_deref() {
        Ok("batch") => vec![CopyMethod::Batch],
        Ok("kernel") => vec![CopyMethod::Kernel],
        Ok("per_segment") => vec![CopyMethod::PerSegment],
        _ => vec![CopyMethod::Batch, CopyMethod::Kernel, CopyMethod::PerSegment],
    };
    println!("driver {} block {} bytes", p.driver_version, block);
    println!("method\tdir\tblocks\tGB/s\tcontiguous GB/s\tratio");
    for m in methods {
        let gpu = match Gpu::open(0, Some(m)) {
            Ok(g) => g,
            Err(e) => {
                println!("{m:?}: {e}");
                continue;
            }
        };
        // SAFETY: the bench owns every buffer it allocates and frees it at the end.
        unsafe { run(&gpu, m, block) };
        // SAFETY: as above.
        unsafe { overlap(&gpu, m, block) };
    }
}

/// Layer-wise overlap: 32 layers of 128 scattered blocks loaded with
/// `Gpu::load_layerwise` while a compute stream runs one simulated layer
/// (`tierkv_sim_compute`, calibrated to one layer's copy time) after waiting for
/// that layer's event. Hidden share = (copy + compute - both) / copy.
unsafe fn overlap(gpu: &Gpu, m: CopyMethod, block: u64) {
    let (layers, n, pool_blocks) = (32u64, 128u64, 4096u64);
    let slice = block / layers;
    gpu.context().bind_to_thread().unwrap();
    let mut dev: sys::CUdeviceptr = 0;
    // SAFETY: plain allocation with a valid out pointer.
    unsafe { sys::cuMemAlloc_v2(&mut dev, (layers * pool_blocks * slice) as usize) }
        .result()
        .unwrap();
    let layout = PagedLayout::new(
        (0..layers)
            .map(|l| Region {
                base: dev + l * pool_blocks * slice,
                stride: slice,
                bytes: slice,
            })
            .collect(),
        pool_blocks,
    )
    .unwrap();
    let mut host = vec![1u8; (n * layout.block_bytes()) as usize];
    // SAFETY: `host` outlives the region (dropped first below).
    let pinned = unsafe { gpu.register_host(host.as_mut_ptr(), host.len()) }.unwrap();
    let slots: Vec<u64> = (0..n).map(|i| (i * 2_654_435_761) % pool_blocks).collect();
    let staging: Vec<u64> = (0..n)
        .map(|j| {
            gpu.copy_addr(&pinned, pinned.host_ptr() + j * layout.block_bytes())
                .unwrap()
        })
        .collect();
    let per_layer = scatter_layers(&layout, layers as usize, &slots, &staging).unwrap();
    let ptx = compile_ptx(&SIM_COMPUTE, gpu.arch()).unwrap();
    let module = gpu.context().load_module(Ptx::from_src(ptx)).unwrap();
    let spin = module.load_function(SIM_COMPUTE.functions[0]).unwrap();
    let compute = gpu.context().new_stream().unwrap();
    let one = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (1, 1, 1),
        shared_mem_bytes: 0,
    };
    let launch = |cycles: i64| {
        let mut b = compute.launch_builder(&spin);
        b.arg(&cycles);
        // SAFETY: the kernel takes one `long long`.
        unsafe { b.launch(one) }.unwrap();
    };
    let secs = |f: &mut dyn FnMut()| {
        let v: Vec<f64> = (0..9)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect();
        median(v)
    };
    let copy = secs(&mut || {
        // SAFETY: segments inside `dev` and the pinned buffer.
        let load = unsafe { gpu.load_layerwise(&per_layer) }.unwrap();
        load.wait_all().unwrap();
    });
    let probe_cycles = 10_000_000i64;
    let per_cycle = secs(&mut || {
        launch(probe_cycles);
        compute.synchronize().unwrap();
    }) / probe_cycles as f64;
    let cycles = (copy / layers as f64 / per_cycle) as i64;
    let alone = secs(&mut || {
        for _ in 0..layers {
            launch(cycles);
        }
        compute.synchronize().unwrap();
    });
    let both = secs(&mut || {
        // SAFETY: as above.
        let load = unsafe { gpu.load_layerwise(&per_layer) }.unwrap();
        for l in 0..layers as usize {
            load.wait_on(l, &compute).unwrap();
            launch(cycles);
        }
        compute.synchronize().unwrap();
        load.wait_all().unwrap();
    });
    let hidden = ((copy + alone - both) / copy).clamp(0.0, 1.0);
    println!(
        "{m:?}\toverlap\t{layers} layers x {n} blocks\tcopy {:.3} ms\tcompute {:.3} ms\tboth {:.3} ms\thidden {:.2}",
        copy * 1e3,
        alone * 1e3,
        both * 1e3,
        hidden
    );
    drop(pinned);
    drop(host);
    // SAFETY: allocated above, no work pending (synchronized).
    unsafe { sys::cuMemFree_v2(dev) };
}

unsafe fn run(gpu: &Gpu, m: CopyMethod, block: u64) {
    let pool_blocks = 4096u64;
    let max = 1024u64;
    gpu.context().bind_to_thread().unwrap();
    let mut dev: sys::CUdeviceptr = 0;
    // SAFETY: plain allocation with a valid out pointer.
    unsafe { sys::cuMemAlloc_v2(&mut dev, (pool_blocks * block) as usize) }
        .result()
        .unwrap();
    let mut host = vec![1u8; (max * block) as usize];
    // SAFETY: `host` outlives the region (dropped first below).
    let pinned = unsafe { gpu.register_host(host.as_mut_ptr(), host.len()) }.unwrap();
    let h = if m == CopyMethod::Kernel {
        pinned.device_addr(pinned.host_ptr()).unwrap()
    } else {
        pinned.host_ptr()
    };
    let s = gpu.copy_stream().cu_stream();
    for n in [1u64, 16, 128, 1024] {
        // Scattered slots: a fixed stride that is coprime with the pool size.
        let slots: Vec<u64> = (0..n).map(|i| (i * 2_654_435_761) % pool_blocks).collect();
        for dir in ["h2d", "d2h"] {
            let segs: Vec<Segment> = slots
                .iter()
                .enumerate()
                .map(|(j, &b)| {
                    let (hh, dd) = (h + j as u64 * block, dev + b * block);
                    if dir == "h2d" {
                        Segment {
                            src: hh,
                            dst: dd,
                            len: block,
                        }
                    } else {
                        Segment {
                            src: dd,
                            dst: hh,
                            len: block,
                        }
                    }
                })
                .collect();
            let (mut ours, mut peak) = (vec![], vec![]);
            for _ in 0..9 {
                let t = Instant::now();
                // SAFETY: device pool and pinned host buffer are live and sized.
                unsafe { gpu.copy(&segs) }.unwrap();
                gpu.synchronize().unwrap();
                ours.push((n * block) as f64 / t.elapsed().as_secs_f64() / 1e9);
                let t = Instant::now();
                let (src, dst) = if dir == "h2d" {
                    (pinned.host_ptr(), dev)
                } else {
                    (dev, pinned.host_ptr())
                };
                // SAFETY: contiguous ranges inside the same buffers.
                unsafe { sys::cuMemcpyAsync(dst, src, (n * block) as usize, s) }
                    .result()
                    .unwrap();
                gpu.synchronize().unwrap();
                peak.push((n * block) as f64 / t.elapsed().as_secs_f64() / 1e9);
            }
            let (o, pk) = (median(ours), median(peak));
            println!("{m:?}\t{dir}\t{n}\t{o:.2}\t{pk:.2}\t{:.2}", o / pk);
        }
    }
    drop(pinned);
    drop(host);
    // SAFETY: allocated above, no work pending (synchronized).
    unsafe { sys::cuMemFree_v2(dev) };
}
