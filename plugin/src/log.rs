//! Logging without owning the process: a small `tracing` subscriber that each
//! manager holds and enters only around its own work (`dispatcher::with_default`),
//! so a host's global subscriber, if any, is never replaced.
//!
//! Output: one line per event on stderr, `tierkv LEVEL target: message key=value`,
//! filtered by `TIERKV_LOG`. Spans are not recorded.

use std::fmt::Write as _;
use std::io::Write as _;

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::subscriber::Interest;
use tracing::{span, Event, Metadata, Subscriber};

/// Log levels accepted by `TIERKV_LOG`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Nothing is written.
    Off,
    /// Errors only.
    Error,
    /// Errors and warnings.
    Warn,
    /// Plus informational events.
    Info,
    /// Plus debug events.
    Debug,
    /// Everything.
    Trace,
}

/// A stderr subscriber with a fixed maximum level.
#[derive(Debug)]
pub struct StderrLog {
    max: LevelFilter,
}

impl StderrLog {
    /// A subscriber for `level`.
    pub fn new(level: LogLevel) -> Self {
        let max = match level {
            LogLevel::Off => LevelFilter::OFF,
            LogLevel::Error => LevelFilter::ERROR,
            LogLevel::Warn => LevelFilter::WARN,
            LogLevel::Info => LevelFilter::INFO,
            LogLevel::Debug => LevelFilter::DEBUG,
            LogLevel::Trace => LevelFilter::TRACE,
        };
        Self { max }
    }

    /// Wrapped as a `Dispatch` to enter with `tracing::dispatcher::with_default`.
    pub fn dispatch(level: LogLevel) -> tracing::Dispatch {
        tracing::Dispatch::new(Self::new(level))
    }
}

struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value}");
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

impl Subscriber for StderrLog {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        // Several managers with different levels may coexist: decide per event.
        Interest::sometimes()
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= self.max
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.max)
    }

    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }

    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}

    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}

    fn event(&self, event: &Event<'_>) {
        let m = event.metadata();
        let mut line = Line(format!("tierkv {} {}:", m.level(), m.target()));
        event.record(&mut line);
        line.0.push('\n');
        let _ = std::io::stderr().write_all(line.0.as_bytes());
    }

    fn enter(&self, _: &span::Id) {}

    fn exit(&self, _: &span::Id) {}
}
