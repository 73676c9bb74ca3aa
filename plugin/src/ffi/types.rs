//! The ABI's mirrors of core value types: `repr(C)` structs owned by the ABI, with
//! conversions into (and out of) the core types they carry. Core structs never
//! double as ABI structs, so a change inside the core cannot change the header,
//! and the header is generated from `ffi/` alone (every other module is
//! `cbindgen:ignore` in `lib.rs`). The ABI's own structs (manager info, disk
//! status, hints, ...) live beside the exports that fill them.

use crate::manager::{Region, TokenRows, TokenSource};

/// A region of engine KV memory: block `b` is at `base + b * block_stride`, with
/// `bytes_per_block` bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TierkvRegion {
    /// Address of block 0 in this tensor.
    pub base: u64,
    /// Bytes between consecutive blocks.
    pub block_stride: u64,
    /// Bytes of one block in this tensor.
    pub bytes_per_block: u64,
}

impl From<TierkvRegion> for Region {
    fn from(r: TierkvRegion) -> Self {
        Region {
            base: r.base,
            block_stride: r.block_stride,
            bytes_per_block: r.bytes_per_block,
        }
    }
}

/// The rows of one kind in one region of a block.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TierkvTokenRows {
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

impl From<TierkvTokenRows> for TokenRows {
    fn from(r: TierkvTokenRows) -> Self {
        TokenRows {
            region: r.region,
            is_key: r.is_key,
            offset: r.offset,
            token_stride: r.token_stride,
            head_stride: r.head_stride,
            heads: r.heads,
            row_bytes: r.row_bytes,
            elem_stride: r.elem_stride,
        }
    }
}

/// Where one target position's KV comes from (for `tierkv_load_tokens`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TierkvTokenSource {
    /// Index into the source block identities passed with the map.
    pub block: u32,
    /// Token slot in that block.
    pub slot: u32,
    /// Target position minus source position (RoPE re-rotation).
    pub delta: i32,
}

impl From<TierkvTokenSource> for TokenSource {
    fn from(t: TierkvTokenSource) -> Self {
        TokenSource {
            block: t.block,
            slot: t.slot,
            delta: t.delta,
        }
    }
}

impl From<TokenSource> for TierkvTokenSource {
    fn from(t: TokenSource) -> Self {
        TierkvTokenSource {
            block: t.block,
            slot: t.slot,
            delta: t.delta,
        }
    }
}

/// Converts a slice of ABI values into core values.
pub(crate) fn core_vec<A: Copy, C: From<A>>(xs: &[A]) -> Vec<C> {
    xs.iter().map(|&x| C::from(x)).collect()
}
