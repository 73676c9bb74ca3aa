//! [`HeadIndex`]: the PQ index of one (layer, KV head): its codebook, one code
//! row per token, and the selection of a decode step. [`PqIndex`]: every
//! (layer, KV head) of a request.

use super::codebook::{Codebook, PqError, Train};
use super::select::{group_scores, topk, Budget};

/// The index of one (layer, KV head).
#[derive(Debug, Clone)]
pub struct HeadIndex {
    codebook: Codebook,
    /// `m` codes per token, in token order.
    codes: Vec<u8>,
}

/// Reused buffers of a selection (one per thread that selects).
#[derive(Default)]
pub struct Scratch {
    lut: Vec<f32>,
    raw: Vec<f32>,
    agg: Vec<f32>,
    order: Vec<u32>,
}

impl HeadIndex {
    /// Trains on the keys after the first `sink` tokens (attention sinks are
    /// always attended; they would pull centroids their way) and encodes every
    /// key. `keys`: one row of `dim` floats per token.
    pub fn build(keys: &[f32], dim: usize, sink: usize, t: &Train) -> Result<Self, PqError> {
        let n = keys.len() / dim.max(1);
        let from = if n > sink { sink } else { 0 };
        let codebook = Codebook::train(&keys[from * dim..n * dim], dim, t)?;
        let mut codes = Vec::with_capacity(n * codebook.subspaces());
        codebook.encode(&keys[..n * dim], &mut codes);
        Ok(Self { codebook, codes })
    }

    /// Tokens indexed.
    pub fn len(&self) -> usize {
        self.codes.len() / self.codebook.subspaces()
    }

    /// Whether no token is indexed.
    pub fn is_empty(&self) -> bool {
        self.codes.is_empty()
    }

    /// The codebook.
    pub fn codebook(&self) -> &Codebook {
        &self.codebook
    }

    /// The codes, `m` per token.
    pub fn codes(&self) -> &[u8] {
        &self.codes
    }

    /// Encodes tokens appended to the context with the existing centroids (no
    /// re-clustering).
    pub fn append(&mut self, keys: &[f32]) {
        self.codebook.encode(keys, &mut self.codes);
    }

    /// Bytes of codes and centroids.
    pub fn bytes(&self) -> usize {
        self.codes.len() + self.codebook.bytes()
    }

    /// The approximate combined scores of the candidates of `budget` for the
    /// group's `queries` (rows of `dim` floats), as [`group_scores`] makes them.
    pub fn candidate_scores<'s>(&self, queries: &[f32], budget: &Budget, s: &'s mut Scratch) -> &'s [f32] {
        let (dim, m, k) = (
            self.codebook.dim(),
            self.codebook.subspaces(),
            self.codebook.centroids_per_subspace(),
        );
        let cand = budget.candidates(self.len());
        let n = cand.len();
        let heads = queries.len() / dim;
        s.lut.resize(m * k, 0.0);
        s.raw.resize(heads * n, 0.0);
        s.agg.resize(n, 0.0);
        let codes = &self.codes[cand.start * m..cand.end * m];
        for (h, q) in queries.chunks_exact(dim).enumerate() {
            self.codebook.lut(q, &mut s.lut);
            self.codebook.scores(codes, &s.lut, &mut s.raw[h * n..(h + 1) * n]);
        }
        group_scores(&s.raw, n, 1.0 / (dim as f32).sqrt(), &mut s.agg);
        &s.agg[..n]
    }

    /// The tokens a decode step attends over for the group's `queries`: the
    /// sinks, the `budget.topk` best candidates by approximate score, the local
    /// window; ascending.
    pub fn select(&self, queries: &[f32], budget: &Budget, s: &mut Scratch) -> Vec<u32> {
        let n = self.len();
        let cand = budget.candidates(n);
        let start = cand.start as u32;
        self.candidate_scores(queries, budget, s);
        let chosen = topk(&s.agg[..cand.len()], budget.topk, &mut s.order);
        let mut out: Vec<u32> = (0..cand.start as u32).collect();
        out.extend(chosen.into_iter().map(|i| i + start));
        out.extend(cand.end as u32..n as u32);
        out
    }
}

/// The index of a request: one [`HeadIndex`] per (layer, KV head).
#[derive(Debug, Clone)]
pub struct PqIndex {
    layers: usize,
    kv_heads: usize,
    heads: Vec<HeadIndex>,
}

impl PqIndex {
    /// Builds from `keys(layer, head)`: that head's keys, one row of `dim` floats
    /// per token.
    pub fn build<'k>(
        layers: usize,
        kv_heads: usize,
        dim: usize,
        sink: usize,
        t: &Train,
        keys: impl Fn(usize, usize) -> &'k [f32],
    ) -> Result<Self, PqError> {
        let mut heads = Vec::with_capacity(layers * kv_heads);
        for l in 0..layers {
            for h in 0..kv_heads {
                heads.push(HeadIndex::build(keys(l, h), dim, sink, t)?);
            }
        }
        Ok(Self {
            layers,
            kv_heads,
            heads,
        })
    }

    /// Layers.
    pub fn layers(&self) -> usize {
        self.layers
    }

    /// KV heads per layer.
    pub fn kv_heads(&self) -> usize {
        self.kv_heads
    }

    /// The index of `(layer, head)`.
    pub fn head(&self, layer: usize, head: usize) -> &HeadIndex {
        &self.heads[layer * self.kv_heads + head]
    }

    /// The index of `(layer, head)`, to append to.
    pub fn head_mut(&mut self, layer: usize, head: usize) -> &mut HeadIndex {
        &mut self.heads[layer * self.kv_heads + head]
    }

    /// Bytes of every code and centroid.
    pub fn bytes(&self) -> usize {
        self.heads.iter().map(HeadIndex::bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::super::kmeans::Rng;
    use super::*;

    /// Keys in which a few tokens are planted to answer one query: PQ finds them.
    #[test]
    fn planted_keys_are_selected_and_sinks_and_window_always_are() {
        let (dim, n) = (64, 2000);
        let mut r = Rng::new(5);
        let mut keys: Vec<f32> = (0..n * dim).map(|_| r.unit() as f32 - 0.5).collect();
        let q: Vec<f32> = (0..dim).map(|i| if i % 2 == 0 { 1.0 } else { -1.0 }).collect();
        let planted = [100usize, 555, 1234, 1500];
        for &p in &planted {
            for (i, x) in keys[p * dim..(p + 1) * dim].iter_mut().enumerate() {
                *x = q[i] * 3.0;
            }
        }
        let idx = HeadIndex::build(&keys, dim, 32, &Train::default()).unwrap();
        assert_eq!(idx.len(), n);
        let b = Budget::of(n, 0.1, 32);
        let sel = idx.select(&q, &b, &mut Scratch::default());
        assert_eq!(sel.len(), b.sink + b.topk + b.local);
        assert!(sel.windows(2).all(|w| w[0] < w[1]));
        for &p in &planted {
            assert!(sel.contains(&(p as u32)), "planted token {p} not selected");
        }
        assert!((0..32).all(|t| sel.contains(&t)));
        assert!((n - b.local..n).all(|t| sel.contains(&(t as u32))));
        // Appended tokens are encoded with the same centroids.
        let mut idx = idx;
        let before = idx.codebook().clone();
        idx.append(&keys[..dim * 3]);
        assert_eq!(idx.len(), n + 3);
        assert_eq!(idx.codebook(), &before);
        assert_eq!(&idx.codes()[n * 2..], &idx.codes()[..6]);
    }
}
