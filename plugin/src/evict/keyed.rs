//! Eviction over identity keys: the policies of the disk tier, also driven by the
//! trace replayer (`integration/replay`).
//!
//! Core types: [`Policy`] (the contract every policy keeps), [`Access`] (a key with
//! the request it came in, its depth in that request's block chain, whether it ends
//! the chain, and the time), [`PolicyKind`] (the configured choice) and the
//! implementations [`Hazard`] (`hazard.rs`: learned reuse odds, with admission),
//! [`Lru`], [`S3Fifo`] and [`Chat`].
//!
//! Workflow (the caller is the disk tier's index, or the replayer):
//! 1. A resident key that is used again: [`Policy::on_hit`].
//! 2. A key that becomes resident: [`Policy::on_insert`] (when full: only if
//!    [`Policy::admit`] agrees, after making room with [`Policy::evict`]).
//! 3. A key that leaves for another reason (corrupt, invalidated): [`Policy::on_remove`].
//!
//! Why depth matters: a prefix hit stops at the first missing block, so a block whose
//! parent is gone is worth nothing. [`Chat`] orders the blocks one request touched
//! tail first, so a chain is peeled from its end and what stays is still a prefix:
//!
//! ```text
//!   request r touches b0 b1 b2 b3     plain LRU, victim first:  b0 b1 b2 b3
//!                                     chain order, victim first: b3 b2 b1 b0
//! ```

use std::collections::{HashMap, VecDeque};

use crate::evict::list::{ChainList, LinkStore, ListEnds, NIL};

mod hazard;
pub use hazard::Hazard;

/// How many candidates one eviction inspects before giving up (all pinned).
const SCAN_LIMIT: usize = 256;

/// One use of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// The block's key (its identity folded to 64 bits).
    pub key: u64,
    /// The request (lookup, load or store batch) it came in; consecutive accesses
    /// with the same request are one chain.
    pub request: u64,
    /// Position of the block in that request's chain (0 = first block).
    pub depth: u32,
    /// Whether the block is the last of that request's chain (the end of a
    /// prompt, or of a store batch).
    pub last: bool,
    /// When the access happened, in milliseconds on the caller's clock (a tier's
    /// time since it opened; a trace's arrival times). Only differences are used;
    /// it never goes back for one policy.
    pub now_ms: u64,
}

/// An eviction policy over keys.
///
/// The caller guarantees: `on_insert` only for a key that is not resident, `on_hit`
/// and `on_remove` only for resident keys. An implementation must: keep every call
/// O(1) amortised (an eviction inspects at most a bounded number of candidates), and
/// return from [`Policy::evict`] only a resident key for which `evictable` is true,
/// which it no longer counts as resident.
pub trait Policy: Send {
    /// Short name (`lru`, `s3fifo`, `chat`).
    fn name(&self) -> &'static str;
    /// Resident keys.
    fn len(&self) -> usize;
    /// Whether nothing is resident.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// A resident key was used.
    fn on_hit(&mut self, a: Access);
    /// A key became resident. Inserting a resident key again counts as a hit
    /// (never a second entry).
    fn on_insert(&mut self, a: Access);
    /// A resident key left for another reason than eviction.
    fn on_remove(&mut self, key: u64);
    /// Chooses, removes and returns a victim among the keys `evictable` accepts.
    fn evict(&mut self, evictable: &mut dyn FnMut(u64) -> bool) -> Option<u64>;
    /// Whether a missing key `a` should enter a full cache (the caller then
    /// evicts and inserts it) or be turned away. Asked only when full; the default
    /// admits everything.
    fn admit(&mut self, a: Access, evictable: &mut dyn FnMut(u64) -> bool) -> bool {
        let _ = (a, evictable);
        true
    }
    /// A resident key is now `held` (it cannot be evicted until released) or
    /// released, for a caller where most resident keys are held at any time (the
    /// engine block pool: every running request's blocks), so that a policy may
    /// leave held keys out of its victim search instead of skipping them one by
    /// one. [`Policy::evict`] still gets `evictable`. The default does nothing.
    fn set_held(&mut self, key: u64, held: bool) {
        let _ = (key, held);
    }
}

/// The policies by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    /// Least recently used.
    Lru,
    /// S3-FIFO (small, main and ghost FIFOs; scan resistant).
    S3Fifo,
    /// Chain-ordered probation/protected segments with a ghost list, for chat.
    Chat,
    /// Learned reuse odds per class, with admission ([`Hazard`]).
    Hazard,
}

impl PolicyKind {
    /// Every policy, in the order tables list them.
    pub const ALL: [Self; 4] = [Self::Lru, Self::S3Fifo, Self::Chat, Self::Hazard];

    /// Parses `lru`, `s3fifo`, `chat` or `hazard`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "lru" => Some(Self::Lru),
            "s3fifo" | "s3-fifo" => Some(Self::S3Fifo),
            "chat" => Some(Self::Chat),
            "hazard" => Some(Self::Hazard),
            _ => None,
        }
    }

    /// A policy for `capacity` keys.
    pub fn build(self, capacity: usize) -> Box<dyn Policy> {
        match self {
            Self::Lru => Box::new(Lru::default()),
            Self::S3Fifo => Box::new(S3Fifo::new(capacity)),
            Self::Chat => Box::new(Chat::new(capacity)),
            Self::Hazard => Box::new(Hazard::new(capacity)),
        }
    }
}

/// A map over the policies' keys (identities folded to 64 bits: already uniform),
/// hashed by [`KeyHash`].
pub type KeyMap<V> = HashMap<u64, V, KeyHash>;

/// Hashing of policy keys: one multiply-xorshift finaliser (MurmurHash3's fmix64)
/// over the key and a per-process random seed; a fraction of SipHash's cost on
/// the hot path, and a caller that chooses identities (the engine pool's come
/// from its caller) cannot aim many of them at one bucket without the seed.
#[derive(Debug, Clone, Copy)]
pub struct KeyHash {
    seed: u64,
}

impl Default for KeyHash {
    fn default() -> Self {
        static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        let seed = *SEED.get_or_init(|| {
            use std::hash::BuildHasher;
            std::collections::hash_map::RandomState::new().hash_one(0x7165_726b_7674_u64)
        });
        Self { seed }
    }
}

impl std::hash::BuildHasher for KeyHash {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(self.seed)
    }
}

/// The hasher [`KeyHash`] builds.
#[derive(Debug, Clone, Copy)]
pub struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        x ^ (x >> 33)
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0 ^ x).rotate_left(29).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// Resident keys with their links and a small per-policy tag.
#[derive(Debug, Default)]
struct Nodes {
    map: KeyMap<u32>,
    keys: Vec<u64>,
    links: Vec<(u32, u32)>,
    tag: Vec<u8>,
    free: Vec<u32>,
}

impl LinkStore for Nodes {
    fn links(&self, i: u32) -> (u32, u32) {
        self.links[i as usize]
    }
    fn set_links(&mut self, i: u32, prev: u32, next: u32) {
        self.links[i as usize] = (prev, next);
    }
}

impl Nodes {
    fn get(&self, key: u64) -> Option<u32> {
        self.map.get(&key).copied()
    }

    fn add(&mut self, key: u64, tag: u8) -> u32 {
        let i = match self.free.pop() {
            Some(i) => {
                self.keys[i as usize] = key;
                self.tag[i as usize] = tag;
                i
            }
            None => {
                self.keys.push(key);
                self.links.push((NIL, NIL));
                self.tag.push(tag);
                (self.keys.len() - 1) as u32
            }
        };
        let old = self.map.insert(key, i);
        debug_assert!(old.is_none(), "key inserted twice");
        i
    }

    fn release(&mut self, i: u32) -> u64 {
        let key = self.keys[i as usize];
        self.map.remove(&key);
        self.free.push(i);
        key
    }

    fn key(&self, i: u32) -> u64 {
        self.keys[i as usize]
    }

    fn tag(&self, i: u32) -> u8 {
        self.tag[i as usize]
    }

    fn set_tag(&mut self, i: u32, t: u8) {
        self.tag[i as usize] = t;
    }
}

/// Keys evicted recently (no data, `V`: what a policy keeps about each), FIFO with
/// a bound; a later insert of one of them is evidence of reuse.
#[derive(Debug)]
struct Ghost<V = ()> {
    order: VecDeque<(u64, u64)>,
    live: KeyMap<(u64, V)>,
    next: u64,
    cap: usize,
}

impl<V: Copy> Ghost<V> {
    fn new(cap: usize) -> Self {
        Self {
            order: VecDeque::new(),
            live: KeyMap::default(),
            next: 0,
            cap: cap.max(1),
        }
    }

    fn push(&mut self, key: u64, v: V) {
        self.next += 1;
        self.live.insert(key, (self.next, v));
        self.order.push_back((key, self.next));
        while self.live.len() > self.cap {
            let Some((k, g)) = self.order.pop_front() else { break };
            if self.live.get(&k).is_some_and(|e| e.0 == g) {
                self.live.remove(&k);
            }
        }
        // Stale entries (taken out by `take`) are bounded by twice the live count.
        if self.order.len() > 2 * self.cap + 16 {
            let live = &self.live;
            self.order.retain(|(k, g)| live.get(k).is_some_and(|e| e.0 == *g));
        }
    }

    fn peek(&self, key: u64) -> Option<V> {
        self.live.get(&key).map(|e| e.1)
    }

    fn take(&mut self, key: u64) -> Option<V> {
        self.live.remove(&key).map(|e| e.1)
    }
}

/// Scans `list` from its head for an evictable node, at most [`SCAN_LIMIT`] nodes.
fn find_victim(list: &ListEnds, n: &Nodes, evictable: &mut dyn FnMut(u64) -> bool) -> Option<u32> {
    let mut cur = list.head;
    for _ in 0..SCAN_LIMIT {
        if cur == NIL {
            return None;
        }
        if evictable(n.key(cur)) {
            return Some(cur);
        }
        cur = n.links(cur).1;
    }
    None
}

/// Least recently used.
#[derive(Debug, Default)]
pub struct Lru {
    n: Nodes,
    list: ListEnds,
}

impl Policy for Lru {
    fn name(&self) -> &'static str {
        "lru"
    }
    fn len(&self) -> usize {
        self.list.len as usize
    }
    fn on_hit(&mut self, a: Access) {
        if let Some(i) = self.n.get(a.key) {
            self.list.move_to_back(&mut self.n, i);
        }
    }
    fn on_insert(&mut self, a: Access) {
        if self.n.get(a.key).is_some() {
            // Idempotent: a key inserted twice is one resident key, now used.
            return self.on_hit(a);
        }
        let i = self.n.add(a.key, 0);
        self.list.push_back(&mut self.n, i);
    }
    fn on_remove(&mut self, key: u64) {
        if let Some(i) = self.n.get(key) {
            self.list.remove(&mut self.n, i);
            self.n.release(i);
        }
    }
    fn evict(&mut self, evictable: &mut dyn FnMut(u64) -> bool) -> Option<u64> {
        let i = find_victim(&self.list, &self.n, evictable)?;
        self.list.remove(&mut self.n, i);
        Some(self.n.release(i))
    }
}

/// S3-FIFO (Yang et al., SOSP 2023): new keys enter a small FIFO (10%); keys used
/// while there move to the main FIFO, the others leave a ghost entry; a ghost key
/// inserted again goes straight to main. Main reinserts keys used since their last
/// pass (2-bit frequency).
#[derive(Debug)]
pub struct S3Fifo {
    n: Nodes,
    freq: Vec<u8>,
    small: ListEnds,
    main: ListEnds,
    ghost: Ghost,
    small_target: usize,
}

const SMALL: u8 = 1;
const MAIN: u8 = 2;

impl S3Fifo {
    /// For `capacity` resident keys.
    pub fn new(capacity: usize) -> Self {
        Self {
            n: Nodes::default(),
            freq: Vec::new(),
            small: ListEnds::new(),
            main: ListEnds::new(),
            ghost: Ghost::new(capacity.max(10) * 9 / 10),
            small_target: (capacity / 10).max(1),
        }
    }

    fn freq_mut(&mut self, i: u32) -> &mut u8 {
        if self.freq.len() <= i as usize {
            self.freq.resize(i as usize + 1, 0);
        }
        &mut self.freq[i as usize]
    }

    /// One step of the small queue: promote its head or evict it. Returns a victim.
    fn step_small(&mut self, evictable: &mut dyn FnMut(u64) -> bool) -> Option<u64> {
        let i = self.small.head;
        self.small.remove(&mut self.n, i);
        if *self.freq_mut(i) > 0 {
            *self.freq_mut(i) = 0;
            self.n.set_tag(i, MAIN);
            self.main.push_back(&mut self.n, i);
            return None;
        }
        if evictable(self.n.key(i)) {
            let key = self.n.release(i);
            self.ghost.push(key, ());
            return Some(key);
        }
        self.small.push_back(&mut self.n, i);
        None
    }

    fn step_main(&mut self, evictable: &mut dyn FnMut(u64) -> bool) -> Option<u64> {
        let i = self.main.head;
        self.main.remove(&mut self.n, i);
        let f = self.freq_mut(i);
        if *f > 0 {
            *f -= 1;
            self.main.push_back(&mut self.n, i);
            return None;
        }
        if evictable(self.n.key(i)) {
            return Some(self.n.release(i));
        }
        self.main.push_back(&mut self.n, i);
        None
    }
}

impl Policy for S3Fifo {
    fn name(&self) -> &'static str {
        "s3fifo"
    }
    fn len(&self) -> usize {
        (self.small.len + self.main.len) as usize
    }
    fn on_hit(&mut self, a: Access) {
        if let Some(i) = self.n.get(a.key) {
            let f = self.freq_mut(i);
            *f = (*f + 1).min(3);
        }
    }
    fn on_insert(&mut self, a: Access) {
        if self.n.get(a.key).is_some() {
            // Idempotent: a key inserted twice is one resident key, now used.
            return self.on_hit(a);
        }
        if self.ghost.take(a.key).is_some() {
            let i = self.n.add(a.key, MAIN);
            *self.freq_mut(i) = 0;
            self.main.push_back(&mut self.n, i);
        } else {
            let i = self.n.add(a.key, SMALL);
            *self.freq_mut(i) = 0;
            self.small.push_back(&mut self.n, i);
        }
    }
    fn on_remove(&mut self, key: u64) {
        if let Some(i) = self.n.get(key) {
            match self.n.tag(i) {
                SMALL => self.small.remove(&mut self.n, i),
                _ => self.main.remove(&mut self.n, i),
            }
            self.n.release(i);
        }
    }
    fn evict(&mut self, evictable: &mut dyn FnMut(u64) -> bool) -> Option<u64> {
        // Each step either evicts, moves a key to main or lowers a frequency, so
        // 4 passes over SCAN_LIMIT bound the work even when everything is pinned.
        for _ in 0..SCAN_LIMIT * 4 {
            let from_small = self.small.len as usize >= self.small_target || self.main.len == 0;
            let victim = if from_small && self.small.len > 0 {
                self.step_small(evictable)
            } else if self.main.len > 0 {
                self.step_main(evictable)
            } else {
                return None;
            };
            if victim.is_some() {
                return victim;
            }
        }
        None
    }
}

/// For chat traffic: a probation FIFO for blocks not yet seen twice, a protected
/// segment (chain-ordered LRU) for blocks that were reused or that extend a chain
/// the request hit, and a ghost list of evicted probation keys (a returning key goes
/// to protected). Interleaved conversations form a loop longer than the cache; LRU
/// churns through it, while this keeps a stable set of conversations whole and
/// peels chains from their tails.
#[derive(Debug)]
pub struct Chat {
    n: Nodes,
    probation: ChainList,
    protected: ChainList,
    ghost: Ghost,
    probation_target: usize,
    /// The request whose blocks hit in protected so far, and the depth reached.
    hit_run: Option<(u64, u32)>,
}

const PROBATION: u8 = 1;
const PROTECTED: u8 = 2;

impl Chat {
    /// For `capacity` resident keys.
    pub fn new(capacity: usize) -> Self {
        Self {
            n: Nodes::default(),
            probation: ChainList::default(),
            protected: ChainList::default(),
            ghost: Ghost::new(capacity.max(1) * 4),
            probation_target: (capacity / 5).max(1),
            hit_run: None,
        }
    }

    fn detach(&mut self, i: u32) {
        match self.n.tag(i) {
            PROBATION => self.probation.remove(&mut self.n, i),
            _ => self.protected.remove(&mut self.n, i),
        }
    }

    fn protect(&mut self, i: u32, request: u64) {
        self.n.set_tag(i, PROTECTED);
        self.protected.place(&mut self.n, i, request);
    }

    /// Whether `a` continues a chain of which this request hit every earlier block.
    fn continues_hit(&self, a: Access) -> bool {
        a.depth > 0 && self.hit_run == Some((a.request, a.depth - 1))
    }
}

impl Policy for Chat {
    fn name(&self) -> &'static str {
        "chat"
    }
    fn len(&self) -> usize {
        (self.probation.ends.len + self.protected.ends.len) as usize
    }
    fn on_hit(&mut self, a: Access) {
        let Some(i) = self.n.get(a.key) else { return };
        if a.depth == 0 || self.continues_hit(a) {
            self.hit_run = Some((a.request, a.depth));
        }
        self.detach(i);
        self.protect(i, a.request);
    }
    fn on_insert(&mut self, a: Access) {
        if self.n.get(a.key).is_some() {
            // Idempotent: a key inserted twice is one resident key, now used.
            return self.on_hit(a);
        }
        let returning = self.ghost.take(a.key).is_some();
        if returning || self.continues_hit(a) {
            let i = self.n.add(a.key, PROTECTED);
            if self.continues_hit(a) {
                self.hit_run = Some((a.request, a.depth));
            }
            self.protected.place(&mut self.n, i, a.request);
        } else {
            let i = self.n.add(a.key, PROBATION);
            self.probation.place(&mut self.n, i, a.request);
        }
    }
    fn on_remove(&mut self, key: u64) {
        if let Some(i) = self.n.get(key) {
            self.detach(i);
            self.n.release(i);
        }
    }
    fn evict(&mut self, evictable: &mut dyn FnMut(u64) -> bool) -> Option<u64> {
        let prefer_probation = self.probation.ends.len as usize >= self.probation_target;
        let (first, second) = if prefer_probation || self.protected.ends.len == 0 {
            (&self.probation, &self.protected)
        } else {
            (&self.protected, &self.probation)
        };
        let i =
            find_victim(&first.ends, &self.n, evictable).or_else(|| find_victim(&second.ends, &self.n, evictable))?;
        self.detach(i);
        let key = self.n.release(i);
        // A probation leaver or a stale protected chain alike: a return is reuse.
        self.ghost.push(key, ());
        Some(key)
    }
}

#[cfg(test)]
mod tests;
