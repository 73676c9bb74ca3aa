//! `tierkv-replay`, the library half: the hit ratio of each eviction policy next to Belady's optimum for
//! the same trace and capacity.
//!
//! Core types: [`Trace`] (requests as block-key chains), [`ReplayResult`], and the
//! two drivers [`replay`] (any [`Policy`]) and [`belady`] (the offline optimum).
//!
//! Trace formats, one request per line, told apart by the first line that is not
//! blank or a `#` comment:
//!
//! ```text
//!   text:  <label> <block> <block> ...
//!          conv17/turn3 9f2c41d0a1e35b77 03bb12e9c0d4f611 ...
//!   JSONL: {"timestamp": 27482, "input_length": 6955, "output_length": 52, "hash_ids": [46, 47]}
//! ```
//!
//! Text: the label is free text without spaces (ignored); each block is its identity
//! in hex (up to 32 digits; folded to 64 bits). JSONL (the Mooncake traces,
//! `../shared/traces/README.md`): `hash_ids` are decimal block identities,
//! `timestamp` the arrival in milliseconds, `input_length` the prompt's tokens, from
//! which the block size is inferred ([`Trace::block_tokens`]). Either way a request's
//! blocks are in chain order from the first. Hits are counted as a prefix cache counts
//! them: the leading blocks that are resident, up to the first miss.
//!
//! Workflow of one request in [`replay`]:
//! 1. Count the resident leading blocks as hits.
//! 2. Walk the chain: a resident block is a hit for the policy; a missing one is
//!    inserted, when full only if the policy admits it and after evicting a victim
//!    (never a block of this request, which the engine holds). Each access carries
//!    the request's arrival time ([`Trace::clock_ms`]) and whether it ends the chain.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tierkv::block::BlockPool;
use tierkv::evict::{Access, Policy, PolicyKind};
use tierkv::prefix::BlockHash;

/// Requests, each a chain of block keys.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    /// One entry per request.
    pub requests: Vec<Vec<u64>>,
    /// Arrival of each request in milliseconds from the trace's start (JSONL); empty
    /// for the text format, which has no times.
    pub arrivals_ms: Vec<u64>,
    /// Prompt tokens of each request (JSONL); empty for the text format.
    pub prompt_tokens: Vec<u64>,
}

/// Hits of one policy on one trace.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayResult {
    /// Policy name.
    pub policy: String,
    /// Blocks served from cache (prefix hits).
    pub hit_blocks: u64,
    /// Blocks asked for.
    pub total_blocks: u64,
}

impl ReplayResult {
    /// Hit ratio in `[0, 1]`.
    pub fn ratio(&self) -> f64 {
        if self.total_blocks == 0 {
            0.0
        } else {
            self.hit_blocks as f64 / self.total_blocks as f64
        }
    }
}

impl Trace {
    /// Parses either format above. Errors name the line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let first = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'));
        if first.is_some_and(|l| l.starts_with('{')) {
            return Self::parse_jsonl(text);
        }
        let mut requests = Vec::new();
        for (no, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            fields.next();
            let chain = fields
                .map(|f| {
                    u128::from_str_radix(f, 16)
                        .map(|h| BlockHash(h).fold64())
                        .map_err(|_| format!("line {}: {f:?} is not a hex block identity", no + 1))
                })
                .collect::<Result<Vec<_>, _>>()?;
            requests.push(chain);
        }
        Ok(Self {
            requests,
            ..Self::default()
        })
    }

    /// The JSONL format: one flat object per line with `timestamp`, `input_length`
    /// and `hash_ids` (other fields ignored).
    fn parse_jsonl(text: &str) -> Result<Self, String> {
        let mut t = Self::default();
        for (no, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |what: &str| format!("line {}: {what}", no + 1);
            let number = |key: &str| -> Result<u64, String> {
                let v = json_field(line, key).ok_or_else(|| err(&format!("no \"{key}\"")))?;
                v.trim()
                    .parse()
                    .map_err(|_| err(&format!("\"{key}\" is not a whole number")))
            };
            let ids = json_field(line, "hash_ids").ok_or_else(|| err("no \"hash_ids\""))?;
            let ids = ids
                .trim()
                .strip_prefix('[')
                .and_then(|v| v.strip_suffix(']'))
                .ok_or_else(|| err("\"hash_ids\" is not a list"))?;
            let chain = ids
                .split(',')
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(|v| v.parse::<u64>().map_err(|_| err(&format!("{v:?} is not a block id"))))
                .collect::<Result<Vec<_>, _>>()?;
            let arrival = number("timestamp")?;
            if t.arrivals_ms.last().is_some_and(|&prev| arrival < prev) {
                return Err(err("arrivals go back in time"));
            }
            t.arrivals_ms.push(arrival);
            t.prompt_tokens.push(number("input_length")?);
            t.requests.push(chain);
        }
        Ok(t)
    }

    /// Tokens per block, inferred from the prompt lengths (JSONL only): the power of
    /// two from 16 to 4096 under which most requests have exactly
    /// `ceil(prompt_tokens / block)` blocks. `None` for the text format.
    pub fn block_tokens(&self) -> Option<u64> {
        if self.prompt_tokens.is_empty() {
            return None;
        }
        (4..=12).map(|e| 1u64 << e).max_by_key(|&b| {
            let fits = self
                .requests
                .iter()
                .zip(&self.prompt_tokens)
                .filter(|(chain, &n)| n.div_ceil(b) == chain.len() as u64)
                .count();
            (fits, std::cmp::Reverse(b))
        })
    }

    /// Time from the first arrival to the last, in milliseconds (0 without times).
    pub fn duration_ms(&self) -> u64 {
        match (self.arrivals_ms.first(), self.arrivals_ms.last()) {
            (Some(a), Some(b)) => b - a,
            _ => 0,
        }
    }

    /// The clock of request `r` for policies that use time: its arrival (JSONL), or
    /// one second per request for the text format, which has no times.
    pub fn clock_ms(&self, r: usize) -> u64 {
        self.arrivals_ms.get(r).copied().unwrap_or(r as u64 * 1000)
    }

    /// Number of distinct blocks.
    pub fn distinct_blocks(&self) -> usize {
        self.requests.iter().flatten().collect::<HashSet<_>>().len()
    }

    /// Number of block accesses.
    pub fn total_blocks(&self) -> u64 {
        self.requests.iter().map(|r| r.len() as u64).sum()
    }
}

/// The raw text of field `key` of a flat JSON object on one line: a number or a
/// list of numbers (no nesting, no strings containing the key's quotes).
fn json_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(&format!("\"{key}\""))? + key.len() + 2;
    let rest = line[at..].trim_start().strip_prefix(':')?;
    let end = if rest.trim_start().starts_with('[') {
        rest.find(']')? + 1
    } else {
        rest.find([',', '}']).unwrap_or(rest.len())
    };
    Some(&rest[..end])
}

/// Replays `trace` through `policy` with room for `capacity` blocks.
pub fn replay(trace: &Trace, policy: &mut dyn Policy, capacity: usize) -> ReplayResult {
    replay_admitting(trace, policy, capacity, true, |_| true)
}

/// Replays `trace` through the engine block pool (G1, [`BlockPool`]) of
/// `capacity` blocks evicting by `kind` (`TIERKV_POOL_EVICTION`), as an engine
/// serving one request at a time uses it: the prefix hit, the rest allocated and
/// registered, everything released last block first. The policy's clock is the
/// trace's. A request longer than the pool is a miss that changes nothing.
pub fn replay_pool(trace: &Trace, kind: PolicyKind, capacity: usize) -> ReplayResult {
    let now = Arc::new(AtomicU64::new(0));
    let clock = Arc::clone(&now);
    let mut pool = match BlockPool::try_with_policy(capacity, kind) {
        Ok(p) => p.with_clock(Arc::new(move || clock.load(Ordering::Relaxed))),
        Err(_) => return pool_result(kind, 0, trace),
    };
    let mut hits = 0u64;
    let (mut ids, mut fresh, mut found) = (Vec::new(), Vec::new(), Vec::new());
    for (r, chain) in trace.requests.iter().enumerate() {
        now.store(trace.clock_ms(r), Ordering::Relaxed);
        let hashes: Vec<BlockHash> = chain.iter().map(|&k| BlockHash(u128::from(k))).collect();
        ids.clear();
        let hit = pool.acquire_cached(&hashes, &mut ids);
        fresh.clear();
        if pool.allocate(hashes.len() - hit, &mut fresh).is_ok() {
            hits += hit as u64;
            found.clear();
            pool.register_many(&fresh, &hashes[hit..], &mut found)
                .expect("blocks just allocated are held");
        }
        ids.append(&mut fresh);
        ids.reverse();
        pool.free(&ids).expect("blocks just referenced are held");
    }
    pool_result(kind, hits, trace)
}

fn pool_result(kind: PolicyKind, hits: u64, trace: &Trace) -> ReplayResult {
    let name = if kind == PolicyKind::Lru {
        "lru"
    } else {
        kind.build(1).name()
    };
    ReplayResult {
        policy: format!("engine pool (G1), {name}"),
        hit_blocks: hits,
        total_blocks: trace.total_blocks(),
    }
}

/// [`replay`] without asking the policy's admission: every missing block enters
/// (what admission adds is the difference).
pub fn replay_without_admission(trace: &Trace, policy: &mut dyn Policy, capacity: usize) -> ReplayResult {
    let mut r = replay_admitting(trace, policy, capacity, false, |_| true);
    r.policy = format!("{}, no admission", r.policy);
    r
}

/// [`replay`] with perfect admission: a missing block is inserted only if the trace
/// uses it again. Not an online policy (it reads the future): the share of the gap
/// that admission alone could close, next to what `policy` orders.
pub fn oracle_admission(trace: &Trace, policy: &mut dyn Policy, capacity: usize) -> ReplayResult {
    // Per access (in trace order): whether a later access uses the same key.
    let flat: Vec<u64> = trace.requests.iter().flatten().copied().collect();
    let mut later: HashSet<u64> = HashSet::new();
    let mut again = vec![false; flat.len()];
    for (t, &k) in flat.iter().enumerate().rev() {
        again[t] = !later.insert(k);
    }
    let mut r = replay_admitting(trace, policy, capacity, true, |t| again[t]);
    r.policy = format!("{}+oracle-admission", r.policy);
    r
}

/// Replays with `admit(t)` asked for the `t`-th access of the trace (counting every
/// access from 0) when its block is missing; a block not admitted is not inserted.
/// `ask_policy`: whether the policy's own admission is asked too when full.
fn replay_admitting(
    trace: &Trace,
    policy: &mut dyn Policy,
    capacity: usize,
    ask_policy: bool,
    admit: impl Fn(usize) -> bool,
) -> ReplayResult {
    let mut resident: HashSet<u64> = HashSet::new();
    let mut hits = 0u64;
    let mut current: HashSet<u64> = HashSet::new();
    let mut t = 0usize;
    for (r, chain) in trace.requests.iter().enumerate() {
        hits += chain.iter().take_while(|k| resident.contains(k)).count() as u64;
        current.clear();
        current.extend(chain.iter().copied());
        for (d, &key) in chain.iter().enumerate() {
            let a = Access {
                key,
                request: r as u64,
                depth: d as u32,
                last: d + 1 == chain.len(),
                now_ms: trace.clock_ms(r),
            };
            t += 1;
            if resident.contains(&key) {
                policy.on_hit(a);
                continue;
            }
            if !admit(t - 1) {
                continue;
            }
            if resident.len() >= capacity {
                if ask_policy && !policy.admit(a, &mut |k| !current.contains(&k)) {
                    continue;
                }
                let Some(v) = policy.evict(&mut |k| !current.contains(&k)) else {
                    continue;
                };
                resident.remove(&v);
            }
            if capacity > 0 {
                policy.on_insert(a);
                resident.insert(key);
            }
        }
    }
    ReplayResult {
        policy: policy.name().to_string(),
        hit_blocks: hits,
        total_blocks: trace.total_blocks(),
    }
}

/// Belady's MIN with bypass: on a miss, keep the block only if it is needed again
/// sooner than the resident block needed last, which it then evicts. An upper bound
/// for any online policy on the same trace and capacity.
pub fn belady(trace: &Trace, capacity: usize) -> ReplayResult {
    let flat: Vec<u64> = trace.requests.iter().flatten().copied().collect();
    let mut next_use = vec![u64::MAX; flat.len()];
    let mut seen: HashMap<u64, u64> = HashMap::new();
    for (t, &k) in flat.iter().enumerate().rev() {
        if let Some(&n) = seen.get(&k) {
            next_use[t] = n;
        }
        seen.insert(k, t as u64);
    }
    let mut resident: HashMap<u64, u64> = HashMap::new();
    let mut by_next: BTreeSet<(u64, u64)> = BTreeSet::new();
    let mut hits = 0u64;
    let mut t = 0usize;
    for chain in &trace.requests {
        hits += chain.iter().take_while(|k| resident.contains_key(k)).count() as u64;
        for &key in chain {
            let next = next_use[t];
            t += 1;
            if let Some(old) = resident.insert(key, next) {
                by_next.remove(&(old, key));
                by_next.insert((next, key));
                continue;
            }
            resident.remove(&key);
            if next == u64::MAX || capacity == 0 {
                continue;
            }
            if resident.len() >= capacity {
                let &(far, victim) = by_next.last().unwrap_or(&(0, 0));
                if far <= next {
                    continue;
                }
                by_next.remove(&(far, victim));
                resident.remove(&victim);
            }
            resident.insert(key, next);
            by_next.insert((next, key));
        }
    }
    ReplayResult {
        policy: "belady".into(),
        hit_blocks: hits,
        total_blocks: trace.total_blocks(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tierkv::evict::{Lru, PolicyKind};

    fn trace(reqs: &[&[u64]]) -> Trace {
        Trace {
            requests: reqs.iter().map(|r| r.to_vec()).collect(),
            ..Trace::default()
        }
    }

    #[test]
    fn parses_the_documented_format() {
        let t = Trace::parse("# comment\nc1/t1 a b\n\nc2/t1 ff 0123456789abcdef0123456789abcdef\n").unwrap();
        assert_eq!(t.requests.len(), 2);
        assert_eq!(t.requests[0], [0xa, 0xb]);
        assert_eq!(t.requests[1][1], 0x0123456789abcdef ^ 0x0123456789abcdef);
        assert!(Trace::parse("x zz").unwrap_err().contains("line 1"));
    }

    #[test]
    fn parses_the_mooncake_jsonl_format() {
        let text = concat!(
            "{\"timestamp\": 0, \"input_length\": 1100, \"output_length\": 5, \"hash_ids\": [0, 1, 2]}\n",
            "\n",
            "{\"timestamp\": 2500, \"input_length\": 600, \"output_length\": 9, \"hash_ids\": [0, 3]}\n",
        );
        let t = Trace::parse(text).unwrap();
        assert_eq!(t.requests, [vec![0, 1, 2], vec![0, 3]]);
        assert_eq!(t.arrivals_ms, [0, 2500]);
        assert_eq!(t.block_tokens(), Some(512));
        assert_eq!(t.duration_ms(), 2500);
        let back = "{\"timestamp\": 9, \"input_length\": 1, \"hash_ids\": [1]}\n{\"timestamp\": 3, \"input_length\": 1, \"hash_ids\": [1]}";
        assert!(Trace::parse(back).unwrap_err().contains("line 2"));
        let bad = "{\"timestamp\": 1, \"input_length\": 1, \"hash_ids\": [1, x]}";
        assert!(Trace::parse(bad).unwrap_err().contains("not a block id"));
        assert_eq!(Trace::parse("a 1 2").unwrap().block_tokens(), None);
    }

    /// LRU that refuses every block when full.
    struct Refusing(Lru);

    impl Policy for Refusing {
        fn name(&self) -> &'static str {
            "refusing"
        }
        fn len(&self) -> usize {
            self.0.len()
        }
        fn on_hit(&mut self, a: Access) {
            self.0.on_hit(a)
        }
        fn on_insert(&mut self, a: Access) {
            self.0.on_insert(a)
        }
        fn on_remove(&mut self, key: u64) {
            self.0.on_remove(key)
        }
        fn evict(&mut self, evictable: &mut dyn FnMut(u64) -> bool) -> Option<u64> {
            self.0.evict(evictable)
        }
        fn admit(&mut self, _: Access, _: &mut dyn FnMut(u64) -> bool) -> bool {
            false
        }
    }

    #[test]
    fn without_admission_every_block_enters() {
        // Capacity 1: 1, then 2 twice. Refused when full, 2 never enters; without
        // asking admission it evicts 1 and hits once.
        let t = trace(&[&[1], &[2], &[2]]);
        assert_eq!(replay(&t, &mut Refusing(Lru::default()), 1).hit_blocks, 0);
        let r = replay_without_admission(&t, &mut Refusing(Lru::default()), 1);
        assert_eq!((r.hit_blocks, r.policy.as_str()), (1, "refusing, no admission"));
    }

    #[test]
    fn oracle_admission_keeps_only_blocks_used_again() {
        // Capacity 1: block 9 is used once between two uses of 1. LRU lets 9 evict
        // 1 (one hit of 4: none); the oracle never admits 9, so 1 stays and hits.
        let t = trace(&[&[1], &[9], &[1], &[1]]);
        let lru = replay(&t, &mut Lru::default(), 1);
        let oracle = oracle_admission(&t, &mut Lru::default(), 1);
        assert_eq!((lru.hit_blocks, oracle.hit_blocks), (1, 2));
        assert_eq!(oracle.policy, "lru+oracle-admission");
        assert!(oracle.hit_blocks <= belady(&t, 1).hit_blocks);
    }

    #[test]
    fn prefix_hits_stop_at_the_first_miss() {
        // Capacity 2, LRU: [1 2] fills the cache. [3 1 2] misses at 3 (no prefix
        // hit), and 3 cannot evict 1 or 2 (held by the request): bypassed. [1 2]
        // hits both. Hits 2 of 7.
        let t = trace(&[&[1, 2], &[3, 1, 2], &[1, 2]]);
        let r = replay(&t, &mut Lru::default(), 2);
        assert_eq!((r.hit_blocks, r.total_blocks), (2, 7));
    }

    #[test]
    fn belady_bounds_every_policy() {
        // A loop of 6 blocks through a cache of 4: LRU gets nothing, MIN keeps 3.
        let reqs: Vec<Vec<u64>> = (0..10).flat_map(|_| (1..=6).map(|k| vec![k])).collect();
        let t = Trace {
            requests: reqs,
            ..Trace::default()
        };
        let lru = replay(&t, &mut Lru::default(), 4);
        let min = belady(&t, 4);
        assert_eq!(lru.hit_blocks, 0);
        assert!(min.hit_blocks >= 20, "{min:?}");
        for kind in PolicyKind::ALL {
            let r = replay(&t, kind.build(4).as_mut(), 4);
            assert!(r.hit_blocks <= min.hit_blocks, "{r:?} beats {min:?}");
        }
    }
}
