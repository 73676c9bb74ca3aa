//! How the engine lays out its KV memory, so that a block id becomes byte ranges.
//!
//! Core type: [`EngineLayout`], a list of [`Region`]s. A region is one tensor (or
//! one half of one, for engines that keep K and V apart) in which block `b` occupies
//! `bytes_per_block` bytes at `base + b * block_stride`. A block's payload in a tier
//! is the concatenation of its range in every region, in order:
//!
//! ```text
//!   region 0 (layer 0): base0 + b*stride0 .. +bytes0 ─┐
//!   region 1 (layer 1): base1 + b*stride1 .. +bytes1 ─┼─> payload = r0 ++ r1 ++ ...
//!   ...                                               ─┘
//! ```
//!
//! vLLM's CPU layout (`[num_blocks, kv_heads, block_size, 2*head]` per layer) is one
//! region per layer with `block_stride == bytes_per_block`.

/// One tensor's share of every block.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// Address of block 0 in this tensor.
    pub base: u64,
    /// Bytes between consecutive blocks.
    pub block_stride: u64,
    /// Bytes of one block in this tensor.
    pub bytes_per_block: u64,
}

/// Why a layout was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// No regions, or zero blocks.
    #[error("a layout needs at least one region and one block")]
    Empty,
    /// A region is malformed.
    #[error("region {index}: {why}")]
    BadRegion {
        /// Region index.
        index: usize,
        /// What is wrong.
        why: &'static str,
    },
    /// The payload differs from the tier's block size.
    #[error("the layout's regions hold {got} bytes per block but the manager was created for {want}")]
    BlockBytes {
        /// Sum of `bytes_per_block`.
        got: u64,
        /// The manager's block bytes.
        want: u64,
    },
}

/// The engine's KV memory: validated regions and the number of blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineLayout {
    regions: Vec<Region>,
    num_blocks: u64,
}

impl EngineLayout {
    /// Validates `regions` for `num_blocks` blocks of `block_bytes` total payload:
    /// non-null bases, non-zero sizes, `stride >= bytes` (blocks do not overlap),
    /// and no address arithmetic that overflows.
    pub fn new(regions: &[Region], num_blocks: u64, block_bytes: u64) -> Result<Self, LayoutError> {
        if regions.is_empty() || num_blocks == 0 {
            return Err(LayoutError::Empty);
        }
        let mut total = 0u64;
        for (index, r) in regions.iter().enumerate() {
            let bad = |why| Err(LayoutError::BadRegion { index, why });
            if r.base == 0 {
                return bad("base address is null");
            }
            if r.bytes_per_block == 0 {
                return bad("bytes_per_block is zero");
            }
            if r.block_stride < r.bytes_per_block {
                return bad("block_stride is smaller than bytes_per_block (blocks would overlap)");
            }
            let end = (num_blocks - 1)
                .checked_mul(r.block_stride)
                .and_then(|o| o.checked_add(r.bytes_per_block))
                .and_then(|o| o.checked_add(r.base));
            if end.is_none_or(|e| e > isize::MAX as u64) {
                return bad("base + num_blocks * block_stride overflows the address space");
            }
            total = total.checked_add(r.bytes_per_block).ok_or(LayoutError::BadRegion {
                index,
                why: "size overflow",
            })?;
        }
        if total != block_bytes {
            return Err(LayoutError::BlockBytes {
                got: total,
                want: block_bytes,
            });
        }
        Ok(Self {
            regions: regions.to_vec(),
            num_blocks,
        })
    }

    /// Number of blocks the engine has.
    pub fn num_blocks(&self) -> u64 {
        self.num_blocks
    }

    /// The regions.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// `(address, length)` of block `b` in every region. `b` must be below
    /// [`EngineLayout::num_blocks`].
    pub fn ranges(&self, b: u64) -> impl Iterator<Item = (usize, usize)> + '_ {
        debug_assert!(b < self.num_blocks);
        self.regions
            .iter()
            .map(move |r| ((r.base + b * r.block_stride) as usize, r.bytes_per_block as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_regions() {
        let r = |base, stride, bytes| Region {
            base,
            block_stride: stride,
            bytes_per_block: bytes,
        };
        assert!(EngineLayout::new(&[r(4096, 64, 64)], 10, 64).is_ok());
        assert_eq!(EngineLayout::new(&[], 10, 64), Err(LayoutError::Empty));
        assert!(matches!(
            EngineLayout::new(&[r(0, 64, 64)], 10, 64),
            Err(LayoutError::BadRegion { index: 0, .. })
        ));
        assert!(matches!(
            EngineLayout::new(&[r(8, 32, 64)], 10, 64),
            Err(LayoutError::BadRegion { .. })
        ));
        assert!(matches!(
            EngineLayout::new(&[r(8, u64::MAX / 2, 64)], 10, 64),
            Err(LayoutError::BadRegion { .. })
        ));
        assert_eq!(
            EngineLayout::new(&[r(8, 64, 64), r(1 << 20, 64, 32)], 4, 64),
            Err(LayoutError::BlockBytes { got: 96, want: 64 })
        );
        let l = EngineLayout::new(&[r(1000, 100, 10), r(5000, 20, 20)], 3, 30).unwrap();
        assert_eq!(l.ranges(2).collect::<Vec<_>>(), [(1200, 10), (5040, 20)]);
    }
}
