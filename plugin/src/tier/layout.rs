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
    /// Two regions share bytes: a load into one block would rewrite another's.
    #[error(
        "regions {first} and {second} overlap (block {block_a} of one shares bytes with block {block_b} of the other)"
    )]
    Overlap {
        /// One region.
        first: usize,
        /// The other.
        second: usize,
        /// A block of `first` ...
        block_a: u64,
        /// ... that overlaps this block of `second`.
        block_b: u64,
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
        for i in 0..regions.len() {
            for j in i + 1..regions.len() {
                if let Some((a, b)) = overlap(&regions[i], &regions[j], num_blocks) {
                    return Err(LayoutError::Overlap {
                        first: i,
                        second: j,
                        block_a: a,
                        block_b: b,
                    });
                }
            }
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

/// A pair of blocks `(a of r1, b of r2)` whose bytes intersect, if any. Regions
/// may interleave (K and V of one tensor, heads of a permuted view): only the
/// blocks' own byte ranges count, not the spans between them.
///
/// ```text
///   r1: [a*s1 + base1, +n1)   r2: [b*s2 + base2, +n2)   a, b in [0, N)
///   equal strides s: overlap iff some k = b - a in (-N, N) puts
///   x = base2 - base1 + k*s in the open interval (-n2, n1)
/// ```
fn overlap(r1: &Region, r2: &Region, n: u64) -> Option<(u64, u64)> {
    let span = |r: &Region| {
        (
            r.base as i128,
            r.base as i128 + (n as i128 - 1) * r.block_stride as i128 + r.bytes_per_block as i128,
        )
    };
    let ((lo1, hi1), (lo2, hi2)) = (span(r1), span(r2));
    if hi1 <= lo2 || hi2 <= lo1 {
        return None;
    }
    let (n1, n2) = (r1.bytes_per_block as i128, r2.bytes_per_block as i128);
    if r1.block_stride == r2.block_stride {
        let s = r1.block_stride as i128;
        let d = r2.base as i128 - r1.base as i128;
        let last = n as i128 - 1;
        // Smallest k with d + k*s > -n2, no smaller than -(N-1).
        let k = ((-n2 - d).div_euclid(s) + 1).max(-last);
        if k > last || d + k * s >= n1 {
            return None;
        }
        // Blocks a, b = a + k with both in range.
        let a = if k < 0 { -k } else { 0 };
        return Some((a as u64, (a + k) as u64));
    }
    // Unequal strides (rare): walk the blocks of r1, checking the one or two
    // blocks of r2 that can meet each.
    for a in 0..n {
        let start = r1.base as i128 + a as i128 * r1.block_stride as i128;
        let first = ((start - n2 + 1 - r2.base as i128).div_euclid(r2.block_stride as i128)).max(0);
        for b in first..=(first + 1).min(n as i128 - 1) {
            let other = r2.base as i128 + b * r2.block_stride as i128;
            if other < start + n1 && start < other + n2 {
                return Some((a, b as u64));
            }
        }
    }
    None
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

    #[test]
    fn regions_that_overlap_are_refused_and_interleaved_ones_accepted() {
        let r = |base, stride, bytes| Region {
            base,
            block_stride: stride,
            bytes_per_block: bytes,
        };
        // K and V interleaved in one tensor ([blocks, 2, ...]): no block shares bytes.
        assert!(EngineLayout::new(&[r(4096, 128, 64), r(4096 + 64, 128, 64)], 100, 128).is_ok());
        // Two tensors one after the other.
        assert!(EngineLayout::new(&[r(4096, 64, 64), r(4096 + 6400, 64, 64)], 100, 128).is_ok());
        // The second tensor starts inside the first: block 0 of one rewrites block 1 of the other.
        assert_eq!(
            EngineLayout::new(&[r(4096, 64, 64), r(4096 + 96, 64, 64)], 4, 128),
            Err(LayoutError::Overlap {
                first: 0,
                second: 1,
                block_a: 2,
                block_b: 0
            })
        );
        // Same base twice.
        assert!(matches!(
            EngineLayout::new(&[r(4096, 64, 32), r(4096, 64, 32)], 4, 64),
            Err(LayoutError::Overlap { .. })
        ));
        // Unequal strides that meet only at the end; and ones that never meet.
        assert!(matches!(
            EngineLayout::new(&[r(4096, 100, 10), r(4096 + 300, 30, 10)], 4, 20),
            Err(LayoutError::Overlap { .. })
        ));
        assert!(EngineLayout::new(&[r(4096, 100, 10), r(4096 + 10, 50, 10)], 4, 20).is_ok());
    }
}
