//! tierkv for C++ engines: a [`cxx`] bridge over the same `Manager` facade the C
//! ABI uses (not over the C ABI), shipped as `libtierkv_cxx.a` with the generated
//! header `tierkv-cxx/src/lib.rs.h` and `rust/cxx.h` (`scripts/install-cxx.sh`).
//!
//! C++ sees `tierkv::Manager` (created by `tierkv::new_manager`), slices in
//! (`rust::Slice<const T>`), `rust::Vec` / `rust::String` / plain structs out.
//! Every failure is a `rust::Error` exception whose `what()` is the text
//! `tierkv_last_error` gives for the same failure.
//!
//! The wall is as strict as the C ABI's:
//! 1. every bridge function runs under `catch_unwind` ([`guard`]): a panic becomes
//!    the exception `internal error in tierkv: ...`, never an abort of the host
//!    (cxx aborts on a panic that crosses an `extern "Rust"` function);
//! 2. lengths that must agree are checked before anything changes (identities
//!    and block ids, keys and parents); block ids are checked against the
//!    registered layout, regions against overflow, by the facade, as for the C ABI.
//!
//! Workflow of an engine (docs/cxx.md): create the manager, register the KV
//! layout, per request hash the prompt's full blocks, look them up, load the hit
//! run into engine blocks, compute the rest and store it; optionally use the
//! engine block pool (`pool_*`) as the block manager and publish KV events
//! (`events_start`, `name_blocks`, `take_events`).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use tierkv::config::Config;
use tierkv::ffi::FfiError;
use tierkv::prefix::BlockHash;
use tierkv::tier::layout::Region as TierRegion;
use tierkv::tier::{LoadOutcome, StoreOutcome, TierId};
use tierkv::{ManagerError, ManagerParams};

#[cfg(feature = "cxx-tests")]
pub mod harness;

#[cxx::bridge(namespace = "tierkv")]
mod ffi {
    /// A 128-bit block identity (low and high halves), as `TierkvHash`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Hash {
        /// Low 64 bits.
        lo: u64,
        /// High 64 bits.
        hi: u64,
    }

    /// One region of the engine's KV memory: `bytes_per_block` bytes of block `b`
    /// at `base + b * block_stride`.
    #[derive(Debug, Clone, Copy)]
    struct Region {
        /// Address of block 0's bytes in this region.
        base: u64,
        /// Bytes from one block to the next.
        block_stride: u64,
        /// Bytes of one block in this region.
        bytes_per_block: u64,
    }

    /// How to create a manager (the rest comes from `TIERKV_*` variables).
    #[derive(Debug, Clone)]
    struct Params {
        /// Tokens per block.
        block_tokens: u32,
        /// Bytes of one block, all regions together.
        block_bytes: u64,
        /// Namespace (model, dtype, layout...); empty: `TIERKV_NAMESPACE`.
        namespace_: String,
        /// Blocks of the engine block pool (0: no pool).
        pool_blocks: u32,
        /// Serve `TIERKV_METRICS_ADDR` from this manager.
        exporter: bool,
        /// Only read the disk tier (another process writes it).
        disk_reader: bool,
    }

    /// A prefix lookup: how many leading blocks some tier holds, and which tier
    /// (`1` engine, `2` host, `3` disk: the `TIERKV_TIER_*` codes) for each.
    #[derive(Debug, Clone)]
    struct Lookup {
        /// Leading blocks held.
        hits: usize,
        /// Tier of each of them.
        tiers: Vec<u8>,
        /// A tier (the remote one) is still finding out whether it holds the block
        /// after the hits: ask again shortly (it never waits on the network), or
        /// take the hits. A pending lookup is not counted in the lookup metrics.
        pending: bool,
    }

    /// One tier as a status call sees it.
    #[derive(Debug, Clone)]
    struct TierState {
        /// The tier exists here (configured).
        configured: bool,
        /// Serving now.
        up: bool,
        /// Why not, when it does not serve.
        problem: String,
        /// Blocks held.
        blocks: u64,
        /// Capacity in blocks.
        capacity_blocks: u64,
    }

    /// KV events taken: one msgpack `KVEventBatch` in vLLM's wire format.
    #[derive(Debug, Clone)]
    struct EventBatch {
        /// The encoded batch (empty when no event was queued).
        bytes: Vec<u8>,
        /// Events in it.
        events: usize,
        /// Events still queued.
        remaining: usize,
    }

    /// A run of a reuse plan: `len` tokens at target positions `target..` built
    /// from the source prompt's positions `source..`.
    #[derive(Debug, Clone, Copy)]
    struct PlanRun {
        /// First target position.
        target: u32,
        /// First source position.
        source: u32,
        /// Tokens.
        len: u32,
    }

    /// A semantic lookup's answer (docs/semantic.md). With `reason` =
    /// `TIERKV_SEMANTIC_ACCEPTED` (0): load `runs` (source positions in the source
    /// prompt's blocks `source_hashes`, shifted to their target positions) and
    /// recompute `recompute` (target ranges `[2i, 2i+1)`); any other reason: no plan
    /// (the rest is empty).
    #[derive(Debug, Clone)]
    struct SemanticPlan {
        /// `TIERKV_SEMANTIC_*` code.
        reason: u8,
        /// Identities of the source prompt's stored full blocks.
        source_hashes: Vec<Hash>,
        /// Runs to load, sorted by target, disjoint.
        runs: Vec<PlanRun>,
        /// Target ranges to recompute, flattened: start, end, start, end...
        recompute: Vec<u32>,
        /// Tokens the plan reuses.
        reused_tokens: u32,
        /// Estimated similarity of the two prompts.
        estimate: f32,
    }

    /// The tokens one layer's decode step attends over, per KV head (PQ
    /// retrieval): KV head `h`'s are `tokens[offsets[h]..offsets[h + 1]]`,
    /// ascending (sinks, top-k by PQ score, local window).
    #[derive(Debug, Clone)]
    struct PqSelection {
        /// Start of each KV head's tokens, and the end (`kv_heads + 1` entries).
        offsets: Vec<u32>,
        /// Token positions.
        tokens: Vec<u32>,
    }

    /// A gather's K and V rows (PQ retrieval), per KV head: head `h`'s rows are
    /// `offsets[h]..offsets[h + 1]`, row `r`'s key at `keys[r * head_dim..]`,
    /// its value at `values[r * value_dim..]` (fp32), its position `tokens[r]`.
    #[derive(Debug, Clone)]
    struct PqRows {
        /// Start of each KV head's rows, and the end (`kv_heads + 1` entries).
        offsets: Vec<u32>,
        /// Token positions of the rows.
        tokens: Vec<u32>,
        /// Keys, `head_dim` floats a row.
        keys: Vec<f32>,
        /// Values, `value_dim` floats a row.
        values: Vec<f32>,
        /// Floats of a key.
        head_dim: u32,
        /// Floats of a value.
        value_dim: u32,
    }

    /// Where one kind of row (K or V) of every token and head of one region of
    /// a block lies (`TierkvTokenRows` of the C ABI).
    #[derive(Debug, Clone, Copy)]
    struct TokenRows {
        /// Region index.
        region: u32,
        /// 1 for keys, 0 for values.
        is_key: u32,
        /// Byte offset of token 0, head 0.
        offset: u64,
        /// Bytes between tokens.
        token_stride: u64,
        /// Bytes between heads.
        head_stride: u64,
        /// Heads.
        heads: u32,
        /// Bytes of one row.
        row_bytes: u32,
        /// Bytes between a row's elements (0: contiguous).
        elem_stride: u64,
    }

    /// The engine block pool's sizes and counters.
    #[derive(Debug, Clone, Copy)]
    struct PoolState {
        /// Slots.
        num_blocks: u64,
        /// Free slots (cached ones included).
        free: u64,
        /// Slots holding an identity.
        cached: u64,
        /// Blocks allocated.
        allocated: u64,
        /// References released.
        freed: u64,
        /// Blocks reused by identity.
        hits: u64,
        /// Cached blocks evicted by allocations.
        evictions: u64,
    }

    extern "Rust" {
        /// One tierkv manager.
        type Manager;
        /// A PQ index of a request's keys (after PQCache; docs/pq.md).
        type PqIndex;

        /// Creates a manager: reads `TIERKV_*`, opens (or joins) the host tier,
        /// starts the exporter when asked.
        fn new_manager(params: &Params) -> Result<Box<Manager>>;
        /// SHA-256 of a file's content, lowercase hex: for the namespace (a model
        /// file replaced in place is a different cache).
        fn file_sha256(path: &str) -> Result<String>;
        /// Tokens per block.
        fn block_tokens(self: &Manager) -> u32;
        /// Identities of the full blocks of `tokens`, continuing `parent` (empty,
        /// or the identity of the block before them).
        fn hash_tokens(self: &Manager, tokens: &[u32], parent: &[Hash]) -> Result<Vec<Hash>>;
        /// The longest leading run of `hashes` some tier holds.
        fn lookup(self: &Manager, hashes: &[Hash]) -> Result<Lookup>;
        /// Registers the engine's KV memory (one region per KV tensor).
        fn register_layout(self: &Manager, regions: &[Region], num_blocks: u64) -> Result<()>;
        /// Copies engine blocks `block_ids[i]` into the tiers under `hashes[i]`;
        /// a `TIERKV_STORE_*` code per block.
        ///
        /// # Safety
        /// The registered memory must be readable and not written during the call.
        unsafe fn store_blocks(self: &Manager, hashes: &[Hash], block_ids: &[u64]) -> Result<Vec<u8>>;
        /// Copies blocks `hashes[i]` into engine blocks `block_ids[i]`, verified; a
        /// `TIERKV_LOAD_*` code per block (anything but 1: recompute it).
        ///
        /// # Safety
        /// The registered memory must be writable and not used during the call.
        unsafe fn load_blocks(self: &Manager, hashes: &[Hash], block_ids: &[u64]) -> Result<Vec<u8>>;
        /// Every metric in Prometheus text format.
        fn metrics_text(self: &Manager) -> Result<String>;
        /// Tier `tier` (`TIERKV_TIER_*` code) now.
        fn tier_status(self: &Manager, tier: u8) -> Result<TierState>;
        /// Waits up to `timeout_ms` for queued lower-tier writes; whether they landed.
        fn flush(self: &Manager, timeout_ms: u64) -> Result<bool>;

        /// Indexes a prompt whose full blocks are stored, for semantic lookups;
        /// whether it was indexed (sharing off, or shorter than a block: not).
        fn semantic_insert(self: &Manager, tokens: &[u32]) -> Result<bool>;
        /// A plan to build `tokens`' KV from a cached near-duplicate, after an
        /// exact prefix hit of `exact_tokens` (see `SemanticPlan`).
        fn semantic_lookup(self: &Manager, tokens: &[u32], exact_tokens: u32) -> Result<SemanticPlan>;

        /// A PQ index of `keys`, fp32 `[layer][kv_head][token][head_dim]`
        /// (post-RoPE), with the manager's `TIERKV_PQ_*` parameters.
        fn pq_build(
            self: &Manager,
            keys: &[f32],
            layers: u32,
            kv_heads: u32,
            tokens: usize,
            head_dim: u32,
        ) -> Result<Box<PqIndex>>;
        /// Where each token's K and V rows lie in the registered layout (rows
        /// tiling every region's block), the keys' dtype (0 f32, 1 f16, 2 bf16)
        /// and standard RoPE (`rope_theta` `base`, `rot_dim` of `head_dim`
        /// rotated, `neox`: rotate-half pairing): semantic sharing and PQ
        /// indexes of stored blocks read tokens through it.
        fn register_token_layout(
            self: &Manager,
            rows: &[TokenRows],
            dtype: u32,
            head_dim: u32,
            rot_dim: u32,
            base: f32,
            neox: bool,
        ) -> Result<()>;
        /// A PQ index of the first `tokens` tokens of the stored blocks `hashes`
        /// (keys fetched from the tiers through the registered token layout); it
        /// can gather.
        fn pq_build_blocks(self: &Manager, hashes: &[Hash], tokens: usize) -> Result<Box<PqIndex>>;
        /// Layer `layer`'s K and V rows of a selection (`topk`'s) from the stored
        /// blocks `index` was built from (its block cache, else the tiers);
        /// tokens past the stored blocks end a head's rows.
        fn pq_gather(self: &Manager, index: &PqIndex, layer: u32, selection: &PqSelection) -> Result<PqRows>;
        /// The tokens layer `layer` attends over for `queries`, fp32
        /// `[kv_head][group][head_dim]`; `budget` 0: the index's fraction.
        fn topk(self: &PqIndex, layer: u32, queries: &[f32], group: u32, budget: f64) -> Result<PqSelection>;
        /// Encodes `n` appended tokens, `[layer][kv_head][n][head_dim]`.
        fn append(self: &PqIndex, keys: &[f32], n: usize) -> Result<()>;
        /// Tokens indexed.
        fn tokens(self: &PqIndex) -> usize;

        /// Starts recording KV events (0: keep up to 65536).
        fn events_start(self: &Manager, capacity: usize) -> Result<()>;
        /// The engine's 64-bit keys (and parents', empty or one per block) of
        /// blocks about to be stored or loaded.
        fn name_blocks(self: &Manager, hashes: &[Hash], keys: &[u64], parents: &[u64]) -> Result<()>;
        /// The oldest queued events as one batch of at most `max_bytes` (at least 512).
        fn take_events(self: &Manager, max_bytes: usize) -> Result<EventBatch>;

        /// Allocates `n` engine blocks, all or nothing.
        fn pool_allocate(self: &Manager, n: usize) -> Result<Vec<u32>>;
        /// Releases one reference to each of `ids` (a request's blocks, last first).
        fn pool_free(self: &Manager, ids: &[u32]) -> Result<()>;
        /// Adds one reference to each of `ids`.
        fn pool_fork(self: &Manager, ids: &[u32]) -> Result<()>;
        /// References exactly these blocks (a prefix hit on blocks `pool_find`
        /// named); free ones leave the free list.
        fn pool_touch(self: &Manager, ids: &[u32]) -> Result<()>;
        /// Held blocks `ids[i]` hold `hashes[i]`; whether each is the one found.
        fn pool_register(self: &Manager, ids: &[u32], hashes: &[Hash]) -> Result<Vec<bool>>;
        /// References the blocks of the longest leading run of `hashes` held.
        fn pool_acquire_cached(self: &Manager, hashes: &[Hash]) -> Result<Vec<u32>>;
        /// The block found for each of `hashes` (`0xFFFFFFFF`: none), changing nothing.
        fn pool_find(self: &Manager, hashes: &[Hash]) -> Result<Vec<u32>>;
        /// Drops the identities of `ids`; how many there were.
        fn pool_forget(self: &Manager, ids: &[u32]) -> Result<usize>;
        /// Sizes and counters of the pool.
        fn pool_state(self: &Manager) -> Result<PoolState>;
    }
}

pub use ffi::{EventBatch, Hash, Lookup, Params, PoolState, PqRows, PqSelection, Region, TierState, TokenRows};

/// The error C++ sees as `rust::Error`: its text is `tierkv_last_error`'s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<ManagerError> for Error {
    fn from(e: ManagerError) -> Self {
        Error(FfiError::from(e).message)
    }
}

fn invalid(msg: impl Into<String>) -> Error {
    Error(msg.into())
}

/// Runs a bridge body: a panic becomes the error the C ABI reports for one.
pub fn guard<T>(body: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(r) => r,
        Err(panic) => Err(Error(tierkv::ffi::panic_text(&*panic))),
    }
}

impl From<Hash> for BlockHash {
    fn from(h: Hash) -> Self {
        BlockHash::from_parts([h.lo, h.hi])
    }
}

impl From<BlockHash> for Hash {
    fn from(h: BlockHash) -> Self {
        let [lo, hi] = h.to_parts();
        Hash { lo, hi }
    }
}

fn hashes(hs: &[Hash]) -> Vec<BlockHash> {
    hs.iter().map(|&h| h.into()).collect()
}

fn same_len(a: usize, b: usize, what: &str) -> Result<(), Error> {
    if a == b {
        Ok(())
    } else {
        Err(invalid(format!("{what}: {a} and {b} entries")))
    }
}

/// A tierkv manager as C++ holds it.
pub struct Manager(Arc<tierkv::Manager>);

/// SHA-256 of the file at `path`, lowercase hex.
pub fn file_sha256(path: &str) -> Result<String, Error> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    guard(|| {
        let mut f = std::fs::File::open(path).map_err(|e| Error(format!("cannot open {path}: {e}")))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f
                .read(&mut buf)
                .map_err(|e| Error(format!("cannot read {path}: {e}")))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
    })
}

/// Creates a manager (see the bridge declaration).
pub fn new_manager(p: &Params) -> Result<Box<Manager>, Error> {
    guard(|| {
        let config = Config::from_env().map_err(|e| Error(e.to_string()))?;
        let m = Arc::new(tierkv::Manager::new(
            config,
            ManagerParams {
                block_tokens: p.block_tokens,
                block_bytes: p.block_bytes,
                namespace: (!p.namespace_.is_empty()).then(|| p.namespace_.clone()),
                pool_blocks: p.pool_blocks,
                disk_reader: p.disk_reader,
                pool_engine_order: false,
            },
        )?);
        if p.exporter {
            m.start_exporter();
        }
        Ok(Box::new(Manager(m)))
    })
}

fn store_code(o: StoreOutcome) -> u8 {
    match o {
        StoreOutcome::Stored => 1,
        StoreOutcome::AlreadyPresent => 2,
        StoreOutcome::NoSpace => 3,
        StoreOutcome::Deferred => 4,
    }
}

fn load_code(o: LoadOutcome) -> u8 {
    match o {
        LoadOutcome::Loaded => 1,
        LoadOutcome::Miss => 2,
        LoadOutcome::Corrupt => 3,
        LoadOutcome::Busy => 4,
        LoadOutcome::IoError => 5,
    }
}

impl Manager {
    /// Tokens per block.
    pub fn block_tokens(&self) -> u32 {
        self.0.block_tokens() as u32
    }

    /// Identities of the full blocks of `tokens` after `parent`.
    pub fn hash_tokens(&self, tokens: &[u32], parent: &[Hash]) -> Result<Vec<Hash>, Error> {
        guard(|| {
            if parent.len() > 1 {
                return Err(invalid("parent: at most one identity"));
            }
            let mut out = Vec::with_capacity(tokens.len() / self.0.block_tokens().max(1));
            self.0
                .hash_tokens(parent.first().map(|&h| h.into()), tokens, &mut out)?;
            Ok(out.into_iter().map(Hash::from).collect())
        })
    }

    /// The longest leading run of `hashes` held, with each block's tier.
    pub fn lookup(&self, hs: &[Hash]) -> Result<Lookup, Error> {
        guard(|| {
            let mut tiers = vec![TierId::Host; hs.len()];
            let run = self.0.in_scope(|| self.0.lookup_run(&hashes(hs), &mut tiers, true))?;
            Ok(Lookup {
                hits: run.end,
                tiers: tiers[..run.end].iter().map(|&t| t as u8).collect(),
                pending: run.pending,
            })
        })
    }

    /// Registers the engine's KV memory.
    pub fn register_layout(&self, regions: &[Region], num_blocks: u64) -> Result<(), Error> {
        guard(|| {
            let rs: Vec<TierRegion> = regions
                .iter()
                .map(|r| TierRegion {
                    base: r.base,
                    block_stride: r.block_stride,
                    bytes_per_block: r.bytes_per_block,
                })
                .collect();
            Ok(self.0.register_layout(&rs, num_blocks)?)
        })
    }

    /// Stores engine blocks.
    ///
    /// # Safety
    /// The registered memory must be readable and not written during the call.
    pub unsafe fn store_blocks(&self, hs: &[Hash], block_ids: &[u64]) -> Result<Vec<u8>, Error> {
        guard(|| {
            same_len(hs.len(), block_ids.len(), "hashes and block_ids")?;
            let mut out = vec![StoreOutcome::NoSpace; hs.len()];
            self.0.in_scope(|| {
                // SAFETY: this function's contract, passed on.
                unsafe { self.0.store_blocks(&hashes(hs), block_ids, &mut out) }
            })?;
            Ok(out.into_iter().map(store_code).collect())
        })
    }

    /// Loads blocks into engine blocks, verified.
    ///
    /// # Safety
    /// The registered memory must be writable and not used during the call.
    pub unsafe fn load_blocks(&self, hs: &[Hash], block_ids: &[u64]) -> Result<Vec<u8>, Error> {
        guard(|| {
            same_len(hs.len(), block_ids.len(), "hashes and block_ids")?;
            let mut out = vec![LoadOutcome::Miss; hs.len()];
            self.0.in_scope(|| {
                // SAFETY: this function's contract, passed on.
                unsafe { self.0.load_blocks(&hashes(hs), block_ids, &mut out) }
            })?;
            Ok(out.into_iter().map(load_code).collect())
        })
    }

    /// Every metric in Prometheus text format.
    pub fn metrics_text(&self) -> Result<String, Error> {
        guard(|| Ok(self.0.metrics_text()))
    }

    /// A tier's state.
    pub fn tier_status(&self, tier: u8) -> Result<TierState, Error> {
        guard(|| {
            let id = match tier {
                1 => TierId::Engine,
                2 => TierId::Host,
                3 => TierId::Disk,
                t => return Err(invalid(format!("unknown tier {t}"))),
            };
            Ok(match self.0.tier_status(id) {
                Some(s) => TierState {
                    configured: true,
                    up: s.up,
                    problem: s.problem.unwrap_or_default(),
                    blocks: s.blocks,
                    capacity_blocks: s.capacity_blocks,
                },
                None => TierState {
                    configured: false,
                    up: false,
                    problem: String::new(),
                    blocks: 0,
                    capacity_blocks: 0,
                },
            })
        })
    }

    /// Waits for queued lower-tier writes.
    pub fn flush(&self, timeout_ms: u64) -> Result<bool, Error> {
        guard(|| Ok(self.0.flush(Duration::from_millis(timeout_ms))))
    }

    /// Starts recording KV events.
    pub fn events_start(&self, capacity: usize) -> Result<(), Error> {
        guard(|| {
            self.0.events_start(capacity);
            Ok(())
        })
    }

    /// Names blocks for KV events.
    pub fn name_blocks(&self, hs: &[Hash], keys: &[u64], parents: &[u64]) -> Result<(), Error> {
        guard(|| {
            same_len(hs.len(), keys.len(), "hashes and keys")?;
            if !parents.is_empty() {
                same_len(hs.len(), parents.len(), "hashes and parents")?;
            }
            let parents = (!parents.is_empty()).then_some(parents);
            Ok(self.0.name_blocks(&hashes(hs), keys, parents)?)
        })
    }

    /// Takes queued KV events as one batch.
    pub fn take_events(&self, max_bytes: usize) -> Result<EventBatch, Error> {
        guard(|| {
            if max_bytes < tierkv::ffi::TIERKV_EVENTS_MIN_BUFFER {
                return Err(invalid(format!(
                    "buffer of {max_bytes} bytes, at least {} needed",
                    tierkv::ffi::TIERKV_EVENTS_MIN_BUFFER
                )));
            }
            let mut buf = vec![0u8; max_bytes];
            let t = self.0.take_events(&mut buf)?;
            buf.truncate(t.bytes);
            Ok(EventBatch {
                bytes: buf,
                events: t.events,
                remaining: t.remaining,
            })
        })
    }

    /// Allocates engine blocks.
    pub fn pool_allocate(&self, n: usize) -> Result<Vec<u32>, Error> {
        guard(|| {
            let mut out = Vec::with_capacity(n);
            self.0.pool_allocate(n, &mut out)?;
            Ok(out)
        })
    }

    /// Releases engine blocks.
    pub fn pool_free(&self, ids: &[u32]) -> Result<(), Error> {
        guard(|| Ok(self.0.pool_free(ids)?))
    }

    /// References engine blocks once more.
    pub fn pool_fork(&self, ids: &[u32]) -> Result<(), Error> {
        guard(|| Ok(self.0.pool_fork(ids)?))
    }

    /// Indexes a stored prompt for semantic lookups (see the bridge declaration).
    pub fn semantic_insert(&self, tokens: &[u32]) -> Result<bool, Error> {
        guard(|| Ok(self.0.semantic_insert(tokens)?))
    }

    /// A reuse plan from a cached near-duplicate (see the bridge declaration).
    pub fn semantic_lookup(&self, tokens: &[u32], exact_tokens: u32) -> Result<ffi::SemanticPlan, Error> {
        guard(|| {
            let run = |r: &tierkv::semantic::ReuseRun| ffi::PlanRun {
                target: r.target,
                source: r.source,
                len: r.len,
            };
            Ok(match self.0.semantic_lookup(tokens, exact_tokens) {
                Ok(plan) => ffi::SemanticPlan {
                    reason: 0,
                    source_hashes: plan.source_hashes.iter().map(|&h| Hash::from(h)).collect(),
                    runs: plan.runs.iter().map(run).collect(),
                    recompute: plan.recompute.iter().flat_map(|r| [r.start, r.end]).collect(),
                    reused_tokens: plan.reused_tokens(),
                    estimate: plan.estimate,
                },
                Err(why) => ffi::SemanticPlan {
                    reason: tierkv::ffi::semantic_reason(why) as u8,
                    source_hashes: Vec::new(),
                    runs: Vec::new(),
                    recompute: Vec::new(),
                    reused_tokens: 0,
                    estimate: 0.0,
                },
            })
        })
    }

    /// References exactly these blocks (a prefix hit on blocks `pool_find` named).
    pub fn pool_touch(&self, ids: &[u32]) -> Result<(), Error> {
        guard(|| Ok(self.0.pool_touch(ids)?))
    }

    /// Registers identities of held blocks.
    pub fn pool_register(&self, ids: &[u32], hs: &[Hash]) -> Result<Vec<bool>, Error> {
        guard(|| {
            same_len(ids.len(), hs.len(), "ids and hashes")?;
            let mut out = Vec::with_capacity(ids.len());
            self.0.pool_register_many(ids, &hashes(hs), &mut out)?;
            Ok(out)
        })
    }

    /// References the cached blocks of the longest leading run.
    pub fn pool_acquire_cached(&self, hs: &[Hash]) -> Result<Vec<u32>, Error> {
        guard(|| {
            let mut out = Vec::with_capacity(hs.len());
            self.0.pool_acquire_cached(&hashes(hs), &mut out)?;
            Ok(out)
        })
    }

    /// The block found for each identity.
    pub fn pool_find(&self, hs: &[Hash]) -> Result<Vec<u32>, Error> {
        guard(|| {
            let mut out = Vec::with_capacity(hs.len());
            self.0.pool_find(&hashes(hs), &mut out)?;
            Ok(out.into_iter().map(|f| f.unwrap_or(u32::MAX)).collect())
        })
    }

    /// Drops identities of blocks.
    pub fn pool_forget(&self, ids: &[u32]) -> Result<usize, Error> {
        guard(|| Ok(self.0.pool_forget(ids)?))
    }

    /// The pool's state.
    pub fn pool_state(&self) -> Result<PoolState, Error> {
        guard(|| {
            let s = self.0.pool_state()?;
            Ok(PoolState {
                num_blocks: s.num_blocks,
                free: s.free,
                cached: s.cached,
                allocated: s.stats.allocated,
                freed: s.stats.freed,
                hits: s.stats.hits,
                evictions: s.stats.evictions,
            })
        })
    }
}

/// A PQ index (see the bridge declaration).
pub struct PqIndex(tierkv::PqHandle);

impl Manager {
    /// A PQ index of keys given by the engine.
    pub fn pq_build(
        &self,
        keys: &[f32],
        layers: u32,
        kv_heads: u32,
        tokens: usize,
        head_dim: u32,
    ) -> Result<Box<PqIndex>, Error> {
        guard(|| {
            let h = self.0.pq_build(
                keys,
                layers as usize,
                kv_heads as usize,
                tokens,
                head_dim as usize,
                None,
            )?;
            Ok(Box::new(PqIndex(h)))
        })
    }

    /// A PQ index of a request's stored blocks.
    pub fn pq_build_blocks(&self, hs: &[Hash], tokens: usize) -> Result<Box<PqIndex>, Error> {
        guard(|| Ok(Box::new(PqIndex(self.0.pq_build_blocks(&hashes(hs), tokens, None)?))))
    }

    /// The token layout (standard RoPE).
    pub fn register_token_layout(
        &self,
        rows: &[TokenRows],
        dtype: u32,
        head_dim: u32,
        rot_dim: u32,
        base: f32,
        neox: bool,
    ) -> Result<(), Error> {
        use tierkv::semantic::synth::{row_rope, TokenRows as Rows};
        use tierkv_cuda::reference::KeyDtype;
        guard(|| {
            let dtype = match dtype {
                0 => KeyDtype::F32,
                1 => KeyDtype::F16,
                2 => KeyDtype::Bf16,
                _ => return Err(invalid(format!("dtype {dtype}: expected 0 (f32), 1 (f16) or 2 (bf16)"))),
            };
            let rope = row_rope(head_dim, rot_dim, base, neox, None).map_err(invalid)?;
            let rows: Vec<Rows> = rows
                .iter()
                .map(|r| Rows {
                    region: r.region,
                    is_key: r.is_key,
                    offset: r.offset,
                    token_stride: r.token_stride,
                    head_stride: r.head_stride,
                    heads: r.heads,
                    row_bytes: r.row_bytes,
                    elem_stride: r.elem_stride,
                })
                .collect();
            Ok(self.0.register_token_layout(&rows, dtype, rope)?)
        })
    }

    /// One layer's K and V rows of a selection.
    pub fn pq_gather(&self, index: &PqIndex, layer: u32, sel: &PqSelection) -> Result<PqRows, Error> {
        guard(|| {
            let (_, heads, dim) = index.0.shape();
            let vdim = index.0.value_dim();
            let o = &sel.offsets;
            if o.len() != heads + 1 || o.windows(2).any(|w| w[0] > w[1]) || o[heads] as usize != sel.tokens.len() {
                return Err(invalid(format!(
                    "a selection of {} offsets for {heads} KV heads",
                    o.len()
                )));
            }
            let lists: Vec<&[u32]> = o
                .windows(2)
                .map(|w| &sel.tokens[w[0] as usize..w[1] as usize])
                .collect();
            let cap = lists.iter().map(|l| l.len()).max().unwrap_or(0);
            let (mut k, mut v, mut rows) = (
                vec![0f32; heads * cap * dim],
                vec![0f32; heads * cap * vdim],
                vec![0; heads],
            );
            self.0
                .pq_gather(&index.0, layer as usize, &lists, cap, &mut k, &mut v, &mut rows)?;
            let mut out = PqRows {
                offsets: vec![0],
                tokens: Vec::new(),
                keys: Vec::new(),
                values: Vec::new(),
                head_dim: dim as u32,
                value_dim: vdim as u32,
            };
            for (h, (&n, l)) in rows.iter().zip(&lists).enumerate() {
                out.tokens.extend_from_slice(&l[..n]);
                out.keys.extend_from_slice(&k[h * cap * dim..(h * cap + n) * dim]);
                out.values.extend_from_slice(&v[h * cap * vdim..(h * cap + n) * vdim]);
                out.offsets.push(out.tokens.len() as u32);
            }
            Ok(out)
        })
    }
}

impl PqIndex {
    /// One layer's selection per KV head.
    pub fn topk(&self, layer: u32, queries: &[f32], group: u32, budget: f64) -> Result<PqSelection, Error> {
        guard(|| {
            if !(0.0..=1.0).contains(&budget) {
                return Err(invalid(format!(
                    "budget {budget}: 0 (the index's) or a fraction (0, 1]"
                )));
            }
            let heads = self.0.shape().1;
            let mut out = vec![Vec::new(); heads];
            let b = (budget > 0.0).then_some(budget);
            self.0.topk(layer as usize, queries, group as usize, b, &mut out)?;
            let mut offsets = vec![0u32];
            for sel in &out {
                offsets.push(offsets[offsets.len() - 1] + sel.len() as u32);
            }
            Ok(PqSelection {
                offsets,
                tokens: out.concat(),
            })
        })
    }

    /// Encodes appended tokens.
    pub fn append(&self, keys: &[f32], n: usize) -> Result<(), Error> {
        guard(|| Ok(self.0.append(keys, n)?))
    }

    /// Tokens indexed.
    pub fn tokens(&self) -> usize {
        self.0.info().tokens
    }
}
