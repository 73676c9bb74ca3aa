//! The one table of `TIERKV_*` variables ([`VARS`]), which `docs/configuration.md`
//! mirrors (a test keeps them in step), and the names tools read ([`TOOL_VARS`]).

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
        default: "hazard",
        meaning: "Eviction and admission policy of a host-tier store this process creates: hazard (learned reuse odds, as TIERKV_DISK_EVICTION; a refused block still goes to the lower tiers) or lru (admits everything). A store keeps the policy it was created with; every process of it evicts alike.",
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
        default: "hazard",
        meaning: "Eviction and admission policy of the disk tier: hazard, lru, s3fifo or chat.",
    },
    VarDoc {
        name: "TIERKV_POOL_EVICTION",
        default: "hazard",
        meaning: "Which cached free block the engine block pool (TIERKV_VLLM_POOL=rust) evicts first: hazard (learned reuse odds, as TIERKV_DISK_EVICTION; a block whose identity it refuses is evicted first once free), s3fifo, chat, or lru (the engine's own order, least recently released first). A shadow pool always keeps the engine's order.",
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
        name: "TIERKV_REMOTE_URL",
        default: "unset",
        meaning: "The remote tier (G4): redis://[user:password@]host:port for one server or a cluster node, or redis://host:port,host:port,... for a cluster's seed list; rediss:// for TLS; off when unset (docs/remote.md).",
    },
    VarDoc {
        name: "TIERKV_REMOTE_TLS_CA_FILE",
        default: "unset",
        meaning: "With rediss://: PEM file of the CAs that sign the store's certificates; unset: the system's CAs.",
    },
    VarDoc {
        name: "TIERKV_REMOTE_TLS_CERT_FILE",
        default: "unset",
        meaning: "With rediss://: PEM client certificate (chain) shown to the store (Redis asks for one unless tls-auth-clients is no); set with TIERKV_REMOTE_TLS_KEY_FILE.",
    },
    VarDoc {
        name: "TIERKV_REMOTE_TLS_KEY_FILE",
        default: "unset",
        meaning: "With rediss://: PEM private key of the client certificate (chmod 600; refused if others may read it).",
    },
    VarDoc {
        name: "TIERKV_REMOTE_PASSWORD_FILE",
        default: "unset",
        meaning: "File whose first line is the store's password (chmod 600; refused if others may read it), instead of a password in the URL.",
    },
    VarDoc {
        name: "TIERKV_REMOTE_TTL",
        default: "24h",
        meaning: "Lifetime of a block in the remote store; each hit refreshes it. 1s to 3650 days.",
    },
    VarDoc {
        name: "TIERKV_REMOTE_TIMEOUT",
        default: "500ms",
        meaning: "Connect and response timeout of every remote call (a slower answer is a miss). 1ms to 60s.",
    },
    VarDoc {
        name: "TIERKV_REMOTE_QUEUE",
        default: "256",
        meaning: "Bound of the remote write-behind queue, in blocks; a full queue drops writes (counted), never blocks the engine. 1-65536.",
    },
    VarDoc {
        name: "TIERKV_REMOTE_PREFIX",
        default: "tierkv",
        meaning: "Prefix of every remote key: one per deployment sharing a store. 1-64 printable characters, no spaces or braces.",
    },
    VarDoc {
        name: "TIERKV_REMOTE_ADMIT",
        default: "reuse",
        meaning: "Which blocks go to the remote tier: reuse (used TIERKV_REMOTE_ADMIT_USES times) or always.",
    },
    VarDoc {
        name: "TIERKV_REMOTE_ADMIT_USES",
        default: "2",
        meaning: "Uses (stores and hits) before a block is written to the remote tier under reuse admission. 1-15.",
    },
    VarDoc {
        name: "TIERKV_PQ_BUDGET",
        default: "0.2",
        meaning: "PQ retrieval: tokens attended per decode step as a fraction of the context, half local window and half top-k by PQ score, plus the sinks (docs/pq.md). Above 0, at most 1.",
    },
    VarDoc {
        name: "TIERKV_PQ_SINK",
        default: "32",
        meaning: "PQ retrieval: attention sinks, the first tokens of the context, always attended and not trained on. 0-4096.",
    },
    VarDoc {
        name: "TIERKV_PQ_SUBSPACES",
        default: "2",
        meaning: "PQ retrieval: sub-spaces a key is split into (codes per key); 1, 2, 4, 8 or 16, dividing the head dimension.",
    },
    VarDoc {
        name: "TIERKV_PQ_BITS",
        default: "6",
        meaning: "PQ retrieval: bits per code (2^bits centroids per sub-space). 1-8.",
    },
    VarDoc {
        name: "TIERKV_PQ_CACHE_BYTES",
        default: "64MiB",
        meaning: "PQ retrieval: bytes of block regions (a layer's K and V, in vLLM's layout) each index keeps for its gathers (PQCache's block cache, least frequently used out); 0: every gather reads the host tier.",
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
        default: "0",
        meaning: "Differing tokens a prefix-only engine (vLLM) may take from the near-duplicate's KV (a swapped name or number; measured to leak the other prompt's name into answers). 0-65536.",
    },
    VarDoc {
        name: "TIERKV_SEMANTIC_SUBSTITUTE_SPAN",
        default: "8",
        meaning: "Longest run of differing tokens that may be substituted (a name or a number, not a reworded sentence). 1-65536.",
    },
    VarDoc {
        name: "TIERKV_SEMANTIC_PREFIX_SHIFT",
        default: "0",
        meaning: "Largest position shift of KV a prefix-only engine (vLLM) may take from a near-duplicate (text inserted or deleted before it). 0-16777216.",
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
    "TIERKV_PROMETHEUS",
    "TIERKV_REQUIRE_PROMETHEUS",
    "TIERKV_LAYERS_SRC",
    "TIERKV_WHEEL",
    "TIERKV_WHEEL_TOOLS",
    "TIERKV_E2E_INSTALLED",
    "TIERKV_VLLM_MODEL",
    "TIERKV_VLLM_POOL",
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
