//! vLLM's KV-event wire format: a `KVEventBatch` encoded by msgspec as msgpack.
//!
//! ```text
//!   batch   = [ts: float64, [event...], data_parallel_rank: nil]
//!   stored  = {"type": "BlockStored", "block_hashes": [u64...], "parent_block_hash": u64|nil,
//!              "token_ids": [], "block_size": u32, "lora_id": nil, "medium": str,
//!              "lora_name": nil, "locality": "LOCAL", "ownership": "tierkv:<tier>"}
//!   removed = {"type": "BlockRemoved", "block_hashes": [u64...], "medium": str,
//!              "locality": "LOCAL", "ownership": "tierkv:<tier>"}
//! ```
//!
//! Consecutive events of one kind and tier become one event: stores while each
//! block's parent is the block before it (vLLM's chain rule for `block_hashes`),
//! removals always. `token_ids` is empty: tiers do not keep tokens (the vLLM
//! connector fills them in for blocks whose tokens its scheduler knows).

use super::{BlockEvent, EventKind};

/// Blocks per encoded event at most (keeps one event small).
const MAX_GROUP: usize = 64;
/// Bytes of the batch around its events (array headers, timestamp, nil).
const BATCH_OVERHEAD: usize = 1 + 9 + 5 + 1;
/// A buffer this long always holds a batch of at least one event.
pub const MIN_BATCH_BYTES: usize = 512;

/// Encodes `events` as one batch of at most `max_bytes` bytes, timestamped `ts`
/// (seconds since the epoch), for blocks of `block_size` tokens. Returns the bytes
/// and how many of `events` they hold (a prefix; the rest did not fit). `None`
/// when not even the first event fits.
pub fn encode_batch(events: &[BlockEvent], ts: f64, block_size: u32, max_bytes: usize) -> Option<(Vec<u8>, usize)> {
    let mut groups: Vec<Vec<u8>> = Vec::new();
    let mut used = 0usize;
    let mut size = BATCH_OVERHEAD;
    while used < events.len() {
        let mut n = group_len(&events[used..]);
        let mut enc = encode_event(&events[used..used + n], block_size);
        // A long chain that does not fit is split (its tail is the next event).
        while size + enc.len() > max_bytes && n > 1 {
            n /= 2;
            enc = encode_event(&events[used..used + n], block_size);
        }
        if size + enc.len() > max_bytes {
            break;
        }
        size += enc.len();
        groups.push(enc);
        used += n;
    }
    if used == 0 && !events.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(size);
    array_header(&mut out, 3);
    out.push(0xcb);
    out.extend_from_slice(&ts.to_be_bytes());
    array_header(&mut out, groups.len());
    for g in &groups {
        out.extend_from_slice(g);
    }
    out.push(0xc0);
    Some((out, used))
}

/// How many leading events form one encoded event.
fn group_len(events: &[BlockEvent]) -> usize {
    let first = events[0];
    let mut n = 1;
    while n < events.len() && n < MAX_GROUP {
        let e = events[n];
        let joins = e.kind == first.kind
            && e.tier == first.tier
            && (e.kind == EventKind::Removed || e.parent == events[n - 1].key);
        if !joins {
            break;
        }
        n += 1;
    }
    n
}

fn encode_event(group: &[BlockEvent], block_size: u32) -> Vec<u8> {
    let first = group[0];
    let mut o = Vec::with_capacity(160 + 9 * group.len());
    match first.kind {
        EventKind::Stored => {
            o.push(0x80 | 10);
            str_(&mut o, "type");
            str_(&mut o, "BlockStored");
            hashes(&mut o, group);
            str_(&mut o, "parent_block_hash");
            if first.parent == 0 {
                o.push(0xc0);
            } else {
                uint(&mut o, first.parent);
            }
            str_(&mut o, "token_ids");
            array_header(&mut o, 0);
            str_(&mut o, "block_size");
            uint(&mut o, u64::from(block_size));
            str_(&mut o, "lora_id");
            o.push(0xc0);
            str_(&mut o, "medium");
            str_(&mut o, first.tier.medium());
            str_(&mut o, "lora_name");
            o.push(0xc0);
        }
        EventKind::Removed => {
            o.push(0x80 | 5);
            str_(&mut o, "type");
            str_(&mut o, "BlockRemoved");
            hashes(&mut o, group);
            str_(&mut o, "medium");
            str_(&mut o, first.tier.medium());
        }
    }
    str_(&mut o, "locality");
    str_(&mut o, "LOCAL");
    str_(&mut o, "ownership");
    str_(&mut o, first.tier.ownership());
    o
}

fn hashes(o: &mut Vec<u8>, group: &[BlockEvent]) {
    str_(o, "block_hashes");
    array_header(o, group.len());
    for e in group {
        uint(o, e.key);
    }
}

fn array_header(o: &mut Vec<u8>, n: usize) {
    if n < 16 {
        o.push(0x90 | n as u8);
    } else if n <= u16::MAX as usize {
        o.push(0xdc);
        o.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        o.push(0xdd);
        o.extend_from_slice(&(n as u32).to_be_bytes());
    }
}

fn str_(o: &mut Vec<u8>, s: &str) {
    // Every string here is a short constant.
    debug_assert!(s.len() < 32);
    o.push(0xa0 | s.len() as u8);
    o.extend_from_slice(s.as_bytes());
}

fn uint(o: &mut Vec<u8>, v: u64) {
    if v < 0x80 {
        o.push(v as u8);
    } else if v <= u64::from(u8::MAX) {
        o.extend_from_slice(&[0xcc, v as u8]);
    } else if v <= u64::from(u16::MAX) {
        o.push(0xcd);
        o.extend_from_slice(&(v as u16).to_be_bytes());
    } else if v <= u64::from(u32::MAX) {
        o.push(0xce);
        o.extend_from_slice(&(v as u32).to_be_bytes());
    } else {
        o.push(0xcf);
        o.extend_from_slice(&v.to_be_bytes());
    }
}

/// A decoded event, for tests: (type, medium, ownership, block hashes, parent).
#[cfg(test)]
pub(crate) type Decoded = (String, String, String, Vec<u64>, Option<u64>);

/// Decodes a batch this module wrote (tests only: the subset of msgpack used here).
#[cfg(test)]
pub(crate) fn decode(b: &[u8]) -> Vec<Decoded> {
    struct R<'a>(&'a [u8], usize);
    impl R<'_> {
        fn byte(&mut self) -> u8 {
            self.1 += 1;
            self.0[self.1 - 1]
        }
        fn be(&mut self, n: usize) -> u64 {
            (0..n).fold(0, |a, _| (a << 8) | u64::from(self.byte()))
        }
        fn len(&mut self, tag: u8, small: u8) -> usize {
            match tag {
                t if t & 0xf0 == small => (t & 0x0f) as usize,
                0xdc | 0xde => self.be(2) as usize,
                _ => self.be(4) as usize,
            }
        }
        fn str_(&mut self) -> String {
            let t = self.byte();
            assert_eq!(t & 0xe0, 0xa0, "a short string");
            let n = (t & 0x1f) as usize;
            self.1 += n;
            String::from_utf8(self.0[self.1 - n..self.1].to_vec()).unwrap()
        }
        fn uint_or_nil(&mut self) -> Option<u64> {
            match self.byte() {
                0xc0 => None,
                t if t < 0x80 => Some(u64::from(t)),
                0xcc => Some(self.be(1)),
                0xcd => Some(self.be(2)),
                0xce => Some(self.be(4)),
                0xcf => Some(self.be(8)),
                t => panic!("not a uint: {t:#x}"),
            }
        }
    }
    let mut r = R(b, 0);
    assert_eq!(r.byte(), 0x93);
    assert_eq!(r.byte(), 0xcb);
    r.1 += 8;
    let t = r.byte();
    let n = r.len(t, 0x90);
    let mut out = Vec::new();
    for _ in 0..n {
        let t = r.byte();
        let fields = r.len(t, 0x80);
        let (mut ty, mut medium, mut own, mut hashes, mut parent) =
            (String::new(), String::new(), String::new(), Vec::new(), None);
        for _ in 0..fields {
            match r.str_().as_str() {
                "type" => ty = r.str_(),
                "medium" => medium = r.str_(),
                "ownership" => own = r.str_(),
                "locality" => {
                    r.str_();
                }
                "block_hashes" => {
                    let t = r.byte();
                    let k = r.len(t, 0x90);
                    hashes = (0..k).map(|_| r.uint_or_nil().unwrap()).collect();
                }
                "token_ids" => {
                    let t = r.byte();
                    assert_eq!(r.len(t, 0x90), 0);
                }
                "parent_block_hash" => parent = r.uint_or_nil(),
                _ => {
                    r.uint_or_nil();
                }
            }
        }
        out.push((ty, medium, own, hashes, parent));
    }
    assert_eq!(r.byte(), 0xc0);
    assert_eq!(r.1, b.len());
    out
}

#[cfg(test)]
mod tests {
    use super::super::EventTier;
    use super::*;

    fn ev(kind: EventKind, tier: EventTier, key: u64, parent: u64) -> BlockEvent {
        BlockEvent {
            kind,
            tier,
            key,
            parent,
        }
    }

    /// The bytes msgspec writes for
    /// `KVEventBatch(ts=1.5, events=[BlockStored([123, 2**64-1], None, [], 16, None,
    /// "CPU", None, locality="LOCAL", ownership="tierkv:host"),
    /// BlockRemoved([5], "STORAGE", locality="LOCAL", ownership="tierkv:disk")])`
    /// (vLLM 0.32's classes; the Python test decodes what the library writes too).
    #[test]
    fn a_batch_is_byte_for_byte_what_msgspec_writes() {
        let events = [
            ev(EventKind::Stored, EventTier::Host, 123, 0),
            ev(EventKind::Stored, EventTier::Host, u64::MAX, 123),
            ev(EventKind::Removed, EventTier::Disk, 5, 0),
        ];
        let (bytes, used) = encode_batch(&events, 1.5, 16, 4096).unwrap();
        assert_eq!(used, 3);
        let want = concat!(
            "93cb3ff8000000000000928aa474797065ab426c6f636b53746f726564ac626c6f636b5f686173686573927b",
            "cfffffffffffffffffb1706172656e745f626c6f636b5f68617368c0a9746f6b656e5f69647390aa626c6f63",
            "6b5f73697a6510a76c6f72615f6964c0a66d656469756da3435055a96c6f72615f6e616d65c0a86c6f63616c",
            "697479a54c4f43414ca96f776e657273686970ab746965726b763a686f737485a474797065ac426c6f636b52",
            "656d6f766564ac626c6f636b5f6861736865739105a66d656469756da753544f52414745a86c6f63616c6974",
            "79a54c4f43414ca96f776e657273686970ab746965726b763a6469736bc0"
        );
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, want);
        let d = decode(&bytes);
        assert_eq!(d[0].3, vec![123, u64::MAX]);
        assert_eq!(
            (d[1].0.as_str(), d[1].1.as_str(), d[1].3.clone()),
            ("BlockRemoved", "STORAGE", vec![5])
        );
    }

    #[test]
    fn a_store_that_does_not_continue_the_chain_starts_a_new_event() {
        let events = [
            ev(EventKind::Stored, EventTier::Host, 1, 0),
            ev(EventKind::Stored, EventTier::Host, 2, 1),
            ev(EventKind::Stored, EventTier::Host, 9, 7),
            ev(EventKind::Stored, EventTier::Disk, 10, 9),
        ];
        assert_eq!(group_len(&events), 2);
        assert_eq!(group_len(&events[2..]), 1);
    }

    #[test]
    fn what_does_not_fit_stays_for_the_next_batch() {
        // Stores that do not chain: one encoded event each.
        let events: Vec<BlockEvent> = (1..=10)
            .map(|k| ev(EventKind::Stored, EventTier::Host, k * 1000, 7))
            .collect();
        let one = encode_batch(&events[..1], 0.0, 16, 4096).unwrap().0.len();
        let two = encode_batch(&events[..2], 0.0, 16, 4096).unwrap().0.len();
        let (bytes, used) = encode_batch(&events, 0.0, 16, two + (two - one) / 2).unwrap();
        assert_eq!((used, bytes.len()), (2, two));
        assert!(encode_batch(&events, 0.0, 16, one - 1).is_none());
        assert_eq!(encode_batch(&events, 0.0, 16, 1 << 20).unwrap().1, 10);
    }

    #[test]
    fn the_smallest_buffer_holds_one_event_of_the_longest_chain() {
        let chain: Vec<BlockEvent> = (1..=200u64)
            .map(|k| ev(EventKind::Stored, EventTier::Disk, u64::MAX - k, u64::MAX - k + 1))
            .collect();
        let (bytes, used) = encode_batch(&chain, 1.0, 512, MIN_BATCH_BYTES).unwrap();
        assert!(used >= 1 && bytes.len() <= MIN_BATCH_BYTES);
        let (_, all) = encode_batch(&chain, 1.0, 512, 1 << 20).unwrap();
        assert_eq!(all, 200);
    }
}
