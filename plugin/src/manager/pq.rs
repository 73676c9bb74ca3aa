//! PQ retrieval through the facade: an index of a request's keys
//! ([`Manager::pq_build`], or [`Manager::pq_build_blocks`] from its stored
//! blocks), each decode step's tokens ([`PqHandle::topk`]) and their K and V
//! rows ([`Manager::pq_gather`], through the index's LFU block cache), counted
//! under `tierkv_pq_*`.
//!
//! Keys and queries are given as the engine has them, fp32, `[layer][kv_head]
//! [token][head_dim]` and `[kv_head][group][head_dim]`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use super::{Manager, ManagerError};
pub use crate::pq::PqSettings;
use crate::pq::{BlockCache, Budget, PqIndex, PqStats, Scratch};
use crate::prefix::BlockHash;
use crate::semantic::synth::TokenLayout;
use crate::tier::checksum::FusedHasher;
use crate::tier::LoadOutcome;

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
    /// The stored blocks it was built from (gathers read them).
    source: Option<Source>,
    /// Hot blocks of `source`, LFU.
    cache: Mutex<BlockCache>,
}

/// A request's stored blocks, as an index built from them knows them.
struct Source {
    hashes: Vec<BlockHash>,
    /// Tokens held by the blocks (the rest of the context is the engine's).
    tokens: usize,
    layout: TokenLayout,
    /// Each region's `(offset, bytes)` in a block's payload.
    spans: Vec<(usize, usize)>,
    /// Digest of each (block, region) of the verified blocks read at build,
    /// `[block * regions + region]`: a gather reads one region of a block from
    /// the host tier and checks it against this.
    sums: Vec<u64>,
    /// Elements of a value row.
    value_dim: usize,
}

impl Source {
    /// The digest seed of block `b`'s regions (bound to its identity).
    fn seed(&self, b: usize) -> u64 {
        self.hashes[b].fold64() ^ 0x9e37_79b9_7f4a_7c15
    }

    /// The block-cache key of region `r` of block `b`.
    fn key(&self, b: usize, r: usize) -> u32 {
        (b * self.spans.len() + r) as u32
    }

    /// A block cache of `bytes` (whole regions: as many as the largest fits),
    /// and the first block whose regions the build keeps in it.
    fn cache(&self, bytes: u64) -> (BlockCache, usize) {
        let largest = self.spans.iter().map(|s| s.1).max().unwrap_or(1).max(1);
        let capacity = (bytes / largest as u64) as usize;
        let blocks = capacity / self.spans.len().max(1);
        (BlockCache::new(capacity), self.hashes.len().saturating_sub(blocks))
    }

    /// Digest of region `r` of block `b` in `payload` (the whole block).
    fn digest(&self, b: usize, r: usize, payload: &[u8]) -> u64 {
        let (at, n) = self.spans[r];
        let mut h = FusedHasher::new(self.seed(b));
        h.update(&payload[at..at + n]);
        h.digest()
    }
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
    /// Elements of a value row (built from blocks; 0 from keys: no gathers).
    pub value_dim: usize,
    /// Blocks in its block cache.
    pub cached_blocks: usize,
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
            source: None,
            cache: Mutex::new(BlockCache::new(0)),
        };
        handle.recount();
        Ok(handle)
    }
}

impl Manager {
    /// Builds the PQ index of the first `tokens` tokens of the stored blocks
    /// `hashes` (a request's blocks, in order): every block fetched from the
    /// tiers and verified, its keys read through the registered token layout
    /// (`register_token_layout`: which rows are keys, their dtype), in fp32. The
    /// index can gather ([`Manager::pq_gather`]); the last blocks read fill its
    /// block cache.
    pub fn pq_build_blocks(
        &self,
        hashes: &[BlockHash],
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
        let value_dim = match tl.value_shape() {
            Some((vl, vh, vd)) if vl == layers && vh == heads => vd,
            _ => return Err(invalid("the token layout's value rows differ from its key rows".into())),
        };
        let layout = tl.clone();
        drop(guard);
        let total = tokens;
        let mut keys = vec![0f32; layers * heads * total * dim];
        let block_bytes = self.movement.host().block_bytes() as usize;
        let used = &hashes[..tokens.div_ceil(bt)];
        let s = settings.unwrap_or(self.config.pq);
        let spans: Vec<(usize, usize)> = (0..layout.regions())
            .map(|r| {
                let at = layout.region_offset(r);
                let end = if r + 1 < layout.regions() {
                    layout.region_offset(r + 1)
                } else {
                    block_bytes
                };
                (at, end - at)
            })
            .collect();
        let mut src = Source {
            hashes: used.to_vec(),
            tokens,
            layout,
            sums: Vec::with_capacity(used.len() * spans.len()),
            spans,
            value_dim,
        };
        let (mut cache, keep_from) = src.cache(s.cache_bytes);
        const CHUNK: usize = 32;
        let mut bufs: Vec<Vec<u8>> = Vec::new();
        for (c, chunk) in used.chunks(CHUNK).enumerate() {
            bufs.resize_with(chunk.len(), || vec![0u8; block_bytes]);
            let mut outcomes = vec![LoadOutcome::Miss; chunk.len()];
            self.movement.fetch(chunk, &mut bufs[..chunk.len()], &mut outcomes)?;
            for (j, (buf, o)) in bufs.iter().zip(outcomes).enumerate() {
                let i = c * CHUNK + j;
                if o != LoadOutcome::Loaded {
                    return Err(ManagerError::Unavailable(format!(
                        "block {i} of the request is in no tier ({o:?})"
                    )));
                }
                src.layout
                    .read_keys(buf, bt.min(total - i * bt), &mut keys, total, i * bt);
                let sums: Vec<u64> = (0..src.spans.len()).map(|r| src.digest(i, r, buf)).collect();
                src.sums.extend_from_slice(&sums);
                // The last blocks read are kept for the first gathers (the window's).
                if i >= keep_from {
                    for (r, &(at, n)) in src.spans.iter().enumerate() {
                        cache.insert(src.key(i, r), buf[at..at + n].to_vec());
                    }
                }
            }
        }
        let mut handle = self.pq_build(&keys, layers, heads, total, dim, Some(s))?;
        handle.cache = Mutex::new(cache);
        handle.source = Some(src);
        Ok(handle)
    }
}

impl Manager {
    /// Copies the K and V rows of layer `layer` of the tokens `tokens[h]` (per
    /// KV head, ascending, as [`PqHandle::topk`] gives them) from the stored
    /// blocks `pq` was built from, as fp32, into `out_k`
    /// (`[kv_head][capacity][head_dim]`) and `out_v` (`[kv_head][capacity]
    /// [value_dim]`); row `r` of head `h` is token `tokens[h][r]` (its
    /// position). Tokens past the stored blocks (the engine's own, appended
    /// after the build) end a head's rows: `rows[h]` says how many were written.
    /// The layer's regions of the blocks come from the index's LFU block cache,
    /// else from the tiers ([`Manager::pq_fetch`]: a region of the host tier's
    /// copy checked against the build's digest, else the whole block verified).
    #[allow(clippy::too_many_arguments)]
    pub fn pq_gather(
        &self,
        pq: &PqHandle,
        layer: usize,
        tokens: &[&[u32]],
        capacity: usize,
        out_k: &mut [f32],
        out_v: &mut [f32],
        rows: &mut [usize],
    ) -> Result<(), ManagerError> {
        let t0 = Instant::now();
        let Some(src) = pq.source.as_ref() else {
            return Err(ManagerError::State(
                "a PQ index built from keys has no stored blocks to gather from (tierkv_pq_build_blocks)",
            ));
        };
        if !Arc::ptr_eq(&pq.stats, &self.pq_stats) {
            return Err(invalid("the PQ index was built by another manager".into()));
        }
        let (layers, heads, dim) = pq.shape;
        let vdim = src.value_dim;
        let Some((kr, vr)) = src.layout.layer_rows(layer).filter(|_| layer < layers) else {
            return Err(invalid(format!("layer {layer} of {layers}")));
        };
        let room = heads.checked_mul(capacity);
        let fits = |buf: usize, d: usize| room.and_then(|n| n.checked_mul(d)).is_some_and(|n| buf >= n);
        if tokens.len() != heads || rows.len() != heads || !fits(out_k.len(), dim) || !fits(out_v.len(), vdim) {
            return Err(invalid(format!(
                "{} token lists, {} row counts, {} K and {} V floats for {heads} KV heads x {capacity} rows of {dim} and {vdim}",
                tokens.len(),
                rows.len(),
                out_k.len(),
                out_v.len()
            )));
        }
        let bt = src.layout.block_tokens() as u32;
        let (kreg, vreg) = (kr.region as usize, vr.region as usize);
        let mut needed = Vec::new();
        for (h, list) in tokens.iter().enumerate() {
            if list.len() > capacity || list.windows(2).any(|w| w[0] >= w[1]) {
                return Err(invalid(format!(
                    "KV head {h}: {} tokens for {capacity} rows, or not ascending",
                    list.len()
                )));
            }
            rows[h] = list.partition_point(|&t| (t as usize) < src.tokens);
            for &t in &list[..rows[h]] {
                let b = (t / bt) as usize;
                needed.push(src.key(b, kreg));
                needed.push(src.key(b, vreg));
            }
        }
        needed.sort_unstable();
        needed.dedup();
        let nr = src.spans.len();
        let mut cache = pq.cache.lock();
        let missed: Vec<u32> = needed.iter().copied().filter(|&k| !cache.touch(k)).collect();
        let mut bufs: Vec<Vec<u8>> = missed
            .iter()
            .map(|&k| cache.buffer(src.spans[k as usize % nr].1))
            .collect();
        let fetched = match self.pq_fetch(src, &missed, &mut bufs) {
            Ok(n) => n,
            Err(e) => {
                bufs.into_iter().for_each(|b| cache.recycle(b));
                return Err(e);
            }
        };
        for (h, list) in tokens.iter().enumerate() {
            for (r, &t) in list[..rows[h]].iter().enumerate() {
                let b = (t / bt) as usize;
                let (slot, at) = ((t % bt) as usize, h * capacity + r);
                let region = |k: u32| match missed.binary_search(&k) {
                    Ok(i) => &bufs[i][..],
                    Err(_) => cache.get(k).unwrap_or_default(),
                };
                let (kb, vb) = (region(src.key(b, kreg)), region(src.key(b, vreg)));
                src.layout
                    .read_row_in(kr, kb, slot, h, &mut out_k[at * dim..(at + 1) * dim]);
                src.layout
                    .read_row_in(vr, vb, slot, h, &mut out_v[at * vdim..(at + 1) * vdim]);
            }
        }
        for (k, buf) in missed.iter().zip(bufs) {
            cache.insert(*k, buf);
        }
        drop(cache);
        let s = &self.pq_stats;
        let written: usize = rows.iter().sum();
        s.gathers.fetch_add(1, Ordering::Relaxed);
        s.gathered_bytes
            .fetch_add((written * (dim + vdim) * 4) as u64, Ordering::Relaxed);
        s.fetched_bytes.fetch_add(fetched as u64, Ordering::Relaxed);
        s.cache_hits
            .fetch_add((needed.len() - missed.len()) as u64, Ordering::Relaxed);
        s.cache_misses.fetch_add(missed.len() as u64, Ordering::Relaxed);
        s.gather_latency.observe_ns(t0.elapsed().as_nanos() as u64);
        Ok(())
    }
}

impl Manager {
    /// Reads the block regions `keys` (block-cache keys, ascending) of `src` into
    /// `bufs`: each from the host tier alone (the region's bytes, checked against
    /// the digest the build took of the verified block); a region the host tier
    /// lacks, or whose bytes differ, comes from the whole block fetched from the
    /// tiers (verified, onboarded) and is checked the same way. Returns the bytes
    /// read from the tiers.
    fn pq_fetch(&self, src: &Source, keys: &[u32], bufs: &mut [Vec<u8>]) -> Result<usize, ManagerError> {
        let nr = src.spans.len();
        let host = self.movement.host();
        let mut read = 0;
        let mut whole: Vec<usize> = Vec::new();
        for (i, (&k, buf)) in keys.iter().zip(bufs.iter_mut()).enumerate() {
            let (b, r) = (k as usize / nr, k as usize % nr);
            read += buf.len();
            let got = host.read_range(src.hashes[b], src.spans[r].0, buf, src.seed(b))?;
            if got != Some(src.sums[k as usize]) {
                whole.push(i);
            }
        }
        let mut blocks: Vec<usize> = whole.iter().map(|&i| keys[i] as usize / nr).collect();
        blocks.dedup();
        if blocks.is_empty() {
            return Ok(read);
        }
        let block_bytes = host.block_bytes() as usize;
        let want: Vec<BlockHash> = blocks.iter().map(|&b| src.hashes[b]).collect();
        let mut payloads = vec![vec![0u8; block_bytes]; blocks.len()];
        let mut outcomes = vec![LoadOutcome::Miss; blocks.len()];
        self.movement.fetch(&want, &mut payloads, &mut outcomes)?;
        read += blocks.len() * block_bytes;
        for i in whole {
            let k = keys[i] as usize;
            let (b, r) = (k / nr, k % nr);
            let j = blocks.binary_search(&b).unwrap_or_default();
            let (at, n) = src.spans[r];
            if outcomes[j] != LoadOutcome::Loaded || src.digest(b, r, &payloads[j]) != src.sums[k] {
                return Err(ManagerError::Unavailable(format!(
                    "block {b} of the request is in no tier ({:?})",
                    outcomes[j]
                )));
            }
            bufs[i].copy_from_slice(&payloads[j][at..at + n]);
        }
        Ok(read)
    }
}

impl PqHandle {
    /// Layers, KV heads, head dimension (no lock: a selection's shape check).
    pub fn shape(&self) -> (usize, usize, usize) {
        self.shape
    }

    /// Keeps at most `bytes` of block regions in its block cache from now on (the
    /// least frequently used going first); 0 empties it.
    pub fn set_cache_bytes(&self, bytes: u64) {
        if let Some(src) = self.source.as_ref() {
            self.cache.lock().set_capacity(src.cache(bytes).0.capacity());
        }
    }

    /// Elements of a value row, for gathers (0: built from keys, no gathers; no
    /// lock).
    pub fn value_dim(&self) -> usize {
        self.source.as_ref().map_or(0, |s| s.value_dim)
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
            value_dim: self.value_dim(),
            cached_blocks: self.cache.lock().len(),
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
