//! Telemetry and scheduling through the C ABI of the built library: without a
//! GPU driver (this machine, CI) the library runs on host telemetry and says so;
//! sampling can be turned off; bad values are configuration errors.

#[path = "common.rs"]
mod common;

use common::{api, create, create_in, destroy, metrics};
use std::ffi::c_void;

use tierkv_abi_tests::{status, HwHints, Mgr, Region};

fn hints(m: Mgr) -> HwHints {
    let mut h = HwHints::default();
    // SAFETY: a live handle and a valid out pointer.
    assert_eq!(unsafe { (api().tierkv_hw_hints)(m, &mut h) }, status::OK);
    h
}

#[test]
fn without_a_driver_scheduling_runs_on_host_telemetry_and_says_so() {
    let (m, _store) = create(16, 4096, 0, &[]);
    let h = hints(m);
    let text = metrics(m);
    assert!(h.samples >= 1, "a first sample at creation");
    if h.gpu_available == 0 {
        // No NVML here: host telemetry, no link to share, no NUMA preference.
        assert!(text.contains("tierkv_gpu_available 0"), "{text}");
        assert!(text.contains("tierkv_telemetry_source{source=\"host\"} 1"), "{text}");
        assert_eq!((h.offload_rate_bytes_per_s, h.numa_node), (u64::MAX, -1));
        assert!(
            text.contains("tierkv_sched_offload_rate_bytes_per_second +Inf"),
            "{text}"
        );
    } else {
        // A GPU machine: NVML numbers behind the same names.
        assert!(text.contains("tierkv_gpu_available 1"), "{text}");
        assert!(text.contains("tierkv_pcie_link{kind=\"generation\"}"), "{text}");
    }
    assert_eq!(h.placement, 2, "plenty of host memory here: host tier");
    assert!(h.watermark_blocks > 0 && h.prefetch_depth > 0, "{h:?}");
    assert!(text.contains("tierkv_host_memory_bytes{kind=\"total\"}"), "{text}");
    assert!(text.contains("tierkv_sched_placement{tier=\"host\"} 1"), "{text}");
    // SAFETY: a null handle is refused, not dereferenced.
    let st = unsafe { (api().tierkv_hw_hints)(std::ptr::null_mut(), &mut HwHints::default()) };
    assert_eq!(st, status::INVALID_ARGUMENT);
    destroy(m);
}

#[test]
fn sampling_can_be_turned_off_and_bad_values_name_the_variable() {
    let (m, _store) = create(16, 4096, 0, &[("TIERKV_HW_INTERVAL", "off")]);
    let h = hints(m);
    assert_eq!((h.samples, h.placement, h.offload_rate_bytes_per_s), (0, 2, u64::MAX));
    assert!(metrics(m).contains("tierkv_telemetry_source{source=\"none\"} 1"));
    destroy(m);
    let dir = tempfile::tempdir().unwrap();
    for (var, bad) in [("TIERKV_HW_INTERVAL", "soon"), ("TIERKV_GPU_DEVICE", "300")] {
        let (_, st) = create_in(dir.path(), 16, 4096, 0, &[(var, bad)]);
        assert_eq!(st, status::CONFIG);
        assert!(api().last_error().contains(var), "{}", api().last_error());
    }
}

#[test]
fn a_device_layout_without_gpu_support_is_unavailable_and_says_why() {
    let (m, _store) = create(16, 4096, 0, &[]);
    let r = Region {
        base: 1 << 40,
        block_stride: 4096,
        bytes_per_block: 4096,
    };
    // SAFETY: one valid region; the address is never touched (refused first).
    let st = unsafe { (api().tierkv_register_device_layout)(m, &r, 1, 8, 0) };
    assert_eq!(st, status::UNAVAILABLE);
    let why = api().last_error();
    // The default build has no GPU code; a `cuda` build without a driver says that.
    assert!(why.contains("--features cuda") || why.contains("libcuda"), "{why}");
    // SAFETY: zero regions is refused before any read.
    let st = unsafe { (api().tierkv_register_device_layout)(m, &r, 0, 8, 0) };
    assert_eq!(st, status::INVALID_ARGUMENT);
    destroy(m);
}

#[test]
fn layer_loads_need_a_device_layout_and_say_so() {
    let (m, _store) = create(16, 4096, 0, &[]);
    let h = tierkv_abi_tests::Hash { lo: 1, hi: 2 };
    let ids = [0u64];
    let mut results = [9u8];
    let (mut loaded, mut load) = (7usize, std::ptr::NonNull::<c_void>::dangling().as_ptr());
    // SAFETY: valid pointers for one block; the engine has no layout at all.
    let st = unsafe {
        (api().tierkv_load_blocks_layerwise)(m, &h, ids.as_ptr(), 1, 1, results.as_mut_ptr(), &mut loaded, &mut load)
    };
    let why = api().last_error();
    if why.contains("--features cuda") {
        // The default build: no GPU code at all.
        assert_eq!(st, status::UNAVAILABLE);
    } else {
        // A `cuda` build: a host layout or none is not a device layout.
        assert_eq!(st, status::STATE, "{why}");
        assert!(why.contains("tierkv_register_device_layout"), "{why}");
        assert!(load.is_null(), "no load handed out on error");
        assert_eq!(loaded, 0);
    }
    // A null handle is refused by the waits; destroying null is a no-op.
    // SAFETY: null pointers are checked before any use.
    unsafe {
        assert_eq!(
            (api().tierkv_layer_load_wait)(std::ptr::null(), 0),
            status::INVALID_ARGUMENT
        );
        let st = (api().tierkv_layer_load_wait_stream)(std::ptr::null(), 0, std::ptr::null_mut());
        assert_eq!(st, status::INVALID_ARGUMENT);
        (api().tierkv_layer_load_destroy)(std::ptr::null_mut());
    }
    destroy(m);
}
