//! `tierkv-replay`: the hit ratio of each disk-tier eviction policy on a trace, next
//! to Belady's optimum, at one or more capacities.
//!
//! Usage: `tierkv-replay TRACE [--capacity 5%[,10%,...] | --capacity 4096]`.
//! The trace format is documented in the `tierkv_replay` library (`integration/replay/src/lib.rs`). A capacity with `%`
//! is a share of the trace's distinct blocks. The default policy (`TIERKV_DISK_EVICTION`
//! unset) is marked `(default)`; two offline bounds follow the policies: LRU with
//! perfect admission (only blocks used again) and Belady.

use std::process::ExitCode;

use tierkv::evict::PolicyKind;
use tierkv_replay::{belady, oracle_admission, replay, ReplayResult, Trace};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut path = None;
    let mut caps = "5%".to_string();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--capacity" => caps = it.next().cloned().unwrap_or_default(),
            "-h" | "--help" => {
                println!("usage: tierkv-replay TRACE [--capacity 5%,10% | --capacity BLOCKS]");
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
    println!("| capacity | policy | hit ratio | share of the LRU-to-Belady gap closed |");
    println!("|---|---|---|---|");
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
        let row = |name: &str, r: &ReplayResult| {
            let gap = opt.ratio() - lru.ratio();
            let closed = if gap > 0.0 {
                format!("{:.0}%", 100.0 * (r.ratio() - lru.ratio()) / gap)
            } else {
                "-".into()
            };
            println!("| {cap} ({blocks}) | {name} | {:.3} | {closed} |", r.ratio());
        };
        for kind in [PolicyKind::Lru, PolicyKind::S3Fifo, PolicyKind::Chat] {
            let r = replay(&trace, kind.build(blocks).as_mut(), blocks);
            let mark = if kind == default { " (default)" } else { "" };
            row(&format!("{}{mark}", r.policy), &r);
        }
        // Not online: LRU that admits only blocks the trace uses again (what
        // admission alone is worth).
        let oracle = oracle_admission(&trace, PolicyKind::Lru.build(blocks).as_mut(), blocks);
        row(&format!("{} (bound)", oracle.policy), &oracle);
        println!("| {cap} ({blocks}) | belady | {:.3} | 100% |", opt.ratio());
    }
    ExitCode::SUCCESS
}
