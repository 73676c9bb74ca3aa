//! Semantic sharing through the C ABI: index stored prompts, look up a reuse plan
//! for a new prompt, read the whole plan (engines that can recompute any position)
//! or its approximate prefix and token map (engines that can only load a prefix),
//! and build engine blocks from a token map with keys re-rotated.
//!
//! Workflow of an engine:
//! 1. `tierkv_register_layout`, then `tierkv_register_token_layout` (where K and V
//!    rows lie, key dtype, RoPE).
//! 2. After storing a prompt's blocks: `tierkv_semantic_insert`.
//! 3. For a prompt with a short exact hit: `tierkv_semantic_lookup` -> a
//!    `TierkvPlan` (or a rejection reason); read it with `tierkv_plan_*`.
//! 4. `tierkv_plan_token_map` for the blocks to build, then `tierkv_load_tokens`
//!    (possibly in another process: the map is plain data). Free the plan with
//!    `tierkv_plan_destroy`.

use tierkv_cuda::reference::{KeyDtype, RopeSpec};

use super::api::{load_code, TIERKV_LOAD_FAILED};
use super::types::{core_vec, TierkvTokenRows, TierkvTokenSource};
use super::{
    guard, manager, out_ptr, prefill, slice_in, slice_out, FfiError, Held, Registry, TierkvHash, TierkvManager,
    TierkvStatus,
};
use crate::manager::{row_rope, BlockHash, LoadOutcome, Rejection, ReusePlan, TokenRows, TokenSource};

/// `out_reason` of `tierkv_semantic_lookup`: a plan was returned.
pub const TIERKV_SEMANTIC_ACCEPTED: i32 = 0;
/// Not consulted: sharing is off for the namespace, or the exact hit is long.
pub const TIERKV_SEMANTIC_NOT_CONSULTED: i32 = 1;
/// No indexed prompt is similar.
pub const TIERKV_SEMANTIC_NO_CANDIDATE: i32 = 2;
/// The best candidate covers less than `TIERKV_SEMANTIC_MIN_SIMILARITY`.
pub const TIERKV_SEMANTIC_BELOW_SIMILARITY: i32 = 3;
/// The best plan recomputes more than `TIERKV_SEMANTIC_MAX_RECOMPUTE`.
pub const TIERKV_SEMANTIC_TOO_MUCH_RECOMPUTE: i32 = 4;
/// The plan adds nothing beyond the exact prefix hit.
pub const TIERKV_SEMANTIC_NO_GAIN: i32 = 5;

/// Key element types of `TierkvRope::dtype`.
pub const TIERKV_DTYPE_F32: u32 = 0;
/// IEEE half.
pub const TIERKV_DTYPE_F16: u32 = 1;
/// bfloat16.
pub const TIERKV_DTYPE_BF16: u32 = 2;

/// A reuse plan (opaque; free with `tierkv_plan_destroy`).
pub struct TierkvPlan {
    _private: [u8; 0],
}

/// The model's rotary embedding, as re-rotation needs it.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct TierkvRope {
    /// `TIERKV_DTYPE_*` of the cached keys.
    pub dtype: u32,
    /// Head size in elements.
    pub head_dim: u32,
    /// Rotated dims (even, at most `head_dim`).
    pub rot_dim: u32,
    /// 1: rotate-half pairing (Llama, Qwen, SmolLM2); 0: interleaved (GPT-J).
    pub neox: u32,
    /// Base of standard RoPE (`rope_theta`); ignored when `inv_freq` is given.
    pub base: f32,
    /// `rot_dim / 2` frequencies for scaled variants, or null for standard RoPE.
    pub inv_freq: *const f32,
}

/// `len` target positions from `target` take KV from source positions `source..`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct TierkvReuseRun {
    /// First target position.
    pub target: u32,
    /// First source position.
    pub source: u32,
    /// Tokens.
    pub len: u32,
}

/// Target positions `[start, end)`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct TierkvRange {
    /// First position.
    pub start: u32,
    /// One past the last.
    pub end: u32,
}

/// Summary of a plan.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct TierkvPlanSummary {
    /// Target prompt length.
    pub target_len: u32,
    /// Tokens loaded from the source (the runs).
    pub reused_tokens: u32,
    /// Tokens to recompute (differences and blend).
    pub recompute_tokens: u32,
    /// Entries of `tierkv_plan_runs`.
    pub n_runs: u32,
    /// Entries of `tierkv_plan_recompute`.
    pub n_recompute: u32,
    /// Stored full blocks of the source.
    pub source_blocks: u32,
    /// Fraction of the target the source covers.
    pub coverage: f32,
    /// MinHash estimate of the similarity.
    pub estimate: f32,
}

fn key_dtype(code: u32) -> Result<KeyDtype, FfiError> {
    match code {
        TIERKV_DTYPE_F32 => Ok(KeyDtype::F32),
        TIERKV_DTYPE_F16 => Ok(KeyDtype::F16),
        TIERKV_DTYPE_BF16 => Ok(KeyDtype::Bf16),
        _ => Err(FfiError::invalid(format!(
            "dtype {code}: expected 0 (f32), 1 (f16) or 2 (bf16)"
        ))),
    }
}

/// The key dtype and row RoPE `rope` describes.
///
/// # Safety
/// `rope.inv_freq` null or valid for `rope.rot_dim / 2` reads.
unsafe fn rope_in(rope: &TierkvRope) -> Result<(KeyDtype, RopeSpec), FfiError> {
    let freq = if rope.inv_freq.is_null() {
        None
    } else {
        // SAFETY: the caller's contract.
        Some(unsafe { slice_in(rope.inv_freq, rope.rot_dim as usize / 2, "inv_freq") }?)
    };
    let spec = row_rope(rope.head_dim, rope.rot_dim, rope.base, rope.neox != 0, freq).map_err(FfiError::invalid)?;
    Ok((key_dtype(rope.dtype)?, spec))
}

static PLANS: Registry<ReusePlan> = Registry::new();

fn plan_ref(plan: *const TierkvPlan) -> Result<Held<ReusePlan>, FfiError> {
    PLANS
        .get(plan as usize as u64)
        .ok_or_else(|| FfiError::invalid("unknown or already destroyed plan handle"))
}

/// Writes 1 to `*out_enabled` if semantic sharing is on for this manager's
/// namespace (`TIERKV_SEMANTIC`, `TIERKV_SEMANTIC_NAMESPACES`), else 0.
///
/// # Safety
/// `out_enabled` valid for one write. Does not block.
#[no_mangle]
pub unsafe extern "C" fn tierkv_semantic_enabled(mgr: *const TierkvManager, out_enabled: *mut u8) -> TierkvStatus {
    guard(|| {
        let m = manager(mgr)?;
        // SAFETY: validated pointer, caller contract.
        *unsafe { out_ptr(out_enabled, "out_enabled") }? = u8::from(m.semantic_enabled());
        Ok(())
    })
}

/// What an engine that can only load a prefix (vLLM) may be served from a
/// near-duplicate: `*out_substitute` differing tokens (`TIERKV_SEMANTIC_SUBSTITUTE`)
/// and sources shifted by at most `*out_prefix_shift` positions
/// (`TIERKV_SEMANTIC_PREFIX_SHIFT`). Both 0 (the defaults): an approximate prefix
/// never goes beyond the exact hit, so such an engine need not consult the index.
///
/// # Safety
/// `out_substitute` and `out_prefix_shift` valid for one write each. Does not block.
#[no_mangle]
pub unsafe extern "C" fn tierkv_semantic_prefix_policy(
    mgr: *const TierkvManager,
    out_substitute: *mut u32,
    out_prefix_shift: *mut u32,
) -> TierkvStatus {
    guard(|| {
        let m = manager(mgr)?;
        // SAFETY: validated pointers, caller contract.
        let (sub, shift) = unsafe {
            (
                out_ptr(out_substitute, "out_substitute")?,
                out_ptr(out_prefix_shift, "out_prefix_shift")?,
            )
        };
        *sub = m.semantic_substitute();
        *shift = m.semantic_prefix_shift();
        Ok(())
    })
}

/// Indexes a prompt whose full blocks the engine has stored, for semantic lookups;
/// `*out_indexed` is 1 if it was (0: sharing off for the namespace, or the prompt
/// is shorter than a block). Never index a prompt whose KV was itself built from a
/// near-duplicate (its blocks are not stored under exact identities either).
///
/// # Safety
/// `tokens` valid for `n` reads; `out_indexed` null or valid for one write. Takes
/// the index lock briefly.
#[no_mangle]
pub unsafe extern "C" fn tierkv_semantic_insert(
    mgr: *const TierkvManager,
    tokens: *const u32,
    n: usize,
    out_indexed: *mut u8,
) -> TierkvStatus {
    guard(|| {
        let m = manager(mgr)?;
        // SAFETY: validated pointer, caller contract.
        let t = unsafe { slice_in(tokens, n, "tokens") }?;
        let ok = m.in_scope(|| m.semantic_insert(t))?;
        if !out_indexed.is_null() {
            // SAFETY: as above.
            *unsafe { out_ptr(out_indexed, "out_indexed") }? = u8::from(ok);
        }
        Ok(())
    })
}

/// Looks up a plan to build the KV of `tokens` (a prompt whose exact prefix hit
/// covers `exact_tokens`) from a cached near-duplicate. On success `*out_plan`
/// is a plan (free with `tierkv_plan_destroy`) and `*out_reason` is
/// `TIERKV_SEMANTIC_ACCEPTED`, or `*out_plan` is null and `*out_reason` says why
/// not (`TIERKV_SEMANTIC_*`).
///
/// # Safety
/// `tokens` valid for `n` reads; `out_plan` and `out_reason` valid for one write.
/// Costs one pass over the tokens plus up to 4 alignments (each bounded by 20 ms;
/// about 50 us for a 4K-token prompt, docs/benchmarks.md).
#[no_mangle]
pub unsafe extern "C" fn tierkv_semantic_lookup(
    mgr: *const TierkvManager,
    tokens: *const u32,
    n: usize,
    exact_tokens: usize,
    out_plan: *mut *mut TierkvPlan,
    out_reason: *mut i32,
) -> TierkvStatus {
    guard(|| {
        let m = manager(mgr)?;
        // SAFETY: validated pointers, caller contract.
        let (t, out_plan, out_reason) = unsafe {
            (
                slice_in(tokens, n, "tokens")?,
                out_ptr(out_plan, "out_plan")?,
                out_ptr(out_reason, "out_reason")?,
            )
        };
        *out_plan = std::ptr::null_mut();
        if n > u32::MAX as usize / 2 || exact_tokens > n {
            return Err(FfiError::invalid(format!(
                "exact_tokens {exact_tokens} of a prompt of {n} tokens"
            )));
        }
        match m.in_scope(|| m.semantic_lookup(t, exact_tokens as u32)) {
            Ok(p) => {
                *out_plan = PLANS.insert(std::sync::Arc::new(p)) as usize as *mut TierkvPlan;
                *out_reason = TIERKV_SEMANTIC_ACCEPTED;
            }
            Err(r) => *out_reason = semantic_reason(r),
        }
        Ok(())
    })
}

/// The `TIERKV_SEMANTIC_*` code of a rejected lookup (the C++ bridge's too).
pub fn semantic_reason(r: Rejection) -> i32 {
    match r {
        Rejection::NotConsulted => TIERKV_SEMANTIC_NOT_CONSULTED,
        Rejection::NoCandidate => TIERKV_SEMANTIC_NO_CANDIDATE,
        Rejection::BelowSimilarity => TIERKV_SEMANTIC_BELOW_SIMILARITY,
        Rejection::TooMuchRecompute => TIERKV_SEMANTIC_TOO_MUCH_RECOMPUTE,
        Rejection::NoGain => TIERKV_SEMANTIC_NO_GAIN,
    }
}

/// Frees a plan once no call on another thread reads it. Null, an unknown or an
/// already destroyed handle is a no-op (handles are never reused).
///
/// # Safety
/// None beyond passing a value that was a plan handle (or null).
#[no_mangle]
pub unsafe extern "C" fn tierkv_plan_destroy(plan: *mut TierkvPlan) {
    let _ = guard(|| {
        drop(PLANS.remove(plan as usize as u64));
        Ok(())
    });
}

/// Writes the plan's summary to `*out`.
///
/// # Safety
/// `plan` live; `out` valid for one write.
#[no_mangle]
pub unsafe extern "C" fn tierkv_plan_summary(plan: *const TierkvPlan, out: *mut TierkvPlanSummary) -> TierkvStatus {
    guard(|| {
        let p = plan_ref(plan)?;
        // SAFETY: validated pointer, caller contract.
        let out = unsafe { out_ptr(out, "out") }?;
        *out = TierkvPlanSummary {
            target_len: p.target_len,
            reused_tokens: p.reused_tokens(),
            recompute_tokens: p.recompute_tokens(),
            n_runs: p.runs.len() as u32,
            n_recompute: p.recompute.len() as u32,
            source_blocks: p.source_hashes.len() as u32,
            coverage: p.coverage(),
            estimate: p.estimate,
        };
        Ok(())
    })
}

/// Copies the plan's runs (sorted by target) and recompute ranges (sorted,
/// disjoint) out: `cap_runs` and `cap_recompute` entries at most; the counts are in
/// the summary (`BUFFER_TOO_SMALL` if a capacity is short, nothing written).
///
/// # Safety
/// `plan` live; `runs` valid for `cap_runs` writes, `recompute` for
/// `cap_recompute` (null when the capacity is 0).
#[no_mangle]
pub unsafe extern "C" fn tierkv_plan_full(
    plan: *const TierkvPlan,
    runs: *mut TierkvReuseRun,
    cap_runs: usize,
    recompute: *mut TierkvRange,
    cap_recompute: usize,
) -> TierkvStatus {
    guard(|| {
        let p = plan_ref(plan)?;
        if cap_runs < p.runs.len() || cap_recompute < p.recompute.len() {
            return Err(FfiError {
                status: TierkvStatus::BufferTooSmall,
                message: format!(
                    "the plan has {} runs and {} recompute ranges",
                    p.runs.len(),
                    p.recompute.len()
                ),
            });
        }
        // SAFETY: validated pointers, caller contract.
        let (o_runs, o_rec) = unsafe {
            (
                slice_out(runs, p.runs.len(), "runs")?,
                slice_out(recompute, p.recompute.len(), "recompute")?,
            )
        };
        for (o, r) in o_runs.iter_mut().zip(&p.runs) {
            *o = TierkvReuseRun {
                target: r.target,
                source: r.source,
                len: r.len,
            };
        }
        for (o, r) in o_rec.iter_mut().zip(&p.recompute) {
            *o = TierkvRange {
                start: r.start,
                end: r.end,
            };
        }
        Ok(())
    })
}

/// For an engine that can only load a prefix (vLLM): the longest block-aligned
/// `[0, L)`, at most `limit` tokens, whose every position beyond `exact_tokens`
/// can be taken from the source (with at most `TIERKV_SEMANTIC_SUBSTITUTE`
/// differing tokens, and sources shifted by at most `TIERKV_SEMANTIC_PREFIX_SHIFT`
/// positions). `*out_tokens` is L, or 0 when that adds nothing.
///
/// # Safety
/// `plan` live; `out_tokens` valid for one write.
#[no_mangle]
pub unsafe extern "C" fn tierkv_plan_approximate_prefix(
    mgr: *const TierkvManager,
    plan: *const TierkvPlan,
    exact_tokens: u32,
    limit: u32,
    out_tokens: *mut u32,
) -> TierkvStatus {
    guard(|| {
        let m = manager(mgr)?;
        let p = plan_ref(plan)?;
        // SAFETY: validated pointer, caller contract.
        let out = unsafe { out_ptr(out_tokens, "out_tokens") }?;
        *out = p.approximate_prefix(exact_tokens, limit, m.semantic_substitute(), m.semantic_prefix_shift());
        Ok(())
    })
}

/// The token map of target blocks `[first_block, first_block + n_blocks)` within
/// the approximate prefix: `n_blocks * block_tokens` entries to `map`, and the
/// distinct source block identities they name to `sources` (`*out_sources` of
/// them, at most `n_blocks * block_tokens`). Pass both to `tierkv_load_tokens`.
/// `STATE` if a position has no source (past the approximate prefix).
///
/// # Safety
/// `plan` live; `map` valid for `n_blocks * block_tokens` writes, `sources` for
/// `cap_sources`; `out_sources` for one write.
#[no_mangle]
pub unsafe extern "C" fn tierkv_plan_token_map(
    mgr: *const TierkvManager,
    plan: *const TierkvPlan,
    first_block: u32,
    n_blocks: u32,
    sources: *mut TierkvHash,
    cap_sources: usize,
    out_sources: *mut usize,
    map: *mut TierkvTokenSource,
) -> TierkvStatus {
    guard(|| {
        let m = manager(mgr)?;
        let p = plan_ref(plan)?;
        let bt = p.block_tokens as usize;
        let n = n_blocks as usize * bt;
        if (first_block as usize + n_blocks as usize) * bt > p.target_len as usize {
            return Err(FfiError::invalid("blocks past the end of the prompt"));
        }
        // SAFETY: validated pointers, caller contract.
        let (o_map, o_n) = unsafe { (slice_out(map, n, "map")?, out_ptr(out_sources, "out_sources")?) };
        let sub = m.semantic_substitute() > 0;
        let Some((hs, mp)) = p.token_map(first_block, n_blocks, sub) else {
            return Err(FfiError {
                status: TierkvStatus::State,
                message: "a position of these blocks has no source (past the approximate prefix)".into(),
            });
        };
        if hs.len() > cap_sources {
            return Err(FfiError {
                status: TierkvStatus::BufferTooSmall,
                message: format!("{} source blocks", hs.len()),
            });
        }
        // SAFETY: as above.
        let o_src = unsafe { slice_out(sources, hs.len(), "sources") }?;
        for (o, h) in o_src.iter_mut().zip(hs) {
            *o = h.into();
        }
        for (o, t) in o_map.iter_mut().zip(mp) {
            *o = t.into();
        }
        *o_n = o_src.len();
        Ok(())
    })
}

/// Describes where the K and V rows of each token lie in the registered layout
/// (rows must tile every region's block exactly) and the RoPE of the keys. Call
/// after `tierkv_register_layout` (which clears it).
///
/// # Safety
/// `rows` valid for `n_rows` reads; `rope` valid for one read, its `inv_freq` null
/// or valid for `rot_dim / 2` reads.
#[no_mangle]
pub unsafe extern "C" fn tierkv_register_token_layout(
    mgr: *const TierkvManager,
    rows: *const TierkvTokenRows,
    n_rows: usize,
    rope: *const TierkvRope,
) -> TierkvStatus {
    guard(|| {
        let m = manager(mgr)?;
        // SAFETY: validated pointers, caller contract.
        let (rows, rope) = unsafe { (slice_in(rows, n_rows, "rows")?, slice_in(rope, 1, "rope")?[0]) };
        // SAFETY: as above.
        let (dtype, spec) = unsafe { rope_in(&rope) }?;
        m.register_token_layout(&core_vec::<_, TokenRows>(rows), dtype, spec)?;
        Ok(())
    })
}

/// Builds engine blocks `block_ids` token by token from `sources` (host-tier
/// identities, each verified when read) along `map` (`n_blocks * block_tokens`
/// entries), re-rotating keys by each entry's delta. `out_results[i]` is a
/// `TIERKV_LOAD_*` code; a block whose sources are missing or corrupt is not
/// written: recompute it.
///
/// # Safety
/// As `tierkv_load_blocks`: the registered layout's memory is valid and the caller
/// has exclusive write access to those blocks during the call. `sources` valid
/// for `n_sources` reads, `map` for `n_blocks * block_tokens`, `block_ids` for
/// `n_blocks`, `out_results` for `n_blocks` writes. Blocks while it copies.
#[no_mangle]
pub unsafe extern "C" fn tierkv_load_tokens(
    mgr: *const TierkvManager,
    sources: *const TierkvHash,
    n_sources: usize,
    map: *const TierkvTokenSource,
    block_ids: *const u64,
    n_blocks: usize,
    out_results: *mut u8,
) -> TierkvStatus {
    guard(|| {
        // SAFETY: validated pointer, caller contract; FAILED until each block is done.
        let out = unsafe { prefill(out_results, n_blocks, TIERKV_LOAD_FAILED) }?
            .ok_or_else(|| FfiError::invalid("out_results is null"))?;
        let m = manager(mgr)?;
        let n_map = n_blocks
            .checked_mul(m.block_tokens())
            .ok_or_else(|| FfiError::invalid("n_blocks too large"))?;
        // SAFETY: validated pointers, caller contract.
        let (srcs, mp, ids) = unsafe {
            (
                slice_in(sources, n_sources, "sources")?,
                slice_in(map, n_map, "map")?,
                slice_in(block_ids, n_blocks, "block_ids")?,
            )
        };
        let srcs: Vec<BlockHash> = srcs.iter().map(|&h| h.into()).collect();
        let mut outcomes = vec![LoadOutcome::Miss; n_blocks];
        let mp: Vec<TokenSource> = core_vec(mp);
        // SAFETY: the layout's memory is valid per tierkv_register_layout's contract and
        // exclusively ours during the call per this function's contract.
        m.in_scope(|| unsafe { m.load_tokens(&srcs, &mp, ids, &mut outcomes) })?;
        for (o, r) in out.iter_mut().zip(outcomes) {
            *o = load_code(r);
        }
        Ok(())
    })
}

/// Re-rotates `n_rows` key rows (`[row][head_dim]` of `rope.dtype`, native endian)
/// in place, row i by `deltas[i]` positions: what `tierkv_load_tokens` does to
/// reused keys, for engines that move KV themselves. Needs no manager.
///
/// # Safety
/// `keys` valid for `n_rows * head_dim * element size` reads and writes; `deltas`
/// for `n_rows` reads; `rope` as in `tierkv_register_token_layout`.
#[no_mangle]
pub unsafe extern "C" fn tierkv_rerotate_keys(
    rope: *const TierkvRope,
    keys: *mut u8,
    n_rows: usize,
    deltas: *const i32,
) -> TierkvStatus {
    guard(|| {
        // SAFETY: validated pointer, caller contract.
        let rope = unsafe { slice_in(rope, 1, "rope") }?[0];
        // SAFETY: as above.
        let (dtype, spec) = unsafe { rope_in(&rope) }?;
        let bytes = n_rows
            .checked_mul(rope.head_dim as usize * dtype.size())
            .ok_or_else(|| FfiError::invalid("n_rows too large"))?;
        // SAFETY: as above.
        let (k, d) = unsafe { (slice_out(keys, bytes, "keys")?, slice_in(deltas, n_rows, "deltas")?) };
        tierkv_cuda::reference::rerotate_keys(k, dtype, &spec, d).map_err(|e| FfiError::invalid(e.to_string()))?;
        Ok(())
    })
}
