//! Scheduler policies on telemetry traces (scripted after real hardware, and one
//! recorded here), the trace parser, the sources on this machine, and the sampler
//! thread's lifecycle.

use super::sources::{HostSource, NvmlSource, TraceSource};
use super::*;
use std::time::Instant;

const MIB2: u64 = 2 << 20;

fn run(trace: &str, params: SchedParams) -> Vec<(Telemetry, Decisions)> {
    let mut src = TraceSource::parse(trace).unwrap();
    let mut s = Scheduler::new(params);
    (0..src.len())
        .map(|_| {
            let t = src.sample();
            let d = s.decide(&t);
            (t, d)
        })
        .collect()
}

#[test]
fn link_arithmetic() {
    let g = GpuSample {
        link_gen: 5,
        link_width: 16,
        ..GpuSample::default()
    };
    // PCIe 5.0 x16: 32 GT/s x 16 lanes x 128/130 / 8 = 63.0 GB/s per direction.
    assert_eq!(g.link_bytes_per_s(), 63_015_384_608);
    assert_eq!(GpuSample::default().link_bytes_per_s(), 0);
}

#[test]
fn offloads_back_off_while_the_engine_saturates_the_link_and_recover_after() {
    let r = run(
        include_str!("traces/link-saturated.trace"),
        SchedParams::new(MIB2, true),
    );
    let link = 63_015_384_608f64;
    let rate: Vec<u64> = r.iter().map(|(_, d)| d.offload_rate.unwrap()).collect();
    // Expected (EWMA 0.5 of TX): idle 55.7 GB/s; saturated for four samples down
    // to the 5% trickle; recovering once the engine stops.
    assert!(rate[0] as f64 > 0.85 * link, "{rate:?}");
    assert!(rate[..5].windows(2).all(|w| w[1] < w[0]), "monotone back-off {rate:?}");
    assert_eq!(rate[4], (0.05 * link) as u64, "never below the trickle");
    assert!(rate[7] as f64 > 0.75 * link, "recovered {rate:?}");
    // Prefetching looks 50 ms ahead: at most 1024 blocks (and 10% of free device
    // memory = 1024 blocks of 2 MiB here); less while the engine also loads (RX).
    assert_eq!(r[0].1.prefetch_depth, 1024);
    assert!(r[4].1.prefetch_depth < 700, "{}", r[4].1.prefetch_depth);
    assert!(r.iter().all(|(_, d)| d.numa_node == Some(1)));
    // Steady memory: watermark = 2% of 80 GiB in 2 MiB blocks = 819.2 -> 820.
    assert!(r.iter().all(|(_, d)| d.watermark_blocks == 820), "{:?}", r[0].1);
}

#[test]
fn the_watermark_follows_memory_spikes_and_decays_when_they_leave_the_window() {
    let params = SchedParams {
        window: 3,
        ..SchedParams::new(MIB2, true)
    };
    let r = run(include_str!("traces/memory-spike.trace"), params);
    let w: Vec<u64> = r.iter().map(|(_, d)| d.watermark_blocks).collect();
    // 820 before; the 8 GiB rise adds 4096 blocks (4916) while it is in the
    // 3-sample window; back to 820 once it has left.
    assert_eq!(w, vec![820, 820, 4916, 4916, 820]);
    assert!(r.iter().all(|(_, d)| d.numa_node == Some(0)));
}

#[test]
fn new_blocks_go_to_disk_while_host_memory_is_short_with_hysteresis() {
    let trace = include_str!("traces/host-pressure.trace");
    let r = run(trace, SchedParams::new(MIB2, true));
    let p: Vec<Placement> = r.iter().map(|(_, d)| d.placement).collect();
    // 50% -> host; 3% -> disk; 8% (below the 10% way back) -> disk; 20% -> host.
    assert_eq!(
        p,
        vec![Placement::Host, Placement::Disk, Placement::Disk, Placement::Host]
    );
    // Without a disk tier there is nowhere else to go.
    let r = run(trace, SchedParams::new(MIB2, false));
    assert!(r.iter().all(|(_, d)| d.placement == Placement::Host));
    // No GPU: no link to share, default prefetch, no NUMA preference.
    assert!(r
        .iter()
        .all(|(_, d)| d.offload_rate.is_none() && d.prefetch_depth == 32 && d.numa_node.is_none()));
    // The watermark follows host memory: the 30 GiB rise at sample 1.
    assert!(r[1].1.watermark_blocks > r[0].1.watermark_blocks);
}

#[test]
fn a_recorded_host_trace_gives_host_only_decisions() {
    let r = run(include_str!("traces/host-recorded.trace"), SchedParams::new(MIB2, true));
    assert_eq!(r.len(), 5);
    for (t, d) in &r {
        assert!(t.gpu.is_none() && t.host_mem_available <= t.host_mem_total);
        assert_eq!(d.placement, Placement::Host, "plenty of memory here");
        assert!(d.watermark_blocks >= (t.host_mem_total / 50).div_ceil(MIB2));
    }
}

#[test]
fn trace_errors_name_the_line() {
    let e = TraceSource::parse("t_ms=0\nt_ms=1 gpu_util=abc\n").err().unwrap();
    assert!(e.contains("line 2") && e.contains("gpu_util"), "{e}");
    let e = TraceSource::parse("t_ms=0 bogus=1").err().unwrap();
    assert!(e.contains("unknown key"), "{e}");
    assert!(TraceSource::parse("# nothing\n").is_err());
}

#[test]
fn sources_on_this_machine() {
    let t = HostSource::new().sample();
    assert!(
        t.host_mem_total > 0 && t.host_mem_available <= t.host_mem_total,
        "{t:?}"
    );
    match NvmlSource::open(0) {
        // This machine and CI have no driver: an error value, not a panic.
        Err(why) => {
            assert!(why.contains("NVML"), "{why}");
            let (src, reason) = open_source(0);
            assert_eq!((src.name(), reason.is_some()), ("host", true));
        }
        // A GPU machine: a real sample.
        Ok(mut s) => {
            let g = s.sample().gpu.expect("NVML opened, so GPU 0 answers");
            assert!(g.mem_total > 0 && g.mem_used <= g.mem_total);
        }
    }
}

#[test]
fn the_sampler_publishes_and_stops_when_dropped() {
    let src = TraceSource::parse(include_str!("traces/link-saturated.trace")).unwrap();
    let state = Arc::new(HwState::default());
    let sampler = Sampler::start(
        Box::new(src),
        Scheduler::new(SchedParams::new(MIB2, false)),
        Arc::clone(&state),
        Duration::from_millis(2),
        tracing::Dispatch::none(),
    )
    .unwrap();
    assert!(state.samples() >= 1, "a first sample right at start");
    let end = Instant::now() + Duration::from_secs(10);
    while state.samples() < 5 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(state.samples() >= 5);
    assert_eq!(state.source(), "trace");
    assert!(state.latest().unwrap().0.gpu.is_some());
    let t = Instant::now();
    drop(sampler);
    let n = state.samples();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(state.samples(), n, "no sample after drop");
    assert!(t.elapsed() < Duration::from_secs(1));
}
