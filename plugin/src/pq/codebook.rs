//! [`Codebook`]: product quantization of keys. The head dimension is split into
//! `m` equal sub-spaces; each is clustered into `2^bits` centroids; a key is
//! stored as `m` one-byte codes. A query's lookup table holds `q_j . c` for
//! every sub-space `j` and centroid `c`, so a key's approximate score `q . k` is
//! the sum of `m` table entries.

use super::kmeans::{kmeans, nearest, Rng};

/// Why a codebook cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PqError {
    /// The head dimension does not split into the sub-spaces.
    #[error("head dimension {dim} does not split into {m} equal sub-spaces")]
    Split {
        /// Head dimension.
        dim: usize,
        /// Sub-spaces.
        m: usize,
    },
    /// Bits per code out of 1..=8.
    #[error("{0} bits per code: 1 to 8 are supported")]
    Bits(u8),
    /// No keys to train on.
    #[error("no keys to train on")]
    Empty,
}

/// How a codebook is trained.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Train {
    /// Sub-spaces `m`.
    pub subspaces: usize,
    /// Bits per code `b` (`2^b` centroids per sub-space).
    pub bits: u8,
    /// Keys sampled for training at most (all keys are encoded).
    pub sample: usize,
    /// Lloyd iterations at most.
    pub iterations: usize,
    /// Seed of the seeding and the sample.
    pub seed: u64,
}

impl Default for Train {
    /// PQCache's: m = 2, b = 6.
    fn default() -> Self {
        Self {
            subspaces: 2,
            bits: 6,
            sample: 8192,
            iterations: 25,
            seed: 0x7ec0_7ec0,
        }
    }
}

/// Centroids of every sub-space.
#[derive(Debug, Clone, PartialEq)]
pub struct Codebook {
    dim: usize,
    m: usize,
    k: usize,
    /// `[m][k][dim / m]`.
    centroids: Vec<f32>,
    /// Squared norms, `[m][k]`.
    norms: Vec<f32>,
}

impl Codebook {
    /// Trains on `keys` (rows of `dim` floats): a sample of at most `t.sample`
    /// rows (evenly spaced: deterministic, and it spans the whole context).
    pub fn train(keys: &[f32], dim: usize, t: &Train) -> Result<Self, PqError> {
        let m = t.subspaces;
        if m == 0 || dim == 0 || !dim.is_multiple_of(m) {
            return Err(PqError::Split { dim, m });
        }
        if !(1..=8).contains(&t.bits) {
            return Err(PqError::Bits(t.bits));
        }
        let n = keys.len() / dim;
        if n == 0 {
            return Err(PqError::Empty);
        }
        let (k, ds) = (1usize << t.bits, dim / m);
        let rows: Vec<usize> = if n <= t.sample.max(1) {
            (0..n).collect()
        } else {
            (0..t.sample).map(|i| i * n / t.sample).collect()
        };
        let mut centroids = Vec::with_capacity(m * k * ds);
        let mut sub = Vec::with_capacity(rows.len() * ds);
        let mut rng = Rng::new(t.seed);
        for j in 0..m {
            sub.clear();
            for &r in &rows {
                sub.extend_from_slice(&keys[r * dim + j * ds..r * dim + (j + 1) * ds]);
            }
            let c = kmeans(&sub, ds, k, t.iterations, rng.next_u64());
            centroids.extend_from_slice(&c.centroids);
        }
        let norms = centroids
            .chunks_exact(ds)
            .map(|c| c.iter().map(|x| x * x).sum())
            .collect();
        Ok(Self {
            dim,
            m,
            k,
            centroids,
            norms,
        })
    }

    /// Head dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Sub-spaces (codes per key).
    pub fn subspaces(&self) -> usize {
        self.m
    }

    /// Centroids per sub-space.
    pub fn centroids_per_subspace(&self) -> usize {
        self.k
    }

    /// Bytes of the centroids.
    pub fn bytes(&self) -> usize {
        self.centroids.len() * 4
    }

    fn ds(&self) -> usize {
        self.dim / self.m
    }

    /// Appends the codes of `keys` (rows of `dim` floats) to `out`, `m` per key.
    pub fn encode(&self, keys: &[f32], out: &mut Vec<u8>) {
        let ds = self.ds();
        for key in keys.chunks_exact(self.dim) {
            for j in 0..self.m {
                let cents = &self.centroids[j * self.k * ds..(j + 1) * self.k * ds];
                let norms = &self.norms[j * self.k..(j + 1) * self.k];
                out.push(nearest(&key[j * ds..(j + 1) * ds], cents, norms) as u8);
            }
        }
    }

    /// The key that `codes` (one key's `m`) stand for.
    pub fn reconstruct(&self, codes: &[u8]) -> Vec<f32> {
        let ds = self.ds();
        codes
            .iter()
            .enumerate()
            .flat_map(|(j, &c)| self.centroids[(j * self.k + c as usize) * ds..][..ds].iter().copied())
            .collect()
    }

    /// The lookup table of `query` (`dim` floats) into `lut` (`m * k`):
    /// `lut[j * k + c] = q_j . centroid(j, c)`.
    pub fn lut(&self, query: &[f32], lut: &mut [f32]) {
        let ds = self.ds();
        for j in 0..self.m {
            let q = &query[j * ds..(j + 1) * ds];
            for c in 0..self.k {
                let cent = &self.centroids[(j * self.k + c) * ds..][..ds];
                lut[j * self.k + c] = q.iter().zip(cent).map(|(a, b)| a * b).sum();
            }
        }
    }

    /// Approximate `q . key` of every key of `codes` (`m` per key) from `lut`,
    /// into `out`.
    pub fn scores(&self, codes: &[u8], lut: &[f32], out: &mut [f32]) {
        let k = self.k;
        if self.m == 2 {
            let (l0, l1) = lut.split_at(k);
            for (o, c) in out.iter_mut().zip(codes.chunks_exact(2)) {
                *o = l0[c[0] as usize] + l1[c[1] as usize];
            }
            return;
        }
        for (o, c) in out.iter_mut().zip(codes.chunks_exact(self.m)) {
            *o = c.iter().enumerate().map(|(j, &x)| lut[j * k + x as usize]).sum();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn keys(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut r = super::Rng::new(seed);
        (0..n * dim).map(|_| (r.unit() as f32 - 0.5) * 4.0).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// The table's score of a key is exactly the score of its reconstruction.
        #[test]
        fn lut_scores_equal_the_exact_scores_of_the_reconstructions(
            n in 1usize..200, m in prop::sample::select(vec![1usize, 2, 4]), bits in 1u8..7, seed in any::<u64>(),
        ) {
            let dim = 8;
            let ks = keys(n, dim, seed);
            let t = Train { subspaces: m, bits, sample: 64, iterations: 10, seed };
            let cb = Codebook::train(&ks, dim, &t).unwrap();
            let mut codes = Vec::new();
            cb.encode(&ks, &mut codes);
            prop_assert_eq!(codes.len(), n * m);
            prop_assert!(codes.iter().all(|&c| (c as usize) < (1 << bits)));
            let q = keys(1, dim, seed ^ 1);
            let mut lut = vec![0.0; m << bits];
            cb.lut(&q, &mut lut);
            let mut s = vec![0.0; n];
            cb.scores(&codes, &lut, &mut s);
            for (i, c) in codes.chunks(m).enumerate() {
                let r = cb.reconstruct(c);
                let exact: f32 = q.iter().zip(&r).map(|(a, b)| a * b).sum();
                prop_assert!((s[i] - exact).abs() <= 1e-4 * (1.0 + exact.abs()), "{} vs {}", s[i], exact);
            }
        }
    }

    #[test]
    fn bad_shapes_are_refused_and_training_is_deterministic() {
        let ks = keys(300, 64, 3);
        assert_eq!(
            Codebook::train(
                &ks,
                64,
                &Train {
                    subspaces: 3,
                    ..Train::default()
                }
            ),
            Err(PqError::Split { dim: 64, m: 3 })
        );
        assert_eq!(
            Codebook::train(
                &ks,
                64,
                &Train {
                    bits: 9,
                    ..Train::default()
                }
            ),
            Err(PqError::Bits(9))
        );
        assert_eq!(Codebook::train(&[], 64, &Train::default()), Err(PqError::Empty));
        let a = Codebook::train(&ks, 64, &Train::default()).unwrap();
        assert_eq!(a, Codebook::train(&ks, 64, &Train::default()).unwrap());
        assert_eq!(
            (a.subspaces(), a.centroids_per_subspace(), a.bytes()),
            (2, 64, 64 * 64 * 4)
        );
    }
}
