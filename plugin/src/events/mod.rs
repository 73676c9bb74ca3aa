//! KV events: what this process did to the cache's tiers, for KV-aware routers.
//!
//! A router (vLLM's, llm-d's, Dynamo's) keeps, per engine, the set of blocks the
//! engine can serve without computing them, fed by events in vLLM's KV-event format
//! (`BlockStored` / `BlockRemoved` in a `KVEventBatch`, msgpack). vLLM publishes its
//! GPU blocks itself; tierkv adds the lower tiers: the host tier as medium `CPU`,
//! the disk tier (and any tier below it) as `STORAGE`, each naming its tier in the
//! `ownership` field (`tierkv:host`, `tierkv:disk`).
//!
//! Core types: [`EventLog`] (a bounded queue plus the engine's names for blocks),
//! [`BlockEvent`], [`encode_batch`] (vLLM's wire format).
//!
//! The rule for shared tiers (several engines on one host tier or disk directory):
//! an event is reported by the process whose call caused it, once. A store reports
//! `BlockStored` only when it wrote the block (another engine's copy already there
//! is no event); an eviction or removal reports `BlockRemoved` from the process
//! that evicted, whoever stored the block. A router that knows which engines share
//! a store (one `TIERKV_STORE_NAME` on one machine) treats that store's events as
//! one set.
//!
//! Names: events carry the engine's own block keys (vLLM's 64-bit block hashes),
//! not tierkv identities, so that a router can match them with the engine's GPU
//! events. The engine names the blocks it is about to store or load
//! ([`EventLog::name`]); the tier keeps the key with the block (the host arena's
//! slot, the disk block's header), so that whichever process later evicts the block
//! names it the same way. A block with no key (stored before events were on, or by
//! an engine that names nothing) produces no event; such events are counted
//! (`unnamed`).
//!
//! Workflow:
//! 1. The engine turns events on ([`EventLog::start`]); until then nothing is
//!    recorded and naming is a no-op (no cost for engines that do not publish).
//! 2. Per store or load, the engine names the blocks (key, parent key).
//! 3. Tiers record `Stored` when a write lands and `Removed` when they evict,
//!    discard (failed verification) or remove a block.
//! 4. The engine drains the queue each step ([`EventLog::take`]) and publishes.
//!    A full queue drops the oldest events, counted (`dropped`).

pub(crate) mod wire;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;

pub use wire::{encode_batch, MIN_BATCH_BYTES};

use crate::prefix::BlockHash;

/// Queue length when the engine asks for none in particular.
pub const DEFAULT_CAPACITY: usize = 1 << 16;
/// Names kept per process (oldest forgotten first): a few steps of stores and
/// loads of a large engine.
const NAMES_CAP: usize = 1 << 18;

/// What happened to a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Written into the tier by this process.
    Stored,
    /// Evicted, discarded or removed by this process.
    Removed,
}

/// Which tier an event is about (the tier's metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventTier {
    /// The shared host-memory tier (medium `CPU`).
    Host,
    /// The disk tier (medium `STORAGE`).
    Disk,
}

impl EventTier {
    /// vLLM's medium name.
    pub fn medium(self) -> &'static str {
        match self {
            EventTier::Host => "CPU",
            EventTier::Disk => "STORAGE",
        }
    }

    /// The `ownership` field: which secondary tier produced the event.
    pub fn ownership(self) -> &'static str {
        match self {
            EventTier::Host => "tierkv:host",
            EventTier::Disk => "tierkv:disk",
        }
    }
}

/// One event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockEvent {
    /// Stored or removed.
    pub kind: EventKind,
    /// The tier.
    pub tier: EventTier,
    /// The engine's key for the block (never 0).
    pub key: u64,
    /// The engine's key of the block before it in its sequence (0: none known).
    pub parent: u64,
}

/// Counters of the event log (for the metrics).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EventCounts {
    /// Events recorded.
    pub recorded: u64,
    /// Events dropped because the queue was full.
    pub dropped: u64,
    /// Tier changes not reported because the block had no key.
    pub unnamed: u64,
    /// Events waiting to be taken.
    pub queued: u64,
}

struct Names {
    map: HashMap<BlockHash, (u64, u64)>,
    order: VecDeque<BlockHash>,
}

/// The event queue of one process, and the engine's names for its blocks.
pub struct EventLog {
    on: AtomicBool,
    queue: Mutex<VecDeque<BlockEvent>>,
    capacity: AtomicU64,
    names: Mutex<Names>,
    recorded: AtomicU64,
    dropped: AtomicU64,
    unnamed: AtomicU64,
}

impl Default for EventLog {
    fn default() -> Self {
        Self::new()
    }
}

impl EventLog {
    /// A log that records nothing until [`EventLog::start`].
    pub fn new() -> Self {
        Self {
            on: AtomicBool::new(false),
            queue: Mutex::new(VecDeque::new()),
            capacity: AtomicU64::new(DEFAULT_CAPACITY as u64),
            names: Mutex::new(Names {
                map: HashMap::new(),
                order: VecDeque::new(),
            }),
            recorded: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            unnamed: AtomicU64::new(0),
        }
    }

    /// Turns recording on, keeping at most `capacity` events (0: the default).
    pub fn start(&self, capacity: usize) {
        let cap = if capacity == 0 { DEFAULT_CAPACITY } else { capacity };
        self.capacity.store(cap as u64, Ordering::Relaxed);
        self.on.store(true, Ordering::Release);
    }

    /// Whether events are recorded.
    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::Acquire)
    }

    /// Records the engine's `key` (and its parent's, 0 = none) for `hash`; the
    /// tiers keep it with the block. Key 0 means no name.
    pub fn name(&self, hash: BlockHash, key: u64, parent: u64) {
        if !self.is_on() || key == 0 {
            return;
        }
        let mut n = self.names.lock();
        if n.map.insert(hash, (key, parent)).is_none() {
            n.order.push_back(hash);
            while n.order.len() > NAMES_CAP {
                if let Some(old) = n.order.pop_front() {
                    n.map.remove(&old);
                }
            }
        }
    }

    /// The engine's (key, parent) for `hash`, (0, 0) when it named none.
    pub fn key_of(&self, hash: BlockHash) -> (u64, u64) {
        if !self.is_on() {
            return (0, 0);
        }
        self.names.lock().map.get(&hash).copied().unwrap_or((0, 0))
    }

    /// Records an event; a block without a key is counted, not queued.
    pub fn record(&self, kind: EventKind, tier: EventTier, key: u64, parent: u64) {
        if !self.is_on() {
            return;
        }
        if key == 0 {
            self.unnamed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let cap = self.capacity.load(Ordering::Relaxed) as usize;
        let mut q = self.queue.lock();
        while q.len() >= cap {
            q.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        q.push_back(BlockEvent {
            kind,
            tier,
            key,
            parent,
        });
        self.recorded.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes up to `max` events, oldest first.
    pub fn take(&self, max: usize) -> Vec<BlockEvent> {
        let mut q = self.queue.lock();
        let n = max.min(q.len());
        q.drain(..n).collect()
    }

    /// Puts events taken but not delivered back at the front, in order.
    pub fn give_back(&self, events: Vec<BlockEvent>) {
        let mut q = self.queue.lock();
        for e in events.into_iter().rev() {
            q.push_front(e);
        }
    }

    /// The counters.
    pub fn counts(&self) -> EventCounts {
        EventCounts {
            recorded: self.recorded.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            unnamed: self.unnamed.load(Ordering::Relaxed),
            queued: self.queue.lock().len() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_recorded_or_named_until_started() {
        let log = EventLog::new();
        log.name(BlockHash(1), 7, 0);
        log.record(EventKind::Stored, EventTier::Host, 7, 0);
        assert_eq!(log.key_of(BlockHash(1)), (0, 0));
        assert_eq!(log.counts(), EventCounts::default());
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts_them() {
        let log = EventLog::new();
        log.start(3);
        for k in 1..=5 {
            log.record(EventKind::Stored, EventTier::Disk, k, 0);
        }
        log.record(EventKind::Removed, EventTier::Disk, 0, 0);
        let c = log.counts();
        assert_eq!((c.recorded, c.dropped, c.unnamed, c.queued), (5, 2, 1, 3));
        let keys: Vec<u64> = log.take(10).iter().map(|e| e.key).collect();
        assert_eq!(keys, vec![3, 4, 5]);
    }

    #[test]
    fn events_given_back_come_first_in_order() {
        let log = EventLog::new();
        log.start(0);
        for k in 1..=4 {
            log.record(EventKind::Stored, EventTier::Host, k, 0);
        }
        let first = log.take(2);
        log.give_back(first);
        let keys: Vec<u64> = log.take(10).iter().map(|e| e.key).collect();
        assert_eq!(keys, vec![1, 2, 3, 4]);
    }

    #[test]
    fn names_are_kept_per_identity() {
        let log = EventLog::new();
        log.start(0);
        log.name(BlockHash(10), 100, 99);
        log.name(BlockHash(11), 0, 100);
        assert_eq!(log.key_of(BlockHash(10)), (100, 99));
        assert_eq!(log.key_of(BlockHash(11)), (0, 0));
    }
}
