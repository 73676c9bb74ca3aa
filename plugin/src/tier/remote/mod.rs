//! The remote tier (G4): blocks in a Redis Cluster / Valkey cluster (or one
//! server) shared by every engine node of a fleet, behind the [`Tier`] contract.
//! The store evicts by its own `maxmemory` policy; tierkv keeps no second
//! eviction layer here.
//!
//! Core types: [`RemoteTier`], [`RemoteSettings`]; [`format`] (keys and values),
//! [`client::Conn`] (the connection), [`known::Known`] (what a lookup can answer
//! without the network).
//!
//! ```text
//!   lookup ──► Known (memory) ──unknown──► probe queue ──► prober thread ──EXISTS──► store
//!      ▲ "pending": ask again later          (answers land in Known)
//!   store ──► encode + checksum ──► write queue (bounded; full: dropped) ──► writer ──SET NX EX──► store
//!   load_into (the caller's loader thread) ──GETEX──► verify while copying ──► engine block
//! ```
//!
//! Workflow:
//! 1. [`Tier::lookup_run`] never waits for the store: a run of blocks known
//!    present counts; the first unknown block starts one probe for the rest of
//!    the run and [`Tier::pending`] says so, so the engine asks again later.
//! 2. [`Tier::store`] copies the block into a value (header, checksum) and queues
//!    it; the writer stores it `SET key value NX EX ttl` (a key another node
//!    wrote is never overwritten).
//! 3. [`Tier::load_into`] reads `GETEX key EX ttl` (a hit keeps the block),
//!    checks the header and verifies the payload while copying it out; a value
//!    that does not verify is deleted, counted and reported `Corrupt`.
//! 4. Faults (refused, timeouts, a dead node, the store down) are misses and
//!    dropped writes, counted; while down, the prober tries to reconnect every
//!    [`RETRY`] and the tier serves again when the store is back.

mod client;
pub mod format;
mod known;
mod report;
mod settings;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use parking_lot::Mutex;

use self::client::{broken, Conn};
use self::known::{Known, State};
pub use self::settings::{parse_url, redact, RemoteSettings, URL_FORMS};
use super::{BlockCtx, LoadOutcome, StoreOutcome, Tier, TierError, TierId, TierStatus};
use crate::metrics::{Histogram, Report};
use crate::prefix::BlockHash;

/// While the store is down, how often a connection is tried again.
pub const RETRY: Duration = Duration::from_secs(1);
/// How long queued writes are still written after the tier is closed (engines
/// flush before a planned shutdown; this bounds a shutdown against a stalled store).
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Keys asked for in one probe at most.
const PROBE_BATCH: usize = 256;
/// Writer threads (one connection each): a write is two copies and a round trip
/// of a large value, so one connection leaves the store idle part of the time.
const WRITERS: usize = 2;
/// Blocks asked for in one load pipeline.
const PIPELINE: usize = 4;
/// Idle connections kept for loads and writes.
const POOL: usize = 8;

const CONNECTING: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// Counters of the remote tier (`tierkv_remote_*`).
#[derive(Debug, Default)]
pub struct RemoteStats {
    /// Lookup hits served from this tier.
    pub hit_blocks: AtomicU64,
    /// Lookups answered "ask again later" (a probe in flight).
    pub lookups_pending: AtomicU64,
    /// Probe answers: present, absent, failed.
    pub probe_present: AtomicU64,
    /// See `probe_present`.
    pub probe_absent: AtomicU64,
    /// See `probe_present`.
    pub probe_errors: AtomicU64,
    /// Writes stored.
    pub written_blocks: AtomicU64,
    /// Bytes of values stored.
    pub written_bytes: AtomicU64,
    /// Writes that found the key already there (another node wrote it).
    pub write_exists: AtomicU64,
    /// Writes dropped: queue full.
    pub write_dropped: AtomicU64,
    /// Writes not queued: the store is down.
    pub write_down: AtomicU64,
    /// Writes that failed at the store.
    pub write_errors: AtomicU64,
    /// Blocks loaded and verified.
    pub read_blocks: AtomicU64,
    /// Bytes of payload loaded.
    pub read_bytes: AtomicU64,
    /// Loads that found no value (evicted, expired).
    pub read_misses: AtomicU64,
    /// Loads that failed at the store (served as misses).
    pub read_errors: AtomicU64,
    /// Values that did not verify (deleted; recomputed).
    pub checksum_failures: AtomicU64,
    /// Connections opened.
    pub connects: AtomicU64,
    /// Connections that could not be opened.
    pub connect_failures: AtomicU64,
    /// Latency of a load (the round trip, the verified copy).
    pub read_latency: Histogram,
    /// Latency of a write (the round trip).
    pub write_latency: Histogram,
}

struct Inner {
    s: RemoteSettings,
    namespace: u64,
    known: Mutex<Known>,
    stats: RemoteStats,
    state: AtomicU8,
    problem: Mutex<Option<String>>,
    retry_at: Mutex<Instant>,
    pool: Mutex<Vec<Conn>>,
    queued: AtomicU64,
    /// When the last manager let go (queued writes get `CLOSE_GRACE` more).
    closing: Mutex<Option<Instant>>,
}

/// One write: a block's key and value.
struct Write {
    hash: BlockHash,
    key: String,
    value: Vec<u8>,
}

/// The threads and queues of one store, shared by every manager of a process
/// that uses it with the same settings and namespace (vLLM's scheduler and
/// worker: what one learns or writes, the other knows; one set of counters).
struct Shared {
    inner: Arc<Inner>,
    writes: Option<Sender<Write>>,
    probes: Option<Sender<Vec<BlockHash>>>,
    threads: Vec<JoinHandle<()>>,
}

/// The remote tier of one manager.
pub struct RemoteTier {
    shared: Arc<Shared>,
    inner: Arc<Inner>,
}

/// The process's open stores, by settings, namespace and host store name.
type Registry = Vec<((RemoteSettings, u64, String), std::sync::Weak<Shared>)>;
static OPEN: Mutex<Registry> = Mutex::new(Vec::new());

impl Inner {
    fn key(&self, h: BlockHash) -> String {
        format::key(&self.s.prefix, self.namespace, h)
    }

    fn ttl_s(&self) -> u64 {
        self.s.ttl.as_secs().max(1)
    }

    /// Whether a connection may be tried now (not down, or its retry is due).
    fn may_try(&self, now: Instant) -> bool {
        self.state.load(Ordering::Relaxed) != DOWN || now >= *self.retry_at.lock()
    }

    /// An idle connection, or a new one; `None` while the store is down.
    fn conn(&self) -> Option<Conn> {
        if let Some(c) = self.pool.lock().pop() {
            return Some(c);
        }
        self.fresh()
    }

    /// A new connection, never a pooled one: after a failed pipeline a
    /// connection may still hold replies meant for it (a reply read later would
    /// answer another request), so it is dropped and the rest asked on this.
    fn fresh(&self) -> Option<Conn> {
        let now = Instant::now();
        if !self.may_try(now) {
            return None;
        }
        match Conn::open(&self.s) {
            Ok(c) => {
                self.stats.connects.fetch_add(1, Ordering::Relaxed);
                if self.state.swap(UP, Ordering::Relaxed) == DOWN {
                    tracing::info!("remote tier: store reachable again");
                }
                *self.problem.lock() = None;
                Some(c)
            }
            Err(e) => {
                self.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                *self.retry_at.lock() = now + RETRY;
                if self.state.swap(DOWN, Ordering::Relaxed) != DOWN {
                    tracing::warn!(error = %e, "remote tier: store unreachable; serving misses until it is back");
                }
                *self.problem.lock() = Some(format!("cannot connect to the store: {e}"));
                None
            }
        }
    }

    /// Returns a connection after a call. One that saw an error is dropped: a
    /// timed-out request's reply may still arrive and would answer the next
    /// request; the next call opens another (which also tells whether the store
    /// is down).
    fn done(&self, c: Conn, err: Option<&redis::RedisError>) {
        if err.is_some() {
            return;
        }
        let mut p = self.pool.lock();
        if p.len() < POOL {
            p.push(c);
        }
    }

    fn write(&self, w: Write) {
        let t0 = Instant::now();
        let Some(mut c) = self.conn() else {
            self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
            self.known.lock().forget(w.hash);
            return;
        };
        match c.set_nx(&w.key, &w.value, self.ttl_s()) {
            Ok(stored) => {
                let n = if stored {
                    self.stats
                        .written_bytes
                        .fetch_add(w.value.len() as u64, Ordering::Relaxed);
                    &self.stats.written_blocks
                } else {
                    &self.stats.write_exists
                };
                n.fetch_add(1, Ordering::Relaxed);
                self.stats.write_latency.observe_ns(t0.elapsed().as_nanos() as u64);
                self.known.lock().set(w.hash, State::Present, Instant::now());
                self.done(c, None);
            }
            Err(e) => {
                tracing::debug!(error = %e, "remote tier: write failed");
                self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                self.known.lock().forget(w.hash);
                self.done(c, Some(&e));
            }
        }
    }

    /// Counts a block loaded and verified (`value_len` with its header) and
    /// remembers it is in the store.
    fn loaded(&self, h: BlockHash, value_len: usize, t0: Instant) -> LoadOutcome {
        self.stats.read_blocks.fetch_add(1, Ordering::Relaxed);
        self.stats
            .read_bytes
            .fetch_add((value_len - format::HEADER) as u64, Ordering::Relaxed);
        self.stats.read_latency.observe_ns(t0.elapsed().as_nanos() as u64);
        self.known.lock().set(h, State::Present, Instant::now());
        LoadOutcome::Loaded
    }

    /// Asks the store about `keys` (the rest of a lookup run, in order): one
    /// pipeline; when it fails (a dead node fails a cluster's whole pipeline),
    /// key by key up to the first key that fails, so that the run's start on
    /// live nodes is still answered. Returns the answers of a leading part.
    fn ask(&self, keys: &[String]) -> Vec<bool> {
        let Some(mut c) = self.conn() else { return Vec::new() };
        match c.exists(keys) {
            Ok(v) if v.len() == keys.len() => {
                self.done(c, None);
                v
            }
            Ok(_) => {
                self.done(c, None);
                Vec::new()
            }
            Err(e) => {
                tracing::debug!(error = %e, "remote tier: probe failed; asking key by key");
                drop(c);
                let Some(mut c) = self.fresh() else { return Vec::new() };
                let mut out = Vec::new();
                let mut last = None;
                for k in keys {
                    match c.exists(std::slice::from_ref(k)) {
                        Ok(v) if v.len() == 1 => out.push(v[0]),
                        Ok(_) => break,
                        Err(e) => {
                            last = Some(e);
                            break;
                        }
                    }
                }
                self.done(c, Some(last.as_ref().unwrap_or(&e)));
                out
            }
        }
    }

    fn probe(&self, hashes: &[BlockHash]) {
        let keys: Vec<String> = hashes.iter().map(|&h| self.key(h)).collect();
        let answered = self.ask(&keys);
        let (known, failed) = hashes.split_at(answered.len());
        let now = Instant::now();
        let mut k = self.known.lock();
        for (&h, there) in known.iter().zip(answered) {
            let (s, c) = if there {
                (State::Present, &self.stats.probe_present)
            } else {
                (State::Absent, &self.stats.probe_absent)
            };
            c.fetch_add(1, Ordering::Relaxed);
            if k.get(h, now) != Some(State::Queued) {
                k.set(h, s, now);
            }
        }
        self.stats
            .probe_errors
            .fetch_add(failed.len() as u64, Ordering::Relaxed);
        for &h in failed {
            if k.get(h, now) == Some(State::Probing) {
                k.set(h, State::Absent, now);
            }
        }
    }
}

impl Shared {
    fn start(s: &RemoteSettings, namespace: u64, dispatch: &tracing::Dispatch) -> Self {
        let inner = Arc::new(Inner {
            s: s.clone(),
            namespace,
            known: Mutex::new(Known::new(s.timeout * 2 + Duration::from_millis(500))),
            stats: RemoteStats::default(),
            state: AtomicU8::new(CONNECTING),
            problem: Mutex::new(None),
            retry_at: Mutex::new(Instant::now()),
            pool: Mutex::new(Vec::new()),
            queued: AtomicU64::new(0),
            closing: Mutex::new(None),
        });
        let (wtx, wrx) = bounded::<Write>(s.queue.max(1));
        let (ptx, prx) = bounded::<Vec<BlockHash>>(64);
        let mut threads = Vec::new();
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            let d = dispatch.clone();
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || tracing::dispatcher::with_default(&d, f))
                .ok()
        };
        for _ in 0..WRITERS {
            let (i, rx) = (Arc::clone(&inner), wrx.clone());
            threads.extend(spawn("tierkv-remote-w", Box::new(move || writer(&i, &rx))));
        }
        let i = Arc::clone(&inner);
        threads.extend(spawn("tierkv-remote-p", Box::new(move || prober(&i, &prx))));
        Self {
            inner,
            writes: Some(wtx),
            probes: Some(ptx),
            threads,
        }
    }
}

impl RemoteTier {
    /// The tier for blocks of `namespace` (the digest written with every block).
    /// Connects in the background: a store that is down at start is a tier that
    /// answers misses until it is up. Managers of one process with equal settings,
    /// namespace and host store (`scope`: one machine's cache) share one
    /// connection state, queue and set of counters.
    pub fn open(s: &RemoteSettings, namespace: u64, scope: &str, dispatch: &tracing::Dispatch) -> Self {
        let key = (s.clone(), namespace, scope.to_string());
        let mut open = OPEN.lock();
        open.retain(|(_, w)| w.strong_count() > 0);
        let found = open.iter().find(|(k, _)| *k == key).and_then(|(_, w)| w.upgrade());
        let shared = found.unwrap_or_else(|| {
            let sh = Arc::new(Shared::start(s, namespace, dispatch));
            open.push((key, Arc::downgrade(&sh)));
            sh
        });
        Self {
            inner: Arc::clone(&shared.inner),
            shared,
        }
    }

    /// The counters.
    pub fn stats(&self) -> &RemoteStats {
        &self.inner.stats
    }

    /// Whether the store answered the last connection attempt.
    pub fn is_up(&self) -> bool {
        self.inner.state.load(Ordering::Relaxed) == UP
    }

    /// Writes accepted and not yet done.
    pub fn queued(&self) -> u64 {
        self.inner.queued.load(Ordering::Relaxed)
    }

    /// Serves one loaded value into `dst` if it verifies; deletes it if not.
    #[allow(clippy::too_many_arguments)]
    fn verify(
        &self,
        h: BlockHash,
        namespace: u64,
        key: &str,
        value: Option<Vec<u8>>,
        dst: &mut [&mut [u8]],
        c: &mut Conn,
        t0: Instant,
    ) -> LoadOutcome {
        let i = &*self.inner;
        let now = Instant::now();
        let Some(value) = value else {
            i.stats.read_misses.fetch_add(1, Ordering::Relaxed);
            i.known.lock().set(h, State::Absent, now);
            return LoadOutcome::Miss;
        };
        match format::decode_into(&value, h, namespace, dst) {
            Ok(()) => i.loaded(h, value.len(), t0),
            Err(_) => {
                // Read again on a new connection before judging the stored value
                // (a reply meant for another request must not delete this one).
                let Some(mut f) = i.fresh() else {
                    return LoadOutcome::Miss;
                };
                let again = match f.get_ex(key, i.ttl_s()) {
                    Ok(Some(v)) => format::decode_into(&v, h, namespace, dst).map(|()| v.len()),
                    Ok(None) => {
                        i.stats.read_misses.fetch_add(1, Ordering::Relaxed);
                        *c = f;
                        return LoadOutcome::Miss;
                    }
                    Err(_) => return LoadOutcome::Miss,
                };
                let outcome = match again {
                    Ok(len) => i.loaded(h, len, t0),
                    Err(why) => {
                        i.stats.checksum_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            ?why,
                            key,
                            "remote tier: a stored value did not verify; deleted, recomputed"
                        );
                        if let Err(e) = f.del(key) {
                            tracing::debug!(error = %e, "remote tier: deleting a bad value failed");
                        }
                        i.known.lock().set(h, State::Absent, now);
                        LoadOutcome::Corrupt
                    }
                };
                // The old connection may be out of step: keep the new one.
                *c = f;
                outcome
            }
        }
    }

    /// Keys whose presence or absence this process remembers.
    pub fn known_keys(&self) -> usize {
        self.inner.known.lock().len()
    }

    /// The settings.
    pub fn settings(&self) -> &RemoteSettings {
        &self.inner.s
    }
}

fn writer(i: &Inner, rx: &Receiver<Write>) {
    while let Ok(w) = rx.recv() {
        // Closing: what is queued is written for CLOSE_GRACE, then dropped (a
        // stalled store must not hold an engine's shutdown for queue x timeout).
        let late = i.closing.lock().is_some_and(|t| t.elapsed() > CLOSE_GRACE);
        if late {
            i.stats.write_dropped.fetch_add(1, Ordering::Relaxed);
            i.known.lock().forget(w.hash);
        } else {
            i.write(w);
        }
        i.queued.fetch_sub(1, Ordering::Relaxed);
    }
}

fn prober(i: &Inner, rx: &Receiver<Vec<BlockHash>>) {
    // At start, and whenever the store is down: connect without waiting for traffic.
    let mut idle_check = true;
    loop {
        if idle_check && i.state.load(Ordering::Relaxed) != UP && i.may_try(Instant::now()) {
            if let Some(c) = i.conn() {
                i.done(c, None);
            }
        }
        match rx.recv_timeout(RETRY) {
            Ok(mut batch) => {
                while batch.len() < PROBE_BATCH * 4 {
                    match rx.try_recv() {
                        Ok(more) => batch.extend(more),
                        Err(_) => break,
                    }
                }
                i.probe(&batch);
                idle_check = false;
            }
            Err(RecvTimeoutError::Timeout) => idle_check = true,
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        *self.inner.closing.lock() = Some(Instant::now());
        self.writes.take();
        self.probes.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Tier for RemoteTier {
    fn id(&self) -> TierId {
        TierId::Remote
    }

    fn lookup_run(&self, hashes: &[BlockHash]) -> Result<usize, TierError> {
        let now = Instant::now();
        let mut k = self.inner.known.lock();
        let mut n = 0;
        while n < hashes.len() {
            match k.get(hashes[n], now) {
                Some(State::Present) => n += 1,
                Some(_) => break,
                None => {
                    if !self.inner.may_try(now) {
                        break;
                    }
                    let batch: Vec<BlockHash> = hashes[n..]
                        .iter()
                        .copied()
                        .filter(|&h| k.get(h, now).is_none())
                        .take(PROBE_BATCH)
                        .collect();
                    let sent = self.shared.probes.as_ref().map(|p| p.try_send(batch.clone()));
                    if let Some(Ok(())) = sent {
                        batch.iter().for_each(|&h| k.set(h, State::Probing, now));
                    }
                    break;
                }
            }
        }
        Ok(n)
    }

    fn pending(&self, hash: BlockHash) -> bool {
        let p = self.inner.known.lock().get(hash, Instant::now()) == Some(State::Probing);
        if p {
            self.inner.stats.lookups_pending.fetch_add(1, Ordering::Relaxed);
        }
        p
    }

    fn holds(&self, hash: BlockHash) -> bool {
        matches!(
            self.inner.known.lock().get(hash, Instant::now()),
            Some(State::Present | State::Queued)
        )
    }

    fn record_hits(&self, blocks: u64) {
        self.inner.stats.hit_blocks.fetch_add(blocks, Ordering::Relaxed);
    }

    fn writable(&self) -> bool {
        self.inner.may_try(Instant::now())
    }

    fn store(&self, hash: BlockHash, ctx: BlockCtx, segs: &[&[u8]]) -> Result<StoreOutcome, TierError> {
        let i = &*self.inner;
        let now = Instant::now();
        if !i.may_try(now) {
            i.stats.write_down.fetch_add(1, Ordering::Relaxed);
            return Ok(StoreOutcome::NoSpace);
        }
        let Some(tx) = &self.shared.writes else {
            return Ok(StoreOutcome::NoSpace);
        };
        {
            let mut k = i.known.lock();
            if matches!(k.get(hash, now), Some(State::Present | State::Queued)) {
                return Ok(StoreOutcome::AlreadyPresent);
            }
            if tx.is_full() {
                // Dropped before the block is copied into a value.
                i.stats.write_dropped.fetch_add(1, Ordering::Relaxed);
                return Ok(StoreOutcome::NoSpace);
            }
            k.set(hash, State::Queued, now);
        }
        let w = Write {
            hash,
            key: i.key(hash),
            value: format::encode(hash, ctx.namespace, segs),
        };
        i.queued.fetch_add(1, Ordering::Relaxed);
        match tx.try_send(w) {
            Ok(()) => Ok(StoreOutcome::Stored),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                i.queued.fetch_sub(1, Ordering::Relaxed);
                i.known.lock().forget(hash);
                i.stats.write_dropped.fetch_add(1, Ordering::Relaxed);
                Ok(StoreOutcome::NoSpace)
            }
        }
    }

    fn load_into(
        &self,
        hashes: &[BlockHash],
        namespace: u64,
        dsts: &mut [Vec<&mut [u8]>],
        outcomes: &mut [LoadOutcome],
    ) -> Result<(), TierError> {
        let i = &*self.inner;
        outcomes.iter_mut().for_each(|o| *o = LoadOutcome::Miss);
        let Some(mut c) = i.conn() else {
            i.stats.read_errors.fetch_add(hashes.len() as u64, Ordering::Relaxed);
            return Ok(());
        };
        let mut err = None;
        let keys: Vec<String> = hashes.iter().map(|&h| format::key(&i.s.prefix, namespace, h)).collect();
        let mut at = 0;
        while at < hashes.len() {
            let t0 = Instant::now();
            let end = (at + PIPELINE).min(hashes.len());
            // One pipeline; when it fails (a dead node fails a cluster's whole
            // pipeline), key by key: each failure is that block's miss.
            let values: Vec<Option<Option<Vec<u8>>>> = match c.get_ex_many(&keys[at..end], i.ttl_s()) {
                Ok(v) if v.len() == end - at => v.into_iter().map(Some).collect(),
                _ => {
                    // Replies may be left in that connection: a new one.
                    match i.fresh() {
                        Some(f) => c = f,
                        None => {
                            i.stats
                                .read_errors
                                .fetch_add((hashes.len() - at) as u64, Ordering::Relaxed);
                            return Ok(());
                        }
                    }
                    (at..end)
                        .map(|j| match c.get_ex(&keys[j], i.ttl_s()) {
                            Ok(v) => Some(v),
                            Err(e) => {
                                tracing::debug!(error = %e, "remote tier: load failed");
                                err = Some(e);
                                None
                            }
                        })
                        .collect()
                }
            };
            for (j, value) in (at..end).zip(values) {
                let Some(value) = value else {
                    i.stats.read_errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                outcomes[j] = self.verify(hashes[j], namespace, &keys[j], value, &mut dsts[j], &mut c, t0);
            }
            if err.as_ref().is_some_and(broken) && matches!(c, Conn::Single(_)) {
                break; // the server is gone: the rest are misses
            }
            at = end;
        }
        i.done(c, err.as_ref());
        Ok(())
    }

    fn remove(&self, hash: BlockHash) -> Result<bool, TierError> {
        // The store is the fleet's: one node's caller drops only what it knows.
        self.inner.known.lock().forget(hash);
        Ok(false)
    }

    fn wait_idle(&self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while self.queued() > 0 {
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }

    fn status(&self) -> TierStatus {
        let up = self.is_up();
        TierStatus {
            up,
            problem: self.inner.problem.lock().clone(),
            writable: self.writable(),
            pending_writes: self.queued(),
            consistent: true,
            ..TierStatus::default()
        }
    }

    fn report(&self, r: &mut Report) {
        report::report(self, r);
    }
}
