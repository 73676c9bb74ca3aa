//! Copy segments: a block list over a paged layout, turned into the contiguous
//! byte ranges one kernel launch (or one batched memcpy) moves.
//!
//! Core items: [`PagedLayout`] (the engine's KV tensors, one [`Region`] each),
//! [`Segment`] (one contiguous copy), [`gather`] / [`scatter`].
//!
//! A paged layout with two regions (say layer 0's K and V of vLLM's
//! FlashAttention layout, `[2][num_blocks][block_size][heads][dim]` per layer):
//!
//! ```text
//!   region 0 (K):  | b0 | b1 | b2 | ...      stride = bytes of one block's K
//!   region 1 (V):  | b0 | b1 | b2 | ...
//!   contiguous:    | b_i: K V | b_j: K V | ...   one tier block = all regions
//! ```
//!
//! Workflow of a gather (engine -> contiguous staging) for blocks [b_i, b_j]:
//! 1. for each listed block j, for each region r: a segment from
//!    `base_r + b_j * stride_r` to `staging + j * block_bytes + offset_r`;
//! 2. neighbouring segments that continue each other on both sides are merged
//!    (consecutive block ids of a one-region layout become one segment);
//! 3. the list goes to the kernel (device addresses) or the reference (offsets).
//!
//! A scatter is the same list with source and destination swapped.

use crate::CudaError;

/// One contiguous copy: `len` bytes from `src` to `dst` (addresses or offsets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Source address or offset.
    pub src: u64,
    /// Destination address or offset.
    pub dst: u64,
    /// Bytes.
    pub len: u64,
}

/// One engine KV tensor: block `b` occupies `[base + b * stride, + bytes)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// Address (or offset) of block 0.
    pub base: u64,
    /// Distance between consecutive blocks.
    pub stride: u64,
    /// Bytes of one block in this tensor.
    pub bytes: u64,
}

/// The engine's paged KV memory: every region, and how many blocks each holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PagedLayout {
    regions: Vec<Region>,
    num_blocks: u64,
    block_bytes: u64,
}

impl PagedLayout {
    /// Validates the regions (non-empty, `bytes <= stride`, no overflow).
    pub fn new(regions: Vec<Region>, num_blocks: u64) -> Result<Self, CudaError> {
        if regions.is_empty() || num_blocks == 0 {
            return Err(CudaError::InvalidArgument("a layout needs regions and blocks".into()));
        }
        let mut block_bytes = 0u64;
        for r in &regions {
            let end = r
                .stride
                .checked_mul(num_blocks - 1)
                .and_then(|x| x.checked_add(r.bytes))
                .and_then(|x| x.checked_add(r.base));
            if r.bytes == 0 || r.bytes > r.stride || end.is_none() {
                return Err(CudaError::InvalidArgument(format!("bad region {r:?}")));
            }
            block_bytes += r.bytes;
        }
        Ok(Self {
            regions,
            num_blocks,
            block_bytes,
        })
    }

    /// Bytes of one block across all regions (a tier block's size).
    pub fn block_bytes(&self) -> u64 {
        self.block_bytes
    }

    /// The regions.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// Blocks per region.
    pub fn num_blocks(&self) -> u64 {
        self.num_blocks
    }

    fn check(&self, blocks: &[u64]) -> Result<(), CudaError> {
        match blocks.iter().find(|&&b| b >= self.num_blocks) {
            Some(b) => Err(CudaError::InvalidArgument(format!(
                "block {b} out of range ({} blocks)",
                self.num_blocks
            ))),
            None => Ok(()),
        }
    }
}

/// Segments copying engine blocks `blocks[j]` to `staging + j * block_bytes`.
pub fn gather(layout: &PagedLayout, blocks: &[u64], staging: u64) -> Result<Vec<Segment>, CudaError> {
    layout.check(blocks)?;
    let mut out: Vec<Segment> = Vec::with_capacity(blocks.len() * layout.regions.len());
    for (j, &b) in blocks.iter().enumerate() {
        let mut off = staging + j as u64 * layout.block_bytes;
        for r in &layout.regions {
            push_merged(
                &mut out,
                Segment {
                    src: r.base + b * r.stride,
                    dst: off,
                    len: r.bytes,
                },
            );
            off += r.bytes;
        }
    }
    Ok(out)
}

/// Segments copying `staging + j * block_bytes` into engine blocks `blocks[j]`.
pub fn scatter(layout: &PagedLayout, blocks: &[u64], staging: u64) -> Result<Vec<Segment>, CudaError> {
    let mut segs = gather(layout, blocks, staging)?;
    for s in &mut segs {
        std::mem::swap(&mut s.src, &mut s.dst);
    }
    Ok(segs)
}

/// Segments of a layer-by-layer load: `out[l]` copies layer `l`'s regions of
/// tier block `j` (contiguous bytes at `staging[j]`) into engine block `blocks[j]`.
///
/// The regions split into `layers` equal consecutive groups in registration order
/// (vLLM registers each layer's K and V, or its fused KV, in layer order), so
/// layer `l` owns regions `l * r / layers .. (l + 1) * r / layers`.
pub fn scatter_layers(
    layout: &PagedLayout,
    layers: usize,
    blocks: &[u64],
    staging: &[u64],
) -> Result<Vec<Vec<Segment>>, CudaError> {
    let r = layout.regions.len();
    if layers == 0 || !r.is_multiple_of(layers) {
        return Err(CudaError::InvalidArgument(format!(
            "{r} regions do not split into {layers} layers"
        )));
    }
    if blocks.len() != staging.len() {
        return Err(CudaError::InvalidArgument(
            "blocks and staging addresses differ in length".into(),
        ));
    }
    layout.check(blocks)?;
    let per = r / layers;
    let mut offsets = Vec::with_capacity(r);
    let mut off = 0;
    for reg in &layout.regions {
        offsets.push(off);
        off += reg.bytes;
    }
    let mut out = vec![Vec::with_capacity(blocks.len() * per); layers];
    for (l, segs) in out.iter_mut().enumerate() {
        for (&b, &src) in blocks.iter().zip(staging) {
            let group = l * per..(l + 1) * per;
            for (reg, off) in layout.regions[group.clone()].iter().zip(&offsets[group]) {
                push_merged(
                    segs,
                    Segment {
                        src: src + off,
                        dst: reg.base + b * reg.stride,
                        len: reg.bytes,
                    },
                );
            }
        }
    }
    Ok(out)
}

fn push_merged(out: &mut Vec<Segment>, s: Segment) {
    if let Some(last) = out.last_mut() {
        if last.src + last.len == s.src && last.dst + last.len == s.dst {
            last.len += s.len;
            return;
        }
    }
    out.push(s);
}
