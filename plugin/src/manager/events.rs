//! KV events through the facade: turning them on, naming blocks, draining them
//! in vLLM's wire format (see [`crate::events`] for the rules).

use std::time::{SystemTime, UNIX_EPOCH};

use super::{Manager, ManagerError};
use crate::events::encode_batch;
use crate::metrics::Report;
use crate::prefix::BlockHash;

/// What one [`Manager::take_events`] call delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventsTaken {
    /// Bytes of the encoded batch written (0 when there were no events).
    pub bytes: usize,
    /// Events in the batch.
    pub events: usize,
    /// Events still queued (they did not fit; take again).
    pub remaining: usize,
}

/// Events a batch is built from at most (what does not fit stays queued).
const BATCH_EVENTS: usize = 4096;

impl Manager {
    /// Starts recording KV events of this manager's tiers, keeping at most
    /// `capacity` undelivered ones (0: the default, 65536).
    pub fn events_start(&self, capacity: usize) {
        self.events.start(capacity);
    }

    /// Whether KV events are recorded.
    pub fn events_on(&self) -> bool {
        self.events.is_on()
    }

    /// The engine's names for blocks it is about to store or load: `keys[i]` (and
    /// `parents[i]`, 0: none) for `hashes[i]`. Key 0 names nothing. A no-op while
    /// events are off.
    pub fn name_blocks(&self, hashes: &[BlockHash], keys: &[u64], parents: Option<&[u64]>) -> Result<(), ManagerError> {
        if keys.len() != hashes.len() || parents.is_some_and(|p| p.len() != hashes.len()) {
            return Err(ManagerError::InvalidArgument(
                "hashes, keys and parents must have the same length".into(),
            ));
        }
        for (i, (&h, &k)) in hashes.iter().zip(keys).enumerate() {
            self.events.name(h, k, parents.map_or(0, |p| p[i]));
        }
        Ok(())
    }

    /// Encodes the oldest queued events as one `KVEventBatch` (msgpack, vLLM's
    /// wire format) into `out`, as many as fit. A buffer too small for even one
    /// event is an error (512 bytes always suffice).
    pub fn take_events(&self, out: &mut [u8]) -> Result<EventsTaken, ManagerError> {
        let events = self.events.take(BATCH_EVENTS);
        if events.is_empty() {
            return Ok(EventsTaken {
                bytes: 0,
                events: 0,
                remaining: self.events.counts().queued as usize,
            });
        }
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let Some((bytes, used)) = encode_batch(&events, ts, self.block_tokens() as u32, out.len()) else {
            self.events.give_back(events);
            return Err(ManagerError::InvalidArgument(format!(
                "an event batch needs more than {} bytes",
                out.len()
            )));
        };
        out[..bytes.len()].copy_from_slice(&bytes);
        self.events.give_back(events[used..].to_vec());
        Ok(EventsTaken {
            bytes: bytes.len(),
            events: used,
            remaining: self.events.counts().queued as usize,
        })
    }

    /// The event log's series.
    pub(super) fn report_events(&self, r: &mut Report) {
        let c = self.events.counts();
        r.gauge(
            "tierkv_events_enabled",
            "Whether KV events (BlockStored/BlockRemoved for the lower tiers) are recorded.",
            &[("", u64::from(self.events_on()))],
        );
        r.counter(
            "tierkv_events_total",
            "KV events: recorded, dropped (queue full before the engine took them), unnamed (a tier change of a block the engine never named: not reported).",
            &[
                ("outcome=\"recorded\"", c.recorded),
                ("outcome=\"dropped\"", c.dropped),
                ("outcome=\"unnamed\"", c.unnamed),
            ],
        );
        r.gauge(
            "tierkv_events_queued",
            "KV events waiting for the engine to take them.",
            &[("", c.queued)],
        );
    }
}
