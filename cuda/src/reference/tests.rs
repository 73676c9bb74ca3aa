//! Reference-kernel tests: roundings against known values, RoPE re-rotation
//! against keys computed directly at the new position, segment copies.

use super::*;
use crate::segments::{gather, scatter, scatter_layers, PagedLayout, Region};
use proptest::prelude::*;

#[test]
fn f16_conversions_match_ieee() {
    // Known encodings: 1.0, -2.0, 65504 (max), 2^-14 (min normal), 2^-24 (min
    // subnormal), 1e-7 rounds to 2 * 2^-24, 70000 overflows to infinity.
    assert_eq!(f32_to_f16(1.0), 0x3c00);
    assert_eq!(f32_to_f16(-2.0), 0xc000);
    assert_eq!(f32_to_f16(65504.0), 0x7bff);
    assert_eq!(f32_to_f16(2f32.powi(-14)), 0x0400);
    assert_eq!(f32_to_f16(2f32.powi(-24)), 0x0001);
    assert_eq!(f32_to_f16(1e-7), 0x0002);
    assert_eq!(f32_to_f16(70000.0), 0x7c00);
    assert!(f16_to_f32(f32_to_f16(f32::NAN)).is_nan());
    // Ties go to even: 1 + 2^-11 is halfway between 1 and 1 + 2^-10.
    assert_eq!(f32_to_f16(1.0 + 2f32.powi(-11)), 0x3c00);
    assert_eq!(f32_to_f16(1.0 + 3.0 * 2f32.powi(-11)), 0x3c02);
    // Every finite f16 survives a round trip through f32.
    for h in 0..=u16::MAX {
        if h & 0x7c00 != 0x7c00 {
            assert_eq!(f32_to_f16(f16_to_f32(h)), h, "{h:#06x}");
        }
    }
}

#[test]
fn bf16_conversions_round_to_nearest_even() {
    assert_eq!(f32_to_bf16(1.0), 0x3f80);
    assert_eq!(bf16_to_f32(0x3f80), 1.0);
    // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: stays at 1 (even).
    assert_eq!(f32_to_bf16(1.0 + 2f32.powi(-8)), 0x3f80);
    assert_eq!(f32_to_bf16(1.0 + 3.0 * 2f32.powi(-8)), 0x3f82);
    assert!(bf16_to_f32(f32_to_bf16(f32::NAN)).is_nan());
}

/// RoPE applied directly at position `pos` to raw keys, in f64: the model's
/// formula, written independently of `rerotate_keys`.
fn rope_at(raw: &[f32], spec: &RopeSpec, pos: &[i64]) -> Vec<f32> {
    let (dim, half) = (spec.dim as usize, spec.rot_dim as usize / 2);
    let mut out = raw.to_vec();
    for (t, &p) in pos.iter().enumerate() {
        for h in 0..spec.heads as usize {
            let base = (t * spec.heads as usize + h) * dim;
            for i in 0..half {
                let (a, b) = if spec.neox {
                    (base + i, base + i + half)
                } else {
                    (base + 2 * i, base + 2 * i + 1)
                };
                let ang = p as f64 * f64::from(spec.inv_freq[i]);
                let (x, y) = (f64::from(raw[a]), f64::from(raw[b]));
                out[a] = (x * ang.cos() - y * ang.sin()) as f32;
                out[b] = (x * ang.sin() + y * ang.cos()) as f32;
            }
        }
    }
    out
}

fn raw_keys(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

fn to_bytes(v: &[f32], dtype: KeyDtype) -> Vec<u8> {
    v.iter()
        .flat_map(|&f| match dtype {
            KeyDtype::F32 => f.to_ne_bytes().to_vec(),
            KeyDtype::F16 => f32_to_f16(f).to_ne_bytes().to_vec(),
            KeyDtype::Bf16 => f32_to_bf16(f).to_ne_bytes().to_vec(),
        })
        .collect()
}

fn from_bytes(b: &[u8], dtype: KeyDtype) -> Vec<f32> {
    (0..b.len() / dtype.size()).map(|i| load(b, i, dtype)).collect()
}

/// Keys computed at p, re-rotated by d, equal keys computed at p + d.
fn check_rerotation(spec: &RopeSpec, dtype: KeyDtype, tol: f32) {
    let tokens = 48;
    let raw = raw_keys(tokens * spec.token_elems(), 7);
    let old: Vec<i64> = (0..tokens as i64).map(|t| 3 * t + 100).collect();
    // Deltas of both signs, up to a few thousand positions.
    let delta: Vec<i32> = (0..tokens as i32).map(|t| (t * 97 % 4001) - 1500).collect();
    let new: Vec<i64> = old.iter().zip(&delta).map(|(&p, &d)| p + i64::from(d)).collect();
    let mut keys = to_bytes(&rope_at(&raw, spec, &old), dtype);
    rerotate_keys(&mut keys, dtype, spec, &delta).unwrap();
    let got = from_bytes(&keys, dtype);
    let want = rope_at(&raw, spec, &new);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!((g - w).abs() <= tol, "{dtype:?} element {i}: {g} vs {w}");
    }
}

#[test]
fn rerotated_keys_equal_keys_computed_at_the_new_position() {
    // SmolLM2-135M: 3 KV heads of 64, theta 100000, rotate_half pairing.
    let smol = RopeSpec::standard(3, 64, 64, 100_000.0, true).unwrap();
    check_rerotation(&smol, KeyDtype::F32, 2e-3);
    check_rerotation(&smol, KeyDtype::F16, 2e-2);
    check_rerotation(&smol, KeyDtype::Bf16, 6e-2);
    // Interleaved (GPT-J) pairing with partial rotary: dims 32.. stay as they are.
    let gptj = RopeSpec::standard(2, 64, 32, 10_000.0, false).unwrap();
    check_rerotation(&gptj, KeyDtype::F32, 2e-3);
}

#[test]
fn rotating_back_restores_the_keys_and_zero_is_identity() {
    let spec = RopeSpec::standard(4, 128, 128, 500_000.0, true).unwrap();
    let raw = raw_keys(10 * spec.token_elems(), 3);
    let orig = to_bytes(&raw, KeyDtype::F32);
    let mut keys = orig.clone();
    rerotate_keys(&mut keys, KeyDtype::F32, &spec, &[0; 10]).unwrap();
    assert_eq!(keys, orig, "a zero delta changes nothing");
    let d: Vec<i32> = (0..10).map(|t| 1000 * t - 3000).collect();
    let back: Vec<i32> = d.iter().map(|x| -x).collect();
    rerotate_keys(&mut keys, KeyDtype::F32, &spec, &d).unwrap();
    rerotate_keys(&mut keys, KeyDtype::F32, &spec, &back).unwrap();
    for (g, w) in from_bytes(&keys, KeyDtype::F32).iter().zip(&raw) {
        assert!((g - w).abs() < 1e-3, "{g} vs {w}");
    }
}

#[test]
fn bad_rope_shapes_are_refused() {
    assert!(RopeSpec::standard(2, 64, 63, 10_000.0, true).is_err(), "odd rot_dim");
    assert!(RopeSpec::standard(2, 64, 66, 10_000.0, true).is_err(), "rot_dim > dim");
    assert!(RopeSpec::standard(0, 64, 64, 10_000.0, true).is_err(), "no heads");
    let spec = RopeSpec::standard(2, 8, 8, 10_000.0, true).unwrap();
    let mut keys = vec![0u8; 2 * 16 * 4 - 1];
    let e = rerotate_keys(&mut keys, KeyDtype::F32, &spec, &[1, 2]).unwrap_err();
    assert!(e.to_string().contains("need 128"), "{e}");
}

#[test]
fn gather_merges_contiguous_runs_and_places_regions_in_order() {
    // Two regions (K at 0, V at 10_000), 100-byte block slices, stride 100.
    // Blocks [3, 4, 9] gathered to staging 50_000, block_bytes 200:
    //   j=0 b3: K 300 -> 50_000, V 10_300 -> 50_100
    //   j=1 b4: K 400 -> 50_200, V 10_400 -> 50_300   (no merge: K/V interleave)
    //   j=2 b9: K 900 -> 50_400, V 10_900 -> 50_500
    let two = PagedLayout::new(
        vec![
            Region {
                base: 0,
                stride: 100,
                bytes: 100,
            },
            Region {
                base: 10_000,
                stride: 100,
                bytes: 100,
            },
        ],
        50,
    )
    .unwrap();
    let segs = gather(&two, &[3, 4, 9], 50_000).unwrap();
    let pairs: Vec<(u64, u64, u64)> = segs.iter().map(|s| (s.src, s.dst, s.len)).collect();
    assert_eq!(
        pairs,
        vec![
            (300, 50_000, 100),
            (10_300, 50_100, 100),
            (400, 50_200, 100),
            (10_400, 50_300, 100),
            (900, 50_400, 100),
            (10_900, 50_500, 100)
        ]
    );
    // One region: consecutive blocks 3, 4, 5 are one segment; 9 is another.
    let one = PagedLayout::new(
        vec![Region {
            base: 0,
            stride: 100,
            bytes: 100,
        }],
        50,
    )
    .unwrap();
    let segs = gather(&one, &[3, 4, 5, 9], 0).unwrap();
    assert_eq!(segs.len(), 2);
    assert_eq!((segs[0].src, segs[0].len), (300, 300));
    assert!(gather(&one, &[50], 0).is_err(), "block out of range");
    assert!(PagedLayout::new(
        vec![Region {
            base: 0,
            stride: 10,
            bytes: 20
        }],
        5
    )
    .is_err());
}

#[test]
fn copy_segments_refuses_overlap_and_out_of_range() {
    let src = vec![1u8; 100];
    let mut dst = vec![0u8; 100];
    let s = |src, dst, len| Segment { src, dst, len };
    assert!(copy_segments(&src, &mut dst, &[s(0, 0, 50), s(50, 40, 20)]).is_err());
    assert!(copy_segments(&src, &mut dst, &[s(90, 0, 20)]).is_err());
    assert!(copy_segments(&src, &mut dst, &[s(u64::MAX, 0, 2)]).is_err());
    assert_eq!(dst, vec![0u8; 100], "nothing copied on error");
}

proptest! {
    /// Gather then scatter through the reference puts every block back, and the
    /// staging buffer holds block j's regions in order.
    #[test]
    fn gather_scatter_round_trip(
        nregions in 1usize..4,
        stride_pad in 0u64..3,
        picks in proptest::collection::vec(0u64..20, 1..12),
    ) {
        let mut blocks = picks.clone();
        blocks.sort_unstable();
        blocks.dedup();
        let (nblocks, bytes) = (20u64, 16u64);
        let stride = bytes + stride_pad * 8;
        let regions: Vec<Region> = (0..nregions as u64)
            .map(|r| Region { base: r * nblocks * stride, stride, bytes })
            .collect();
        let layout = PagedLayout::new(regions.clone(), nblocks).unwrap();
        let engine: Vec<u8> = (0..nregions as u64 * nblocks * stride).map(|i| (i * 31 % 251) as u8).collect();
        let mut staging = vec![0u8; blocks.len() * layout.block_bytes() as usize];
        copy_segments(&engine, &mut staging, &gather(&layout, &blocks, 0).unwrap()).unwrap();
        for (j, &b) in blocks.iter().enumerate() {
            for (r, reg) in regions.iter().enumerate() {
                let at = j * layout.block_bytes() as usize + r * bytes as usize;
                let from = (reg.base + b * stride) as usize;
                prop_assert_eq!(&staging[at..at + bytes as usize], &engine[from..from + bytes as usize]);
            }
        }
        let mut back = vec![0u8; engine.len()];
        copy_segments(&staging, &mut back, &scatter(&layout, &blocks, 0).unwrap()).unwrap();
        for &b in &blocks {
            for reg in &regions {
                let from = (reg.base + b * stride) as usize;
                prop_assert_eq!(&back[from..from + bytes as usize], &engine[from..from + bytes as usize]);
            }
        }
    }

    /// A layer-by-layer scatter from tier blocks at arbitrary addresses writes
    /// exactly what one whole scatter writes, and layer l's segments only touch
    /// layer l's regions.
    #[test]
    fn layerwise_scatter_equals_the_whole_scatter(
        layers in 1usize..4,
        per_layer in 1usize..3,
        picks in proptest::collection::vec(0u64..16, 1..10),
    ) {
        let mut blocks = picks.clone();
        blocks.sort_unstable();
        blocks.dedup();
        let (nblocks, bytes) = (16u64, 24u64);
        let nregions = (layers * per_layer) as u64;
        let regions: Vec<Region> = (0..nregions)
            .map(|r| Region { base: r * nblocks * bytes, stride: bytes, bytes })
            .collect();
        let layout = PagedLayout::new(regions.clone(), nblocks).unwrap();
        let bb = layout.block_bytes();
        let tier: Vec<u8> = (0..blocks.len() as u64 * bb).map(|i| (i * 7 % 253) as u8).collect();
        let mut whole = vec![0u8; (nregions * nblocks * bytes) as usize];
        copy_segments(&tier, &mut whole, &scatter(&layout, &blocks, 0).unwrap()).unwrap();
        // Tier blocks placed in reverse order: staging addresses are per block.
        let n = blocks.len() as u64;
        let mut shuffled = vec![0u8; tier.len()];
        for j in 0..n {
            let (from, to) = ((j * bb) as usize, ((n - 1 - j) * bb) as usize);
            shuffled[to..to + bb as usize].copy_from_slice(&tier[from..from + bb as usize]);
        }
        let staging: Vec<u64> = (0..n).map(|j| (n - 1 - j) * bb).collect();
        let per = scatter_layers(&layout, layers, &blocks, &staging).unwrap();
        prop_assert_eq!(per.len(), layers);
        let mut layered = vec![0u8; whole.len()];
        for (l, segs) in per.iter().enumerate() {
            let lo = (l * per_layer) as u64 * nblocks * bytes;
            let hi = ((l + 1) * per_layer) as u64 * nblocks * bytes;
            for s in segs {
                prop_assert!(s.dst >= lo && s.dst + s.len <= hi, "layer {} wrote outside its regions", l);
            }
            copy_segments(&shuffled, &mut layered, segs).unwrap();
        }
        prop_assert_eq!(layered, whole);
    }
}

#[test]
fn layerwise_scatter_refuses_a_layer_count_that_does_not_divide_the_regions() {
    let regions: Vec<Region> = (0..6)
        .map(|r| Region {
            base: r * 1000,
            stride: 10,
            bytes: 10,
        })
        .collect();
    let layout = PagedLayout::new(regions, 100).unwrap();
    assert!(scatter_layers(&layout, 4, &[1], &[0]).is_err());
    assert!(scatter_layers(&layout, 0, &[1], &[0]).is_err());
    assert!(scatter_layers(&layout, 3, &[1, 2], &[0]).is_err(), "lengths differ");
    assert!(scatter_layers(&layout, 3, &[100], &[0]).is_err(), "block out of range");
    assert_eq!(scatter_layers(&layout, 3, &[1], &[0]).unwrap().len(), 3);
}
