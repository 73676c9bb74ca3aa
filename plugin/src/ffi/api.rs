//! The exported functions. Each one validates everything it is given and returns a
//! [`TierkvStatus`]; see `plugin/include/tierkv.h` for the C view.

use std::ffi::{c_char, CStr};
use std::sync::Arc;

use super::types::{core_vec, TierkvRegion};
use super::{guard, manager, out_ptr, prefill, slice_in, slice_out, FfiError, TierkvManager, TierkvStatus};
use crate::config::Config;
use crate::manager::{BlockHash, CowOutcome, HashAlgo, LoadOutcome, Region, StoreOutcome, TierId};
use crate::{Manager, ManagerError, ManagerParams};

/// Version of this C ABI. Bumped on any incompatible change.
pub const TIERKV_ABI_VERSION: u32 = 3;

/// A 128-bit block identity as two 64-bit halves.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TierkvHash {
    /// Low 64 bits.
    pub lo: u64,
    /// High 64 bits.
    pub hi: u64,
}

impl From<TierkvHash> for BlockHash {
    fn from(h: TierkvHash) -> Self {
        BlockHash::from_parts([h.lo, h.hi])
    }
}

impl From<BlockHash> for TierkvHash {
    fn from(h: BlockHash) -> Self {
        let [lo, hi] = h.to_parts();
        TierkvHash { lo, hi }
    }
}

/// Parameters of `tierkv_manager_create`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct TierkvManagerParams {
    /// Tokens per block (at least 1).
    pub block_tokens: u32,
    /// Engine block pool size to manage; 0 when the engine keeps its own.
    pub pool_blocks: u32,
    /// Payload bytes of one block across all layers (at least 1).
    pub block_bytes: u64,
    /// NUL-terminated namespace (model, LoRA, tenant), or null for
    /// `TIERKV_NAMESPACE`.
    pub namespace_: *const c_char,
    /// `TIERKV_CREATE_*` bits; 0 for defaults.
    pub flags: u32,
}

/// `flags` bit: do not start the metrics exporter even if `TIERKV_METRICS_ADDR` is
/// set (for a second manager in a process that already serves metrics).
pub const TIERKV_CREATE_NO_EXPORTER: u32 = 1;
/// `flags` bit: this manager only looks blocks up and loads them; it never takes
/// ownership of the disk tier's file (for a scheduler process, whose worker stores).
pub const TIERKV_CREATE_DISK_READER: u32 = 2;
/// `flags` bit: the engine block pool evicts in the engine's own order (least
/// recently released first) whatever `TIERKV_POOL_EVICTION` says (a shadow pool,
/// compared call by call with the engine's).
pub const TIERKV_CREATE_POOL_ENGINE_ORDER: u32 = 4;

/// What `tierkv_manager_info` reports.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct TierkvManagerInfo {
    /// `TIERKV_ABI_VERSION`.
    pub abi_version: u32,
    /// Tokens per block.
    pub block_tokens: u32,
    /// Payload bytes per block.
    pub block_bytes: u64,
    /// Host tier capacity in blocks.
    pub host_capacity_blocks: u64,
    /// Blocks held by the host tier now.
    pub host_blocks: u64,
    /// Port of the running metrics exporter, 0 when off.
    pub metrics_port: u16,
    /// 1 when `TIERKV_STORE_DECODE` is on.
    pub store_decode: u8,
    /// 0: xxh3_128, 1: sha256_cbor, 2: xxhash_cbor.
    pub hash_algo: u8,
}

/// Result of storing one block (`out_results` of `tierkv_store_blocks`). No code
/// is 0: a zero-initialised array never reads as success.
pub const TIERKV_STORE_STORED: u8 = 1;
/// The block was already present (or being written): nothing copied.
pub const TIERKV_STORE_PRESENT: u8 = 2;
/// No room: every block of the tier is pinned (or its slot was reclaimed before
/// the write finished). Not stored.
pub const TIERKV_STORE_NO_SPACE: u8 = 3;
/// Not stored now: over the offload budget the scheduler leaves beside the
/// engine's PCIe traffic (device layouts only). Store it again later if wanted.
pub const TIERKV_STORE_DEFERRED: u8 = 4;
/// Not stored: the call failed (its status says why) before this block was done.
/// Every entry holds this until its block is done.
pub const TIERKV_STORE_FAILED: u8 = 5;

/// Result of loading one block (`out_results` of `tierkv_load_blocks`). No code is
/// 0: a zero-initialised array never reads as "all loaded".
pub const TIERKV_LOAD_LOADED: u8 = 1;
/// Not present (never stored or evicted): recompute.
pub const TIERKV_LOAD_MISS: u8 = 2;
/// Failed verification: the block was dropped; its engine slot holds garbage and
/// must be recomputed.
pub const TIERKV_LOAD_CORRUPT: u8 = 3;
/// Not read now (this process pins too many blocks at once, or the store's lock
/// was not free in time): recompute.
pub const TIERKV_LOAD_BUSY: u8 = 4;
/// Reading it from disk failed: the block was dropped; recompute.
pub const TIERKV_LOAD_IO_ERROR: u8 = 5;
/// Not loaded: the call failed (its status says why) before this block was done;
/// its engine slot may hold anything: recompute. Every entry holds this until its
/// block is done.
pub const TIERKV_LOAD_FAILED: u8 = 6;

/// Tier codes written by `tierkv_lookup`.
pub const TIERKV_TIER_ENGINE: u8 = 1;
/// The host-memory tier.
pub const TIERKV_TIER_HOST: u8 = 2;
/// The disk tier.
pub const TIERKV_TIER_DISK: u8 = 3;
/// Tier code: the remote tier (G4, a Redis/Valkey cluster).
pub const TIERKV_TIER_REMOTE: u8 = 4;
/// Written by `tierkv_lookup_flags` at `out_tiers[*out_hits]` (when
/// `*out_hits < n`): a tier is still finding out whether it holds that block;
/// ask again later (vLLM: `None` from `get_num_new_matched_tokens`).
pub const TIERKV_TIER_PENDING: u8 = 255;

/// The ABI version of the loaded library. Never fails.
#[no_mangle]
pub extern "C" fn tierkv_abi_version() -> u32 {
    TIERKV_ABI_VERSION
}

/// The message of the calling thread's last failed call, or "" after a success.
///
/// # Safety
/// The returned pointer is owned by tierkv and valid until the calling thread makes
/// its next tierkv call; copy it to keep it. Never null.
#[no_mangle]
pub extern "C" fn tierkv_last_error() -> *const c_char {
    super::last_error_ptr()
}

/// Creates a manager from `TIERKV_*` variables and `params`; writes the handle to
/// `*out`.
///
/// # Safety
/// `params` must point to a valid `TierkvManagerParams`, whose `namespace_` is null
/// or a NUL-terminated string; `out` must be valid for one pointer write. The
/// handle must be freed with `tierkv_manager_destroy`. Blocks while another process
/// initialises the same shared arena (at most `TIERKV_LOCK_TIMEOUT`).
#[no_mangle]
pub unsafe extern "C" fn tierkv_manager_create(
    params: *const TierkvManagerParams,
    out: *mut *mut TierkvManager,
) -> TierkvStatus {
    guard(|| {
        // SAFETY: validated pointers; contents per the caller contract.
        let out = unsafe { out_ptr(out, "out") }?;
        *out = std::ptr::null_mut();
        // SAFETY: as above.
        let p = unsafe { slice_in(params, 1, "params") }?[0];
        if p.flags & !(TIERKV_CREATE_NO_EXPORTER | TIERKV_CREATE_DISK_READER | TIERKV_CREATE_POOL_ENGINE_ORDER) != 0 {
            return Err(FfiError::invalid(format!("unknown flags {:#x}", p.flags)));
        }
        let namespace = if p.namespace_.is_null() {
            None
        } else {
            // SAFETY: non-null and NUL-terminated per the contract.
            let s = unsafe { CStr::from_ptr(p.namespace_) };
            Some(
                s.to_str()
                    .map_err(|_| FfiError::invalid("namespace is not valid UTF-8"))?
                    .to_string(),
            )
        };
        let config = Config::from_env().map_err(|e| FfiError {
            status: TierkvStatus::Config,
            message: e.to_string(),
        })?;
        let mgr = Arc::new(Manager::new(
            config,
            ManagerParams {
                block_tokens: p.block_tokens,
                block_bytes: p.block_bytes,
                namespace,
                pool_blocks: p.pool_blocks,
                disk_reader: p.flags & TIERKV_CREATE_DISK_READER != 0,
                pool_engine_order: p.flags & TIERKV_CREATE_POOL_ENGINE_ORDER != 0,
            },
        )?);
        if p.flags & TIERKV_CREATE_NO_EXPORTER == 0 {
            mgr.start_exporter();
        }
        *out = super::register_handle(mgr);
        Ok(())
    })
}

/// Destroys a manager: stops its exporter thread and unmaps its arena once no call
/// on another thread still uses it. The shared arena file stays for other
/// processes.
///
/// # Safety
/// `mgr` must be a handle from `tierkv_manager_create` (an unknown or already
/// destroyed handle returns `INVALID_ARGUMENT`). Do not use it afterwards.
#[no_mangle]
pub unsafe extern "C" fn tierkv_manager_destroy(mgr: *mut TierkvManager) -> TierkvStatus {
    guard(|| {
        if mgr.is_null() {
            return Err(FfiError::invalid("manager handle is null"));
        }
        let m = super::unregister_handle(mgr)?;
        m.stop_exporter();
        drop(m);
        Ok(())
    })
}

/// Writes what the manager is configured with to `*out`.
///
/// # Safety
/// `mgr` a live handle; `out` valid for one write. Does not block.
#[no_mangle]
pub unsafe extern "C" fn tierkv_manager_info(mgr: *const TierkvManager, out: *mut TierkvManagerInfo) -> TierkvStatus {
    guard(|| {
        let m = manager(mgr)?;
        // SAFETY: validated pointer, caller contract.
        let out = unsafe { out_ptr(out, "out") }?;
        let host = m.tier_status(TierId::Host).unwrap_or_default();
        if let Some(why) = host.problem {
            return Err(ManagerError::Unavailable(why).into());
        }
        *out = TierkvManagerInfo {
            abi_version: TIERKV_ABI_VERSION,
            block_tokens: m.block_tokens() as u32,
            block_bytes: m.block_bytes(),
            host_capacity_blocks: host.capacity_blocks,
            host_blocks: host.blocks,
            metrics_port: m.exporter_addr().map_or(0, |a| a.port()),
            store_decode: u8::from(m.store_decode()),
            hash_algo: match m.hash_algo() {
                HashAlgo::Xxh3_128 => 0,
                HashAlgo::Sha256Cbor => 1,
                HashAlgo::XxhashCbor => 2,
            },
        };
        Ok(())
    })
}

/// Computes the identities of the full blocks of `tokens[0..n_tokens]`, chained from
/// `*parent` (or from the start of a sequence when `parent` is null). Writes
/// `n_tokens / block_tokens` hashes to `out` and that count to `*out_n`; a trailing
/// partial block has no identity.
///
/// # Safety
/// `tokens` valid for `n_tokens` reads (any pointer when 0); `out` valid for
/// `out_cap` writes; `out_n` valid for one write; `parent` null or valid. If
/// `out_cap` is too small, returns `BUFFER_TOO_SMALL` with the needed count in
/// `*out_n`. Does not block.
#[no_mangle]
pub unsafe extern "C" fn tierkv_hash_tokens(
    mgr: *const TierkvManager,
    parent: *const TierkvHash,
    tokens: *const u32,
    n_tokens: usize,
    out: *mut TierkvHash,
    out_cap: usize,
    out_n: *mut usize,
) -> TierkvStatus {
    guard(|| {
        let m = manager(mgr)?;
        // SAFETY: validated pointers, caller contract.
        let out_n = unsafe { out_ptr(out_n, "out_n") }?;
        // SAFETY: as above.
        let tokens = unsafe { slice_in(tokens, n_tokens, "tokens") }?;
        let parent = if parent.is_null() {
            None
        } else {
            // SAFETY: as above.
            Some(BlockHash::from(unsafe { slice_in(parent, 1, "parent") }?[0]))
        };
        let need = n_tokens / m.block_tokens();
        *out_n = need;
        if need > out_cap {
            return Err(FfiError {
                status: TierkvStatus::BufferTooSmall,
                message: format!("out has room for {out_cap} hashes, {need} needed"),
            });
        }
        // SAFETY: as above.
        let out = unsafe { slice_out(out, need, "out") }?;
        let mut hashes = Vec::with_capacity(need);
        m.hash_tokens(parent, tokens, &mut hashes)?;
        for (o, h) in out.iter_mut().zip(hashes) {
            *o = h.into();
        }
        Ok(())
    })
}

/// Finds the longest run of leading `hashes` held by a tier. Writes the run length to
/// `*out_hits` and, if `out_tiers` is not null, the tier of each hit block
/// (`TIERKV_TIER_*`) to `out_tiers[0..*out_hits]`, and `TIERKV_TIER_PENDING` to
/// `out_tiers[*out_hits]` when a tier (the remote one) is still finding out about
/// the next block: ask again later. Counts as one request's lookup
/// (`tierkv_lookups_total`, `tierkv_lookup_blocks_total`), unless pending.
///
/// # Safety
/// `hashes` valid for `n` reads; `out_tiers` null or valid for `n` writes;
/// `out_hits` valid for one write. Takes the arena lock briefly.
#[no_mangle]
pub unsafe extern "C" fn tierkv_lookup(
    mgr: *const TierkvManager,
    hashes: *const TierkvHash,
    n: usize,
    out_tiers: *mut u8,
    out_hits: *mut usize,
) -> TierkvStatus {
    // SAFETY: this function's contract, passed on.
    unsafe { tierkv_lookup_flags(mgr, hashes, n, 0, out_tiers, out_hits) }
}

/// `flags` bit of `tierkv_lookup_flags`: a repeated lookup of a request whose first
/// lookup was counted (a scheduler asking again for a waiting request); only
/// `tierkv_lookup_calls_total` counts it.
pub const TIERKV_LOOKUP_REPEAT: u32 = 1;

/// `tierkv_lookup` with `TIERKV_LOOKUP_*` flags.
///
/// # Safety
/// As `tierkv_lookup`.
#[no_mangle]
pub unsafe extern "C" fn tierkv_lookup_flags(
    mgr: *const TierkvManager,
    hashes: *const TierkvHash,
    n: usize,
    flags: u32,
    out_tiers: *mut u8,
    out_hits: *mut usize,
) -> TierkvStatus {
    guard(|| {
        // SAFETY: validated pointers, caller contract.
        let out_hits = unsafe { out_ptr(out_hits, "out_hits") }?;
        *out_hits = 0;
        let m = manager(mgr)?;
        // SAFETY: as above.
        let hs = unsafe { slice_in(hashes, n, "hashes") }?;
        let hs: Vec<BlockHash> = hs.iter().map(|&h| h.into()).collect();
        let mut tiers = vec![TierId::Host; n];
        let count = flags & TIERKV_LOOKUP_REPEAT == 0;
        let run = m.in_scope(|| m.lookup_run(&hs, &mut tiers, count))?;
        let hits = run.end;
        if !out_tiers.is_null() {
            // SAFETY: as above.
            let o = unsafe { slice_out(out_tiers, n, "out_tiers") }?;
            for (o, t) in o.iter_mut().zip(&tiers[..hits]) {
                *o = *t as u8;
            }
            if run.pending {
                o[hits] = TIERKV_TIER_PENDING;
            }
        }
        *out_hits = hits;
        Ok(())
    })
}

/// Operation codes of `tierkv_record_error` (`tierkv_adapter_errors_total{op}`).
pub const TIERKV_OP_LOOKUP: u32 = 0;
/// A load (the engine recomputes its blocks).
pub const TIERKV_OP_LOAD: u32 = 1;
/// A store (skipped).
pub const TIERKV_OP_STORE: u32 = 2;
/// Hashing tokens (the request bypasses the cache).
pub const TIERKV_OP_HASH: u32 = 3;
/// Anything else.
pub const TIERKV_OP_OTHER: u32 = 4;

/// Counts an error that an engine adapter caught and degraded (a failed load
/// recomputed, a lookup answered with no hits, a store skipped), under
/// `tierkv_adapter_errors_total{op, status}` on the store's shared metrics, so that
/// it shows on the engine's exporter whichever process caught it.
///
/// # Safety
/// `mgr` a live handle. Does not block.
#[no_mangle]
pub unsafe extern "C" fn tierkv_record_error(mgr: *const TierkvManager, op: u32, status: i32) -> TierkvStatus {
    guard(|| {
        let m = manager(mgr)?;
        m.record_adapter_error(op as usize, status);
        Ok(())
    })
}

/// Registers the engine's KV memory: `n_regions` regions of `num_blocks` blocks whose
/// `bytes_per_block` add up to the manager's `block_bytes`. Replaces any earlier
/// layout.
///
/// # Safety
/// `regions` valid for `n_regions` reads. The memory the regions describe must stay
/// valid until it is replaced or the manager destroyed; store and load calls access
/// it. Does not block.
#[no_mangle]
pub unsafe extern "C" fn tierkv_register_layout(
    mgr: *const TierkvManager,
    regions: *const TierkvRegion,
    n_regions: usize,
    num_blocks: u64,
) -> TierkvStatus {
    guard(|| {
        let m = manager(mgr)?;
        // SAFETY: the caller's contract, passed on.
        m.register_layout(&unsafe { regions_in(regions, n_regions) }?, num_blocks)?;
        Ok(())
    })
}

/// The `regions` argument of the layout calls: at least one, pointer validated.
///
/// # Safety
/// `regions` valid for `n` reads (checked for null and alignment here).
unsafe fn regions_in(regions: *const TierkvRegion, n: usize) -> Result<Vec<Region>, FfiError> {
    if n == 0 {
        return Err(FfiError::invalid("n_regions is zero"));
    }
    // SAFETY: validated pointer, caller contract.
    Ok(core_vec(unsafe { slice_in(regions, n, "regions") }?))
}

/// Registers the engine's KV layout in the GPU memory of CUDA device `device`:
/// region bases are device addresses (`CUdeviceptr`), otherwise as
/// `tierkv_register_layout`, which it replaces (and which replaces it). Stores
/// and loads then copy through a pinned staging buffer (docs/gpu.md); stores over
/// the scheduler's offload budget come back `TIERKV_STORE_DEFERRED`. Returns
/// `TIERKV_UNAVAILABLE` (with the reason) in a build without the `cuda` feature,
/// without a driver or device, or when the device cannot be opened.
///
/// # Safety
/// `regions` valid for `n_regions` reads. The device memory must stay allocated
/// while registered. Blocks while the device is opened and kernels are compiled.
#[no_mangle]
pub unsafe extern "C" fn tierkv_register_device_layout(
    mgr: *const TierkvManager,
    regions: *const TierkvRegion,
    n_regions: usize,
    num_blocks: u64,
    device: u32,
) -> TierkvStatus {
    guard(|| {
        let m = manager(mgr)?;
        // SAFETY: the caller's contract, passed on.
        m.register_device_layout(&unsafe { regions_in(regions, n_regions) }?, num_blocks, device)?;
        Ok(())
    })
}

/// Copies engine blocks `block_ids[i]` to the host tier under `hashes[i]`, checksummed.
/// If `out_results` is not null, writes a `TIERKV_STORE_*` code per block.
///
/// # Safety
/// `hashes`, `block_ids` valid for `n` reads; `out_results` null or valid for `n`
/// writes. The blocks' engine memory must not be written during the call. Blocks
/// for the duration of the copies (no disk or network).
#[no_mangle]
pub unsafe extern "C" fn tierkv_store_blocks(
    mgr: *const TierkvManager,
    hashes: *const TierkvHash,
    block_ids: *const u64,
    n: usize,
    out_results: *mut u8,
) -> TierkvStatus {
    guard(|| {
        // SAFETY: validated pointer, caller contract. Filled with FAILED first.
        let results = unsafe { prefill(out_results, n, TIERKV_STORE_FAILED) }?;
        let m = manager(mgr)?;
        // SAFETY: validated pointers, caller contract.
        let (hs, ids) = unsafe { (slice_in(hashes, n, "hashes")?, slice_in(block_ids, n, "block_ids")?) };
        let hs: Vec<BlockHash> = hs.iter().map(|&h| h.into()).collect();
        let mut outcomes = vec![StoreOutcome::NoSpace; n];
        // SAFETY: the layout's memory is valid per tierkv_register_layout's contract and
        // not written concurrently per this function's contract.
        m.in_scope(|| unsafe { m.store_blocks(&hs, ids, &mut outcomes) })?;
        if let Some(o) = results {
            for (o, r) in o.iter_mut().zip(&outcomes) {
                *o = match r {
                    StoreOutcome::Stored => TIERKV_STORE_STORED,
                    StoreOutcome::AlreadyPresent => TIERKV_STORE_PRESENT,
                    StoreOutcome::NoSpace => TIERKV_STORE_NO_SPACE,
                    StoreOutcome::Deferred => TIERKV_STORE_DEFERRED,
                };
            }
        }
        Ok(())
    })
}

/// Copies host-tier blocks `hashes[i]` into engine blocks `block_ids[i]` and verifies
/// each. Writes a `TIERKV_LOAD_*` code per block to `out_results` and the number
/// loaded to `*out_loaded`. A block not `LOADED` must be recomputed by the engine.
///
/// # Safety
/// `hashes`, `block_ids` valid for `n` reads; `out_results` valid for `n` writes;
/// `out_loaded` valid for one write. Nothing else may access the blocks' engine
/// memory during the call. Blocks for the duration of the copies.
#[no_mangle]
pub unsafe extern "C" fn tierkv_load_blocks(
    mgr: *const TierkvManager,
    hashes: *const TierkvHash,
    block_ids: *const u64,
    n: usize,
    out_results: *mut u8,
    out_loaded: *mut usize,
) -> TierkvStatus {
    guard(|| {
        // SAFETY: validated pointers, caller contract. Written before anything can
        // fail: FAILED per block, 0 loaded.
        let out = unsafe { prefill(out_results, n, TIERKV_LOAD_FAILED) }?
            .ok_or_else(|| FfiError::invalid("out_results is null"))?;
        // SAFETY: as above.
        let out_loaded = unsafe { out_ptr(out_loaded, "out_loaded") }?;
        *out_loaded = 0;
        let m = manager(mgr)?;
        // SAFETY: as above.
        let (hs, ids) = unsafe { (slice_in(hashes, n, "hashes")?, slice_in(block_ids, n, "block_ids")?) };
        let hs: Vec<BlockHash> = hs.iter().map(|&h| h.into()).collect();
        let mut outcomes = vec![LoadOutcome::Miss; n];
        // SAFETY: the layout's memory is valid per tierkv_register_layout's contract and
        // exclusively ours during the call per this function's contract.
        m.in_scope(|| unsafe { m.load_blocks(&hs, ids, &mut outcomes) })?;
        for (o, r) in out.iter_mut().zip(&outcomes) {
            *o = load_code(*r);
        }
        *out_loaded = outcomes.iter().filter(|&&o| o == LoadOutcome::Loaded).count();
        Ok(())
    })
}

/// The `out_results` code of a load outcome.
pub(crate) fn load_code(o: LoadOutcome) -> u8 {
    match o {
        LoadOutcome::Loaded => TIERKV_LOAD_LOADED,
        LoadOutcome::Miss => TIERKV_LOAD_MISS,
        LoadOutcome::Corrupt => TIERKV_LOAD_CORRUPT,
        LoadOutcome::Busy => TIERKV_LOAD_BUSY,
        LoadOutcome::IoError => TIERKV_LOAD_IO_ERROR,
    }
}

/// Writes the Prometheus text of all metrics, NUL-terminated, to `buf`. Writes the
/// needed size (text plus NUL) to `*out_len`; if `cap` is smaller, returns
/// `BUFFER_TOO_SMALL` and writes nothing else (call again with a larger buffer).
///
/// # Safety
/// `buf` valid for `cap` writes (any pointer when `cap` is 0); `out_len` valid for
/// one write. Takes the arena lock briefly.
#[no_mangle]
pub unsafe extern "C" fn tierkv_metrics_text(
    mgr: *const TierkvManager,
    buf: *mut c_char,
    cap: usize,
    out_len: *mut usize,
) -> TierkvStatus {
    guard(|| {
        let m = manager(mgr)?;
        // SAFETY: validated pointer, caller contract.
        let out_len = unsafe { out_ptr(out_len, "out_len") }?;
        let text = m.metrics_text();
        *out_len = text.len() + 1;
        if cap < text.len() + 1 {
            return Err(FfiError {
                status: TierkvStatus::BufferTooSmall,
                message: format!("buffer of {cap} bytes, {} needed", text.len() + 1),
            });
        }
        // SAFETY: as above.
        let out = unsafe { slice_out(buf.cast::<u8>(), text.len() + 1, "buf") }?;
        out[..text.len()].copy_from_slice(text.as_bytes());
        out[text.len()] = 0;
        Ok(())
    })
}

/// Allocates `n` engine blocks, all or nothing, writing their ids to `out_ids`.
/// Returns `INSUFFICIENT` (changing nothing) when fewer than `n` are free.
///
/// # Safety
/// `out_ids` valid for `n` writes. Takes the pool lock.
#[no_mangle]
pub unsafe extern "C" fn tierkv_pool_allocate(mgr: *const TierkvManager, n: usize, out_ids: *mut u32) -> TierkvStatus {
    guard(|| {
        let m = manager(mgr)?;
        // SAFETY: validated pointer, caller contract.
        let out = unsafe { slice_out(out_ids, n, "out_ids") }?;
        let mut ids = Vec::with_capacity(n);
        m.pool_allocate(n, &mut ids)?;
        out.copy_from_slice(&ids);
        Ok(())
    })
}

/// Releases one reference to each of `ids` (pass a request's blocks last first).
/// Validates all first: on error nothing changes.
///
/// # Safety
/// `ids` valid for `n` reads. Takes the pool lock.
#[no_mangle]
pub unsafe extern "C" fn tierkv_pool_free(mgr: *const TierkvManager, ids: *const u32, n: usize) -> TierkvStatus {
    guard(|| {
        let m = manager(mgr)?;
        // SAFETY: validated pointer, caller contract.
        let ids = unsafe { slice_in(ids, n, "ids") }?;
        m.pool_free(ids)?;
        Ok(())
    })
}

/// Adds one reference to each of `ids` (sharing a prefix with a forked sequence).
///
/// # Safety
/// `ids` valid for `n` reads. Takes the pool lock.
#[no_mangle]
pub unsafe extern "C" fn tierkv_pool_fork(mgr: *const TierkvManager, ids: *const u32, n: usize) -> TierkvStatus {
    guard(|| {
        let m = manager(mgr)?;
        // SAFETY: validated pointer, caller contract.
        let ids = unsafe { slice_in(ids, n, "ids") }?;
        m.pool_fork(ids)?;
        Ok(())
    })
}

/// References exactly the blocks `ids` (a prefix hit on blocks found with
/// `tierkv_pool_find`): a free block leaves the free list, a held one gains a
/// reference. Validates all first: on error nothing changes.
///
/// # Safety
/// `ids` valid for `n` reads. Takes the pool lock.
#[no_mangle]
pub unsafe extern "C" fn tierkv_pool_touch(mgr: *const TierkvManager, ids: *const u32, n: usize) -> TierkvStatus {
    guard(|| {
        let m = manager(mgr)?;
        // SAFETY: validated pointer, caller contract.
        let ids = unsafe { slice_in(ids, n, "ids") }?;
        m.pool_touch(ids)?;
        Ok(())
    })
}

/// Prepares block `id` for writing. Writes the block to write to `*out_id`, and 1 to
/// `*out_copy` when the engine must first copy the KV of `id` into `*out_id` (the
/// block was shared), else 0.
///
/// # Safety
/// `out_id`, `out_copy` valid for one write each. Takes the pool lock.
#[no_mangle]
pub unsafe extern "C" fn tierkv_pool_copy_on_write(
    mgr: *const TierkvManager,
    id: u32,
    out_id: *mut u32,
    out_copy: *mut u8,
) -> TierkvStatus {
    guard(|| {
        let m = manager(mgr)?;
        // SAFETY: validated pointers, caller contract.
        let (out_id, out_copy) = unsafe { (out_ptr(out_id, "out_id")?, out_ptr(out_copy, "out_copy")?) };
        match m.pool_copy_on_write(id)? {
            CowOutcome::Exclusive(b) => (*out_id, *out_copy) = (b, 0),
            CowOutcome::Copied { dst, .. } => (*out_id, *out_copy) = (dst, 1),
        }
        Ok(())
    })
}

/// Records that held block `id` holds the computed full block `*hash`. Writes 1 to
/// `*out_indexed` when it is the block found for `*hash`, 0 when another block
/// registered it first (that one stays the one found; `id` is found once it
/// leaves, as vLLM's prefix cache keeps both).
///
/// # Safety
/// `hash` valid for one read; `out_indexed` valid for one write. Takes the pool lock.
#[no_mangle]
pub unsafe extern "C" fn tierkv_pool_register(
    mgr: *const TierkvManager,
    id: u32,
    hash: *const TierkvHash,
    out_indexed: *mut u8,
) -> TierkvStatus {
    guard(|| {
        let m = manager(mgr)?;
        // SAFETY: validated pointers, caller contract.
        let (h, out) = unsafe { (slice_in(hash, 1, "hash")?[0], out_ptr(out_indexed, "out_indexed")?) };
        *out = u8::from(m.pool_register(id, h.into())?);
        Ok(())
    })
}

/// References the engine blocks of the longest leading run of `hashes` the pool
/// holds (a prefix hit), writing their ids to `out_ids` and the count to `*out_n`.
///
/// # Safety
/// `hashes` valid for `n` reads; `out_ids` valid for `n` writes; `out_n` for one.
/// Takes the pool lock.
#[no_mangle]
pub unsafe extern "C" fn tierkv_pool_acquire_cached(
    mgr: *const TierkvManager,
    hashes: *const TierkvHash,
    n: usize,
    out_ids: *mut u32,
    out_n: *mut usize,
) -> TierkvStatus {
    guard(|| {
        let m = manager(mgr)?;
        // SAFETY: validated pointers, caller contract.
        let out_n = unsafe { out_ptr(out_n, "out_n") }?;
        *out_n = 0;
        // SAFETY: as above.
        let (hs, out) = unsafe { (slice_in(hashes, n, "hashes")?, slice_out(out_ids, n, "out_ids")?) };
        let hs: Vec<BlockHash> = hs.iter().map(|&h| h.into()).collect();
        let mut ids = Vec::with_capacity(n);
        let got = m.pool_acquire_cached(&hs, &mut ids)?;
        out[..got].copy_from_slice(&ids);
        *out_n = got;
        Ok(())
    })
}
