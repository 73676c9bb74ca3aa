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

use self::parse::{
    parse_addr, parse_interval, parse_log, ADDR_FORMS, BOOL_FORMS, DURATION_FORMS, NAME_FORMS, SIZE_FORMS,
};
pub use self::parse::{parse_bool, parse_duration, parse_size};
use self::read::{int_in, or_off, Vars};
pub use self::vars::{closest_var, VarDoc, TOOL_VARS, VARS};
use crate::evict::PolicyKind;
pub use crate::log::LogLevel;
use crate::movement::AdmitMode;
use crate::prefix::HashAlgo;
pub use crate::tier::disk::{DiskSettings, RecoveryMode};
use crate::tier::shared_file::resolve_group;
use crate::tier::HostSettings;

pub use crate::tier::arena::HostEviction;

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
    pub eviction: HostEviction,
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
    /// Engine block pool eviction policy (`TIERKV_POOL_EVICTION`).
    pub pool_eviction: PolicyKind,
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
    /// The remote tier's settings; `None` when `TIERKV_REMOTE_URL` is unset.
    pub remote: Option<crate::tier::remote::RemoteSettings>,
    /// Remote admission (`TIERKV_REMOTE_ADMIT`, `TIERKV_REMOTE_ADMIT_USES`).
    pub remote_admit: AdmitMode,
    /// PQ retrieval (`TIERKV_PQ_*`).
    pub pq: crate::pq::PqSettings,
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

    /// Reads the variables through `lookup` (the environment, or a map in tests);
    /// a variable that is not set takes its documented default ([`VARS`]).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let v = Vars { lookup };
        let absolute = |s: &str| s.starts_with('/').then(|| PathBuf::from(s));
        let (threads, thread_forms) = int_in(1usize, 64);
        let (queue, queue_forms) = int_in(1usize, 65536);
        let (uses, use_forms) = int_in(1u8, 15);
        let uses = v.value("TIERKV_DISK_ADMIT_USES", uses, &use_forms)?;
        let (remote, remote_admit) = remote::read(&v)?;
        let pq = pq::read(&v)?;
        let cfg = Config {
            cpu_bytes: v.value("TIERKV_CPU_BYTES", parse_size, SIZE_FORMS)?,
            store_name: v
                .get(
                    "TIERKV_STORE_NAME",
                    |s| valid_name(s).then(|| s.to_string()),
                    NAME_FORMS,
                )?
                .unwrap_or_else(default_store_name),
            shm_dir: v.value("TIERKV_SHM_DIR", absolute, "an absolute directory path")?,
            share_group: v
                .get(
                    "TIERKV_SHARE_GROUP",
                    or_off(resolve_group),
                    "the name or number of an existing group",
                )?
                .flatten(),
            hash: v.value(
                "TIERKV_HASH",
                HashAlgo::parse,
                "one of xxh3_128, sha256_cbor, xxhash_cbor",
            )?,
            namespace: v.value("TIERKV_NAMESPACE", |s| Some(s.to_string()), "any text")?,
            metrics_addr: v.get("TIERKV_METRICS_ADDR", or_off(parse_addr), ADDR_FORMS)?.flatten(),
            log: v.value("TIERKV_LOG", parse_log, "one of off, error, warn, info, debug, trace")?,
            eviction: v.value("TIERKV_EVICTION", HostEviction::parse, "hazard or lru")?,
            lock_timeout: v.value("TIERKV_LOCK_TIMEOUT", parse_duration, DURATION_FORMS)?,
            hw_interval: v.value(
                "TIERKV_HW_INTERVAL",
                parse_interval,
                &format!("off or {DURATION_FORMS}"),
            )?,
            gpu_device: v.value(
                "TIERKV_GPU_DEVICE",
                |s| s.parse::<u8>().ok().map(u32::from),
                "an integer from 0 to 255",
            )?,
            store_decode: v.value("TIERKV_STORE_DECODE", parse_bool, BOOL_FORMS)?,
            staging_bytes: v.value("TIERKV_STAGING_BYTES", parse_size, SIZE_FORMS)?,
            disk_path: v
                .get("TIERKV_DISK_PATH", or_off(absolute), "an absolute directory path")?
                .flatten(),
            disk_bytes: v.get("TIERKV_DISK_BYTES", parse_size, SIZE_FORMS)?.unwrap_or(0),
            disk_admit: v.value(
                "TIERKV_DISK_ADMIT",
                |s| match s.to_ascii_lowercase().as_str() {
                    "always" => Some(AdmitMode::Always),
                    "reuse" => Some(AdmitMode::Reuse(uses)),
                    _ => None,
                },
                "reuse or always",
            )?,
            disk_eviction: v.value(
                "TIERKV_DISK_EVICTION",
                PolicyKind::parse,
                "one of hazard, lru, s3fifo, chat",
            )?,
            pool_eviction: v.value(
                "TIERKV_POOL_EVICTION",
                PolicyKind::parse,
                "one of lru, hazard, s3fifo, chat",
            )?,
            disk_threads: v.value("TIERKV_DISK_THREADS", threads, &thread_forms)?,
            disk_queue: v.value("TIERKV_DISK_QUEUE", queue, &queue_forms)?,
            disk_direct: v.value("TIERKV_DISK_DIRECT", parse_bool, BOOL_FORMS)?,
            disk_recovery: v.value(
                "TIERKV_DISK_RECOVERY",
                |s| match s.to_ascii_lowercase().as_str() {
                    "headers" => Some(RecoveryMode::Headers),
                    "full" => Some(RecoveryMode::Full),
                    _ => None,
                },
                "headers or full",
            )?,
            semantic: semantic::read(&v)?,
            remote,
            remote_admit,
            pq,
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
            eviction: self.eviction,
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
mod pq;
mod read;
mod remote;
mod semantic;
mod vars;

#[cfg(test)]
mod tests;
