//! The disk tier's on-disk format: a superblock, then fixed-size slots, each a
//! 4 KiB header sector followed by the payload padded to 4 KiB (O_DIRECT alignment).
//!
//! ```text
//!   offset 0        SECTOR             SECTOR + slot_bytes
//!   [superblock    ][hdr | payload ... ][hdr | payload ... ] ...   n_slots slots
//!
//!   header sector: magic "TKVG3BK1" | version u32 (3) | flags u32 | identity u128
//!                  | namespace u64 | len u64 | generation u64 | key u64
//!                  | payload_sum u64 | header_sum u64 | zeros to 4 KiB
//! ```
//!
//! `key` is the engine's name for the block (its KV-event key, 0: none). Headers
//! of version 1 (no `key`; `payload_sum` at 56, `header_sum` at 64) and 2 are still
//! read, version 1 with key 0; new blocks are written as version 3.
//!
//! `payload_sum` (version 3) is the tiers' fused copy checksum
//! ([`FusedHasher`]) over the payload, seeded with xxh3-64 of the header fields
//! before it, so a block verifies only with its own identity, namespace, length and
//! generation, and a load verifies it while copying it into the engine's block, in
//! one pass ([`BlockHeader::verify_into`]). Versions 1 and 2 used xxh3-64 over the
//! fields and the payload (verified, then copied).
//! `header_sum` covers the header alone, so recovery can rebuild the index from the
//! header sectors without reading every payload (loads verify the payload anyway).

use std::alloc::{alloc_zeroed, dealloc, handle_alloc_error, Layout};
use std::ptr::NonNull;

use xxhash_rust::xxh3::{xxh3_64_with_seed, Xxh3};

use crate::prefix::BlockHash;
use crate::tier::checksum::FusedHasher;

/// I/O alignment and header size.
pub const SECTOR: usize = 4096;
/// First bytes of the superblock.
pub const SUPER_MAGIC: [u8; 8] = *b"TKVG3SB1";
/// First bytes of a block header.
pub const BLOCK_MAGIC: [u8; 8] = *b"TKVG3BK1";
/// On-disk format version of the superblock; another version is refused, never
/// rewritten.
pub const FORMAT_VERSION: u32 = 1;
/// Version of the block headers written now (versions 1 and 2 are read too).
pub const BLOCK_VERSION: u32 = 3;
/// Byte offsets of `payload_sum` (the fields it covers end there) and
/// `header_sum` in a header of `version`.
fn sums_at(version: u32) -> Option<(usize, usize)> {
    match version {
        1 => Some((56, 64)),
        2 | 3 => Some((64, 72)),
        _ => None,
    }
}
/// Seed of the header checksums (fixed: the format must read back across restarts).
const SUM_SEED: u64 = 0x7469_6572_6b76_6733;

/// Where everything lives in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskGeometry {
    /// Payload bytes of one block.
    pub block_bytes: u64,
    /// Bytes of one slot (header sector + padded payload).
    pub slot_bytes: u64,
    /// Number of slots.
    pub n_slots: u64,
    /// File length: superblock + slots; never more than the configured budget.
    pub file_len: u64,
}

impl DiskGeometry {
    /// The most slots of `block_bytes` that fit in `budget` bytes, or `None` when
    /// not even one does.
    pub fn fit(block_bytes: u64, budget: u64) -> Option<Self> {
        let slot_bytes = (SECTOR as u64).checked_add(block_bytes.checked_next_multiple_of(SECTOR as u64)?)?;
        let n_slots = budget.checked_sub(SECTOR as u64)? / slot_bytes;
        (n_slots > 0 && block_bytes > 0).then_some(Self {
            block_bytes,
            slot_bytes,
            n_slots,
            file_len: SECTOR as u64 + n_slots * slot_bytes,
        })
    }

    /// File offset of slot `i`.
    pub fn slot_offset(&self, i: u32) -> u64 {
        SECTOR as u64 + u64::from(i) * self.slot_bytes
    }

    /// The superblock describing this geometry.
    pub fn encode_super(&self, out: &mut [u8]) {
        out[..SECTOR].fill(0);
        out[0..8].copy_from_slice(&SUPER_MAGIC);
        out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[16..24].copy_from_slice(&self.block_bytes.to_le_bytes());
        out[24..32].copy_from_slice(&self.slot_bytes.to_le_bytes());
        out[32..40].copy_from_slice(&self.n_slots.to_le_bytes());
        let sum = xxh3_64_with_seed(&out[..40], SUM_SEED);
        out[40..48].copy_from_slice(&sum.to_le_bytes());
    }

    /// Reads a superblock. Errors say what is wrong, for the log.
    pub fn decode_super(b: &[u8]) -> Result<Self, String> {
        if b[0..8] != SUPER_MAGIC {
            return Err("not a tierkv disk-tier file (bad magic)".into());
        }
        if xxh3_64_with_seed(&b[..40], SUM_SEED) != le64(b, 40) {
            return Err("superblock checksum mismatch".into());
        }
        let version = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        if version != FORMAT_VERSION {
            return Err(format!("format version {version}, this build reads {FORMAT_VERSION}"));
        }
        let (block_bytes, slot_bytes, n_slots) = (le64(b, 16), le64(b, 24), le64(b, 32));
        Ok(Self {
            block_bytes,
            slot_bytes,
            n_slots,
            file_len: SECTOR as u64 + n_slots * slot_bytes,
        })
    }
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// The header of one stored block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockHeader {
    /// Block identity.
    pub hash: BlockHash,
    /// Digest of the namespace of the manager that wrote it.
    pub namespace: u64,
    /// Payload length.
    pub len: u64,
    /// Write sequence number (newest wins when recovery finds an identity twice).
    pub generation: u64,
    /// The engine's key for the block (0: none; version-1 headers have none).
    pub key: u64,
    /// Checksum over the header fields and the payload.
    pub payload_sum: u64,
}

/// Why a header sector does not hold a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderState {
    /// All zeros: never written, or invalidated.
    Empty,
    /// Something is there but does not verify (torn, flipped bits, other version).
    Invalid,
}

impl BlockHeader {
    /// Writes the header into `out[..SECTOR]`, computing `payload_sum` over
    /// `payload`.
    pub fn encode(&mut self, out: &mut [u8], payload: &[u8]) {
        out[..SECTOR].fill(0);
        out[0..8].copy_from_slice(&BLOCK_MAGIC);
        out[8..12].copy_from_slice(&BLOCK_VERSION.to_le_bytes());
        let [lo, hi] = self.hash.to_parts();
        out[16..24].copy_from_slice(&lo.to_le_bytes());
        out[24..32].copy_from_slice(&hi.to_le_bytes());
        out[32..40].copy_from_slice(&self.namespace.to_le_bytes());
        out[40..48].copy_from_slice(&self.len.to_le_bytes());
        out[48..56].copy_from_slice(&self.generation.to_le_bytes());
        out[56..64].copy_from_slice(&self.key.to_le_bytes());
        let (ps, hs) = sums_at(BLOCK_VERSION).expect("the written version has offsets");
        self.payload_sum = payload_sum(BLOCK_VERSION, &out[..ps], payload);
        out[ps..ps + 8].copy_from_slice(&self.payload_sum.to_le_bytes());
        let hsum = xxh3_64_with_seed(&out[..hs], SUM_SEED);
        out[hs..hs + 8].copy_from_slice(&hsum.to_le_bytes());
    }

    /// Reads a header sector (checks magic, version and the header checksum).
    pub fn decode(b: &[u8]) -> Result<Self, HeaderState> {
        if b[..SECTOR].iter().all(|&x| x == 0) {
            return Err(HeaderState::Empty);
        }
        let version = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        let Some((ps, hs)) = sums_at(version) else {
            return Err(HeaderState::Invalid);
        };
        if b[0..8] != BLOCK_MAGIC || xxh3_64_with_seed(&b[..hs], SUM_SEED) != le64(b, hs) {
            return Err(HeaderState::Invalid);
        }
        Ok(Self {
            hash: BlockHash::from_parts([le64(b, 16), le64(b, 24)]),
            namespace: le64(b, 32),
            len: le64(b, 40),
            generation: le64(b, 48),
            key: if version >= 2 { le64(b, 56) } else { 0 },
            payload_sum: le64(b, ps),
        })
    }

    /// Whether `payload` (with the header sector `hdr` it was read with) verifies.
    pub fn verifies(&self, hdr: &[u8], payload: &[u8]) -> bool {
        let version = u32::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]);
        let Some((ps, _)) = sums_at(version) else {
            return false;
        };
        payload.len() as u64 == self.len && payload_sum(version, &hdr[..ps], payload) == self.payload_sum
    }

    /// Copies `payload` into `dst` (its segments in order, as long as the payload
    /// together) and whether it verifies; version 3 in one pass. When it does not,
    /// `dst` may hold unverified bytes.
    pub fn verify_into(&self, hdr: &[u8], payload: &[u8], dst: &mut [&mut [u8]]) -> bool {
        let version = u32::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]);
        let Some((ps, _)) = sums_at(version) else {
            return false;
        };
        let total: usize = dst.iter().map(|d| d.len()).sum();
        if payload.len() as u64 != self.len || total != payload.len() {
            return false;
        }
        if version < 3 {
            if !self.verifies(hdr, payload) {
                return false;
            }
            let mut at = 0;
            for d in dst.iter_mut() {
                d.copy_from_slice(&payload[at..at + d.len()]);
                at += d.len();
            }
            return true;
        }
        let mut h = FusedHasher::new(xxh3_64_with_seed(&hdr[..ps], SUM_SEED));
        let mut at = 0;
        for d in dst.iter_mut() {
            let n = d.len();
            h.copy(d, &payload[at..at + n]);
            at += n;
        }
        h.digest() == self.payload_sum
    }
}

/// The payload checksum of a header of `version` whose fields before it are `fields`.
fn payload_sum(version: u32, fields: &[u8], payload: &[u8]) -> u64 {
    if version >= 3 {
        let mut h = FusedHasher::new(xxh3_64_with_seed(fields, SUM_SEED));
        h.update(payload);
        return h.digest();
    }
    let mut h = Xxh3::with_seed(SUM_SEED);
    h.update(fields);
    h.update(payload);
    h.digest()
}

/// A zeroed heap buffer aligned to [`SECTOR`], its length a multiple of it: what
/// O_DIRECT needs.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the buffer is uniquely owned heap memory with no interior sharing.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared references only read.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// `len` rounded up to a whole number of sectors, zeroed.
    pub fn zeroed(len: usize) -> Self {
        let len = len.next_multiple_of(SECTOR).max(SECTOR);
        let layout = Self::layout(len);
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(p) else {
            handle_alloc_error(layout)
        };
        Self { ptr, len }
    }

    fn layout(len: usize) -> Layout {
        Layout::from_size_align(len, SECTOR).unwrap_or_else(|_| unreachable!("sector-aligned sizes are valid"))
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len initialised (zeroed) bytes, owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this exact layout.
        unsafe { dealloc(self.ptr.as_ptr(), Self::layout(self.len)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_respects_the_budget() {
        let g = DiskGeometry::fit(10_000, 100_000).unwrap();
        // slot = 4096 header + 12288 payload = 16384; (100000 - 4096) / 16384 = 5
        assert_eq!((g.slot_bytes, g.n_slots, g.file_len), (16384, 5, 4096 + 5 * 16384));
        assert!(g.file_len <= 100_000);
        assert_eq!(DiskGeometry::fit(10_000, 20_000), None);
        let mut sb = vec![0u8; SECTOR];
        g.encode_super(&mut sb);
        assert_eq!(DiskGeometry::decode_super(&sb), Ok(g));
        sb[20] ^= 1;
        assert!(DiskGeometry::decode_super(&sb).is_err());
    }

    #[test]
    fn header_round_trip_and_every_bit_matters() {
        let payload = vec![7u8; 5000];
        let mut h = BlockHeader {
            hash: BlockHash(0x1234_5678_9abc_def0_1111_2222_3333_4444),
            namespace: 42,
            len: 5000,
            generation: 9,
            key: 77,
            payload_sum: 0,
        };
        let mut sec = vec![0u8; SECTOR];
        h.encode(&mut sec, &payload);
        let d = BlockHeader::decode(&sec).unwrap();
        assert_eq!(d, h);
        assert!(d.verifies(&sec, &payload));
        let mut bad = payload.clone();
        bad[4999] ^= 0x10;
        assert!(!d.verifies(&sec, &bad));
        for bit in [0, 8 * 17, 8 * 33, 8 * 50, 8 * 58, 8 * 66, 8 * 74] {
            let mut s = sec.clone();
            s[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(BlockHeader::decode(&s), Err(HeaderState::Invalid), "bit {bit}");
        }
        assert_eq!(BlockHeader::decode(&vec![0u8; SECTOR]), Err(HeaderState::Empty));
    }

    #[test]
    fn a_version_1_header_still_reads_without_a_key() {
        // Written as version 1 did: no key, payload_sum at 56, header_sum at 64.
        let payload = vec![3u8; 4096];
        let mut sec = vec![0u8; SECTOR];
        sec[0..8].copy_from_slice(&BLOCK_MAGIC);
        sec[8..12].copy_from_slice(&1u32.to_le_bytes());
        sec[16..24].copy_from_slice(&5u64.to_le_bytes());
        sec[32..40].copy_from_slice(&42u64.to_le_bytes());
        sec[40..48].copy_from_slice(&4096u64.to_le_bytes());
        sec[48..56].copy_from_slice(&2u64.to_le_bytes());
        let ps = payload_sum(1, &sec[..56], &payload);
        sec[56..64].copy_from_slice(&ps.to_le_bytes());
        let hs = xxh3_64_with_seed(&sec[..64], SUM_SEED);
        sec[64..72].copy_from_slice(&hs.to_le_bytes());
        let d = BlockHeader::decode(&sec).unwrap();
        assert_eq!(
            (d.hash, d.namespace, d.len, d.generation, d.key),
            (BlockHash(5), 42, 4096, 2, 0)
        );
        assert!(d.verifies(&sec, &payload));
        let mut out = vec![0u8; 4096];
        assert!(d.verify_into(&sec, &payload, &mut [&mut out[..]]));
        assert_eq!(out, payload);
        sec[8] = 4;
        assert_eq!(BlockHeader::decode(&sec), Err(HeaderState::Invalid));
    }

    #[test]
    fn version_3_verifies_while_copying_and_catches_every_flipped_byte() {
        let payload: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut sec = vec![0u8; SECTOR];
        let mut h = BlockHeader {
            hash: BlockHash(77),
            namespace: 5,
            len: 3000,
            generation: 9,
            key: 0,
            payload_sum: 0,
        };
        h.encode(&mut sec, &payload);
        let d = BlockHeader::decode(&sec).unwrap();
        assert!(d.verifies(&sec, &payload));
        let (mut a, mut b) = (vec![0u8; 1000], vec![0u8; 2000]);
        assert!(d.verify_into(&sec, &payload, &mut [&mut a[..], &mut b[..]]));
        assert_eq!([a, b].concat(), payload);
        for i in (0..3000).step_by(97) {
            let mut bad = payload.clone();
            bad[i] ^= 0x40;
            let mut out = vec![0u8; 3000];
            assert!(!d.verify_into(&sec, &bad, &mut [&mut out[..]]), "byte {i}");
            assert!(!d.verifies(&sec, &bad));
        }
        // A destination of another length is refused before any copy.
        let mut short = vec![0u8; 2999];
        assert!(!d.verify_into(&sec, &payload, &mut [&mut short[..]]));
    }
}
