//! CPU reference kernels: the exact semantics of the `.cu` kernels in
//! `cuda/kernels/`, used where no GPU is present and as the oracle GPU tests
//! compare against.
//!
//! Core items:
//! - [`copy_segments`]: what `tierkv_copy_segments` does, over byte offsets.
//! - [`rerotate_keys`]: what `tierkv_rerotate_keys` does, for fp32, fp16 and bf16
//!   keys; [`RopeSpec`] carries the model's RoPE parameters.
//! - [`f32_to_f16`] / [`f16_to_f32`] / [`f32_to_bf16`] / [`bf16_to_f32`]: the
//!   roundings the kernels use (round to nearest even, as PTX `cvt.rn`).
//!
//! Workflow of a re-rotation (key of token t, head h, pair i):
//! 1. read the pair (x, y): `neox` pairs (i, i + rot_dim/2), else (2i, 2i + 1);
//! 2. angle = delta[t] * inv_freq[i] in fp32;
//! 3. (x, y) <- (x cos - y sin, x sin + y cos), rounded back to the element type.

use crate::segments::Segment;
use crate::CudaError;

/// Element type of cached keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyDtype {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16.
    Bf16,
}

impl KeyDtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            KeyDtype::F32 => 4,
            KeyDtype::F16 | KeyDtype::Bf16 => 2,
        }
    }

    /// The kernel's `dtype` argument.
    pub fn code(self) -> i32 {
        match self {
            KeyDtype::F32 => 0,
            KeyDtype::F16 => 1,
            KeyDtype::Bf16 => 2,
        }
    }
}

/// A model's rotary position embedding, as far as re-rotation needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeSpec {
    /// KV heads per token.
    pub heads: u32,
    /// Head size (elements).
    pub dim: u32,
    /// Rotated dims (<= dim, even); the rest are not rotated.
    pub rot_dim: u32,
    /// `rotate_half` pairing (Llama, SmolLM2, Qwen) rather than interleaved (GPT-J).
    pub neox: bool,
    /// Frequency of each of the `rot_dim / 2` pairs, as the model computes it.
    pub inv_freq: Vec<f32>,
}

impl RopeSpec {
    /// Standard RoPE: `inv_freq[i] = 1 / base^(2i / rot_dim)`, computed in fp32 as
    /// Hugging Face's `_compute_default_rope_parameters` does.
    pub fn standard(heads: u32, dim: u32, rot_dim: u32, base: f32, neox: bool) -> Result<Self, CudaError> {
        let spec = Self {
            heads,
            dim,
            rot_dim,
            neox,
            inv_freq: (0..rot_dim / 2)
                .map(|i| 1.0 / base.powf((2 * i) as f32 / rot_dim as f32))
                .collect(),
        };
        spec.validate()?;
        Ok(spec)
    }

    /// Checks the shape: even `rot_dim` in 1..=dim, one frequency per pair.
    pub fn validate(&self) -> Result<(), CudaError> {
        if self.heads == 0
            || self.dim == 0
            || self.rot_dim == 0
            || !self.rot_dim.is_multiple_of(2)
            || self.rot_dim > self.dim
        {
            return Err(CudaError::InvalidArgument(format!(
                "RoPE shape heads={} dim={} rot_dim={}: need heads, dim > 0 and an even rot_dim in 2..=dim",
                self.heads, self.dim, self.rot_dim
            )));
        }
        if self.inv_freq.len() != self.rot_dim as usize / 2 {
            return Err(CudaError::InvalidArgument(format!(
                "{} RoPE frequencies for rot_dim {} (need rot_dim / 2)",
                self.inv_freq.len(),
                self.rot_dim
            )));
        }
        Ok(())
    }

    /// Elements per token (all heads).
    pub fn token_elems(&self) -> usize {
        self.heads as usize * self.dim as usize
    }
}

/// Copies each segment `len` bytes from `src[src_off..]` to `dst[dst_off..]`.
/// Out-of-range segments are an error and nothing is copied; overlapping
/// destinations are an error too (the kernel's result would depend on ordering).
pub fn copy_segments(src: &[u8], dst: &mut [u8], segs: &[Segment]) -> Result<(), CudaError> {
    let mut spans: Vec<(u64, u64)> = Vec::with_capacity(segs.len());
    for s in segs {
        let (se, de) = (s.src.checked_add(s.len), s.dst.checked_add(s.len));
        match (se, de) {
            (Some(se), Some(de)) if se <= src.len() as u64 && de <= dst.len() as u64 => {}
            _ => return Err(CudaError::InvalidArgument(format!("segment {s:?} out of range"))),
        }
        spans.push((s.dst, s.dst + s.len));
    }
    spans.sort_unstable();
    if spans.windows(2).any(|w| w[0].1 > w[1].0) {
        return Err(CudaError::InvalidArgument(
            "segments overlap at their destinations".into(),
        ));
    }
    for s in segs {
        let (a, b, l) = (s.src as usize, s.dst as usize, s.len as usize);
        dst[b..b + l].copy_from_slice(&src[a..a + l]);
    }
    Ok(())
}

/// Rotates the keys of `delta.len()` tokens (`keys`: `[token][head][dim]` of
/// `dtype`, native endian) by their position deltas.
pub fn rerotate_keys(keys: &mut [u8], dtype: KeyDtype, spec: &RopeSpec, delta: &[i32]) -> Result<(), CudaError> {
    spec.validate()?;
    let want = delta.len() * spec.token_elems() * dtype.size();
    if keys.len() != want {
        return Err(CudaError::InvalidArgument(format!(
            "{} key bytes for {} tokens of {} elements of {} bytes (need {want})",
            keys.len(),
            delta.len(),
            spec.token_elems(),
            dtype.size()
        )));
    }
    let dim = spec.dim as usize;
    let row = dim * dtype.size();
    for (t, &d) in delta.iter().enumerate() {
        let table = rotation_table(spec, d);
        for h in 0..spec.heads as usize {
            let at = (t * spec.heads as usize + h) * row;
            rotate_row(&mut keys[at..at + row], dtype, spec, &table);
        }
    }
    Ok(())
}

/// `(sin, cos)` of `delta * inv_freq[i]` for each pair `i`, in fp32: what
/// [`rerotate_keys`] computes per token, for callers that rotate many rows by one
/// delta (a reused run of tokens shares its shift).
pub fn rotation_table(spec: &RopeSpec, delta: i32) -> Vec<(f32, f32)> {
    spec.inv_freq.iter().map(|&f| (delta as f32 * f).sin_cos()).collect()
}

/// Rotates one key row (`dim` elements of one head of one token) by the angles of
/// `table` (from [`rotation_table`]); the dims past `rot_dim` are left as they are.
/// `row` must hold exactly `spec.dim` elements of `dtype` (checked by callers;
/// a short row panics).
pub fn rotate_row(row: &mut [u8], dtype: KeyDtype, spec: &RopeSpec, table: &[(f32, f32)]) {
    let half = spec.rot_dim as usize / 2;
    for (i, &(s, c)) in table.iter().enumerate().take(half) {
        let (ia, ib) = if spec.neox { (i, i + half) } else { (2 * i, 2 * i + 1) };
        let (x, y) = (load(row, ia, dtype), load(row, ib, dtype));
        store(row, ia, dtype, x * c - y * s);
        store(row, ib, dtype, x * s + y * c);
    }
}

fn load(keys: &[u8], i: usize, dtype: KeyDtype) -> f32 {
    match dtype {
        KeyDtype::F32 => f32::from_ne_bytes(keys[i * 4..i * 4 + 4].try_into().unwrap_or([0; 4])),
        KeyDtype::F16 => f16_to_f32(u16::from_ne_bytes([keys[i * 2], keys[i * 2 + 1]])),
        KeyDtype::Bf16 => bf16_to_f32(u16::from_ne_bytes([keys[i * 2], keys[i * 2 + 1]])),
    }
}

fn store(keys: &mut [u8], i: usize, dtype: KeyDtype, v: f32) {
    match dtype {
        KeyDtype::F32 => keys[i * 4..i * 4 + 4].copy_from_slice(&v.to_ne_bytes()),
        KeyDtype::F16 => keys[i * 2..i * 2 + 2].copy_from_slice(&f32_to_f16(v).to_ne_bytes()),
        KeyDtype::Bf16 => keys[i * 2..i * 2 + 2].copy_from_slice(&f32_to_bf16(v).to_ne_bytes()),
    }
}

/// bfloat16 to fp32 (exact).
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// fp32 to bfloat16, round to nearest even; NaN stays NaN.
pub fn f32_to_bf16(f: f32) -> u16 {
    let u = f.to_bits();
    if u & 0x7fff_ffff > 0x7f80_0000 {
        return ((u >> 16) | 0x40) as u16;
    }
    (u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

/// IEEE binary16 to fp32 (exact, subnormals included).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h & 0x8000) << 16;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x3ff);
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: normalise; value = man * 2^-24.
            let (mut e, mut m) = (113u32, man);
            while m & 0x400 == 0 {
                m <<= 1;
                e -= 1;
            }
            sign | (e << 23) | ((m & 0x3ff) << 13)
        }
        (31, _) => sign | 0x7f80_0000 | (man << 13),
        _ => sign | ((exp + 112) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

/// fp32 to IEEE binary16, round to nearest even (as `cvt.rn.f16.f32`); overflow
/// gives infinity, NaN stays NaN.
pub fn f32_to_f16(f: f32) -> u16 {
    let x = f.to_bits();
    let sign = ((x >> 16) & 0x8000) as u16;
    let exp = ((x >> 23) & 0xff) as i32;
    let man = x & 0x7f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if man != 0 { 0x200 | (man >> 13) as u16 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 31 {
        return sign | 0x7c00;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        // Subnormal result: the unit is 2^-24; shift the full mantissa down.
        let m = man | 0x80_0000;
        let shift = (14 - e) as u32;
        let (q, rem, halfway) = (m >> shift, m & ((1 << shift) - 1), 1u32 << (shift - 1));
        let r = q + u32::from(rem > halfway || (rem == halfway && q & 1 == 1));
        return sign | r as u16;
    }
    let r = ((e as u32) << 10) | (man >> 13);
    let rem = man & 0x1fff;
    // A carry out of the mantissa correctly bumps the exponent (up to infinity).
    sign | (r + u32::from(rem > 0x1000 || (rem == 0x1000 && r & 1 == 1))) as u16
}

#[cfg(test)]
mod tests;
