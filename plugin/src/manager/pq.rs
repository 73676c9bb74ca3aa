//! PQ retrieval through the facade: an index of a request's keys
//! ([`Manager::pq_build`]), and each decode step's tokens ([`PqHandle::topk`]),
//! counted under `tierkv_pq_*`.
//!
//! Keys and queries are given as the engine has them, fp32, `[layer][kv_head]
//! [token][head_dim]` and `[kv_head][group][head_dim]`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use super::{Manager, ManagerError};
pub use crate::pq::PqSettings;
use crate::pq::{Budget, PqIndex, PqStats, Scratch};

/// Largest shapes accepted (far above any model: a bound against bad callers).
const MAX_LAYERS: usize = 1024;
const MAX_HEADS: usize = 1024;
const MAX_DIM: usize = 1024;

/// A request's PQ index (every layer and KV head), built once, appended to as
/// the context grows.
pub struct PqHandle {
    index: Mutex<(PqIndex, Scratch)>,
    settings: PqSettings,
    /// Layers, KV heads, head dimension (fixed at build).
    shape: (usize, usize, usize),
    stats: Arc<PqStats>,
    /// What this index adds to the live gauges.
    counted: Mutex<(u64, u64)>,
}

/// Shape and size of a [`PqHandle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PqInfo {
    /// Layers.
    pub layers: usize,
    /// KV heads per layer.
    pub kv_heads: usize,
    /// Head dimension.
    pub head_dim: usize,
    /// Tokens indexed.
    pub tokens: usize,
    /// Bytes of codes and centroids.
    pub bytes: usize,
}

fn invalid(what: String) -> ManagerError {
    ManagerError::InvalidArgument(what)
}

impl Manager {
    /// The PQ settings of this manager (`TIERKV_PQ_*`).
    pub fn pq_settings(&self) -> PqSettings {
        self.config.pq
    }

    /// Builds the PQ index of `tokens` keys per (layer, KV head), given as
    /// `[layer][kv_head][token][head_dim]` fp32; `settings` overrides the
    /// manager's.
    pub fn pq_build(
        &self,
        keys: &[f32],
        layers: usize,
        kv_heads: usize,
        tokens: usize,
        head_dim: usize,
        settings: Option<PqSettings>,
    ) -> Result<PqHandle, ManagerError> {
        let s = settings.unwrap_or(self.config.pq);
        if !(1..=MAX_LAYERS).contains(&layers) || !(1..=MAX_HEADS).contains(&kv_heads) {
            return Err(invalid(format!("{layers} layers of {kv_heads} KV heads")));
        }
        if !(1..=MAX_DIM).contains(&head_dim) || tokens == 0 {
            return Err(invalid(format!("{tokens} tokens of head dimension {head_dim}")));
        }
        let per_head = tokens
            .checked_mul(head_dim)
            .ok_or_else(|| invalid("too many tokens".into()))?;
        if keys.len() != per_head * layers * kv_heads {
            return Err(invalid(format!(
                "{} key floats for {layers} x {kv_heads} x {tokens} x {head_dim}",
                keys.len()
            )));
        }
        if !(s.budget > 0.0 && s.budget <= 1.0) {
            return Err(invalid(format!("budget {}", s.budget)));
        }
        let t0 = Instant::now();
        let index = PqIndex::build(layers, kv_heads, head_dim, s.sink, &s.train, |l, h| {
            let at = (l * kv_heads + h) * per_head;
            &keys[at..at + per_head]
        })
        .map_err(|e| invalid(e.to_string()))?;
        let stats = Arc::clone(&self.pq_stats);
        stats.builds.fetch_add(1, Ordering::Relaxed);
        stats.build_latency.observe_ns(t0.elapsed().as_nanos() as u64);
        let handle = PqHandle {
            index: Mutex::new((index, Scratch::default())),
            settings: s,
            shape: (layers, kv_heads, head_dim),
            stats,
            counted: Mutex::new((0, 0)),
        };
        handle.recount();
        Ok(handle)
    }
}

impl Manager {
    /// Builds the PQ index of the first `tokens` tokens of the stored blocks
    /// `hashes` (a request's blocks, in order): every block loaded from the host
    /// tier and verified, its keys read through the registered token layout
    /// (`register_token_layout`: which rows are keys, their dtype), in fp32.
    pub fn pq_build_blocks(
        &self,
        hashes: &[crate::prefix::BlockHash],
        tokens: usize,
        settings: Option<PqSettings>,
    ) -> Result<PqHandle, ManagerError> {
        let bt = self.block_tokens();
        if tokens == 0 || tokens > hashes.len().saturating_mul(bt) {
            return Err(invalid(format!(
                "{tokens} tokens of {} blocks of {bt} tokens",
                hashes.len()
            )));
        }
        let guard = self.token_layout.read();
        let Some(tl) = guard.as_ref() else {
            return Err(ManagerError::State(
                "no token layout registered (tierkv_register_token_layout)",
            ));
        };
        let Some((layers, heads, dim)) = tl.key_shape() else {
            return Err(invalid("the token layout's key rows differ in heads".into()));
        };
        let total = tokens;
        let mut keys = vec![0f32; layers * heads * total * dim];
        let block_bytes = self.movement.host().block_bytes() as usize;
        let mut buf = vec![0u8; block_bytes];
        for (i, &h) in hashes.iter().enumerate().take(tokens.div_ceil(bt)) {
            let o = self.movement.host().load(h, &mut [&mut buf[..]])?;
            if o != crate::tier::LoadOutcome::Loaded {
                return Err(ManagerError::Unavailable(format!(
                    "block {i} of the request is not in the host tier ({o:?})"
                )));
            }
            let n = bt.min(total - i * bt);
            tl.read_keys(&buf, n, &mut keys, total, i * bt);
        }
        drop(guard);
        self.pq_build(&keys, layers, heads, total, dim, settings)
    }
}

impl PqHandle {
    /// Layers, KV heads, head dimension (no lock: a selection's shape check).
    pub fn shape(&self) -> (usize, usize, usize) {
        self.shape
    }

    /// Shape and size.
    pub fn info(&self) -> PqInfo {
        let g = self.index.lock();
        let ix = &g.0;
        PqInfo {
            layers: self.shape.0,
            kv_heads: self.shape.1,
            head_dim: self.shape.2,
            tokens: ix.head(0, 0).len(),
            bytes: ix.bytes(),
        }
    }

    /// The settings it was built with.
    pub fn settings(&self) -> &PqSettings {
        &self.settings
    }

    fn recount(&self) {
        let (bytes, tokens) = {
            let g = self.index.lock();
            (g.0.bytes() as u64, g.0.head(0, 0).len() as u64)
        };
        let mut c = self.counted.lock();
        let s = &self.stats;
        s.index_bytes.fetch_add(bytes, Ordering::Relaxed);
        s.index_bytes.fetch_sub(c.0, Ordering::Relaxed);
        s.index_tokens.fetch_add(tokens, Ordering::Relaxed);
        s.index_tokens.fetch_sub(c.1, Ordering::Relaxed);
        *c = (bytes, tokens);
    }

    /// Encodes `n` tokens appended to the context (`[layer][kv_head][n][head_dim]`)
    /// with the existing centroids.
    pub fn append(&self, keys: &[f32], n: usize) -> Result<(), ManagerError> {
        {
            let mut g = self.index.lock();
            let ix = &mut g.0;
            let (layers, heads) = (ix.layers(), ix.kv_heads());
            let per = n
                .checked_mul(self.shape.2)
                .ok_or_else(|| invalid("too many tokens".into()))?;
            if keys.len() != per * layers * heads {
                return Err(invalid(format!(
                    "{} key floats for {layers} x {heads} x {n} x {}",
                    keys.len(),
                    self.shape.2
                )));
            }
            for l in 0..layers {
                for h in 0..heads {
                    let at = (l * heads + h) * per;
                    ix.head_mut(l, h).append(&keys[at..at + per]);
                }
            }
        }
        self.recount();
        Ok(())
    }

    /// The tokens layer `layer` attends over for this decode step, per KV head:
    /// the sinks, the top-k by PQ score for the group's `queries`
    /// (`[kv_head][group][head_dim]`), the local window; ascending, into
    /// `out[h]`. `budget` overrides the index's fraction.
    pub fn topk(
        &self,
        layer: usize,
        queries: &[f32],
        group: usize,
        budget: Option<f64>,
        out: &mut [Vec<u32>],
    ) -> Result<(), ManagerError> {
        let t0 = Instant::now();
        let mut g = self.index.lock();
        let (ix, scratch) = &mut *g;
        let heads = ix.kv_heads();
        if layer >= ix.layers() {
            return Err(invalid(format!("layer {layer} of {}", ix.layers())));
        }
        if group == 0 || group > MAX_HEADS || queries.len() != heads * group * self.shape.2 || out.len() != heads {
            return Err(invalid(format!(
                "{} query floats and {} outputs for {heads} KV heads x {group} x {}",
                queries.len(),
                out.len(),
                self.shape.2
            )));
        }
        let fraction = budget.unwrap_or(self.settings.budget);
        if !(fraction > 0.0 && fraction <= 1.0) {
            return Err(invalid(format!("budget {fraction}")));
        }
        let per = group * self.shape.2;
        let mut selected = 0;
        for (h, o) in out.iter_mut().enumerate() {
            let head = ix.head(layer, h);
            let b = Budget::of(head.len(), fraction, self.settings.sink);
            *o = head.select(&queries[h * per..(h + 1) * per], &b, scratch);
            selected += o.len();
        }
        self.stats.topk_calls.fetch_add(1, Ordering::Relaxed);
        self.stats.selected_tokens.fetch_add(selected as u64, Ordering::Relaxed);
        self.stats.topk_latency.observe_ns(t0.elapsed().as_nanos() as u64);
        Ok(())
    }
}

impl Drop for PqHandle {
    fn drop(&mut self) {
        let c = *self.counted.lock();
        self.stats.index_bytes.fetch_sub(c.0, Ordering::Relaxed);
        self.stats.index_tokens.fetch_sub(c.1, Ordering::Relaxed);
    }
}
