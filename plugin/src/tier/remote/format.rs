//! Keys and values in the store: one key per block, the format version and the
//! namespace in the key; the value a fixed header, then the payload.
//!
//! ```text
//!   key:   <prefix>:v1:<namespace, 16 hex>:<identity, 32 hex>
//!   value: [magic 8][version 4][header len 4][identity 16][namespace 8]
//!          [layout 8][payload len 8][checksum 8] | payload
//! ```
//! The checksum is the tiers' fused copy checksum ([`FusedHasher`]) over the
//! payload, seeded with the identity, namespace and layout: a value stored under
//! one identity, namespace or layout never verifies as another. A load checks
//! the header against what it expects and verifies the payload while copying it
//! into the engine's blocks, in one pass.

use xxhash_rust::xxh3::xxh3_64;

use crate::prefix::BlockHash;
use crate::tier::checksum::FusedHasher;

/// Header bytes before the payload.
pub const HEADER: usize = 64;
const MAGIC: [u8; 8] = *b"TKVG4BK1";
const VERSION: u32 = 1;

/// The key of `hash` in `namespace` under `prefix`.
pub fn key(prefix: &str, namespace: u64, hash: BlockHash) -> String {
    format!("{prefix}:v{VERSION}:{namespace:016x}:{:032x}", hash.0)
}

/// The fingerprint of a block's layout: its segment lengths, in order.
pub fn layout_of(lens: impl Iterator<Item = usize>) -> u64 {
    let bytes: Vec<u8> = lens.flat_map(|l| (l as u64).to_le_bytes()).collect();
    xxh3_64(&bytes)
}

fn seed(hash: BlockHash, namespace: u64, layout: u64) -> u64 {
    hash.fold64() ^ namespace.rotate_left(17) ^ layout.rotate_left(41)
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Bytes of the value of a block of `segs`.
pub fn value_len(segs: &[&[u8]]) -> usize {
    HEADER + segs.iter().map(|s| s.len()).sum::<usize>()
}

/// Writes the value of a block given as segments into `v` (of [`value_len`]
/// bytes): the header, then the segments copied and checksummed in one pass.
pub fn encode_into(v: &mut [u8], hash: BlockHash, namespace: u64, segs: &[&[u8]]) {
    assert_eq!(v.len(), value_len(segs), "a value's length");
    let len = v.len() - HEADER;
    let layout = layout_of(segs.iter().map(|s| s.len()));
    v[0..8].copy_from_slice(&MAGIC);
    v[8..12].copy_from_slice(&VERSION.to_le_bytes());
    v[12..16].copy_from_slice(&(HEADER as u32).to_le_bytes());
    let [lo, hi] = hash.to_parts();
    v[16..24].copy_from_slice(&lo.to_le_bytes());
    v[24..32].copy_from_slice(&hi.to_le_bytes());
    v[32..40].copy_from_slice(&namespace.to_le_bytes());
    v[40..48].copy_from_slice(&layout.to_le_bytes());
    v[48..56].copy_from_slice(&(len as u64).to_le_bytes());
    let mut h = FusedHasher::new(seed(hash, namespace, layout));
    let mut at = HEADER;
    for s in segs {
        h.copy(&mut v[at..at + s.len()], s);
        at += s.len();
    }
    v[56..64].copy_from_slice(&h.digest().to_le_bytes());
}

/// Why a value was not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Header of another format, identity, namespace, layout or length.
    Header,
    /// The payload does not match its checksum.
    Checksum,
}

/// Copies the payload of `value` into `dsts`, verifying it is `hash`'s block in
/// `namespace` with the destinations' layout. On `Err` the destinations may hold
/// unverified bytes.
pub fn decode_into(value: &[u8], hash: BlockHash, namespace: u64, dsts: &mut [&mut [u8]]) -> Result<(), Reject> {
    let len: usize = dsts.iter().map(|d| d.len()).sum();
    let layout = layout_of(dsts.iter().map(|d| d.len()));
    if value.len() != HEADER + len
        || value[0..8] != MAGIC
        || value[8..12] != VERSION.to_le_bytes()
        || value[12..16] != (HEADER as u32).to_le_bytes()
        || BlockHash::from_parts([le64(value, 16), le64(value, 24)]) != hash
        || le64(value, 32) != namespace
        || le64(value, 40) != layout
        || le64(value, 48) != len as u64
    {
        return Err(Reject::Header);
    }
    let mut h = FusedHasher::new(seed(hash, namespace, layout));
    let mut at = HEADER;
    for d in dsts.iter_mut() {
        let n = d.len();
        h.copy(d, &value[at..at + n]);
        at += n;
    }
    if h.digest() == le64(value, 56) {
        Ok(())
    } else {
        Err(Reject::Checksum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(hash: BlockHash, namespace: u64, segs: &[&[u8]]) -> Vec<u8> {
        let mut v = vec![0u8; value_len(segs)];
        encode_into(&mut v, hash, namespace, segs);
        v
    }

    fn segs() -> (Vec<u8>, Vec<u8>) {
        (
            (0..300u32).map(|i| i as u8).collect(),
            (0..77u32).map(|i| (i * 7) as u8).collect(),
        )
    }

    #[test]
    fn a_value_round_trips_into_other_segment_boundaries_only_with_the_same_layout() {
        let (a, b) = segs();
        let h = BlockHash(0x1234_5678_9abc_def0_1122_3344_5566_7788);
        let v = encode(h, 9, &[&a, &b]);
        let (mut x, mut y) = (vec![0u8; 300], vec![0u8; 77]);
        decode_into(&v, h, 9, &mut [&mut x, &mut y]).unwrap();
        assert_eq!((x, y), (a.clone(), b.clone()));
        // Same bytes, other split: another layout, refused.
        let (mut x, mut y) = (vec![0u8; 200], vec![0u8; 177]);
        assert_eq!(decode_into(&v, h, 9, &mut [&mut x, &mut y]), Err(Reject::Header));
        // Another identity or namespace.
        let (mut x, mut y) = (vec![0u8; 300], vec![0u8; 77]);
        assert_eq!(
            decode_into(&v, BlockHash(h.0 ^ 1), 9, &mut [&mut x, &mut y]),
            Err(Reject::Header)
        );
        assert_eq!(decode_into(&v, h, 8, &mut [&mut x, &mut y]), Err(Reject::Header));
        assert_eq!(
            decode_into(&v[..v.len() - 1], h, 9, &mut [&mut x, &mut y]),
            Err(Reject::Header)
        );
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let (a, b) = segs();
        let h = BlockHash(42);
        let v = encode(h, 1, &[&a, &b]);
        for i in 0..v.len() {
            let mut bad = v.clone();
            bad[i] ^= 0x10;
            let (mut x, mut y) = (vec![0u8; 300], vec![0u8; 77]);
            assert!(decode_into(&bad, h, 1, &mut [&mut x, &mut y]).is_err(), "byte {i}");
        }
    }

    #[test]
    fn keys_carry_version_namespace_and_identity() {
        assert_eq!(
            key("tierkv", 0xab, BlockHash(0xcd)),
            "tierkv:v1:00000000000000ab:000000000000000000000000000000cd"
        );
    }
}
