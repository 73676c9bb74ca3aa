//! The facade engines and adapters see: one [`Manager`] per engine (or per engine
//! process), owning its config, identity hasher, host tier, optional engine block
//! pool, metrics exporter and log subscriber. Nothing here is global; two managers in
//! one process are independent (sharing a store only through its arena file).
//!
//! Workflow (an engine step):
//! 1. [`Manager::hash_tokens`] turns a prompt into block identities.
//! 2. [`Manager::lookup`] finds the longest run of leading blocks held by a tier.
//! 3. After allocating engine slots for them, [`Manager::load_blocks`] copies them in
//!    (each verified; failures are reported per block, for recompute).
//! 4. As blocks are computed, [`Manager::store_blocks`] copies them out.

use parking_lot::{Mutex, RwLock};

use crate::block::BlockPool;
use crate::config::Config;
use crate::metrics::{self, exporter::Exporter, Gauges};
use crate::prefix::{BlockHash, BlockHasher, HashAlgo, VLLM_DEFAULT_SEED};
use crate::tier::layout::{EngineLayout, LayoutError, Region};
use crate::tier::{HostTier, LoadOutcome, StoreOutcome, TierError, TierId};

/// What the engine tells the manager at creation.
#[derive(Debug, Clone, Default)]
pub struct ManagerParams {
    /// Tokens per block.
    pub block_tokens: u32,
    /// Payload bytes of one block (all layers).
    pub block_bytes: u64,
    /// Namespace; `None` takes `TIERKV_NAMESPACE`.
    pub namespace: Option<String>,
    /// Size of the engine block pool to manage (0: the engine keeps its own).
    pub pool_blocks: u32,
}

/// Errors of manager creation and use.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A parameter is out of range.
    #[error("{0}")]
    InvalidArgument(String),
    /// The host tier failed.
    #[error(transparent)]
    Tier(#[from] TierError),
    /// The engine layout is invalid.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// A call needs state that is missing.
    #[error("{0}")]
    State(&'static str),
}

/// One engine's view of tierkv.
pub struct Manager {
    config: Config,
    hasher: BlockHasher,
    host: HostTier,
    layout: RwLock<Option<EngineLayout>>,
    pool: Option<Mutex<BlockPool>>,
    exporter: Mutex<Option<Exporter>>,
    dispatch: tracing::Dispatch,
}

impl Manager {
    /// Creates a manager: opens (or joins) the host tier and starts the exporter if
    /// configured.
    pub fn new(config: Config, params: ManagerParams) -> Result<Self, ManagerError> {
        let dispatch = crate::log::StderrLog::dispatch(config.log);
        tracing::dispatcher::with_default(&dispatch, || Self::build(config, params, dispatch.clone()))
    }

    fn build(config: Config, params: ManagerParams, dispatch: tracing::Dispatch) -> Result<Self, ManagerError> {
        if params.block_tokens == 0 {
            return Err(ManagerError::InvalidArgument("block_tokens must be at least 1".into()));
        }
        if params.block_bytes == 0 {
            return Err(ManagerError::InvalidArgument("block_bytes must be at least 1".into()));
        }
        if params.pool_blocks == u32::MAX {
            return Err(ManagerError::InvalidArgument(
                "pool_blocks must be below 2^32 - 1".into(),
            ));
        }
        let namespace = params.namespace.clone().unwrap_or_else(|| config.namespace.clone());
        let seed = std::env::var("PYTHONHASHSEED").unwrap_or_else(|_| VLLM_DEFAULT_SEED.to_string());
        let hasher = BlockHasher::new(config.hash, params.block_tokens as usize, &namespace, &seed)
            .ok_or(ManagerError::InvalidArgument("block_tokens must be at least 1".into()))?;
        let host = HostTier::open(&config, params.block_bytes, u64::from(params.block_tokens))?;
        let pool = (params.pool_blocks > 0).then(|| Mutex::new(BlockPool::new(params.pool_blocks as usize)));
        let mgr = Self {
            config,
            hasher,
            host,
            layout: RwLock::new(None),
            pool,
            exporter: Mutex::new(None),
            dispatch,
        };
        Ok(mgr)
    }

    /// Starts the Prometheus exporter if `TIERKV_METRICS_ADDR` is set. Needs the
    /// manager behind an `Arc` (the exporter thread renders from it).
    pub fn start_exporter(self: &std::sync::Arc<Self>) {
        let Some(addr) = self.config.metrics_addr else { return };
        let weak = std::sync::Arc::downgrade(self);
        let exp = self.in_scope(|| {
            Exporter::start(addr, self.dispatch.clone(), move || {
                weak.upgrade().map(|m| m.metrics_text()).unwrap_or_default()
            })
        });
        *self.exporter.lock() = exp;
    }

    /// The exporter's bound address, if running.
    pub fn exporter_addr(&self) -> Option<std::net::SocketAddr> {
        self.exporter.lock().as_ref().map(|e| e.addr())
    }

    /// Stops the exporter thread (also done on drop).
    pub fn stop_exporter(&self) {
        self.exporter.lock().take();
    }

    /// Runs `f` with this manager's log subscriber as the thread's default.
    pub fn in_scope<R>(&self, f: impl FnOnce() -> R) -> R {
        tracing::dispatcher::with_default(&self.dispatch, f)
    }

    /// The config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The host tier.
    pub fn host(&self) -> &HostTier {
        &self.host
    }

    /// The engine block pool, if one was asked for.
    pub fn pool(&self) -> Option<&Mutex<BlockPool>> {
        self.pool.as_ref()
    }

    /// Tokens per block.
    pub fn block_tokens(&self) -> usize {
        self.hasher.block_size()
    }

    /// Identity algorithm in use.
    pub fn hash_algo(&self) -> HashAlgo {
        self.hasher.algo()
    }

    /// Appends identities of the full blocks of `tokens` (continuing from `parent`).
    pub fn hash_tokens(
        &self,
        parent: Option<BlockHash>,
        tokens: &[u32],
        out: &mut Vec<BlockHash>,
    ) -> Result<(), ManagerError> {
        if self.hasher.hash_blocks(parent, tokens, out) {
            Ok(())
        } else {
            Err(ManagerError::InvalidArgument(
                "sha256_cbor identities are truncated to 128 bits and cannot be continued from a parent; hash from token 0".into(),
            ))
        }
    }

    /// Longest run of leading `hashes` held by a tier, with the tier of each
    /// (written to `tiers`, which must be at least as long as the run).
    pub fn lookup(&self, hashes: &[BlockHash], tiers: &mut [TierId]) -> Result<usize, ManagerError> {
        let mut n_engine = 0;
        if let Some(pool) = &self.pool {
            n_engine = pool.lock().lookup(hashes);
        }
        let n = n_engine + self.host.lookup(&hashes[n_engine..])?;
        for (i, t) in tiers.iter_mut().take(n).enumerate() {
            *t = if i < n_engine { TierId::Engine } else { TierId::Host };
        }
        Ok(n)
    }

    /// Records the engine's KV memory layout (replacing any earlier one).
    pub fn register_layout(&self, regions: &[Region], num_blocks: u64) -> Result<(), ManagerError> {
        let layout = EngineLayout::new(regions, num_blocks, self.host.block_bytes())?;
        *self.layout.write() = Some(layout);
        Ok(())
    }

    fn check_blocks(&self, layout: &EngineLayout, hashes: &[BlockHash], block_ids: &[u64]) -> Result<(), ManagerError> {
        if hashes.len() != block_ids.len() {
            return Err(ManagerError::InvalidArgument(
                "hashes and block ids differ in length".into(),
            ));
        }
        if let Some(&b) = block_ids.iter().find(|&&b| b >= layout.num_blocks()) {
            return Err(ManagerError::InvalidArgument(format!(
                "block id {b} is out of range (layout has {} blocks)",
                layout.num_blocks()
            )));
        }
        Ok(())
    }

    /// Copies engine blocks `block_ids[i]` out to the host tier under `hashes[i]`.
    ///
    /// # Safety
    /// The registered layout's memory must be valid for reads for the duration of
    /// the call, and not be written concurrently in the ranges of these blocks.
    pub unsafe fn store_blocks(
        &self,
        hashes: &[BlockHash],
        block_ids: &[u64],
        outcomes: &mut [StoreOutcome],
    ) -> Result<(), ManagerError> {
        let guard = self.layout.read();
        let layout = guard
            .as_ref()
            .ok_or(ManagerError::State("no engine layout registered"))?;
        self.check_blocks(layout, hashes, block_ids)?;
        let mut segs: Vec<&[u8]> = Vec::with_capacity(layout.regions().len());
        for (i, (&h, &b)) in hashes.iter().zip(block_ids).enumerate() {
            segs.clear();
            segs.extend(layout.ranges(b).map(|(p, n)| {
                // SAFETY: the layout is validated (in range, no overflow) and the
                // caller guarantees the memory is readable and not being written.
                unsafe { std::slice::from_raw_parts(p as *const u8, n) }
            }));
            let o = self.host.store(h, &segs)?;
            if let Some(slot) = outcomes.get_mut(i) {
                *slot = o;
            }
        }
        Ok(())
    }

    /// Copies host-tier blocks `hashes[i]` into engine blocks `block_ids[i]`,
    /// verifying each; `outcomes[i]` says which were loaded.
    ///
    /// # Safety
    /// The registered layout's memory must be valid for writes for the duration of
    /// the call, and nothing else may access these blocks' ranges meanwhile.
    pub unsafe fn load_blocks(
        &self,
        hashes: &[BlockHash],
        block_ids: &[u64],
        outcomes: &mut [LoadOutcome],
    ) -> Result<(), ManagerError> {
        let guard = self.layout.read();
        let layout = guard
            .as_ref()
            .ok_or(ManagerError::State("no engine layout registered"))?;
        self.check_blocks(layout, hashes, block_ids)?;
        let mut segs: Vec<&mut [u8]> = Vec::with_capacity(layout.regions().len());
        for (i, (&h, &b)) in hashes.iter().zip(block_ids).enumerate() {
            segs.clear();
            segs.extend(layout.ranges(b).map(|(p, n)| {
                // SAFETY: as in store_blocks, and the caller guarantees exclusive write
                // access; regions of one block never overlap (separate tensors).
                unsafe { std::slice::from_raw_parts_mut(p as *mut u8, n) }
            }));
            let o = self.host.load(h, &mut segs)?;
            if let Some(slot) = outcomes.get_mut(i) {
                *slot = o;
            }
        }
        Ok(())
    }

    /// Gauges for the exporter.
    fn gauges(&self) -> Gauges {
        let g = self.host.arena().geometry();
        let mut out = Gauges {
            host_blocks: self.host.block_count().unwrap_or(0),
            host_capacity_blocks: u64::from(g.n_slots),
            host_capacity_bytes: g.file_len,
            block_bytes: g.slot_bytes,
            ..Gauges::default()
        };
        if let Some(pool) = &self.pool {
            let p = pool.lock();
            out.pool_blocks = p.num_blocks() as u64;
            out.pool_used_blocks = (p.num_blocks() - p.num_free()) as u64;
            out.pool = p.stats();
        }
        out
    }

    /// Every metric in Prometheus text format.
    pub fn metrics_text(&self) -> String {
        metrics::render(self.host.stats(), &self.gauges())
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        self.stop_exporter();
    }
}
