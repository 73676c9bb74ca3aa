//! The shared parsers: byte sizes, durations, booleans, log levels, addresses;
//! and the phrases errors use to say what is accepted.

use std::net::SocketAddr;
use std::time::Duration;

use crate::log::LogLevel;

pub(crate) const SIZE_FORMS: &str =
    "a byte size such as 4096, 512MB, 8GiB (units B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)";
pub(crate) const DURATION_FORMS: &str = "a duration such as 250ms, 10s, 2m (units us, ms, s, m, h)";
pub(crate) const BOOL_FORMS: &str = "one of 1, 0, true, false, yes, no, on, off";
pub(crate) const NAME_FORMS: &str = "1-64 characters from [A-Za-z0-9_.-]";
pub(crate) const ADDR_FORMS: &str = "a port (bound on 127.0.0.1) or an address such as 127.0.0.1:9400";

fn split_number(s: &str) -> Option<(u64, f64, &str)> {
    let end = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(end);
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') || num.matches('.').count() > 1 {
        return None;
    }
    let int = num.split('.').next()?.parse::<u64>().ok()?;
    let float = num.parse::<f64>().ok()?;
    Some((int, float, unit.trim()))
}

/// Parses a byte size: `4096`, `512MB`, `8GiB`, `1.5GiB`. Returns `None` when invalid
/// or above `u64::MAX`.
pub fn parse_size(s: &str) -> Option<u64> {
    let (int, float, unit) = split_number(s.trim())?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return None,
    };
    if s.contains('.') {
        let v = float * mult as f64;
        (v.is_finite() && v < u64::MAX as f64).then_some(v as u64)
    } else {
        int.checked_mul(mult)
    }
}

/// Parses a duration: `500us`, `250ms`, `10s`, `2m`, `1h`. A unit is required.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let (_, float, unit) = split_number(s.trim())?;
    let secs = match unit {
        "us" => float / 1e6,
        "ms" => float / 1e3,
        "s" => float,
        "m" => float * 60.0,
        "h" => float * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(secs).ok()
}

/// Parses a boolean: `1/0`, `true/false`, `yes/no`, `on/off` (any case).
pub fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

pub(crate) fn parse_log(s: &str) -> Option<LogLevel> {
    Some(match s.to_ascii_lowercase().as_str() {
        "off" => LogLevel::Off,
        "error" => LogLevel::Error,
        "warn" | "warning" => LogLevel::Warn,
        "info" => LogLevel::Info,
        "debug" => LogLevel::Debug,
        "trace" => LogLevel::Trace,
        _ => return None,
    })
}

/// Parses the telemetry interval: `off` or `0` (`Some(None)`), or a duration above
/// zero.
pub(crate) fn parse_interval(s: &str) -> Option<Option<Duration>> {
    if s.eq_ignore_ascii_case("off") || s == "0" {
        return Some(None);
    }
    parse_duration(s).map(|d| (!d.is_zero()).then_some(d))
}

pub(crate) fn parse_addr(s: &str) -> Option<SocketAddr> {
    if let Ok(port) = s.parse::<u16>() {
        return Some(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse().ok()
}
