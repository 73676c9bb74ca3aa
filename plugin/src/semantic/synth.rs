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
//! vLLM's CPU layout (the `vec` attention ISA), one region per layer,
//! `[kv_heads, 2 * block_size, head]` bytes per block, keys stored transposed:
//!
//! ```text
//!   head 0: K as [head][block_size] (element d of token t at (d*bs + t)*e)
//!           | V rows t0 .. t(bs-1), each [head]
//!   K rows: offset 0, token_stride = e, elem_stride = bs*e, head_stride = 2*bs*head*e
//!   V rows: offset bs*head*e, token_stride = head*e, contiguous, same head_stride
//! ```

use std::collections::HashMap;

use tierkv_cuda::reference::{bf16_to_f32, f16_to_f32, rotate_row, rotation_table, KeyDtype, RopeSpec};

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
    /// Bytes between consecutive elements of a row; 0 (or the element size) for
    /// contiguous rows. vLLM's CPU attention keeps keys transposed per block and
    /// head (`[head, block_size]`): there it is `block_size * element size`.
    pub elem_stride: u64,
}

/// Why a token layout was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("token layout: {0}")]
pub struct TokenLayoutError(pub String);

/// The RoPE of one head's key row: `inv_freq` as given (scaled variants, one per
/// rotated pair), or standard RoPE of `base` (`rope_theta`).
pub fn row_rope(
    head_dim: u32,
    rot_dim: u32,
    base: f32,
    neox: bool,
    inv_freq: Option<&[f32]>,
) -> Result<RopeSpec, String> {
    let spec = match inv_freq {
        Some(f) => RopeSpec {
            heads: 1,
            dim: head_dim,
            rot_dim,
            neox,
            inv_freq: f.to_vec(),
        },
        None if !(base.is_finite() && base > 1.0) => {
            return Err(format!("RoPE base {base} must be a finite number above 1"));
        }
        None => RopeSpec::standard(1, head_dim, rot_dim, base, neox).map_err(|e| e.to_string())?,
    };
    spec.validate().map_err(|e| e.to_string())?;
    Ok(spec)
}

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
            let es = dtype.size() as u64;
            if r.is_key == 1 && u64::from(r.row_bytes) != u64::from(rope.dim) * es {
                return bad(format!(
                    "rows {i}: a key row of {} bytes is not {} elements of {es} bytes",
                    r.row_bytes, rope.dim
                ));
            }
            let strided = r.elem_stride != 0 && r.elem_stride != es;
            if strided && !u64::from(r.row_bytes).is_multiple_of(es) {
                return bad(format!("rows {i}: a strided row must be whole elements of {es} bytes"));
            }
            // One span per contiguous piece: the row, or each element of a strided row.
            let (piece, pieces, step) = if strided {
                (es, u64::from(r.row_bytes) / es, r.elem_stride)
            } else {
                (u64::from(r.row_bytes), 1, 0)
            };
            for t in 0..u64::from(block_tokens) {
                for h in 0..u64::from(r.heads) {
                    for e in 0..pieces {
                        let at = t
                            .checked_mul(r.token_stride)
                            .and_then(|a| a.checked_add(h.checked_mul(r.head_stride)?))
                            .and_then(|a| a.checked_add(e.checked_mul(step)?))
                            .and_then(|a| a.checked_add(r.offset));
                        match at {
                            Some(a) if a + piece <= reg.bytes_per_block => {
                                spans[r.region as usize].push((a, a + piece))
                            }
                            _ => return bad(format!("rows {i}: token {t} head {h} past the region's block")),
                        }
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

    /// The keys' shape: key row sets (one per layer, in the order registered),
    /// KV heads, head dimension; `None` when the sets differ in heads.
    pub fn key_shape(&self) -> Option<(usize, usize, usize)> {
        let keys: Vec<&TokenRows> = self.rows.iter().filter(|r| r.is_key == 1).collect();
        let heads = keys.first()?.heads;
        keys.iter()
            .all(|r| r.heads == heads)
            .then_some((keys.len(), heads as usize, self.rope.dim as usize))
    }

    /// The values' shape: value row sets (one per layer, in the order
    /// registered), heads, elements per row; `None` when the sets differ.
    pub fn value_shape(&self) -> Option<(usize, usize, usize)> {
        let es = self.dtype.size() as u32;
        let vals: Vec<&TokenRows> = self.rows.iter().filter(|r| r.is_key == 0).collect();
        let (heads, bytes) = (vals.first()?.heads, vals.first()?.row_bytes);
        (bytes % es == 0 && vals.iter().all(|r| r.heads == heads && r.row_bytes == bytes)).then_some((
            vals.len(),
            heads as usize,
            (bytes / es) as usize,
        ))
    }

    /// Tokens per block.
    pub fn block_tokens(&self) -> usize {
        self.block_tokens as usize
    }

    /// The key and value row sets of `layer` (the `layer`-th of each kind, in
    /// the order registered).
    pub fn layer_rows(&self, layer: usize) -> Option<(&TokenRows, &TokenRows)> {
        let kind = |key: bool| self.rows.iter().filter(move |r| (r.is_key == 1) == key).nth(layer);
        Some((kind(true)?, kind(false)?))
    }

    /// Byte offset of region `r` in a stored block (regions concatenated).
    pub fn region_offset(&self, r: usize) -> usize {
        self.region_offsets[r] as usize
    }

    /// Regions.
    pub fn regions(&self) -> usize {
        self.region_offsets.len()
    }

    /// Reads one row (token slot `t`, head `h` of row set `r`, one of this
    /// layout's) of a stored block (`block`: its regions' bytes, concatenated) as
    /// fp32 into `out` (the row's elements).
    pub fn read_row(&self, r: &TokenRows, block: &[u8], t: usize, h: usize, out: &mut [f32]) {
        self.read_row_in(r, &block[self.region_offset(r.region as usize)..], t, h, out);
    }

    /// [`TokenLayout::read_row`] from the bytes of the row set's region alone.
    /// (The dtype is matched once per row, not per element: PQ gathers call this
    /// for every selected token.)
    pub fn read_row_in(&self, r: &TokenRows, region: &[u8], t: usize, h: usize, out: &mut [f32]) {
        let es = self.dtype.size();
        let step = if r.elem_stride == 0 { es } else { r.elem_stride as usize };
        let row = r.offset as usize + t * r.token_stride as usize + h * r.head_stride as usize;
        let Some(last) = out.len().checked_sub(1) else { return };
        let src = &region[row..row + last * step + es];
        match self.dtype {
            KeyDtype::F32 if step == 4 => {
                for (o, b) in out.iter_mut().zip(src.chunks_exact(4)) {
                    *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            KeyDtype::F32 => {
                for (o, b) in out.iter_mut().zip(src.chunks(step)) {
                    *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            KeyDtype::F16 => {
                for (o, b) in out.iter_mut().zip(src.chunks(step)) {
                    *o = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
                }
            }
            KeyDtype::Bf16 => {
                for (o, b) in out.iter_mut().zip(src.chunks(step)) {
                    *o = bf16_to_f32(u16::from_le_bytes([b[0], b[1]]));
                }
            }
        }
    }

    /// Reads the first `tokens` keys of one stored block (`block`: its regions'
    /// bytes, concatenated) as fp32 into `out`, laid out `[layer][head][total]
    /// [dim]` with this block's tokens at `base..base + tokens`.
    pub fn read_keys(&self, block: &[u8], tokens: usize, out: &mut [f32], total: usize, base: usize) {
        let Some((_, heads, dim)) = self.key_shape() else {
            return;
        };
        let keys = self.rows.iter().filter(|r| r.is_key == 1);
        for (layer, r) in keys.enumerate() {
            for t in 0..tokens.min(self.block_tokens()) {
                for h in 0..heads {
                    let dst = ((layer * heads + h) * total + base + t) * dim;
                    self.read_row(r, block, t, h, &mut out[dst..dst + dim]);
                }
            }
        }
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
        let es = self.dtype.size();
        let mut scratch = Vec::new();
        for r in &self.rows {
            let dst_region = &mut out[r.region as usize];
            let base = self.region_offsets[r.region as usize];
            let n = r.row_bytes as usize;
            let strided = r.elem_stride != 0 && r.elem_stride != es as u64;
            for (t, src) in map.iter().enumerate() {
                let payload = &sources[src.block as usize];
                for h in 0..u64::from(r.heads) {
                    let from = (base + r.offset + u64::from(src.slot) * r.token_stride + h * r.head_stride) as usize;
                    let to = (r.offset + t as u64 * r.token_stride + h * r.head_stride) as usize;
                    let rotate = r.is_key == 1 && src.delta != 0;
                    let table = if rotate {
                        Some(
                            &*tables
                                .entry(src.delta)
                                .or_insert_with(|| rotation_table(&self.rope, src.delta)),
                        )
                    } else {
                        None
                    };
                    if !strided {
                        let row = &mut dst_region[to..to + n];
                        row.copy_from_slice(&payload[from..from + n]);
                        if let Some(table) = table {
                            rotate_row(row, self.dtype, &self.rope, table);
                        }
                        continue;
                    }
                    // Gather the strided row, rotate it, scatter it.
                    let step = r.elem_stride as usize;
                    scratch.resize(n, 0);
                    for e in 0..n / es {
                        scratch[e * es..(e + 1) * es].copy_from_slice(&payload[from + e * step..from + e * step + es]);
                    }
                    if let Some(table) = table {
                        rotate_row(&mut scratch, self.dtype, &self.rope, table);
                    }
                    for e in 0..n / es {
                        dst_region[to + e * step..to + e * step + es].copy_from_slice(&scratch[e * es..(e + 1) * es]);
                    }
                }
            }
        }
    }
}
