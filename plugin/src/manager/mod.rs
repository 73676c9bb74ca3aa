//! The facade engines and adapters see: one [`Manager`] per engine (or per engine
//! process), owning its config, identity hasher, host tier, optional engine block
//! pool, metrics exporter and log subscriber. Nothing here is global; two managers in
//! one process are independent (sharing a store only through its arena file).
//!
//! Workflow (an engine step):
//! 1. [`Manager::hash_tokens`] turns a prompt into block identities.
//! 2. [`Manager::lookup`] finds the longest run of leading blocks held by a tier
//!    (engine pool, host, disk), with the tier of each.
//! 3. After allocating engine slots for them, [`Manager::load_blocks`] copies them in
//!    from the host tier, or reads them from disk (in parallel, on the disk tier's
//!    workers) and onboards them into the host tier on the way; each is verified,
//!    failures are reported per block, for recompute. A disk load blocks its caller:
//!    engines call it from a loader thread, never from the forward pass.
//! 4. As blocks are computed, [`Manager::store_blocks`] copies them out to the host
//!    tier and queues the ones admission accepts for the disk tier (never waiting).

use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::block::BlockPool;
use crate::config::Config;
use crate::events::EventLog;
use crate::evict::PolicyKind;
use crate::hw::{self, HwState, Sampler, SchedParams, Scheduler};
use crate::metrics::exporter::Exporter;
use crate::movement::{Movement, Run};
use crate::prefix::{BlockHasher, VLLM_DEFAULT_SEED};
use crate::tier::arena::stats::{ADAPTER_OPS, ADAPTER_STATUSES};
use crate::tier::disk::DiskHandle;
use crate::tier::layout::{EngineLayout, LayoutError};
use crate::tier::remote::RemoteTier;
use crate::tier::{HostTier, TierError};

// The facade's vocabulary: the value types engines and adapters exchange with a
// manager (the C ABI and the C++ bridge name them through here, never through
// the parts that define them).
pub use self::events::EventsTaken;
pub use self::pool::{PoolState, POOL_DISAGREEMENT_KINDS};
pub use self::pq::{PqHandle, PqSettings};
pub use crate::block::CowOutcome;
pub use crate::events::MIN_BATCH_BYTES as EVENTS_MIN_BUFFER;
pub use crate::hw::{Decisions, Placement, Telemetry};
pub use crate::prefix::{BlockHash, HashAlgo};
pub use crate::semantic::synth::{row_rope, TokenRows};
pub use crate::semantic::{Rejection, ReusePlan, TokenSource};
#[cfg(feature = "cuda")]
pub use crate::tier::device::LayerLoad;
pub use crate::tier::layout::Region;
pub use crate::tier::{LoadOutcome, StoreOutcome, TierId, TierStatus};

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
    /// Never own the disk tier: only look up and read (a scheduler process).
    pub disk_reader: bool,
    /// The engine pool evicts in the engine's own order whatever
    /// `TIERKV_POOL_EVICTION` says (a shadow, compared with the engine's pool).
    pub pool_engine_order: bool,
}

impl ManagerParams {
    /// Refuses parameters no manager can be built with.
    fn check(&self) -> Result<(), ManagerError> {
        let why = if self.block_tokens == 0 {
            "block_tokens must be at least 1"
        } else if self.block_bytes == 0 {
            "block_bytes must be at least 1"
        } else if self.pool_blocks == u32::MAX {
            "pool_blocks must be below 2^32 - 1"
        } else {
            return Ok(());
        };
        Err(ManagerError::InvalidArgument(why.into()))
    }
}

/// Starts the telemetry thread feeding `hw` every `every` (NVML for GPU
/// `gpu_device` when there is a driver, host telemetry otherwise); `None`, with a
/// warning, when the thread cannot start.
fn start_sampler(
    gpu_device: u32,
    sched: Scheduler,
    hw: &Arc<HwState>,
    every: std::time::Duration,
    dispatch: &tracing::Dispatch,
) -> Option<Sampler> {
    let (source, why) = hw::open_source(gpu_device);
    if let Some(why) = why {
        tracing::info!(reason = %why, "no GPU telemetry; scheduling from host telemetry");
    }
    match Sampler::start(source, sched, Arc::clone(hw), every, dispatch.clone()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "telemetry thread not started; default decisions");
            None
        }
    }
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
    /// A resource is not there (no GPU, no driver, a failed device copy).
    #[error("{0}")]
    Unavailable(String),
    /// An engine block pool call broke its contract, or found too few free blocks.
    #[error(transparent)]
    Pool(#[from] crate::block::PoolError),
}

/// What kind of failure a [`ManagerError`] is, for hosts that map errors to codes
/// (the C ABI's statuses) without looking inside the parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A `TIERKV_*` variable, or a store of another format or geometry.
    Config,
    /// A bad argument; nothing was changed.
    InvalidArgument,
    /// A tier has no room (the shared-memory file system is full).
    NoSpace,
    /// An OS resource or a device is unavailable.
    Unavailable,
    /// Too few free engine blocks; nothing was changed.
    Insufficient,
    /// The call needs state that is missing.
    State,
}

impl ManagerError {
    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        use crate::block::PoolError;
        use crate::tier::arena::ArenaError;
        match self {
            Self::Config(_) => ErrorKind::Config,
            Self::InvalidArgument(_) | Self::Layout(_) => ErrorKind::InvalidArgument,
            Self::Tier(TierError::SizeMismatch { .. }) => ErrorKind::InvalidArgument,
            Self::Tier(TierError::Arena(ArenaError::NoSpace { .. } | ArenaError::TooSmall { .. })) => {
                ErrorKind::NoSpace
            }
            Self::Tier(TierError::Arena(ArenaError::Mismatch { .. } | ArenaError::Version { .. })) => ErrorKind::Config,
            Self::Tier(TierError::Arena(_)) | Self::Unavailable(_) => ErrorKind::Unavailable,
            Self::State(_) => ErrorKind::State,
            Self::Pool(PoolError::Insufficient(_)) => ErrorKind::Insufficient,
            Self::Pool(_) => ErrorKind::InvalidArgument,
        }
    }
}

/// One engine's view of tierkv.
pub struct Manager {
    config: Config,
    hasher: BlockHasher,
    /// The tiers below the engine (host, then disk when configured) and the moves
    /// between them.
    movement: Movement,
    layout: RwLock<Option<EngineLayout>>,
    pool: Option<Mutex<BlockPool>>,
    exporter: Mutex<Option<Exporter>>,
    dispatch: tracing::Dispatch,
    /// Telemetry and scheduling decisions (see [`crate::hw`]).
    hw: Arc<HwState>,
    /// The sampling thread, `None` when `TIERKV_HW_INTERVAL` is off.
    sampler: Mutex<Option<Sampler>>,
    /// Device blocks not stored because of the offload budget.
    deferred_blocks: std::sync::atomic::AtomicU64,
    /// Counters of the PQ indexes built through this manager.
    pq_stats: Arc<crate::pq::PqStats>,
    /// The near-duplicate index, when semantic sharing is on for this namespace.
    semantic: Option<crate::semantic::SemanticIndex>,
    /// Token rows and RoPE of the engine layout (for semantic loads).
    token_layout: RwLock<Option<crate::semantic::synth::TokenLayout>>,
    /// The engine's layout in GPU memory, when it registered one.
    #[cfg(feature = "cuda")]
    device: RwLock<Option<Arc<crate::tier::device::DeviceLink>>>,
    /// KV events of this manager's tiers (off until the engine starts them).
    events: Arc<EventLog>,
}

impl Manager {
    /// Creates a manager: opens (or joins) the host tier and starts the exporter if
    /// configured.
    pub fn new(config: Config, params: ManagerParams) -> Result<Self, ManagerError> {
        let dispatch = crate::log::StderrLog::dispatch(config.log);
        tracing::dispatcher::with_default(&dispatch, || Self::build(config, params, dispatch.clone()))
    }

    fn build(config: Config, params: ManagerParams, dispatch: tracing::Dispatch) -> Result<Self, ManagerError> {
        params.check()?;
        for w in config.unknown_var_warnings() {
            tracing::warn!("{w}");
        }
        let namespace = params.namespace.clone().unwrap_or_else(|| config.namespace.clone());
        let seed = std::env::var("PYTHONHASHSEED").unwrap_or_else(|_| VLLM_DEFAULT_SEED.to_string());
        let hasher = BlockHasher::new(config.hash, params.block_tokens as usize, &namespace, &seed)
            .ok_or(ManagerError::InvalidArgument("block_tokens must be at least 1".into()))?;
        let events = Arc::new(EventLog::new());
        let host = Arc::new(
            HostTier::open(
                &config.host_settings(),
                params.block_bytes,
                u64::from(params.block_tokens),
            )?
            .with_events(Arc::clone(&events)),
        );
        let disk = config.disk_settings().map(|s| {
            DiskHandle::open(&s, params.block_bytes, &dispatch, params.disk_reader).with_events(Arc::clone(&events))
        });
        let pool = match params.pool_blocks {
            0 => None,
            n => Some(Mutex::new(
                BlockPool::try_with_policy(
                    n as usize,
                    if params.pool_engine_order {
                        PolicyKind::Lru
                    } else {
                        config.pool_eviction
                    },
                )
                .map_err(|e| ManagerError::InvalidArgument(e.to_string()))?,
            )),
        };
        let hw = Arc::new(HwState::default());
        let mut movement = Movement::new(
            Arc::clone(&host),
            Arc::clone(&hw),
            xxhash_rust::xxh3::xxh3_64(namespace.as_bytes()),
        )
        .with_events(Arc::clone(&events));
        if let Some(d) = disk {
            movement = movement.with_lower(Box::new(d), config.disk_admit);
        }
        if let Some(r) = &config.remote {
            let ns = xxhash_rust::xxh3::xxh3_64(namespace.as_bytes());
            let tier = RemoteTier::open(r, ns, &config.store_name, &dispatch);
            movement = movement.with_lower(Box::new(tier), config.remote_admit);
        }
        let sampler = config.hw_interval.and_then(|every| {
            let sched = Scheduler::new(SchedParams::new(params.block_bytes, movement.can_place_lower()));
            start_sampler(config.gpu_device, sched, &hw, every, &dispatch)
        });
        let semantic = config
            .semantic
            .on_for(&namespace)
            .then(|| crate::semantic::SemanticIndex::with_shared_counters(config.semantic.prompts, Arc::clone(&host)));
        let mgr = Self {
            config,
            hasher,
            movement,
            layout: RwLock::new(None),
            pool,
            exporter: Mutex::new(None),
            dispatch,
            hw,
            sampler: Mutex::new(sampler),
            deferred_blocks: std::sync::atomic::AtomicU64::new(0),
            pq_stats: Arc::default(),
            semantic,
            token_layout: RwLock::new(None),
            #[cfg(feature = "cuda")]
            device: RwLock::new(None),
            events,
        };
        if let Some(node) = mgr.hw.latest().and_then(|(_, d)| d.numa_node) {
            // The host tier near the GPU (pages faulted from now on, by any process).
            match mgr.movement.host().arena().prefer_numa_node(node) {
                Ok(()) => tracing::info!(node, "host tier placed on the GPU's NUMA node"),
                Err(e) => tracing::info!(node, error = %e, "host tier NUMA placement not applied"),
            }
        }
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

    /// Whether decode blocks are stored too (`TIERKV_STORE_DECODE`).
    pub fn store_decode(&self) -> bool {
        self.config.store_decode
    }

    /// Payload bytes of one block (all layers).
    pub fn block_bytes(&self) -> u64 {
        self.movement.host().block_bytes()
    }

    /// Telemetry samples taken, and the latest sample with the scheduler's
    /// decisions (none before the first sample, or with telemetry off).
    pub fn telemetry(&self) -> (u64, Option<(Telemetry, Decisions)>) {
        (self.hw.samples(), self.hw.latest())
    }

    /// A status snapshot of tier `id`: the host tier, or a lower tier when
    /// configured (`None` otherwise; the engine tier has none here).
    pub fn tier_status(&self, id: TierId) -> Option<TierStatus> {
        self.movement.status(id)
    }

    /// Waits until every lower tier has written what it accepted, up to `timeout`;
    /// whether it got there (before an engine's planned shutdown).
    pub fn flush(&self, timeout: std::time::Duration) -> bool {
        self.movement.wait_idle(timeout)
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
    /// (written to `tiers`, which must be at least as long as the run). A block in
    /// several tiers is reported in the fastest. A lookup is not a use (a scheduler
    /// may repeat it for a waiting request): loads and stores count for admission.
    pub fn lookup(&self, hashes: &[BlockHash], tiers: &mut [TierId]) -> Result<usize, ManagerError> {
        self.lookup_counted(hashes, tiers, true)
    }

    /// [`Manager::lookup`]; `count` false for a repeated lookup of a request whose
    /// first lookup was counted (a scheduler re-asks for a waiting request): only
    /// `tierkv_lookup_calls_total` then counts it.
    pub fn lookup_counted(
        &self,
        hashes: &[BlockHash],
        tiers: &mut [TierId],
        count: bool,
    ) -> Result<usize, ManagerError> {
        Ok(self.lookup_run(hashes, tiers, count)?.end)
    }

    /// [`Manager::lookup_counted`], also saying whether a lower tier (the remote
    /// one) is still finding out about the block after the run: the engine should
    /// ask again later instead of computing it. A pending answer is not counted.
    pub fn lookup_run(&self, hashes: &[BlockHash], tiers: &mut [TierId], count: bool) -> Result<Run, ManagerError> {
        self.movement
            .host()
            .stats()
            .lookup_calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut n = 0;
        if let Some(pool) = &self.pool {
            n = pool.lock().lookup(hashes);
        }
        tiers.iter_mut().take(n).for_each(|t| *t = TierId::Engine);
        Ok(self.movement.lookup(hashes, tiers, n, count)?)
    }

    /// Records the engine's KV memory layout in host memory (replacing any
    /// earlier layout, host or device).
    pub fn register_layout(&self, regions: &[Region], num_blocks: u64) -> Result<(), ManagerError> {
        let layout = EngineLayout::new(regions, num_blocks, self.movement.host().block_bytes())?;
        *self.layout.write() = Some(layout);
        // Token rows describe the old regions: the engine registers them again.
        self.token_layout.write().take();
        #[cfg(feature = "cuda")]
        self.device.write().take();
        Ok(())
    }

    /// Equal lengths, and every block id below `num_blocks` (of the registered
    /// host or device layout).
    fn check_blocks(num_blocks: u64, hashes: &[BlockHash], block_ids: &[u64]) -> Result<(), ManagerError> {
        if hashes.len() != block_ids.len() {
            return Err(ManagerError::InvalidArgument(
                "hashes and block ids differ in length".into(),
            ));
        }
        Self::check_range(num_blocks, block_ids)
    }

    /// Refuses a block id past the layout.
    fn check_range(num_blocks: u64, block_ids: &[u64]) -> Result<(), ManagerError> {
        if let Some(&b) = block_ids.iter().find(|&&b| b >= num_blocks) {
            return Err(ManagerError::InvalidArgument(format!(
                "block id {b} is out of range (layout has {num_blocks} blocks)"
            )));
        }
        Ok(())
    }

    /// [`Manager::check_blocks`] for loads: also refuses one destination block named
    /// twice (two identities copied into one block would both report `LOADED`).
    fn check_load_blocks(num_blocks: u64, hashes: &[BlockHash], block_ids: &[u64]) -> Result<(), ManagerError> {
        Self::check_blocks(num_blocks, hashes, block_ids)?;
        Self::check_distinct(block_ids)
    }

    /// Refuses an engine block named twice as a destination.
    fn check_distinct(block_ids: &[u64]) -> Result<(), ManagerError> {
        let mut seen = std::collections::HashSet::with_capacity(block_ids.len());
        if let Some(&b) = block_ids.iter().find(|&&b| !seen.insert(b)) {
            return Err(ManagerError::InvalidArgument(format!(
                "engine block {b} is the destination of two loads in one call"
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
        #[cfg(feature = "cuda")]
        if let Some(dev) = self.device.read().clone() {
            // SAFETY: this function's contract, for the device layout.
            return unsafe { self.store_device(&dev, hashes, block_ids, outcomes) };
        }
        let guard = self.layout.read();
        let layout = guard
            .as_ref()
            .ok_or(ManagerError::State("no engine layout registered"))?;
        Self::check_blocks(layout.num_blocks(), hashes, block_ids)?;
        // SAFETY: this function's contract, passed on.
        unsafe { self.store_in(layout, hashes, block_ids, outcomes) }
    }

    /// [`Manager::store_blocks`] on an explicit host-memory layout (the engine's,
    /// or a GPU link's staging buffer). Blocks are checked by the caller.
    ///
    /// # Safety
    /// As [`Manager::store_blocks`], for `layout`.
    unsafe fn store_in(
        &self,
        layout: &EngineLayout,
        hashes: &[BlockHash],
        block_ids: &[u64],
        outcomes: &mut [StoreOutcome],
    ) -> Result<(), ManagerError> {
        // SAFETY: this function's contract, passed on.
        Ok(unsafe { self.movement.store(layout, hashes, block_ids, outcomes) }?)
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
        // SAFETY: this function's contract, passed on.
        let r = unsafe { self.load_blocks_any(hashes, block_ids, outcomes) };
        self.count_loaded(outcomes);
        r
    }

    /// Counts the tokens of the `Loaded` outcomes (`tierkv_loaded_tokens_total`).
    pub(crate) fn count_loaded(&self, outcomes: &[LoadOutcome]) {
        let n = outcomes.iter().filter(|&&o| o == LoadOutcome::Loaded).count() as u64;
        self.movement
            .host()
            .stats()
            .loaded_tokens
            .fetch_add(n * self.block_tokens() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Records an error an engine adapter caught and degraded: `op` indexes
    /// [`ADAPTER_OPS`], `status` is the C status it got.
    pub fn record_adapter_error(&self, op: usize, status: i32) {
        let ops = ADAPTER_OPS.len();
        let col = usize::try_from(status)
            .ok()
            .filter(|&s| s < ADAPTER_STATUSES - 1)
            .unwrap_or(ADAPTER_STATUSES - 1);
        self.movement.host().stats().adapter_errors[op.min(ops - 1)][col]
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// [`Manager::load_blocks`] before counting.
    unsafe fn load_blocks_any(
        &self,
        hashes: &[BlockHash],
        block_ids: &[u64],
        outcomes: &mut [LoadOutcome],
    ) -> Result<(), ManagerError> {
        #[cfg(feature = "cuda")]
        if let Some(dev) = self.device.read().clone() {
            // SAFETY: this function's contract, for the device layout.
            return unsafe { self.load_device(&dev, hashes, block_ids, outcomes) };
        }
        let guard = self.layout.read();
        let layout = guard
            .as_ref()
            .ok_or(ManagerError::State("no engine layout registered"))?;
        Self::check_load_blocks(layout.num_blocks(), hashes, block_ids)?;
        // SAFETY: this function's contract, passed on.
        unsafe { self.load_in(layout, hashes, block_ids, outcomes) }
    }

    /// [`Manager::load_blocks`] on an explicit host-memory layout.
    ///
    /// # Safety
    /// As [`Manager::load_blocks`], for `layout`.
    unsafe fn load_in(
        &self,
        layout: &EngineLayout,
        hashes: &[BlockHash],
        block_ids: &[u64],
        outcomes: &mut [LoadOutcome],
    ) -> Result<(), ManagerError> {
        // SAFETY: this function's contract, passed on.
        Ok(unsafe { self.movement.load(layout, hashes, block_ids, outcomes) }?)
    }

    /// Whether the engine registered a layout in GPU memory.
    pub fn device_active(&self) -> bool {
        #[cfg(feature = "cuda")]
        {
            self.device.read().is_some()
        }
        #[cfg(not(feature = "cuda"))]
        {
            false
        }
    }

    /// Telemetry and the scheduler's latest decisions.
    pub fn hw(&self) -> &HwState {
        &self.hw
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        self.stop_exporter();
        self.sampler.lock().take();
    }
}

mod events;
mod metrics;
mod pool;
mod pq;
mod semantic;

mod device;

#[cfg(test)]
mod tests;
