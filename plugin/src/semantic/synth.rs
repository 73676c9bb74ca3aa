//! Building a target block's KV token by token from source blocks, with keys
//! re-rotated to their new positions.
//!
//! Core types: [`TokenRows`] (where the rows of one kind, K or V, of every token
//! and head lie inside one region of a block) and [`TokenLayout`] (the rows of
//! every region, validated to tile each region exactly, plus the model's RoPE).
//!
//! Workflow ([`TokenLayout::synthesize`], one target block):
//! 1. For each row set and each token slot s: the map names the source block,
//!    its slot s' and the position delta.
//! 2. Copy the row of every head from the source payload (tier layout: regions
//!    concatenated) to the engine block.
//! 3. Key rows with a delta are rotated by it ([`tierkv_cuda::reference::rotate_row`],
//!    the CPU reference of the GPU kernel; one angle table per distinct delta).
//!
//! vLLM's CPU layout, one region per layer, `[kv_heads, 2 * block_size, head]`:
//!
//! ```text
//!   head 0: K row t0 .. K row t(bs-1) | V row t0 .. V row t(bs-1)
//!   head 1: ...
//!   K rows: offset 0,       token_stride = head*e, head_stride = 2*bs*head*e
//!   V rows: offset bs*head*e, same strides
//! ```

use std::collections::HashMap;

use tierkv_cuda::reference::{rotate_row, rotation_table, KeyDtype, RopeSpec};

use super::plan::TokenSource;
use crate::tier::layout::Region;

/// The rows of one kind in one region of a block.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenRows {
    /// Region index (as registered with the layout).
    pub region: u32,
    /// 1 for keys (re-rotated), 0 for values.
    pub is_key: u32,
    /// Byte offset of token 0, head 0 in the region's block.
    pub offset: u64,
    /// Bytes between consecutive tokens.
    pub token_stride: u64,
    /// Bytes between consecutive heads.
    pub head_stride: u64,
    /// Heads.
    pub heads: u32,
    /// Bytes of one row (one token, one head).
    pub row_bytes: u32,
}

/// Why a token layout was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("token layout: {0}")]
pub struct TokenLayoutError(pub String);

/// Validated token rows of every region and the RoPE of the keys.
#[derive(Debug, Clone)]
pub struct TokenLayout {
    rows: Vec<TokenRows>,
    region_offsets: Vec<u64>,
    block_tokens: u32,
    dtype: KeyDtype,
    rope: RopeSpec,
}

impl TokenLayout {
    /// Checks that `rows` tile every region of `regions` exactly (every byte of a
    /// block written once, so a synthesized block holds nothing stale) and that key
    /// rows are one head of `rope.dim` elements of `dtype`.
    pub fn new(
        regions: &[Region],
        block_tokens: u32,
        rows: &[TokenRows],
        dtype: KeyDtype,
        rope: RopeSpec,
    ) -> Result<Self, TokenLayoutError> {
        let bad = |s: String| Err(TokenLayoutError(s));
        rope.validate().map_err(|e| TokenLayoutError(e.to_string()))?;
        if rope.heads != 1 {
            return bad("the RoPE spec describes one head (heads = 1)".into());
        }
        let mut spans: Vec<Vec<(u64, u64)>> = vec![Vec::new(); regions.len()];
        for (i, r) in rows.iter().enumerate() {
            let Some(reg) = regions.get(r.region as usize) else {
                return bad(format!("rows {i}: region {} of {}", r.region, regions.len()));
            };
            if r.heads == 0 || r.row_bytes == 0 || r.is_key > 1 {
                return bad(format!("rows {i}: heads and row_bytes must be > 0, is_key 0 or 1"));
            }
            if r.is_key == 1 && u64::from(r.row_bytes) != u64::from(rope.dim) * dtype.size() as u64 {
                return bad(format!(
                    "rows {i}: a key row of {} bytes is not {} elements of {} bytes",
                    r.row_bytes,
                    rope.dim,
                    dtype.size()
                ));
            }
            for t in 0..u64::from(block_tokens) {
                for h in 0..u64::from(r.heads) {
                    let at = t
                        .checked_mul(r.token_stride)
                        .and_then(|a| a.checked_add(h.checked_mul(r.head_stride)?))
                        .and_then(|a| a.checked_add(r.offset));
                    match at {
                        Some(a) if a + u64::from(r.row_bytes) <= reg.bytes_per_block => {
                            spans[r.region as usize].push((a, a + u64::from(r.row_bytes)))
                        }
                        _ => return bad(format!("rows {i}: token {t} head {h} past the region's block")),
                    }
                }
            }
        }
        for (k, (s, reg)) in spans.iter_mut().zip(regions).enumerate() {
            s.sort_unstable();
            let mut at = 0;
            for &(a, b) in s.iter() {
                if a != at {
                    return bad(format!(
                        "region {k}: bytes {at}..{a} {} (rows must tile each block exactly)",
                        if a > at { "are not covered" } else { "are covered twice" }
                    ));
                }
                at = b;
            }
            if at != reg.bytes_per_block {
                return bad(format!("region {k}: rows cover {at} of {} bytes", reg.bytes_per_block));
            }
        }
        let mut region_offsets = Vec::with_capacity(regions.len());
        let mut off = 0;
        for r in regions {
            region_offsets.push(off);
            off += r.bytes_per_block;
        }
        Ok(Self {
            rows: rows.to_vec(),
            region_offsets,
            block_tokens,
            dtype,
            rope,
        })
    }

    /// Tokens per block.
    pub fn block_tokens(&self) -> u32 {
        self.block_tokens
    }

    /// Writes one target block: `out[k]` is region k's bytes of the engine block,
    /// `sources` the verified payloads of the source blocks the map names, `map`
    /// one entry per token slot. `tables` caches angle tables by delta.
    pub fn synthesize(
        &self,
        sources: &[Vec<u8>],
        map: &[TokenSource],
        out: &mut [&mut [u8]],
        tables: &mut HashMap<i32, Vec<(f32, f32)>>,
    ) {
        debug_assert_eq!(map.len(), self.block_tokens as usize);
        for r in &self.rows {
            let dst_region = &mut out[r.region as usize];
            let base = self.region_offsets[r.region as usize];
            let n = r.row_bytes as usize;
            for (t, src) in map.iter().enumerate() {
                let payload = &sources[src.block as usize];
                for h in 0..u64::from(r.heads) {
                    let from = (base + r.offset + u64::from(src.slot) * r.token_stride + h * r.head_stride) as usize;
                    let to = (r.offset + t as u64 * r.token_stride + h * r.head_stride) as usize;
                    let row = &mut dst_region[to..to + n];
                    row.copy_from_slice(&payload[from..from + n]);
                    if r.is_key == 1 && src.delta != 0 {
                        let table = tables
                            .entry(src.delta)
                            .or_insert_with(|| rotation_table(&self.rope, src.delta));
                        rotate_row(row, self.dtype, &self.rope, table);
                    }
                }
            }
        }
    }
}
