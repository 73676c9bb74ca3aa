//! The manager's semantic-sharing calls (see [`crate::semantic`]): index a stored
//! prompt, look up a plan for a new one, register the engine's token rows, and
//! build target blocks from a plan's token map.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use tierkv_cuda::reference::{KeyDtype, RopeSpec};

use super::{Manager, ManagerError};
use crate::prefix::BlockHash;
use crate::semantic::synth::{TokenLayout, TokenRows};
use crate::semantic::{Rejection, ReusePlan, TokenSource};
use crate::tier::LoadOutcome;

impl Manager {
    /// Whether semantic sharing is on for this manager's namespace.
    pub fn semantic_enabled(&self) -> bool {
        self.semantic.is_some()
    }

    /// Replaced tokens an approximate prefix may serve (`TIERKV_SEMANTIC_SUBSTITUTE`).
    pub fn semantic_substitute(&self) -> u32 {
        self.config.semantic.substitute
    }

    /// Largest shift of KV an approximate prefix may serve
    /// (`TIERKV_SEMANTIC_PREFIX_SHIFT`).
    pub fn semantic_prefix_shift(&self) -> u32 {
        self.config.semantic.prefix_shift
    }

    /// Indexes `tokens` (a prompt whose full blocks the engine has stored) for
    /// semantic lookups. Returns whether it was indexed (off, or shorter than a
    /// block: not).
    pub fn semantic_insert(&self, tokens: &[u32]) -> Result<bool, ManagerError> {
        let Some(ix) = &self.semantic else { return Ok(false) };
        let mut hashes = Vec::new();
        self.hash_tokens(None, tokens, &mut hashes)?;
        Ok(ix.insert(tokens, hashes).is_some())
    }

    /// A plan to build `tokens`' KV from a cached near-duplicate, given an exact
    /// prefix hit of `exact_tokens`; consulted only when that hit is short
    /// (`TIERKV_SEMANTIC_BELOW`). Sources must be wholly in the host tier.
    pub fn semantic_lookup(&self, tokens: &[u32], exact_tokens: u32) -> Result<ReusePlan, Rejection> {
        let Some(ix) = &self.semantic else {
            return Err(Rejection::NotConsulted);
        };
        let policy = &self.config.semantic;
        if tokens.is_empty() || exact_tokens as f32 >= policy.consult_below * tokens.len() as f32 {
            return Err(Rejection::NotConsulted);
        }
        let alive = |hs: &[BlockHash]| self.movement.host().lookup(hs).is_ok_and(|n| n == hs.len());
        ix.lookup(tokens, exact_tokens, self.block_tokens() as u32, policy, alive)
    }

    /// Registers where each token's K and V rows lie in the registered (host)
    /// layout, the key dtype and the RoPE of a key row
    /// ([`crate::semantic::synth::row_rope`]). Needed by [`Manager::load_tokens`].
    pub fn register_token_layout(
        &self,
        rows: &[TokenRows],
        dtype: KeyDtype,
        rope: RopeSpec,
    ) -> Result<(), ManagerError> {
        let layout = self.layout.read();
        let Some(layout) = layout.as_ref() else {
            return Err(ManagerError::State("register the engine layout before its token rows"));
        };
        let tl = TokenLayout::new(layout.regions(), self.block_tokens() as u32, rows, dtype, rope)
            .map_err(|e| ManagerError::InvalidArgument(e.to_string()))?;
        *self.token_layout.write() = Some(tl);
        Ok(())
    }

    /// Builds engine blocks `block_ids` token by token: `map` holds one
    /// [`TokenSource`] per token of those blocks (in order), naming a block of
    /// `sources` (identities in the host tier, each verified when read), a slot and
    /// a position delta (keys are re-rotated by it). A block whose sources are
    /// missing or corrupt is not written and reported (`Miss` / `Corrupt`): the
    /// engine recomputes it.
    ///
    /// # Safety
    /// As [`Manager::load_blocks`]: the registered layout's memory is valid and the
    /// caller has exclusive write access to `block_ids`' bytes.
    pub unsafe fn load_tokens(
        &self,
        sources: &[BlockHash],
        map: &[TokenSource],
        block_ids: &[u64],
        outcomes: &mut [LoadOutcome],
    ) -> Result<(), ManagerError> {
        let bt = self.block_tokens();
        if map.len() != block_ids.len() * bt {
            return Err(ManagerError::InvalidArgument(format!(
                "{} token sources for {} blocks of {bt} tokens",
                map.len(),
                block_ids.len()
            )));
        }
        if let Some(bad) = map
            .iter()
            .find(|s| s.block as usize >= sources.len() || s.slot as usize >= bt)
        {
            return Err(ManagerError::InvalidArgument(format!(
                "token source {bad:?} outside {} source blocks of {bt} tokens",
                sources.len()
            )));
        }
        let layout = self.layout.read();
        let Some(layout) = layout.as_ref() else {
            return Err(ManagerError::State("no engine layout registered"));
        };
        Self::check_range(layout.num_blocks(), block_ids)?;
        Self::check_distinct(block_ids)?;
        let tl = self.token_layout.read();
        let Some(tl) = tl.as_ref() else {
            return Err(ManagerError::State(
                "no token layout registered (tierkv_register_token_layout)",
            ));
        };
        let block_bytes = self.movement.host().block_bytes() as usize;
        let mut payloads = Vec::with_capacity(sources.len());
        let mut source_ok = Vec::with_capacity(sources.len());
        for &h in sources {
            let mut buf = vec![0u8; block_bytes];
            let o = self.movement.host().load(h, &mut [&mut buf[..]])?;
            source_ok.push(o);
            payloads.push(buf);
        }
        let mut tables = HashMap::new();
        let ix = self.semantic.as_ref().map(|s| s.stats());
        for (i, &b) in block_ids.iter().enumerate() {
            let m = &map[i * bt..(i + 1) * bt];
            let failed = m
                .iter()
                .map(|s| source_ok[s.block as usize])
                .find(|o| *o != LoadOutcome::Loaded);
            let outcome = match failed {
                Some(o) => o,
                None => {
                    let mut out: Vec<&mut [u8]> = layout
                        .ranges(b)
                        .map(|(p, n)| {
                            // SAFETY: the caller's contract: in range (checked above),
                            // exclusively ours; regions of one block never overlap.
                            unsafe { std::slice::from_raw_parts_mut(p as *mut u8, n) }
                        })
                        .collect();
                    tl.synthesize(&payloads, m, &mut out, &mut tables);
                    LoadOutcome::Loaded
                }
            };
            if let Some(st) = ix {
                let c = if outcome == LoadOutcome::Loaded {
                    &st.loaded_blocks
                } else {
                    &st.failed_blocks
                };
                c.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(slot) = outcomes.get_mut(i) {
                *slot = outcome;
            }
        }
        self.count_loaded(outcomes);
        Ok(())
    }
}
