//! Semantic KV sharing (after KVShare, arXiv 2503.16525): reuse the KV of a cached
//! near-duplicate prompt for a new prompt whose exact prefix hit is short.
//!
//! Core types: [`SemanticIndex`] (cached prompts of one namespace: tokens, block
//! identities, MinHash signature, LSH buckets), [`ReusePlan`] (from
//! [`plan`]), [`Rejection`] (why a lookup gave no plan) and [`SemanticStats`].
//!
//! Workflow:
//! 1. When a prompt's full blocks are stored, the engine side inserts its tokens
//!    ([`SemanticIndex::insert`]); the oldest prompt leaves when the index is full.
//! 2. A prompt with a short exact hit is looked up ([`SemanticIndex::lookup`]):
//!    its signature probes the LSH buckets (cost: one pass over the tokens plus
//!    16 hash-map probes), the best candidates by estimated similarity are aligned
//!    ([`align`]) and turned into plans ([`ReusePlan::build`]) until the best plan
//!    covers more than the next candidate's estimate, and the plan that covers most
//!    of the prompt is checked against the policy.
//! 3. The engine loads the plan ([`crate::Manager::load_tokens`]): source blocks
//!    are read from the host tier and verified, target blocks are written token by
//!    token with keys re-rotated ([`synth`]).
//! 4. A source whose blocks have left the host tier is removed from the index when
//!    a lookup finds it gone (removal on eviction, observed lazily: the host tier
//!    is shared by processes and evicts without telling this one).
//!
//! Sharing never crosses a namespace: each manager (one namespace) has its own
//! index, and source blocks are read by identities that include the namespace.

pub mod align;
pub mod minhash;
pub mod plan;
pub mod policy;
mod report;
pub mod synth;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::prefix::BlockHash;
use crate::tier::HostTier;
pub use align::Alignment;
use minhash::{LshIndex, Signature};
pub use plan::{ReusePlan, ReuseRun, TokenSource};
pub use policy::SemanticPolicy;

/// Candidates aligned per lookup (best estimated similarity first).
pub const CANDIDATES: usize = 4;
/// Runs shorter than this are not reused.
pub const MIN_RUN: usize = 8;
/// Time budget of one alignment: Myers coarsens past it, so it is the one thing
/// that could make a plan depend on the machine's speed; it is about 500 times the
/// measured 35 us alignment of a 4K-token near-duplicate (docs/benchmarks.md), so
/// it only bounds pathological inputs.
pub const ALIGN_DEADLINE: Duration = Duration::from_millis(20);

/// Why a lookup returned no plan (metric label values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Sharing is off for this namespace, or the exact hit is long enough.
    NotConsulted,
    /// No indexed prompt shares a band.
    NoCandidate,
    /// The best plan covers less than the minimum similarity.
    BelowSimilarity,
    /// The best plan recomputes more than allowed.
    TooMuchRecompute,
    /// The plan adds nothing beyond the exact prefix hit.
    NoGain,
}

impl Rejection {
    /// Label value in `tierkv_semantic_plans_total{result}`.
    pub fn label(self) -> &'static str {
        match self {
            Rejection::NotConsulted => "not_consulted",
            Rejection::NoCandidate => "no_candidate",
            Rejection::BelowSimilarity => "below_similarity",
            Rejection::TooMuchRecompute => "too_much_recompute",
            Rejection::NoGain => "no_gain",
        }
    }
}

/// Counters of semantic sharing: the host arena's store-wide block (vLLM's
/// scheduler looks up, its worker exports: any process sharing the store reports
/// them), or a private one for an index without a store (tests).
pub use crate::tier::arena::stats::SemanticCounters as SemanticStats;

/// Where an index's counters live.
enum Counters {
    Own(Box<SemanticStats>),
    Shared(Arc<HostTier>),
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Counters::Own(_) => "Counters::Own",
            Counters::Shared(_) => "Counters::Shared",
        })
    }
}

/// One cached prompt.
#[derive(Debug)]
struct Entry {
    tokens: Arc<[u32]>,
    hashes: Arc<[BlockHash]>,
    sig: Signature,
}

/// A candidate handed out of the index lock.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Index id.
    pub id: u64,
    /// Source tokens.
    pub tokens: Arc<[u32]>,
    /// Source full-block identities.
    pub hashes: Arc<[BlockHash]>,
    /// Estimated similarity.
    pub estimate: f32,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<u64, Entry>,
    /// Insertion order, for capacity eviction (ids may be stale: removed ones are
    /// skipped).
    order: VecDeque<u64>,
    /// (last block identity, length) -> id, so that re-inserting the same prompt refreshes
    /// it instead of duplicating it.
    by_key: HashMap<(BlockHash, u32), u64>,
    lsh: LshIndex,
    next: u64,
}

/// The near-duplicate index of one namespace.
#[derive(Debug)]
pub struct SemanticIndex {
    inner: Mutex<Inner>,
    capacity: usize,
    counters: Counters,
    /// Time budget of one alignment ([`ALIGN_DEADLINE`] unless set).
    deadline: Duration,
}

impl SemanticIndex {
    /// An empty index holding at most `capacity` prompts, with counters of its own.
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            capacity: capacity.max(1),
            counters: Counters::Own(Box::default()),
            deadline: ALIGN_DEADLINE,
        }
    }

    /// The same index with another alignment time budget (tests that must not
    /// depend on the machine's load give a generous one).
    pub fn with_align_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// An empty index whose counters are the store-wide ones of `host`'s arena.
    pub fn with_shared_counters(capacity: usize, host: Arc<HostTier>) -> Self {
        Self {
            counters: Counters::Shared(host),
            ..Self::new(capacity)
        }
    }

    /// The counters.
    pub fn stats(&self) -> &SemanticStats {
        match &self.counters {
            Counters::Own(s) => s,
            Counters::Shared(h) => &h.stats().semantic,
        }
    }

    /// Prompts held.
    pub fn len(&self) -> usize {
        self.inner.lock().entries.len()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Indexes a prompt whose full blocks `hashes` are stored; returns its id, or
    /// `None` when it is too short to index. The same prompt (same last stored
    /// block and length) is replaced, not duplicated.
    pub fn insert(&self, tokens: &[u32], hashes: Vec<BlockHash>) -> Option<u64> {
        let last = *hashes.last()?;
        let sig = Signature::of(tokens)?;
        let key = (last, tokens.len() as u32);
        let entry = Entry {
            tokens: tokens.into(),
            hashes: hashes.into(),
            sig,
        };
        let mut g = self.inner.lock();
        if let Some(old) = g.by_key.get(&key).copied() {
            remove_locked(&mut g, old);
        }
        while g.entries.len() >= self.capacity {
            let Some(oldest) = g.order.pop_front() else { break };
            remove_locked(&mut g, oldest);
        }
        let id = g.next;
        g.next += 1;
        g.lsh.insert(id, &entry.sig);
        g.by_key.insert(key, id);
        g.order.push_back(id);
        if g.order.len() > 2 * self.capacity {
            let Inner { order, entries, .. } = &mut *g;
            order.retain(|i| entries.contains_key(i));
        }
        g.entries.insert(id, entry);
        Some(id)
    }

    /// Removes prompt `id` (its blocks are gone).
    pub fn remove(&self, id: u64) {
        let mut g = self.inner.lock();
        if remove_locked(&mut g, id) {
            self.stats().removed_gone.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The best `CANDIDATES` prompts sharing a band with `tokens`, by estimated
    /// similarity, ties to the newest (deterministic for the same index state).
    pub fn candidates(&self, tokens: &[u32]) -> Vec<Candidate> {
        let Some(sig) = Signature::of(tokens) else {
            return Vec::new();
        };
        let g = self.inner.lock();
        let mut c: Vec<Candidate> = g
            .lsh
            .probe(&sig)
            .into_iter()
            .filter_map(|id| {
                let e = g.entries.get(&id)?;
                Some(Candidate {
                    id,
                    tokens: Arc::clone(&e.tokens),
                    hashes: Arc::clone(&e.hashes),
                    estimate: sig.similarity(&e.sig),
                })
            })
            .collect();
        drop(g);
        c.sort_by(|a, b| b.estimate.total_cmp(&a.estimate).then(b.id.cmp(&a.id)));
        c.truncate(CANDIDATES);
        c
    }

    /// The best plan for `tokens` given an exact prefix hit of `exact_tokens`, or
    /// why there is none. `alive` says whether a candidate's source blocks are all
    /// still stored (a candidate that is not is removed and skipped).
    pub fn lookup(
        &self,
        tokens: &[u32],
        exact_tokens: u32,
        block_tokens: u32,
        policy: &SemanticPolicy,
        alive: impl Fn(&[BlockHash]) -> bool,
    ) -> Result<ReusePlan, Rejection> {
        let started = std::time::Instant::now();
        self.stats().lookups.fetch_add(1, Ordering::Relaxed);
        let out = self.plan(tokens, exact_tokens, block_tokens, policy, alive);
        self.stats().lookup_ns.observe_ns(started.elapsed().as_nanos() as u64);
        match &out {
            Ok(p) => {
                self.stats().accepted.fetch_add(1, Ordering::Relaxed);
                self.stats()
                    .reused_tokens
                    .fetch_add(u64::from(p.reused_tokens()), Ordering::Relaxed);
                self.stats()
                    .recompute_tokens
                    .fetch_add(u64::from(p.recompute_tokens()), Ordering::Relaxed);
            }
            Err(r) => {
                self.stats().rejected[*r as usize].fetch_add(1, Ordering::Relaxed);
            }
        }
        out
    }

    fn plan(
        &self,
        tokens: &[u32],
        exact_tokens: u32,
        block_tokens: u32,
        policy: &SemanticPolicy,
        alive: impl Fn(&[BlockHash]) -> bool,
    ) -> Result<ReusePlan, Rejection> {
        let n = tokens.len() as u32;
        let mut best: Option<ReusePlan> = None;
        for c in self.candidates(tokens) {
            // Candidates come best estimate first: one estimated less similar than
            // what the best plan already covers is not worth an alignment.
            if best.as_ref().is_some_and(|b| b.coverage() >= c.estimate) {
                break;
            }
            self.stats().candidates.fetch_add(1, Ordering::Relaxed);
            let al = align::align(&c.tokens, tokens, self.deadline, policy.align_options());
            let p = ReusePlan::build(&al, c.id, Arc::clone(&c.hashes), block_tokens, n, c.estimate, policy);
            if best.as_ref().is_none_or(|b| p.coverage() > b.coverage()) {
                if !alive(&c.hashes) {
                    self.remove(c.id);
                    continue;
                }
                best = Some(p);
            }
        }
        let Some(p) = best else {
            return Err(Rejection::NoCandidate);
        };
        if p.coverage() < policy.min_similarity {
            return Err(Rejection::BelowSimilarity);
        }
        if p.recompute_tokens() as f32 > policy.max_recompute * n as f32 {
            return Err(Rejection::TooMuchRecompute);
        }
        let beyond_exact = p.runs.iter().any(|r| r.target_end() > exact_tokens);
        if !beyond_exact {
            return Err(Rejection::NoGain);
        }
        Ok(p)
    }
}

fn remove_locked(g: &mut Inner, id: u64) -> bool {
    let Some(e) = g.entries.remove(&id) else {
        return false;
    };
    g.lsh.remove(id, &e.sig);
    if let Some(last) = e.hashes.last() {
        g.by_key.remove(&(*last, e.tokens.len() as u32));
    }
    true
}

#[cfg(test)]
mod tests;
