//! MinHash signatures of token sequences and an LSH band index over them.
//!
//! Core types: [`Signature`] (one-permutation MinHash over token 4-grams, 64 bins,
//! densified) and [`LshIndex`] (16 bands of 4 bins; a prompt is a candidate when one
//! band matches exactly).
//!
//! Workflow:
//! 1. [`Signature::of`] hashes every 4-gram once (xxh3) and keeps the minimum per
//!    bin: O(n) for n tokens, not O(n * bins) as with one hash per bin.
//! 2. [`LshIndex::insert`] files the prompt under one key per band.
//! 3. [`LshIndex::probe`] collects the prompts sharing a band with the query;
//!    [`Signature::similarity`] estimates their Jaccard similarity.
//!
//! A pair with Jaccard similarity s shares at least one band with probability
//! `1 - (1 - s^4)^16`: 0.12 at s = 0.3, 0.64 at 0.5, 0.98 at 0.7.
//!
//! ```text
//!   tokens  t0 t1 t2 t3 t4 ...      4-grams (t0..t3) (t1..t4) ...
//!   hash h  bin = h >> 58 (64 bins), value = low 32 bits, min per bin
//!   bands   [b0 b1 b2 b3] [b4 .. b7] ... [b60 .. b63]  -> 16 bucket keys
//! ```

use std::collections::HashMap;

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Tokens per shingle.
pub const SHINGLE: usize = 4;
/// Bins of a signature.
pub const BINS: usize = 64;
/// Bins per LSH band.
pub const ROWS: usize = 4;
/// LSH bands.
pub const BANDS: usize = BINS / ROWS;
/// Entries of one bucket a probe looks at (the newest).
pub const PROBE_PER_BUCKET: usize = 64;
const SEED: u64 = 0x7469_6572_6b76_0001;

/// A MinHash signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature(pub [u32; BINS]);

impl Signature {
    /// The signature of `tokens`; `None` for fewer than [`SHINGLE`] tokens.
    pub fn of(tokens: &[u32]) -> Option<Self> {
        if tokens.len() < SHINGLE {
            return None;
        }
        let mut bins = [u32::MAX; BINS];
        let mut filled = [false; BINS];
        let mut bytes = [0u8; SHINGLE * 4];
        for w in tokens.windows(SHINGLE) {
            for (i, t) in w.iter().enumerate() {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&t.to_le_bytes());
            }
            let h = xxh3_64_with_seed(&bytes, SEED);
            let bin = (h >> 58) as usize;
            let v = h as u32;
            if v <= bins[bin] {
                bins[bin] = v;
                filled[bin] = true;
            }
        }
        // Densification: an empty bin borrows the next filled bin's value, mixed
        // with its own index (so that two empty bins do not look equal by accident
        // of one shared donor), which keeps the similarity estimate unbiased.
        let mut out = bins;
        for i in 0..BINS {
            if !filled[i] {
                let donor = (1..BINS).map(|k| (i + k) % BINS).find(|&j| filled[j]);
                if let Some(j) = donor {
                    let mixed = xxh3_64_with_seed(&bins[j].to_le_bytes(), SEED ^ i as u64);
                    out[i] = mixed as u32;
                }
            }
        }
        Some(Self(out))
    }

    /// Fraction of equal bins: an estimate of the Jaccard similarity of the two
    /// 4-gram sets.
    pub fn similarity(&self, other: &Signature) -> f32 {
        let eq = self.0.iter().zip(other.0.iter()).filter(|(a, b)| a == b).count();
        eq as f32 / BINS as f32
    }

    fn band_keys(&self) -> [u64; BANDS] {
        let mut keys = [0u64; BANDS];
        for (b, key) in keys.iter_mut().enumerate() {
            let mut bytes = [0u8; ROWS * 4];
            for r in 0..ROWS {
                bytes[r * 4..r * 4 + 4].copy_from_slice(&self.0[b * ROWS + r].to_le_bytes());
            }
            *key = xxh3_64_with_seed(&bytes, SEED.wrapping_add(b as u64));
        }
        keys
    }
}

/// Band buckets: band key -> prompt ids.
#[derive(Debug, Default)]
pub struct LshIndex {
    buckets: HashMap<u64, Vec<u64>>,
}

impl LshIndex {
    /// Files prompt `id` under the band keys of `sig`.
    pub fn insert(&mut self, id: u64, sig: &Signature) {
        for k in sig.band_keys() {
            self.buckets.entry(k).or_default().push(id);
        }
    }

    /// Removes prompt `id` (filed under `sig`).
    pub fn remove(&mut self, id: u64, sig: &Signature) {
        for k in sig.band_keys() {
            if let Some(v) = self.buckets.get_mut(&k) {
                v.retain(|&x| x != id);
                if v.is_empty() {
                    self.buckets.remove(&k);
                }
            }
        }
    }

    /// Distinct prompts sharing at least one band with `sig`, in ascending id order
    /// (deterministic): the newest [`PROBE_PER_BUCKET`] of each bucket, so that a
    /// template shared by thousands of cached prompts does not make every lookup
    /// scan them all.
    pub fn probe(&self, sig: &Signature) -> Vec<u64> {
        let mut out: Vec<u64> = sig
            .band_keys()
            .iter()
            .filter_map(|k| self.buckets.get(k))
            .flat_map(|v| v.iter().rev().take(PROBE_PER_BUCKET))
            .copied()
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}
