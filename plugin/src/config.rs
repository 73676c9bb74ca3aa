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

use crate::evict::PolicyKind;
use crate::offload::AdmitMode;
use crate::prefix::HashAlgo;

/// One documented variable: name, default as written in the docs, and meaning.
#[derive(Debug, Clone, Copy)]
pub struct VarDoc {
    /// Variable name, e.g. `TIERKV_CPU_BYTES`.
    pub name: &'static str,
    /// Default, as a user would write it (`unset` when there is none).
    pub default: &'static str,
    /// What it controls.
    pub meaning: &'static str,
}

/// Every variable the library reads. `docs/configuration.md` lists exactly these.
pub const VARS: &[VarDoc] = &[
    VarDoc {
        name: "TIERKV_CPU_BYTES",
        default: "1GiB",
        meaning: "Capacity of the host-memory tier (G2), a hard limit. Minimum: one block.",
    },
    VarDoc {
        name: "TIERKV_STORE_NAME",
        default: "default-u<uid>",
        meaning: "Name of the shared store (host arena, disk file); processes of one user using the same name share one cache. The default includes the effective uid.",
    },
    VarDoc {
        name: "TIERKV_SHARE_GROUP",
        default: "unset",
        meaning: "A group (name or gid) whose members may share the store's files (created 0660 with that group); unset: only the owner's uid (0600).",
    },
    VarDoc {
        name: "TIERKV_SHM_DIR",
        default: "/dev/shm",
        meaning: "Directory holding the shared arena file (a tmpfs).",
    },
    VarDoc {
        name: "TIERKV_HASH",
        default: "xxh3_128",
        meaning: "Block identity algorithm: xxh3_128, sha256_cbor or xxhash_cbor.",
    },
    VarDoc {
        name: "TIERKV_NAMESPACE",
        default: "",
        meaning: "Namespace folded into every block identity (model, LoRA, tenant); caches never cross it.",
    },
    VarDoc {
        name: "TIERKV_METRICS_ADDR",
        default: "unset",
        meaning: "Address for the Prometheus exporter (`9400` or `127.0.0.1:9400`); off when unset.",
    },
    VarDoc {
        name: "TIERKV_LOG",
        default: "warn",
        meaning: "Log level written to stderr: off, error, warn, info, debug or trace.",
    },
    VarDoc {
        name: "TIERKV_EVICTION",
        default: "lru",
        meaning: "Eviction policy of the host tier: lru.",
    },
    VarDoc {
        name: "TIERKV_LOCK_TIMEOUT",
        default: "10s",
        meaning: "How long to wait for another process that is initialising the shared arena.",
    },
    VarDoc {
        name: "TIERKV_DISK_PATH",
        default: "unset",
        meaning: "Directory of the disk tier (G3); off when unset. Created (0700) if missing; the file inside is 0600.",
    },
    VarDoc {
        name: "TIERKV_DISK_BYTES",
        default: "unset",
        meaning: "Capacity of the disk tier, a hard limit including headers; required with TIERKV_DISK_PATH. Preallocated.",
    },
    VarDoc {
        name: "TIERKV_DISK_ADMIT",
        default: "reuse",
        meaning: "Which blocks go to disk: reuse (used TIERKV_DISK_ADMIT_USES times) or always (write-through).",
    },
    VarDoc {
        name: "TIERKV_DISK_ADMIT_USES",
        default: "2",
        meaning: "Uses (stores and hits) before a block is written to disk under reuse admission. 1-15.",
    },
    VarDoc {
        name: "TIERKV_DISK_EVICTION",
        default: "lru",
        meaning: "Eviction policy of the disk tier: lru, s3fifo or chat.",
    },
    VarDoc {
        name: "TIERKV_DISK_THREADS",
        default: "4",
        meaning: "Disk I/O worker threads. 1-64.",
    },
    VarDoc {
        name: "TIERKV_DISK_QUEUE",
        default: "256",
        meaning: "Bound of the disk read and write queues, in blocks; a full write queue drops offloads. 1-65536.",
    },
    VarDoc {
        name: "TIERKV_DISK_DIRECT",
        default: "true",
        meaning: "Use O_DIRECT (bypass the page cache); falls back to buffered I/O where the filesystem refuses it.",
    },
    VarDoc {
        name: "TIERKV_DISK_RECOVERY",
        default: "headers",
        meaning: "Restart recovery: headers (read each block's header; payloads verified on load) or full (verify every payload).",
    },
    VarDoc {
        name: "TIERKV_HW_INTERVAL",
        default: "1s",
        meaning: "Telemetry sampling interval (NVML, or /proc without a GPU) for the scheduler; 0 or off disables it.",
    },
    VarDoc {
        name: "TIERKV_GPU_DEVICE",
        default: "0",
        meaning: "NVML index of the GPU this engine runs on (telemetry and PCIe scheduling). 0-255.",
    },
    VarDoc {
        name: "TIERKV_STAGING_BYTES",
        default: "2GiB",
        meaning: "Pinned staging memory layer-by-layer GPU loads may hold at once; past it, blocks are loaded in chunks through one buffer.",
    },
    VarDoc {
        name: "TIERKV_STORE_DECODE",
        default: "true",
        meaning: "Also store blocks filled during decode (a chat's next turn repeats the reply).",
    },
    VarDoc {
        name: "TIERKV_SEMANTIC",
        default: "false",
        meaning: "Semantic sharing: reuse KV of cached near-duplicate prompts (docs/semantic.md). Never across namespaces.",
    },
    VarDoc {
        name: "TIERKV_SEMANTIC_NAMESPACES",
        default: "unset",
        meaning: "Comma-separated namespaces semantic sharing is on for (a manager's namespace or its last |-separated field); unset: all.",
    },
    VarDoc {
        name: "TIERKV_SEMANTIC_MIN_SIMILARITY",
        default: "0.5",
        meaning: "Least fraction of the prompt a cached near-duplicate must cover. 0-1.",
    },
    VarDoc {
        name: "TIERKV_SEMANTIC_MAX_RECOMPUTE",
        default: "0.3",
        meaning: "Most fraction of the prompt a reuse plan may recompute (differing tokens plus blend). 0-1.",
    },
    VarDoc {
        name: "TIERKV_SEMANTIC_BLEND",
        default: "0.15",
        meaning: "Fraction of the prompt recomputed after edits (the tokens right after each difference). 0-1.",
    },
    VarDoc {
        name: "TIERKV_SEMANTIC_MAX_SHIFT",
        default: "4096",
        meaning: "Largest position shift of reused KV (keys are re-rotated by it). 0-16777216.",
    },
    VarDoc {
        name: "TIERKV_SEMANTIC_BELOW",
        default: "0.5",
        meaning: "Consult the index only when the exact prefix hit covers less than this fraction of the prompt. 0-1.",
    },
    VarDoc {
        name: "TIERKV_SEMANTIC_SUBSTITUTE",
        default: "8",
        meaning: "Differing tokens a prefix-only engine (vLLM) may take from the near-duplicate's KV (a swapped name or number). 0-65536.",
    },
    VarDoc {
        name: "TIERKV_SEMANTIC_SUBSTITUTE_SPAN",
        default: "8",
        meaning: "Longest run of differing tokens that may be substituted (a name or a number, not a reworded sentence). 1-65536.",
    },
    VarDoc {
        name: "TIERKV_SEMANTIC_MOVES",
        default: "false",
        meaning: "Reuse passages that moved (reordered documents); off by default: measured to change answers without recompute.",
    },
    VarDoc {
        name: "TIERKV_SEMANTIC_PROMPTS",
        default: "10000",
        meaning: "Prompts the semantic index holds per manager; the oldest leaves first. 1-10000000.",
    },
];

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

/// Eviction policies of the host tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvictionKind {
    /// Least recently used, O(1) with an intrusive list.
    Lru,
}

/// How much a restart reads to rebuild the disk tier's index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryMode {
    /// Each block's header sector (checksummed); payloads are verified on load.
    Headers,
    /// Every block whole, verifying each payload.
    Full,
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
        let semantic = crate::semantic::SemanticPolicy::from_lookup(get)?;
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

const SIZE_FORMS: &str = "a byte size such as 4096, 512MB, 8GiB (units B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)";
const DURATION_FORMS: &str = "a duration such as 250ms, 10s, 2m (units us, ms, s, m, h)";
pub(crate) const BOOL_FORMS: &str = "one of 1, 0, true, false, yes, no, on, off";

/// `TIERKV_*` variables read by tierkv's tools, scripts and tests, not by the
/// library: never reported as unknown.
pub const TOOL_VARS: &[&str] = &[
    "TIERKV_LIB",
    "TIERKV_VLLM_VENV",
    "TIERKV_VLLM_PYTHON",
    "TIERKV_SKIP_VLLM",
    "TIERKV_REQUIRE_NVRTC",
    "TIERKV_REQUIRE_GPU",
    "TIERKV_BLESS",
    "TIERKV_SOAK_S",
    "TIERKV_SOAK_FLIPS",
    "TIERKV_BENCH_DIR",
    "TIERKV_BENCH_BLOCK_BYTES",
    "TIERKV_TEST_SHM",
    "TIERKV_TEST_DISK",
    "TIERKV_TEST_SEED",
];

/// The known variable closest to `name` (edit distance at most 3).
pub fn closest_var(name: &str) -> Option<&'static str> {
    VARS.iter()
        .map(|v| (edit_distance(name, v.name), v.name))
        .filter(|&(d, _)| d <= 3)
        .min()
        .map(|(_, n)| n)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut prev = row[0];
        row[0] = i;
        for j in 1..=b.len() {
            let cur = row[j];
            row[j] = (row[j] + 1)
                .min(row[j - 1] + 1)
                .min(prev + usize::from(a[i - 1] != b[j - 1]));
            prev = cur;
        }
    }
    row[b.len()]
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

fn parse_log(s: &str) -> Option<LogLevel> {
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

fn parse_addr(s: &str) -> Option<SocketAddr> {
    if let Ok(port) = s.parse::<u16>() {
        return Some(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests;
