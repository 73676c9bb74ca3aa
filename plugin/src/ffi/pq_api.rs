//! PQ retrieval through the C ABI (after PQCache): an index of a request's keys,
//! then each decode step's tokens per KV head.
//!
//! Workflow of an engine:
//! 1. After prefill: `tierkv_pq_build_blocks` with the request's stored blocks
//!    (keys read through the token layout), or `tierkv_pq_build` with the keys,
//!    fp32 `[layer][kv_head][token][head_dim]` (post-RoPE, as attention sees
//!    them) -> a `TierkvPq`.
//!    Parameters: null for the manager's (`TIERKV_PQ_*`), or
//!    `tierkv_pq_params` then change fields.
//! 2. Each decode step, per layer: `tierkv_pq_topk` with the queries,
//!    `[kv_head][group][head_dim]` -> per KV head the tokens to attend over
//!    (sinks, top-k by PQ score, local window; ascending).
//! 3. An index built from blocks: `tierkv_pq_gather` with the selection ->
//!    the selected tokens' K and V rows of that layer, fp32, in a compact buffer
//!    (through the index's LFU block cache, else from the tiers).
//! 4. Tokens appended to the context: `tierkv_pq_append` (encoded with the
//!    existing centroids). `tierkv_pq_destroy` when the request ends.

use std::sync::Arc;

use super::{
    guard, manager, out_ptr, slice_in, slice_out, FfiError, Held, Registry, TierkvHash, TierkvManager, TierkvStatus,
};
use crate::manager::{BlockHash, PqHandle, PqSettings};

/// A PQ index (opaque; free with `tierkv_pq_destroy`).
pub struct TierkvPq {
    _private: [u8; 0],
}

/// Parameters of a PQ index.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct TierkvPqParams {
    /// Tokens attended per step as a fraction of the context (0, 1]: half local
    /// window, half top-k, plus the sinks.
    pub budget: f64,
    /// Attention sinks (the first tokens).
    pub sink: u32,
    /// Sub-spaces per key (divides the head dimension).
    pub subspaces: u32,
    /// Bits per code, 1-8.
    pub bits: u32,
    /// Keys sampled for training at most (0: the default, 8192).
    pub train_sample: u32,
}

/// Shape and size of a PQ index.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct TierkvPqInfo {
    /// Layers.
    pub layers: u32,
    /// KV heads per layer.
    pub kv_heads: u32,
    /// Head dimension.
    pub head_dim: u32,
    /// Elements of a value row (an index built from blocks; 0 from keys: it
    /// cannot gather).
    pub value_dim: u32,
    /// Tokens indexed.
    pub tokens: u64,
    /// Bytes of codes and centroids.
    pub bytes: u64,
}

static PQS: Registry<PqHandle> = Registry::new();

fn pq_ref(pq: *const TierkvPq) -> Result<Held<PqHandle>, FfiError> {
    PQS.get(pq as usize as u64)
        .ok_or_else(|| FfiError::invalid("unknown or already destroyed PQ index handle"))
}

fn params_of(p: &TierkvPqParams, base: PqSettings) -> Result<PqSettings, FfiError> {
    let ok = p.budget > 0.0 && p.budget <= 1.0 && (1..=8).contains(&p.bits) && (1..=256).contains(&p.subspaces);
    if !ok {
        return Err(FfiError::invalid(format!("PQ parameters {p:?}")));
    }
    let mut s = base;
    s.budget = p.budget;
    s.sink = p.sink as usize;
    s.train.subspaces = p.subspaces as usize;
    s.train.bits = p.bits as u8;
    if p.train_sample > 0 {
        s.train.sample = p.train_sample as usize;
    }
    Ok(s)
}

/// The settings of `params` over `base`; null: `None` (the manager's).
///
/// # Safety
/// `params` null or valid for one read.
unsafe fn settings_of(params: *const TierkvPqParams, base: PqSettings) -> Result<Option<PqSettings>, FfiError> {
    if params.is_null() {
        return Ok(None);
    }
    // SAFETY: non-null, the caller's contract (one read).
    let p = unsafe { *params };
    params_of(&p, base).map(Some)
}

/// Writes the manager's PQ parameters (`TIERKV_PQ_*`) to `*out`.
///
/// # Safety
/// `out` valid for one write.
#[no_mangle]
pub unsafe extern "C" fn tierkv_pq_params(mgr: *const TierkvManager, out: *mut TierkvPqParams) -> TierkvStatus {
    guard(|| {
        let s = manager(mgr)?.pq_settings();
        // SAFETY: validated pointer, caller contract.
        let out = unsafe { out_ptr(out, "out") }?;
        *out = TierkvPqParams {
            budget: s.budget,
            sink: s.sink as u32,
            subspaces: s.train.subspaces as u32,
            bits: u32::from(s.train.bits),
            train_sample: s.train.sample as u32,
        };
        Ok(())
    })
}

/// Builds the PQ index of `tokens` keys per (layer, KV head): `keys` holds
/// `layers * kv_heads * tokens * head_dim` floats, `[layer][kv_head][token]
/// [head_dim]`. `params` null: the manager's. Per (layer, head): k-means of each
/// sub-space on up to `train_sample` keys after the sinks, then every key encoded
/// (docs/pq.md has the cost).
///
/// # Safety
/// `keys` valid for that many reads; `params` null or valid for one read; `out`
/// valid for one write.
#[no_mangle]
pub unsafe extern "C" fn tierkv_pq_build(
    mgr: *const TierkvManager,
    keys: *const f32,
    layers: u32,
    kv_heads: u32,
    tokens: usize,
    head_dim: u32,
    params: *const TierkvPqParams,
    out: *mut *mut TierkvPq,
) -> TierkvStatus {
    guard(|| {
        let m = manager(mgr)?;
        // SAFETY: validated pointer, caller contract.
        let out = unsafe { out_ptr(out, "out") }?;
        *out = std::ptr::null_mut();
        let n = (layers as usize)
            .checked_mul(kv_heads as usize)
            .and_then(|x| x.checked_mul(tokens))
            .and_then(|x| x.checked_mul(head_dim as usize))
            .ok_or_else(|| FfiError::invalid("keys: the shape overflows"))?;
        if n == 0 {
            return Err(FfiError::invalid("keys: an empty shape"));
        }
        // SAFETY: validated pointer and length, caller contract.
        let k = unsafe { slice_in(keys, n, "keys") }?;
        // SAFETY: the caller's contract (null or one read).
        let settings = unsafe { settings_of(params, m.pq_settings()) }?;
        let h = m.in_scope(|| {
            m.pq_build(
                k,
                layers as usize,
                kv_heads as usize,
                tokens,
                head_dim as usize,
                settings,
            )
        })?;
        *out = PQS.insert(Arc::new(h)) as usize as *mut TierkvPq;
        Ok(())
    })
}

/// Builds the PQ index of the first `tokens` tokens of the stored blocks `hashes`
/// (a request's blocks, in order), fetched from the tiers (each verified) and read
/// through the token layout (`tierkv_register_token_layout`: its key rows, one set
/// per layer in the order registered). No engine copy of the keys is needed; the
/// index can gather (`tierkv_pq_gather`).
///
/// # Safety
/// `hashes` valid for `n_blocks` reads; `params` null or valid for one read; `out`
/// valid for one write.
#[no_mangle]
pub unsafe extern "C" fn tierkv_pq_build_blocks(
    mgr: *const TierkvManager,
    hashes: *const TierkvHash,
    n_blocks: usize,
    tokens: usize,
    params: *const TierkvPqParams,
    out: *mut *mut TierkvPq,
) -> TierkvStatus {
    guard(|| {
        let m = manager(mgr)?;
        // SAFETY: validated pointers, caller contract.
        let (out, hs) = unsafe { (out_ptr(out, "out")?, slice_in(hashes, n_blocks, "hashes")?) };
        *out = std::ptr::null_mut();
        // SAFETY: the caller's contract (null or one read).
        let settings = unsafe { settings_of(params, m.pq_settings()) }?;
        let hs: Vec<BlockHash> = hs.iter().map(|&h| h.into()).collect();
        let h = m.in_scope(|| m.pq_build_blocks(&hs, tokens, settings))?;
        *out = PQS.insert(Arc::new(h)) as usize as *mut TierkvPq;
        Ok(())
    })
}

/// Encodes `n` tokens appended to the context: `keys` holds `layers * kv_heads *
/// n * head_dim` floats, `[layer][kv_head][token][head_dim]`.
///
/// # Safety
/// `keys` valid for that many reads.
#[no_mangle]
pub unsafe extern "C" fn tierkv_pq_append(pq: *const TierkvPq, keys: *const f32, n: usize) -> TierkvStatus {
    guard(|| {
        let h = pq_ref(pq)?;
        let (layers, kv_heads, head_dim) = h.shape();
        let len = (layers * kv_heads)
            .checked_mul(head_dim)
            .and_then(|x| x.checked_mul(n))
            .ok_or_else(|| FfiError::invalid("keys: the shape overflows"))?;
        // SAFETY: validated pointer and length, caller contract.
        let k = unsafe { slice_in(keys, len, "keys") }?;
        h.append(k, n).map_err(FfiError::from)
    })
}

/// The tokens layer `layer` attends over for one decode step, per KV head.
/// `queries`: `kv_heads * group * head_dim` floats, `[kv_head][group][head_dim]`
/// (the query heads of each KV head). `budget` 0: the index's; else a fraction
/// (0, 1]. Writes KV head `h`'s tokens (ascending) to `out_tokens[h * capacity..]`
/// and their number to `out_counts[h]`. A `capacity` of the tokens indexed
/// (`tierkv_pq_info`) always suffices; a smaller one that a selection does not
/// fit is an error that writes nothing.
///
/// # Safety
/// `queries` valid for that many reads; `out_tokens` for `kv_heads * capacity`
/// writes; `out_counts` for `kv_heads` writes.
#[no_mangle]
pub unsafe extern "C" fn tierkv_pq_topk(
    pq: *const TierkvPq,
    layer: u32,
    queries: *const f32,
    group: u32,
    budget: f64,
    out_tokens: *mut u32,
    capacity: usize,
    out_counts: *mut usize,
) -> TierkvStatus {
    guard(|| {
        let h = pq_ref(pq)?;
        let (_, kv_heads, head_dim) = h.shape();
        let qn = (kv_heads * head_dim)
            .checked_mul(group as usize)
            .ok_or_else(|| FfiError::invalid("queries: the shape overflows"))?;
        let slots = kv_heads
            .checked_mul(capacity)
            .ok_or_else(|| FfiError::invalid("out_tokens: the shape overflows"))?;
        // SAFETY: validated pointers and lengths, caller contract.
        let (q, toks, counts) = unsafe {
            (
                slice_in(queries, qn, "queries")?,
                slice_out(out_tokens, slots, "out_tokens")?,
                slice_out(out_counts, kv_heads, "out_counts")?,
            )
        };
        if !(0.0..=1.0).contains(&budget) {
            return Err(FfiError::invalid(format!(
                "budget {budget}: 0 (the index's) or a fraction (0, 1]"
            )));
        }
        let budget = (budget > 0.0).then_some(budget);
        let mut out = vec![Vec::new(); kv_heads];
        h.topk(layer as usize, q, group as usize, budget, &mut out)?;
        if let Some(big) = out.iter().map(Vec::len).max().filter(|&n| n > capacity) {
            return Err(FfiError::invalid(format!(
                "capacity {capacity}: a KV head selected {big} tokens"
            )));
        }
        for (hd, sel) in out.iter().enumerate() {
            toks[hd * capacity..hd * capacity + sel.len()].copy_from_slice(sel);
            counts[hd] = sel.len();
        }
        Ok(())
    })
}

/// Copies layer `layer`'s K and V rows of the selected tokens, per KV head
/// `h` the `counts[h]` tokens at `tokens[h * capacity..]` (ascending, as
/// `tierkv_pq_topk` writes them), from the stored blocks the index was built
/// from (`tierkv_pq_build_blocks`) into `out_k[h * capacity + r]` (`head_dim`
/// floats) and `out_v[h * capacity + r]` (`value_dim` floats, `tierkv_pq_info`),
/// fp32; row `r` is token `tokens[h * capacity + r]` (its position). Tokens past
/// the stored blocks (the engine's own) end a head's rows: `out_rows[h]` says how
/// many were written. The layer's region of each block comes from the index's
/// block cache, else from the host tier (checked against the digest the build
/// took of the verified block), else the whole block from a lower tier
/// (verified); a block no tier holds any more is an error (`TIERKV_UNAVAILABLE`).
///
/// # Safety
/// `tokens` valid for `kv_heads * capacity` reads, `counts` for `kv_heads`;
/// `out_k` for `kv_heads * capacity * head_dim` writes, `out_v` for `kv_heads *
/// capacity * value_dim`, `out_rows` for `kv_heads`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn tierkv_pq_gather(
    mgr: *const TierkvManager,
    pq: *const TierkvPq,
    layer: u32,
    tokens: *const u32,
    counts: *const usize,
    capacity: usize,
    out_k: *mut f32,
    out_v: *mut f32,
    out_rows: *mut usize,
) -> TierkvStatus {
    guard(|| {
        let m = manager(mgr)?;
        let h = pq_ref(pq)?;
        let (_, kv_heads, head_dim) = h.shape();
        let value_dim = h.value_dim();
        let len = |d: usize, what: &str| {
            kv_heads
                .checked_mul(capacity)
                .and_then(|n| n.checked_mul(d))
                .ok_or_else(|| FfiError::invalid(format!("{what}: the shape overflows")))
        };
        let (nt, nk, nv) = (len(1, "tokens")?, len(head_dim, "out_k")?, len(value_dim, "out_v")?);
        // SAFETY: validated pointers and lengths, caller contract.
        let (toks, cs, k, v, rows) = unsafe {
            (
                slice_in(tokens, nt, "tokens")?,
                slice_in(counts, kv_heads, "counts")?,
                slice_out(out_k, nk, "out_k")?,
                slice_out(out_v, nv, "out_v")?,
                slice_out(out_rows, kv_heads, "out_rows")?,
            )
        };
        if let Some(c) = cs.iter().find(|&&c| c > capacity) {
            return Err(FfiError::invalid(format!("counts: {c} tokens for capacity {capacity}")));
        }
        let lists: Vec<&[u32]> = cs
            .iter()
            .enumerate()
            .map(|(hd, &c)| &toks[hd * capacity..hd * capacity + c])
            .collect();
        m.in_scope(|| m.pq_gather(&h, layer as usize, &lists, capacity, k, v, rows))?;
        Ok(())
    })
}

/// Keeps at most `bytes` of block regions in the index's block cache from now on
/// (least frequently used out first; 0 empties it). An index starts with
/// `TIERKV_PQ_CACHE_BYTES`.
///
/// # Safety
/// None beyond passing a PQ handle.
#[no_mangle]
pub unsafe extern "C" fn tierkv_pq_set_cache(pq: *const TierkvPq, bytes: u64) -> TierkvStatus {
    guard(|| {
        pq_ref(pq)?.set_cache_bytes(bytes);
        Ok(())
    })
}

/// Writes the index's shape and size to `*out`.
///
/// # Safety
/// `out` valid for one write.
#[no_mangle]
pub unsafe extern "C" fn tierkv_pq_info(pq: *const TierkvPq, out: *mut TierkvPqInfo) -> TierkvStatus {
    guard(|| {
        let i = pq_ref(pq)?.info();
        // SAFETY: validated pointer, caller contract.
        let out = unsafe { out_ptr(out, "out") }?;
        *out = TierkvPqInfo {
            layers: i.layers as u32,
            kv_heads: i.kv_heads as u32,
            head_dim: i.head_dim as u32,
            value_dim: i.value_dim as u32,
            tokens: i.tokens as u64,
            bytes: i.bytes as u64,
        };
        Ok(())
    })
}

/// Frees an index once no call on another thread uses it. Null, an unknown or an
/// already destroyed handle is a no-op (handles are never reused).
///
/// # Safety
/// None beyond passing a value that was a PQ handle (or null).
#[no_mangle]
pub unsafe extern "C" fn tierkv_pq_destroy(pq: *mut TierkvPq) {
    let _ = guard(|| {
        drop(PQS.remove(pq as usize as u64));
        Ok(())
    });
}
