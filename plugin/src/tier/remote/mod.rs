//! The remote tier (G4): blocks in a Redis Cluster / Valkey cluster (or one
//! server) shared by every engine node of a fleet, behind the [`Tier`] contract.
//! The store evicts by its own `maxmemory` policy; tierkv keeps no second
//! eviction layer here.
//!
//! Core types: [`RemoteTier`], [`RemoteSettings`]; [`format`] (keys and values),
//! [`client::Client`] (the connection), [`known::Known`] (what a lookup can answer
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
mod tls;
mod wire;

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use parking_lot::Mutex;

use self::client::{Client, Error};
use self::known::{Known, State};
pub use self::settings::{parse_url, redact, RemoteSettings, TlsFiles, URL_FORMS};
pub use self::tls::client_config as tls_config;
use self::wire::Reply;
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
/// Writer threads (one connection per node each): a write is a round trip of a
/// large value, so one connection leaves the store idle part of the time.
const WRITERS: usize = 3;
/// Blocks asked for in one load pipeline (spread over the nodes that hold them,
/// which work at once; read one at a time into one reused buffer).
const PIPELINE: usize = 8;
/// Idle clients kept for loads and probes.
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
    /// TLS of a `rediss://` store (`Err`: why it cannot be set up).
    tls: Result<Option<Arc<rustls::ClientConfig>>, String>,
    namespace: u64,
    known: Mutex<Known>,
    stats: RemoteStats,
    state: AtomicU8,
    problem: Mutex<Option<String>>,
    retry_at: Mutex<Instant>,
    pool: Mutex<Vec<Client>>,
    queued: AtomicU64,
    /// When the last manager let go (queued writes get `CLOSE_GRACE` more).
    closing: Mutex<Option<Instant>>,
}

/// One write: a block's key and its whole request (`SET key value NX EX ttl`,
/// packed once as the value was encoded: [`wire::set_nx`]).
struct Write {
    hash: BlockHash,
    key: String,
    request: Vec<u8>,
    value_len: usize,
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

    /// An idle client, or a new one; `None` while the store is down.
    fn client(&self) -> Option<Client> {
        if let Some(c) = self.pool.lock().pop() {
            return Some(c);
        }
        let now = Instant::now();
        if !self.may_try(now) {
            return None;
        }
        self.opened(now, self.open_client())
    }

    fn open_client(&self) -> std::io::Result<Client> {
        match &self.tls {
            Ok(t) => Client::open(&self.s, t.as_ref()),
            Err(e) => Err(std::io::Error::other(format!("TLS: {e}"))),
        }
    }

    /// Records whether connecting to the store worked: up, or down until
    /// [`RETRY`] from `now`.
    fn opened<T, E: std::fmt::Display>(&self, now: Instant, r: Result<T, E>) -> Option<T> {
        match r {
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

    /// Returns a client after a call. A standalone server's client that saw a
    /// connection failure is dropped: the next call opens another, which tells
    /// whether the store is down. A cluster's keeps its other nodes' connections
    /// (the failed node is closed and skipped for a while).
    fn done(&self, c: Client, err: Option<&Error>) {
        if matches!(err, Some(Error::Io(_))) && c.standalone() {
            return;
        }
        let mut p = self.pool.lock();
        if p.len() < POOL {
            p.push(c);
        }
    }

    /// Stores `w` through the writer thread's own client (opened when needed).
    fn write(&self, client: &mut Option<Client>, w: &Write) {
        let t0 = Instant::now();
        if client.is_none() && self.may_try(t0) {
            *client = self.opened(t0, self.open_client());
        }
        let Some(r) = client.as_mut() else {
            self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
            self.known.lock().forget(w.hash);
            return;
        };
        match r.set_nx(&w.key, &w.request) {
            Ok(stored) => {
                let n = if stored {
                    self.stats
                        .written_bytes
                        .fetch_add(w.value_len as u64, Ordering::Relaxed);
                    &self.stats.written_blocks
                } else {
                    &self.stats.write_exists
                };
                n.fetch_add(1, Ordering::Relaxed);
                self.stats.write_latency.observe_ns(t0.elapsed().as_nanos() as u64);
                self.known.lock().set(w.hash, State::Present, Instant::now());
            }
            Err(e) => {
                tracing::debug!(error = %e, "remote tier: write failed");
                self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                self.known.lock().forget(w.hash);
                // A standalone server that failed: open again next time (which
                // tells whether it is down). A cluster's router keeps its other
                // nodes; the failed node is skipped for a while.
                if matches!(e, Error::Io(_)) && r.standalone() {
                    *client = None;
                }
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

    /// Asks the store about `keys` (the rest of a lookup run, in order), one
    /// pipeline per node. Returns the answers of the leading part that was
    /// answered (a dead node's keys end it; the run's start on live nodes counts).
    fn ask(&self, keys: &[String]) -> Vec<bool> {
        let Some(mut c) = self.client() else { return Vec::new() };
        let answers = c.exists(keys);
        let mut out = Vec::with_capacity(keys.len());
        let mut err = None;
        for a in answers {
            match a {
                Ok(b) if err.is_none() => out.push(b),
                Ok(_) => {}
                Err(e) => {
                    if err.is_none() {
                        tracing::debug!(error = %e, "remote tier: probe failed");
                    }
                    // An I/O failure decides what happens to the client.
                    if err.is_none() || matches!(e, Error::Io(_)) {
                        err = Some(e);
                    }
                }
            }
        }
        self.done(c, err.as_ref());
        out
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
        let tls = if s.uses_tls() {
            tls::client_config(&s.tls).map(Some)
        } else {
            Ok(None)
        };
        let inner = Arc::new(Inner {
            s: s.clone(),
            tls,
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

    /// A value that did not verify, read again before it is judged: served if
    /// it verifies now; else deleted, counted and reported `Corrupt`.
    #[allow(clippy::too_many_arguments)]
    fn recheck(
        &self,
        c: &mut Client,
        h: BlockHash,
        namespace: u64,
        key: &str,
        dst: &mut [&mut [u8]],
        t0: Instant,
    ) -> LoadOutcome {
        let i = &*self.inner;
        let mut again = None;
        c.get_ex(std::slice::from_ref(&key.to_string()), i.ttl_s(), |_, r, buf| {
            again = Some(match r {
                Ok(Reply::Value(n)) => Some(format::decode_into(&buf[..n], h, namespace, dst).map(|()| n)),
                Ok(_) => None,
                Err(_) => None,
            })
        });
        match again.flatten() {
            Some(Ok(len)) => i.loaded(h, len, t0),
            Some(Err(why)) => {
                i.stats.checksum_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    ?why,
                    key,
                    "remote tier: a stored value did not verify; deleted, recomputed"
                );
                if let Err(e) = c.del(key) {
                    tracing::debug!(error = %e, "remote tier: deleting a bad value failed");
                }
                i.known.lock().set(h, State::Absent, Instant::now());
                LoadOutcome::Corrupt
            }
            // Gone, or the store failed: a miss.
            None => {
                i.stats.read_misses.fetch_add(1, Ordering::Relaxed);
                LoadOutcome::Miss
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
    let mut client = None;
    while let Ok(w) = rx.recv() {
        // Closing: what is queued is written for CLOSE_GRACE, then dropped (a
        // stalled store must not hold an engine's shutdown for queue x timeout).
        let late = i.closing.lock().is_some_and(|t| t.elapsed() > CLOSE_GRACE);
        if late {
            i.stats.write_dropped.fetch_add(1, Ordering::Relaxed);
            i.known.lock().forget(w.hash);
        } else {
            i.write(&mut client, &w);
        }
        i.queued.fetch_sub(1, Ordering::Relaxed);
    }
}

fn prober(i: &Inner, rx: &Receiver<Vec<BlockHash>>) {
    // At start, and whenever the store is down: connect without waiting for traffic.
    let mut idle_check = true;
    loop {
        if idle_check && i.state.load(Ordering::Relaxed) != UP && i.may_try(Instant::now()) {
            if let Some(c) = i.client() {
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
        let key = i.key(hash);
        let value_len = format::value_len(segs);
        let request = wire::set_nx(&key, value_len, i.ttl_s(), |v| {
            format::encode_into(v, hash, ctx.namespace, segs)
        });
        let w = Write {
            hash,
            key,
            request,
            value_len,
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
        let Some(mut c) = i.client() else {
            i.stats.read_errors.fetch_add(hashes.len() as u64, Ordering::Relaxed);
            return Ok(());
        };
        let keys: Vec<String> = hashes.iter().map(|&h| format::key(&i.s.prefix, namespace, h)).collect();
        let mut err: Option<Error> = None;
        let mut suspect = Vec::new();
        let mut at = 0;
        while at < hashes.len() {
            let t0 = Instant::now();
            let end = (at + PIPELINE).min(hashes.len());
            c.get_ex(&keys[at..end], i.ttl_s(), |j, r, buf| {
                let j = at + j;
                match r {
                    Ok(Reply::Value(n)) => match format::decode_into(&buf[..n], hashes[j], namespace, &mut dsts[j]) {
                        Ok(()) => outcomes[j] = i.loaded(hashes[j], n, t0),
                        Err(_) => suspect.push((j, t0)),
                    },
                    Ok(Reply::Nil) => {
                        i.stats.read_misses.fetch_add(1, Ordering::Relaxed);
                        i.known.lock().set(hashes[j], State::Absent, Instant::now());
                    }
                    Ok(Reply::Other(_)) => {
                        i.stats.read_errors.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "remote tier: load failed");
                        i.stats.read_errors.fetch_add(1, Ordering::Relaxed);
                        if err.is_none() || matches!(e, Error::Io(_)) {
                            err = Some(e);
                        }
                    }
                }
            });
            at = end;
            if matches!(err, Some(Error::Io(_))) && c.standalone() && at < hashes.len() {
                // The server is gone: the rest are misses.
                i.stats
                    .read_errors
                    .fetch_add((hashes.len() - at) as u64, Ordering::Relaxed);
                break;
            }
        }
        for (j, t0) in suspect {
            outcomes[j] = self.recheck(&mut c, hashes[j], namespace, &keys[j], &mut dsts[j], t0);
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
