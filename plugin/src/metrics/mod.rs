//! Metric primitives: latency histograms of atomics, a Prometheus text writer and
//! an HTTP exporter. Nothing here knows a tier, the pool or any other part: each
//! part keeps its own counters (plain atomics) and writes its own series into a
//! [`Report`].
//!
//! Core types: [`Histogram`] (fixed log-spaced latency buckets, `repr(C)` so that
//! a part may keep one in shared memory), [`Report`] (text exposition format 0.0.4:
//! series grouped by family whatever order the parts add them in) and
//! [`exporter::Exporter`] (an optional HTTP endpoint).
//!
//! Workflow:
//! 1. Hot paths add to atomics with `Relaxed` ordering (no locks, no allocation).
//! 2. A scrape (HTTP or `tierkv_metrics_text`) asks each part to add its series to
//!    one [`Report`] and takes [`Report::finish`].
//!
//! Names are an API: renaming one is a breaking change recorded in the CHANGELOG.

pub mod exporter;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bucket upper bounds of the latency histograms, in seconds: 1 us to ~8.4 s,
/// doubling (24 buckets), plus `+Inf`. Covers a single small block copy up to a
/// stalled load.
pub const LATENCY_BUCKETS: usize = 24;

fn bucket_bound(i: usize) -> f64 {
    1e-6 * f64::from(1u32 << i)
}

/// A latency histogram of atomics.
#[repr(C)]
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe_ns(&self, ns: u64) {
        let us = ns / 1000;
        let i = if us == 0 { 0 } else { (64 - us.leading_zeros()) as usize };
        self.buckets[i.min(LATENCY_BUCKETS)].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let (sep, braces) = if labels.is_empty() {
            ("", String::new())
        } else {
            (",", format!("{{{labels}}}"))
        };
        let mut cum = 0;
        for i in 0..LATENCY_BUCKETS {
            cum += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{:e}\"}} {cum}", bucket_bound(i));
        }
        cum += self.buckets[LATENCY_BUCKETS].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cum}");
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {cum}");
    }
}

/// Kind of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }
}

/// One family: its header and its sample lines so far.
#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    samples: String,
}

/// A scrape being written: families in the order they first appear, each with all
/// its series together (as the text format requires), whichever part added them.
#[derive(Debug, Default)]
pub struct Report {
    families: Vec<Family>,
}

impl Report {
    /// An empty report.
    pub fn new() -> Self {
        Self::default()
    }

    fn family(&mut self, name: &'static str, help: &'static str, kind: Kind) -> &mut String {
        let i = match self.families.iter().position(|f| f.name == name) {
            Some(i) => i,
            None => {
                self.families.push(Family {
                    name,
                    help,
                    kind,
                    samples: String::new(),
                });
                self.families.len() - 1
            }
        };
        debug_assert_eq!(self.families[i].kind, kind, "{name} added as two kinds");
        &mut self.families[i].samples
    }

    fn samples(&mut self, name: &'static str, help: &'static str, kind: Kind, series: &[(&str, u64)]) {
        let out = self.family(name, help, kind);
        for (labels, v) in series {
            if labels.is_empty() {
                let _ = writeln!(out, "{name} {v}");
            } else {
                let _ = writeln!(out, "{name}{{{labels}}} {v}");
            }
        }
    }

    /// Adds counter series `(labels, value)` to family `name` (an empty list still
    /// declares the family).
    pub fn counter(&mut self, name: &'static str, help: &'static str, series: &[(&str, u64)]) {
        self.samples(name, help, Kind::Counter, series);
    }

    /// Adds gauge series `(labels, value)` to family `name`.
    pub fn gauge(&mut self, name: &'static str, help: &'static str, series: &[(&str, u64)]) {
        self.samples(name, help, Kind::Gauge, series);
    }

    /// Adds one unlabelled gauge with a value that is not an integer (`+Inf`, -1, seconds).
    pub fn gauge_value(&mut self, name: &'static str, help: &'static str, value: impl std::fmt::Display) {
        let out = self.family(name, help, Kind::Gauge);
        let _ = writeln!(out, "{name} {value}");
    }

    /// Adds histogram `h` under `labels` to family `name`.
    pub fn histogram(&mut self, name: &'static str, help: &'static str, labels: &str, h: &Histogram) {
        let out = self.family(name, help, Kind::Histogram);
        h.render(out, name, labels);
    }

    /// The text exposition.
    pub fn finish(self) -> String {
        let mut o = String::with_capacity(self.families.iter().map(|f| f.samples.len() + 128).sum());
        for f in self.families {
            let _ = writeln!(o, "# HELP {} {}\n# TYPE {} {}", f.name, f.help, f.name, f.kind.name());
            o.push_str(&f.samples);
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe_ns(500); // < 1us -> bucket 0
        h.observe_ns(3_000); // 3us -> le 4us
        h.observe_ns(20_000_000_000); // 20 s -> +Inf
        let mut o = String::new();
        h.render(&mut o, "x", "a=\"b\"");
        assert!(o.contains("x_bucket{a=\"b\",le=\"1e-6\"} 1"), "{o}");
        assert!(o.contains("x_bucket{a=\"b\",le=\"4e-6\"} 2"), "{o}");
        assert!(o.contains("x_bucket{a=\"b\",le=\"+Inf\"} 3"), "{o}");
        assert!(o.contains("x_count{a=\"b\"} 3"));
    }

    /// Series of one family added at different times come out together, under
    /// one header, in the order the families first appeared.
    #[test]
    fn a_family_stays_together_whoever_adds_to_it() {
        let mut r = Report::new();
        r.counter("a_total", "A.", &[("tier=\"host\"", 1)]);
        r.gauge("b", "B.", &[("", 2)]);
        r.counter("a_total", "A.", &[("tier=\"disk\"", 3)]);
        r.counter("c_total", "C.", &[]);
        assert_eq!(
            r.finish(),
            "# HELP a_total A.\n# TYPE a_total counter\na_total{tier=\"host\"} 1\na_total{tier=\"disk\"} 3\n\
             # HELP b B.\n# TYPE b gauge\nb 2\n\
             # HELP c_total C.\n# TYPE c_total counter\n"
        );
    }
}
