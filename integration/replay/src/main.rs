//! `tierkv-replay`: the hit ratio of each disk-tier eviction policy on a trace, next
//! to Belady's optimum, at one or more capacities.
//!
//! Usage: `tierkv-replay TRACE [--capacity 5%[,10%,...] | --capacity 4096] [--cost]`.
//! The trace format is documented in the `tierkv_replay` library (`integration/replay/src/lib.rs`). A capacity with `%`
//! is a share of the trace's distinct blocks. The default policy (`TIERKV_DISK_EVICTION`
//! unset, and the host tier's `TIERKV_EVICTION` unset: hazard, admission included)
//! is marked `(default)`, and its eviction with every block admitted has a row of
//! its own (what admission adds); two offline bounds follow the policies: LRU with
//! perfect admission (only blocks used again) and Belady. Two rows drive the engine
//! block pool itself (G1, `tierkv::block::BlockPool`) with the same room: vLLM's
//! order (`lru`) and the pool's default policy (`TIERKV_POOL_EVICTION=hazard`). `--cost` adds each
//! policy's time per block access: the median of 5 replays' wall time over the
//! accesses, the replayer's own bookkeeping included (the same for every policy;
//! compare a policy with LRU's row).

use std::process::ExitCode;

use tierkv::evict::PolicyKind;
use tierkv_replay::{belady, oracle_admission, replay, replay_pool, replay_without_admission, ReplayResult, Trace};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut path = None;
    let mut caps = "5%".to_string();
    let mut cost = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--capacity" => caps = it.next().cloned().unwrap_or_default(),
            "--cost" => cost = true,
            "-h" | "--help" => {
                println!("usage: tierkv-replay TRACE [--capacity 5%,10% | --capacity BLOCKS] [--cost]");
                return ExitCode::SUCCESS;
            }
            p => path = Some(p.to_string()),
        }
    }
    let Some(path) = path else {
        eprintln!("usage: tierkv-replay TRACE [--capacity 5%]");
        return ExitCode::from(2);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{path}: {e}");
            return ExitCode::from(2);
        }
    };
    let trace = match Trace::parse(&text) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{path}: {e}");
            return ExitCode::from(2);
        }
    };
    let distinct = trace.distinct_blocks();
    println!(
        "trace {path}: {} requests, {} block accesses, {distinct} distinct blocks",
        trace.requests.len(),
        trace.total_blocks()
    );
    if let Some(bt) = trace.block_tokens() {
        println!(
            "arrivals over {:.1} minutes; {bt} tokens per block (inferred from the prompt lengths)",
            trace.duration_ms() as f64 / 60_000.0
        );
    }
    // The disk tier's default (`TIERKV_DISK_EVICTION` unset), marked in the table.
    let default = tierkv::config::Config::default().disk_eviction;
    let (cost_head, cost_rule) = if cost { (" ns per access |", "---|") } else { ("", "") };
    println!("| capacity | policy | hit ratio | share of the LRU-to-Belady gap closed |{cost_head}");
    println!("|---|---|---|---|{cost_rule}");
    for cap in caps.split(',') {
        let blocks = match cap.strip_suffix('%').map(str::parse::<f64>) {
            Some(Ok(p)) => ((distinct as f64) * p / 100.0).round() as usize,
            Some(Err(_)) => {
                eprintln!("bad capacity {cap}");
                return ExitCode::from(2);
            }
            None => match cap.parse() {
                Ok(n) => n,
                Err(_) => {
                    eprintln!("bad capacity {cap}");
                    return ExitCode::from(2);
                }
            },
        };
        let opt = belady(&trace, blocks);
        let lru = replay(&trace, PolicyKind::Lru.build(blocks).as_mut(), blocks);
        // A row: the hit ratio and the share of the LRU-to-Belady gap it closes.
        let row = |name: &str, r: &ReplayResult, ns: Option<f64>| {
            let gap = opt.ratio() - lru.ratio();
            let closed = if gap > 0.0 {
                format!("{:.0}%", 100.0 * (r.ratio() - lru.ratio()) / gap)
            } else {
                "-".into()
            };
            let ns = match (cost, ns) {
                (false, _) => String::new(),
                (true, Some(ns)) => format!(" {ns:.0} |"),
                (true, None) => " - |".into(),
            };
            println!("| {cap} ({blocks}) | {name} | {:.3} | {closed} |{ns}", r.ratio());
        };
        for kind in PolicyKind::ALL {
            let (r, ns) = if cost {
                let (r, ns) = timed_replay(&trace, kind, blocks);
                (r, Some(ns))
            } else {
                (replay(&trace, kind.build(blocks).as_mut(), blocks), None)
            };
            let mark = if kind == default { " (default)" } else { "" };
            row(&format!("{}{mark}", r.policy), &r, ns);
        }
        // The default's eviction with every block admitted: what admission adds.
        let r = replay_without_admission(&trace, default.build(blocks).as_mut(), blocks);
        row(&r.policy, &r, None);
        // Not online: LRU that admits only blocks the trace uses again (what
        // admission alone is worth).
        let oracle = oracle_admission(&trace, PolicyKind::Lru.build(blocks).as_mut(), blocks);
        row(&format!("{} (bound)", oracle.policy), &oracle, None);
        // The engine block pool (G1) with the same room: vLLM's own order, and the
        // learned policy (`TIERKV_POOL_EVICTION=hazard`; no admission there).
        for kind in [PolicyKind::Lru, PolicyKind::Hazard] {
            let r = replay_pool(&trace, kind, blocks);
            row(&r.policy, &r, None);
        }
        row("belady", &opt, None);
    }
    ExitCode::SUCCESS
}

/// A replay of `trace` through a fresh `kind` policy (every run gives the same
/// result), with its wall time per block access in nanoseconds: the median of 5 runs.
fn timed_replay(trace: &Trace, kind: PolicyKind, blocks: usize) -> (ReplayResult, f64) {
    let mut result = None;
    let mut runs: Vec<f64> = (0..5)
        .map(|_| {
            let mut p = kind.build(blocks);
            let start = std::time::Instant::now();
            let r = std::hint::black_box(replay(trace, p.as_mut(), blocks));
            let ns = start.elapsed().as_nanos() as f64 / trace.total_blocks().max(1) as f64;
            result = Some(r);
            ns
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    (result.expect("five runs"), runs[2])
}
