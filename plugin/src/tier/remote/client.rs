//! [`Client`]: the tier's connection to the store, a standalone server or a
//! cluster, speaking the few commands the tier needs ([`super::wire`]).
//!
//! One connection per node, opened when first needed; the cluster's slot map
//! from `CLUSTER SLOTS` (asked again on `MOVED`), `ASK` followed with `ASKING`;
//! a standalone server is one node that owns every slot. Requests to one node
//! are pipelined. Every call is bounded by the settings' timeout; a connection
//! that saw any error is closed (a late reply must never answer the next
//! request), and a node that could not be reached is not tried again for
//! [`RETRY`] (its blocks are misses meanwhile, the other nodes serve).
//!
//! Why not a general client: a block's value is 1.4 MiB. Here a value is
//! written from the one buffer it was encoded into and read into one reused
//! buffer, once; the `redis` crate (1.8) copied each written value twice more
//! and spent about as much CPU per read again as the copy itself
//! (`cargo bench --bench remote`, docs/benchmarks.md).

use std::io::{self, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::{ClientConfig, ClientConnection, StreamOwned};

use super::settings::{node_of_url, Node as Addr, RemoteSettings};
use super::wire::{self, bad, command, read, read_value, Reply, Resp, SLOTS};
use super::{tls, RETRY};

/// Redirections followed for one request.
const MAX_REDIRECTS: usize = 3;

/// Why a request got no answer.
#[derive(Debug)]
pub enum Error {
    /// The connection failed (refused, timed out, closed, out of step).
    Io(io::Error),
    /// The store answered an error (out of memory, no node for the slot, ...).
    Store(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "{e}"),
            Self::Store(e) => write!(f, "the store answered: {e}"),
        }
    }
}

/// A connection's bytes: plain, or TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.read(buf),
            Self::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.write(buf),
            Self::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Plain(s) => s.flush(),
            Self::Tls(s) => s.flush(),
        }
    }
}

/// One connection to one node.
struct Wire {
    io: BufReader<Stream>,
}

impl Wire {
    fn connect(a: &Addr, timeout: Duration, tls: Option<&Arc<ClientConfig>>) -> io::Result<Self> {
        let host = a.host.trim_start_matches('[').trim_end_matches(']');
        let mut last = io::Error::new(
            io::ErrorKind::NotFound,
            format!("{host}:{} resolves to nothing", a.port),
        );
        for sa in (host, a.port).to_socket_addrs()? {
            match TcpStream::connect_timeout(&sa, timeout) {
                Ok(s) => {
                    s.set_nodelay(true)?;
                    s.set_read_timeout(Some(timeout))?;
                    s.set_write_timeout(Some(timeout))?;
                    let stream = match (a.tls, tls) {
                        (false, _) => Stream::Plain(s),
                        (true, Some(cfg)) => Stream::Tls(Box::new(tls::connect(cfg, host, s)?)),
                        (true, None) => return Err(io::Error::other("TLS is not configured")),
                    };
                    let mut w = Self {
                        io: BufReader::with_capacity(64 << 10, stream),
                    };
                    w.login(a)?;
                    return Ok(w);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn login(&mut self, a: &Addr) -> io::Result<()> {
        if let Some(pw) = &a.password {
            let req = match &a.user {
                Some(u) => command(&[b"AUTH", u.as_bytes(), pw.as_bytes()]),
                None => command(&[b"AUTH", pw.as_bytes()]),
            };
            match self.call(&req)? {
                Resp::Simple(_) => {}
                // The server's words, never the password.
                Resp::Error(e) => return Err(io::Error::new(io::ErrorKind::PermissionDenied, e)),
                _ => return Err(bad("an AUTH reply")),
            }
        }
        if a.db != 0 {
            if let Resp::Error(e) = self.call(&command(&[b"SELECT", a.db.to_string().as_bytes()]))? {
                return Err(io::Error::other(e));
            }
        }
        Ok(())
    }

    fn send(&mut self, req: &[u8]) -> io::Result<()> {
        let s = self.io.get_mut();
        s.write_all(req)?;
        s.flush()
    }

    fn call(&mut self, req: &[u8]) -> io::Result<Resp> {
        self.send(req)?;
        read(&mut self.io, 0)
    }
}

/// A node of the store and its connection.
struct Node {
    addr: Addr,
    conn: Option<Wire>,
    /// Not tried again before this (it could not be reached).
    skip_until: Option<Instant>,
}

/// The tier's connection to a standalone server or a cluster.
pub struct Client {
    timeout: Duration,
    tls: Option<Arc<ClientConfig>>,
    nodes: Vec<Node>,
    /// Node of each slot; empty for a standalone server (node 0 owns all).
    slots: Vec<u16>,
    /// Where values are read (reused: one allocation per client).
    buf: Vec<u8>,
    /// When the slot map was last asked for after a node failed.
    healed_at: Option<Instant>,
}

impl Client {
    /// Connects to the first seed that answers and learns who owns which slot;
    /// `tls` is the configuration of a `rediss://` store.
    pub fn open(s: &RemoteSettings, tls: Option<&Arc<ClientConfig>>) -> io::Result<Self> {
        let mut last = bad("no seed node");
        for url in &s.nodes {
            let Some(mut addr) = node_of_url(url) else {
                return Err(bad("a node URL"));
            };
            if addr.password.is_none() {
                addr.password.clone_from(&s.password);
            }
            let mut c = Self {
                timeout: s.timeout,
                tls: tls.cloned(),
                nodes: Vec::new(),
                slots: Vec::new(),
                buf: Vec::new(),
                healed_at: None,
            };
            match Wire::connect(&addr, s.timeout, tls) {
                Ok(w) => {
                    c.nodes.push(Node {
                        addr,
                        conn: Some(w),
                        skip_until: None,
                    });
                    match c.refresh(0) {
                        Ok(()) => return Ok(c),
                        Err(e) => last = e,
                    }
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Whether this is one standalone server (no slot map).
    pub fn standalone(&self) -> bool {
        self.slots.is_empty()
    }

    /// Asks node `via` for the slot map (`CLUSTER SLOTS`); a server without
    /// cluster support is standalone.
    fn refresh(&mut self, via: usize) -> io::Result<()> {
        let reply = self.call(via, &command(&[b"CLUSTER", b"SLOTS"]))?;
        let ranges = match reply {
            Resp::Error(e) if e.contains("cluster support disabled") => {
                // A standalone server: the one node owns everything.
                let n = self.nodes.swap_remove(via);
                self.nodes = vec![n];
                self.slots.clear();
                return Ok(());
            }
            Resp::Array(Some(r)) => r,
            other => return Err(bad(&format!("a CLUSTER SLOTS reply: {other:?}"))),
        };
        let mut slots = vec![u16::MAX; SLOTS];
        for range in ranges {
            let Resp::Array(Some(f)) = range else {
                return Err(bad("a slot range"));
            };
            let (Some(Resp::Int(lo)), Some(Resp::Int(hi)), Some(Resp::Array(Some(m)))) =
                (f.first(), f.get(1), f.get(2))
            else {
                return Err(bad("a slot range"));
            };
            let (Some(Resp::Bulk(Some(h))), Some(Resp::Int(p))) = (m.first(), m.get(1)) else {
                return Err(bad("a slot range's master"));
            };
            let host = match std::str::from_utf8(h) {
                // Unknown to the node itself: the address it was reached at.
                Ok("") | Ok("?") => self.nodes[via].addr.host.clone(),
                Ok(h) => h.to_string(),
                Err(_) => return Err(bad("a host name")),
            };
            let port = u16::try_from(*p).map_err(|_| bad("a port"))?;
            let (lo, hi) = (usize::try_from(*lo), usize::try_from(*hi));
            let (Ok(lo), Ok(hi)) = (lo, hi) else {
                return Err(bad("a slot range"));
            };
            if lo > hi || hi >= SLOTS {
                return Err(bad("a slot range out of bounds"));
            }
            let n = self.node(&host, port);
            slots[lo..=hi].iter_mut().for_each(|s| *s = n as u16);
        }
        self.slots = slots;
        Ok(())
    }

    /// The index of node `host:port` (same credentials as the seeds), added if new.
    fn node(&mut self, host: &str, port: u16) -> usize {
        if let Some(i) = self
            .nodes
            .iter()
            .position(|n| n.addr.host == host && n.addr.port == port)
        {
            return i;
        }
        let addr = Addr {
            host: host.to_string(),
            port,
            ..self.nodes[0].addr.clone()
        };
        self.nodes.push(Node {
            addr,
            conn: None,
            skip_until: None,
        });
        self.nodes.len() - 1
    }

    /// The node that serves `key`.
    fn owner(&self, key: &str) -> Result<usize, Error> {
        if self.slots.is_empty() {
            return Ok(0);
        }
        match self.slots[wire::slot(key.as_bytes()) as usize] {
            u16::MAX => Err(Error::Store("CLUSTERDOWN no node serves this key's slot".into())),
            n => Ok(n as usize),
        }
    }

    /// Node `n`'s connection, opened if needed.
    fn wire(&mut self, n: usize) -> io::Result<&mut Wire> {
        let node = &mut self.nodes[n];
        if node.conn.is_none() {
            if node.skip_until.is_some_and(|t| Instant::now() < t) {
                return Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    format!("{}:{} was unreachable moments ago", node.addr.host, node.addr.port),
                ));
            }
            match Wire::connect(&node.addr, self.timeout, self.tls.as_ref()) {
                Ok(w) => {
                    node.conn = Some(w);
                    node.skip_until = None;
                }
                Err(e) => {
                    node.skip_until = Some(Instant::now() + RETRY);
                    return Err(e);
                }
            }
        }
        node.conn.as_mut().ok_or_else(|| bad("no connection"))
    }

    /// `req` on node `n`; any failure closes the connection.
    fn call(&mut self, n: usize, req: &[u8]) -> io::Result<Resp> {
        let r = self.wire(n).and_then(|w| w.call(req));
        if r.is_err() {
            self.nodes[n].conn = None;
        }
        r
    }

    /// Node `n` failed: its connection is closed, and (a cluster, at most once
    /// per [`RETRY`]) the slot map is asked of another node, so that a replica
    /// promoted in its place serves its slots from then on.
    fn failed(&mut self, n: usize) {
        self.nodes[n].conn = None;
        if self.slots.is_empty() || self.healed_at.is_some_and(|t| t.elapsed() < RETRY) {
            return;
        }
        self.healed_at = Some(Instant::now());
        let now = Instant::now();
        for m in 0..self.nodes.len() {
            if m != n && self.nodes[m].skip_until.is_none_or(|t| now >= t) && self.refresh(m).is_ok() {
                return;
            }
        }
    }

    /// One request for `key`, following redirections; a value lands in `self.buf`.
    fn request(&mut self, key: &str, req: &[u8]) -> Result<Reply, Error> {
        let mut n = self.owner(key)?;
        let mut asking = false;
        for _ in 0..=MAX_REDIRECTS {
            let mut buf = std::mem::take(&mut self.buf);
            let r = self.wire(n).and_then(|w| {
                if asking {
                    w.send(&command(&[b"ASKING"]))?;
                }
                w.send(req)?;
                let first = read_value(&mut w.io, &mut buf)?;
                if !asking {
                    return Ok(first);
                }
                match first {
                    Reply::Other(Resp::Simple(_)) => read_value(&mut w.io, &mut buf),
                    // The request's reply is still due: out of step.
                    other => Err(bad(&format!("an ASKING reply: {other:?}"))),
                }
            });
            self.buf = buf;
            let reply = match r {
                Ok(r) => r,
                Err(e) => {
                    self.failed(n);
                    return Err(Error::Io(e));
                }
            };
            match reply {
                Reply::Other(Resp::Error(e)) if e.starts_with("MOVED ") || e.starts_with("ASK ") => {
                    let (to, ask) = self.redirected(n, &e).ok_or(Error::Store(e))?;
                    n = to;
                    asking = ask;
                }
                Reply::Other(Resp::Error(e)) => return Err(Error::Store(e)),
                other => return Ok(other),
            }
        }
        Err(Error::Store("too many redirections".into()))
    }

    /// Where a `MOVED`/`ASK` reply from node `from` sends the request, and
    /// whether it is `ASK` (a one-time redirection; `MOVED` renews the slot map).
    fn redirected(&mut self, from: usize, e: &str) -> Option<(usize, bool)> {
        let to = e.split_whitespace().nth(2)?;
        let (host, port) = to.rsplit_once(':')?;
        let port = port.parse().ok()?;
        let host = if host.is_empty() {
            self.nodes[from].addr.host.clone()
        } else {
            host.to_string()
        };
        let n = self.node(&host, port);
        if e.starts_with("ASK ") {
            return Some((n, true));
        }
        // The map changed: learn it from the node that owns the slot now.
        self.refresh(n).ok()?;
        Some((if self.slots.is_empty() { 0 } else { n }, false))
    }

    /// Writes a request made by [`wire::set_nx`] for `key`: `Ok(true)` stored,
    /// `Ok(false)` the key was there (another node of the fleet wrote it).
    pub fn set_nx(&mut self, key: &str, req: &[u8]) -> Result<bool, Error> {
        match self.request(key, req)? {
            Reply::Other(Resp::Simple(s)) if s == "OK" => Ok(true),
            Reply::Nil => Ok(false),
            other => Err(Error::Store(format!("unexpected reply to SET: {other:?}"))),
        }
    }

    /// `DEL key` (a value that did not verify).
    pub fn del(&mut self, key: &str) -> Result<(), Error> {
        match self.request(key, &command(&[b"DEL", key.as_bytes()]))? {
            Reply::Other(Resp::Int(_)) => Ok(()),
            other => Err(Error::Store(format!("unexpected reply to DEL: {other:?}"))),
        }
    }

    /// Whether each key exists: pipelined per node. A key whose node failed is
    /// an `Err`; the other nodes still answer.
    pub fn exists(&mut self, keys: &[String]) -> Vec<Result<bool, Error>> {
        let mut out: Vec<Option<Result<bool, Error>>> = keys.iter().map(|_| None).collect();
        self.pipeline(
            keys,
            |k| command(&[b"EXISTS", k.as_bytes()]),
            |j, r, _| {
                out[j] = Some(match r {
                    Ok(Reply::Other(Resp::Int(n))) => Ok(n > 0),
                    Ok(other) => Err(Error::Store(format!("unexpected reply to EXISTS: {other:?}"))),
                    Err(e) => Err(e),
                })
            },
        );
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::Store("no reply".into()))))
            .collect()
    }

    /// `GETEX key EX ttl` for each key, pipelined per node; `on(j, reply, buf)`
    /// gets key `j`'s value (`Reply::Value(len)`: `buf[..len]`), in any order.
    pub fn get_ex(&mut self, keys: &[String], ttl_s: u64, on: impl FnMut(usize, Result<Reply, Error>, &[u8])) {
        let ttl = ttl_s.to_string();
        self.pipeline(keys, |k| command(&[b"GETEX", k.as_bytes(), b"EX", ttl.as_bytes()]), on);
    }

    /// Sends the requests of `keys` to their nodes, each node's in one write,
    /// then reads the replies node by node; a redirected key is asked again on
    /// its own.
    fn pipeline(
        &mut self,
        keys: &[String],
        make: impl Fn(&str) -> Vec<u8>,
        mut on: impl FnMut(usize, Result<Reply, Error>, &[u8]),
    ) {
        let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
        for (j, k) in keys.iter().enumerate() {
            match self.owner(k) {
                Ok(n) => match groups.iter_mut().find(|(m, _)| *m == n) {
                    Some((_, g)) => g.push(j),
                    None => groups.push((n, vec![j])),
                },
                Err(e) => on(j, Err(e), &[]),
            }
        }
        let mut again = Vec::new();
        let mut buf = std::mem::take(&mut self.buf);
        // Every node's requests first, then the replies: the nodes work at once.
        let sent: Vec<Option<io::Error>> = groups
            .iter()
            .map(|(n, group)| {
                let req: Vec<u8> = group.iter().flat_map(|&j| make(&keys[j])).collect();
                self.wire(*n).and_then(|w| w.send(&req)).err()
            })
            .collect();
        for ((n, group), sent) in groups.into_iter().zip(sent) {
            let mut failed = sent;
            for &j in &group {
                if let Some(e) = &failed {
                    on(j, Err(Error::Io(io::Error::new(e.kind(), e.to_string()))), &[]);
                    continue;
                }
                let Some(w) = self.nodes[n].conn.as_mut() else {
                    failed = Some(bad("no connection"));
                    on(j, Err(Error::Io(bad("no connection"))), &[]);
                    continue;
                };
                match read_value(&mut w.io, &mut buf) {
                    Ok(Reply::Other(Resp::Error(e))) if e.starts_with("MOVED ") || e.starts_with("ASK ") => {
                        again.push(j)
                    }
                    Ok(Reply::Other(Resp::Error(e))) => on(j, Err(Error::Store(e)), &[]),
                    Ok(r) => on(j, Ok(r), &buf),
                    Err(e) => {
                        on(j, Err(Error::Io(io::Error::new(e.kind(), e.to_string()))), &[]);
                        failed = Some(e);
                    }
                }
            }
            if failed.is_some() {
                self.failed(n);
            }
        }
        self.buf = buf;
        for j in again {
            let r = self.request(&keys[j], &make(&keys[j]));
            let buf = std::mem::take(&mut self.buf);
            on(j, r, &buf);
            self.buf = buf;
        }
    }
}
