//! `TIERKV_*` environment variables, parsed once into one typed [`Config`].
//!
//! Core types: [`Config`] (the validated result), [`ConfigError`] (names the variable,
//! the value and what is accepted) and [`VARS`] (the one table of variables, which
//! `docs/configuration.md` mirrors and a test keeps in step).
//!
//! Workflow:
//! 1. A host calls [`Config::from_env`] (or [`Config::from_lookup`] in tests) once,
//!    when it creates a manager.
//! 2. Each variable goes through one of the shared parsers: [`parse_size`],
//!    [`parse_duration`], [`parse_bool`], or an enumeration.
//! 3. [`Config::sanitize`] rejects contradictions; the config is immutable after.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use self::parse::{parse_addr, parse_log, BOOL_FORMS, DURATION_FORMS, SIZE_FORMS};
pub use self::parse::{parse_bool, parse_duration, parse_size};
pub use self::vars::{closest_var, VarDoc, TOOL_VARS, VARS};
use crate::evict::PolicyKind;
pub use crate::log::LogLevel;
use crate::movement::AdmitMode;
use crate::prefix::HashAlgo;
pub use crate::tier::disk::{DiskSettings, RecoveryMode};
use crate::tier::HostSettings;

/// Eviction policies of the host tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvictionKind {
    /// Least recently used, O(1) with an intrusive list.
    Lru,
}

/// The validated configuration of one manager.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Host tier capacity in bytes (`TIERKV_CPU_BYTES`).
    pub cpu_bytes: u64,
    /// Arena name (`TIERKV_STORE_NAME`).
    pub store_name: String,
    /// Arena directory (`TIERKV_SHM_DIR`).
    pub shm_dir: PathBuf,
    /// Group allowed to share the store's files (`TIERKV_SHARE_GROUP`).
    pub share_group: Option<u32>,
    /// Block identity algorithm (`TIERKV_HASH`).
    pub hash: HashAlgo,
    /// Namespace extra key (`TIERKV_NAMESPACE`).
    pub namespace: String,
    /// Exporter address, `None` when off (`TIERKV_METRICS_ADDR`).
    pub metrics_addr: Option<SocketAddr>,
    /// Log level (`TIERKV_LOG`).
    pub log: LogLevel,
    /// Host tier eviction policy (`TIERKV_EVICTION`).
    pub eviction: EvictionKind,
    /// Arena initialisation wait (`TIERKV_LOCK_TIMEOUT`).
    pub lock_timeout: Duration,
    /// Telemetry interval, `None` when off (`TIERKV_HW_INTERVAL`).
    pub hw_interval: Option<Duration>,
    /// NVML index of the engine's GPU (`TIERKV_GPU_DEVICE`).
    pub gpu_device: u32,
    /// Store decode blocks too (`TIERKV_STORE_DECODE`).
    pub store_decode: bool,
    /// Staging layer loads may hold (`TIERKV_STAGING_BYTES`).
    pub staging_bytes: u64,
    /// Disk tier directory, `None` when off (`TIERKV_DISK_PATH`).
    pub disk_path: Option<PathBuf>,
    /// Disk tier budget in bytes (`TIERKV_DISK_BYTES`).
    pub disk_bytes: u64,
    /// Disk admission (`TIERKV_DISK_ADMIT`, `TIERKV_DISK_ADMIT_USES`).
    pub disk_admit: AdmitMode,
    /// Disk eviction policy (`TIERKV_DISK_EVICTION`).
    pub disk_eviction: PolicyKind,
    /// Disk I/O threads (`TIERKV_DISK_THREADS`).
    pub disk_threads: usize,
    /// Disk queue bound (`TIERKV_DISK_QUEUE`).
    pub disk_queue: usize,
    /// O_DIRECT (`TIERKV_DISK_DIRECT`).
    pub disk_direct: bool,
    /// Recovery depth (`TIERKV_DISK_RECOVERY`).
    pub disk_recovery: RecoveryMode,
    /// Semantic sharing (`TIERKV_SEMANTIC*`).
    pub semantic: crate::semantic::SemanticPolicy,
    /// `TIERKV_*` names set in the environment that no part reads (typos).
    pub unknown_vars: Vec<String>,
}

/// A variable with a value that is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}={value:?} is not valid: expected {expected}")]
pub struct ConfigError {
    /// The variable.
    pub var: &'static str,
    /// The value found.
    pub value: String,
    /// What is accepted.
    pub expected: String,
}

impl Default for Config {
    fn default() -> Self {
        Self::from_lookup(|_| None).unwrap_or_else(|e| unreachable!("defaults are valid: {e}"))
    }
}

impl Config {
    /// Reads every `TIERKV_*` variable from the process environment. A known
    /// variable whose value is not UTF-8 is an error naming it (never the default
    /// in its place); unknown `TIERKV_*` names are collected in
    /// [`Config::unknown_vars`] for the caller to report.
    pub fn from_env() -> Result<Self, ConfigError> {
        let mut unknown = Vec::new();
        for (k, v) in std::env::vars_os() {
            let Some(name) = k.to_str().filter(|n| n.starts_with("TIERKV_")) else {
                continue;
            };
            match VARS.iter().find(|d| d.name == name) {
                Some(d) if v.to_str().is_none() => {
                    return Err(ConfigError {
                        var: d.name,
                        value: v.to_string_lossy().into_owned(),
                        expected: "a value that is valid UTF-8".into(),
                    })
                }
                Some(_) => {}
                None if TOOL_VARS.contains(&name) => {}
                None => unknown.push(name.to_string()),
            }
        }
        let mut cfg = Self::from_lookup(|name| std::env::var(name).ok())?;
        unknown.sort();
        cfg.unknown_vars = unknown;
        Ok(cfg)
    }

    /// One warning per unknown `TIERKV_*` variable, naming the closest known one.
    pub fn unknown_var_warnings(&self) -> Vec<String> {
        self.unknown_vars
            .iter()
            .map(|n| match closest_var(n) {
                Some(c) => format!("{n} is not a tierkv variable (ignored); did you mean {c}?"),
                None => format!("{n} is not a tierkv variable (ignored); see docs/configuration.md"),
            })
            .collect()
    }

    /// Reads the variables through `lookup` (the environment, or a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &'static str| -> Option<(&'static str, String)> {
            lookup(name).map(|v| (name, v.trim().to_string()))
        };
        let err = |var: &'static str, value: &str, expected: &str| ConfigError {
            var,
            value: value.to_string(),
            expected: expected.to_string(),
        };
        let cpu_bytes = match get("TIERKV_CPU_BYTES") {
            Some((var, v)) => parse_size(&v).ok_or_else(|| err(var, &v, SIZE_FORMS))?,
            None => 1 << 30,
        };
        let store_name = match get("TIERKV_STORE_NAME") {
            Some((_, v)) if valid_name(&v) => v,
            Some((var, v)) => return Err(err(var, &v, "1-64 characters from [A-Za-z0-9_.-]")),
            None => default_store_name(),
        };
        let share_group = match get("TIERKV_SHARE_GROUP") {
            Some((_, v)) if v.is_empty() => None,
            Some((var, v)) => Some(
                crate::tier::shared_file::resolve_group(&v)
                    .ok_or_else(|| err(var, &v, "the name or number of an existing group"))?,
            ),
            None => None,
        };
        let shm_dir = match get("TIERKV_SHM_DIR") {
            Some((_, v)) if v.starts_with('/') => PathBuf::from(v),
            Some((var, v)) => return Err(err(var, &v, "an absolute directory path")),
            None => PathBuf::from("/dev/shm"),
        };
        let hash = match get("TIERKV_HASH") {
            Some((var, v)) => {
                HashAlgo::parse(&v).ok_or_else(|| err(var, &v, "one of xxh3_128, sha256_cbor, xxhash_cbor"))?
            }
            None => HashAlgo::Xxh3_128,
        };
        let namespace = get("TIERKV_NAMESPACE").map(|(_, v)| v).unwrap_or_default();
        let metrics_addr = match get("TIERKV_METRICS_ADDR") {
            Some((_, v)) if v.is_empty() => None,
            Some((var, v)) => Some(parse_addr(&v).ok_or_else(|| {
                err(
                    var,
                    &v,
                    "a port (bound on 127.0.0.1) or an address such as 127.0.0.1:9400",
                )
            })?),
            None => None,
        };
        let log = match get("TIERKV_LOG") {
            Some((var, v)) => {
                parse_log(&v).ok_or_else(|| err(var, &v, "one of off, error, warn, info, debug, trace"))?
            }
            None => LogLevel::Warn,
        };
        let eviction = match get("TIERKV_EVICTION") {
            Some((_, v)) if v.eq_ignore_ascii_case("lru") => EvictionKind::Lru,
            Some((var, v)) => return Err(err(var, &v, "lru")),
            None => EvictionKind::Lru,
        };
        let lock_timeout = match get("TIERKV_LOCK_TIMEOUT") {
            Some((var, v)) => parse_duration(&v).ok_or_else(|| err(var, &v, DURATION_FORMS))?,
            None => Duration::from_secs(10),
        };
        let staging_bytes = match get("TIERKV_STAGING_BYTES") {
            Some((var, v)) => parse_size(&v).ok_or_else(|| err(var, &v, SIZE_FORMS))?,
            None => 2 << 30,
        };
        let store_decode = match get("TIERKV_STORE_DECODE") {
            Some((var, v)) => parse_bool(&v).ok_or_else(|| err(var, &v, BOOL_FORMS))?,
            None => true,
        };
        let disk_path = match get("TIERKV_DISK_PATH") {
            Some((_, v)) if v.is_empty() => None,
            Some((_, v)) if v.starts_with('/') => Some(PathBuf::from(v)),
            Some((var, v)) => return Err(err(var, &v, "an absolute directory path")),
            None => None,
        };
        let disk_bytes = match get("TIERKV_DISK_BYTES") {
            Some((var, v)) => parse_size(&v).ok_or_else(|| err(var, &v, SIZE_FORMS))?,
            None => 0,
        };
        let uses = match get("TIERKV_DISK_ADMIT_USES") {
            Some((var, v)) => v
                .parse::<u8>()
                .ok()
                .filter(|n| (1..=15).contains(n))
                .ok_or_else(|| err(var, &v, "an integer from 1 to 15"))?,
            None => 2,
        };
        let disk_admit = match get("TIERKV_DISK_ADMIT") {
            Some((_, v)) if v.eq_ignore_ascii_case("always") => AdmitMode::Always,
            Some((_, v)) if v.eq_ignore_ascii_case("reuse") => AdmitMode::Reuse(uses),
            Some((var, v)) => return Err(err(var, &v, "reuse or always")),
            None => AdmitMode::Reuse(uses),
        };
        let disk_eviction = match get("TIERKV_DISK_EVICTION") {
            Some((var, v)) => PolicyKind::parse(&v).ok_or_else(|| err(var, &v, "one of lru, s3fifo, chat"))?,
            None => PolicyKind::Lru,
        };
        let int = |name: &'static str, default: usize, max: usize| -> Result<usize, ConfigError> {
            match get(name) {
                Some((var, v)) => v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=max).contains(n))
                    .ok_or_else(|| err(var, &v, &format!("an integer from 1 to {max}"))),
                None => Ok(default),
            }
        };
        let disk_threads = int("TIERKV_DISK_THREADS", 4, 64)?;
        let disk_queue = int("TIERKV_DISK_QUEUE", 256, 65536)?;
        let disk_direct = match get("TIERKV_DISK_DIRECT") {
            Some((var, v)) => parse_bool(&v).ok_or_else(|| err(var, &v, BOOL_FORMS))?,
            None => true,
        };
        let disk_recovery = match get("TIERKV_DISK_RECOVERY") {
            Some((_, v)) if v.eq_ignore_ascii_case("headers") => RecoveryMode::Headers,
            Some((_, v)) if v.eq_ignore_ascii_case("full") => RecoveryMode::Full,
            Some((var, v)) => return Err(err(var, &v, "headers or full")),
            None => RecoveryMode::Headers,
        };
        let hw_interval = match get("TIERKV_HW_INTERVAL") {
            Some((_, v)) if v.eq_ignore_ascii_case("off") || v == "0" => None,
            Some((var, v)) => {
                let d = parse_duration(&v).ok_or_else(|| err(var, &v, &format!("off or {DURATION_FORMS}")))?;
                (!d.is_zero()).then_some(d)
            }
            None => Some(Duration::from_secs(1)),
        };
        let gpu_device = match get("TIERKV_GPU_DEVICE") {
            Some((var, v)) => v
                .parse::<u8>()
                .map(u32::from)
                .map_err(|_| err(var, &v, "an integer from 0 to 255"))?,
            None => 0,
        };
        let semantic = semantic::from_lookup(get)?;
        let cfg = Config {
            semantic,
            hw_interval,
            gpu_device,
            cpu_bytes,
            store_name,
            shm_dir,
            share_group,
            hash,
            namespace,
            metrics_addr,
            log,
            eviction,
            lock_timeout,
            store_decode,
            staging_bytes,
            disk_path,
            disk_bytes,
            disk_admit,
            disk_eviction,
            disk_threads,
            disk_queue,
            disk_direct,
            disk_recovery,
            unknown_vars: Vec::new(),
        };
        cfg.sanitize()?;
        Ok(cfg)
    }

    /// The host tier's settings.
    pub fn host_settings(&self) -> HostSettings {
        HostSettings {
            capacity: self.cpu_bytes,
            store_name: self.store_name.clone(),
            shm_dir: self.shm_dir.clone(),
            share_group: self.share_group,
            lock_timeout: self.lock_timeout,
        }
    }

    /// The disk tier's settings; `None` when `TIERKV_DISK_PATH` is unset.
    pub fn disk_settings(&self) -> Option<DiskSettings> {
        Some(DiskSettings {
            dir: self.disk_path.clone()?,
            bytes: self.disk_bytes,
            store_name: self.store_name.clone(),
            shm_dir: self.shm_dir.clone(),
            share_group: self.share_group,
            eviction: self.disk_eviction,
            threads: self.disk_threads,
            queue: self.disk_queue,
            direct: self.disk_direct,
            recovery: self.disk_recovery,
        })
    }

    /// Rejects values that parse but cannot work.
    pub fn sanitize(&self) -> Result<(), ConfigError> {
        if self.cpu_bytes < 4096 {
            return Err(ConfigError {
                var: "TIERKV_CPU_BYTES",
                value: self.cpu_bytes.to_string(),
                expected: "at least 4KiB (one page); the arena must also hold one block".into(),
            });
        }
        if self.disk_path.is_some() && self.disk_bytes == 0 {
            return Err(ConfigError {
                var: "TIERKV_DISK_BYTES",
                value: "unset".into(),
                expected: "a byte size (the disk tier's hard limit) whenever TIERKV_DISK_PATH is set".into(),
            });
        }
        if self.lock_timeout.is_zero() {
            return Err(ConfigError {
                var: "TIERKV_LOCK_TIMEOUT",
                value: "0".into(),
                expected: "a duration above zero".into(),
            });
        }
        Ok(())
    }
}

/// `default-u<euid>`: users of one host never share a store unless they say so.
pub fn default_store_name() -> String {
    // SAFETY: geteuid has no preconditions.
    format!("default-u{}", unsafe { libc::geteuid() })
}

fn valid_name(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        && v != "."
        && v != ".."
}

mod parse;
mod semantic;
mod vars;

#[cfg(test)]
mod tests;
