//! Copy and checksum in one pass: every block that enters or leaves a tier is
//! checksummed while it is copied, so verification costs almost no extra memory
//! traffic.
//!
//! Core type: [`FusedHasher`], a streaming 64-bit checksum with xxh3's long-input
//! structure: 8 lanes of 64-bit accumulators fed by 64-byte stripes (each lane adds
//! the product of the low and high halves of `data ^ key`, its neighbour adds the
//! raw data, and every 16 stripes the lanes are scrambled), finished with xxh3-64
//! over the lanes, the unstriped tail and the length. Its keys derive from a seed (the block
//! identity), so a payload stored under one identity never verifies as another.
//!
//! ```text
//!   segment A (any length)        segment B
//!   [stripe][stripe][..partial]   [rest of partial][stripe]...
//!                     \_ carry (< 64 bytes) _/
//! ```
//! The result depends only on the concatenated bytes, never on how they were split
//! into segments (the carry joins stripes across segment boundaries).
//!
//! Speed: the inner loop is written for auto-vectorisation; on x86-64 a copy of it
//! compiled for AVX2 is chosen at run time when the CPU has it.

use xxhash_rust::xxh3::xxh3_64_with_seed;

const STRIPE: usize = 64;
const LANES: usize = 8;
const SCRAMBLE_EVERY: u64 = 16;
const PRIME32: u64 = 0x9E37_79B1;

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A streaming checksum that can copy while it hashes.
#[derive(Debug, Clone)]
pub struct FusedHasher {
    acc: [u64; LANES],
    key: [u64; LANES],
    carry: [u8; STRIPE],
    carry_len: usize,
    stripes: u64,
    total: u64,
    seed: u64,
}

#[inline(always)]
fn accumulate(acc: &mut [u64; LANES], key: &[u64; LANES], d: &[u64; LANES]) {
    for i in 0..LANES {
        let k = d[i] ^ key[i];
        acc[i ^ 1] = acc[i ^ 1].wrapping_add(d[i]);
        acc[i] = acc[i].wrapping_add((k & 0xFFFF_FFFF).wrapping_mul(k >> 32));
    }
}

#[inline(always)]
fn scramble(acc: &mut [u64; LANES], key: &[u64; LANES]) {
    for i in 0..LANES {
        acc[i] = (acc[i] ^ (acc[i] >> 47) ^ key[i]).wrapping_mul(PRIME32);
    }
}

#[inline(always)]
fn load(p: *const u8) -> [u64; LANES] {
    let mut d = [0u64; LANES];
    for (i, v) in d.iter_mut().enumerate() {
        // SAFETY: callers pass a pointer to at least STRIPE readable bytes;
        // read_unaligned has no alignment requirement.
        *v = u64::from_le(unsafe { std::ptr::read_unaligned(p.add(i * 8) as *const u64) });
    }
    d
}

/// The stripe loop. `dst` is null for hash-only.
///
/// # Safety
/// `src` readable for `n * STRIPE` bytes; `dst` null or writable for as many, not
/// overlapping `src`.
#[inline(always)]
unsafe fn stripes_generic(h: &mut FusedHasher, src: *const u8, dst: *mut u8, n: usize) {
    let (mut acc, key, mut count) = (h.acc, h.key, h.stripes);
    for s in 0..n {
        // SAFETY: s < n, so the stripe lies in the ranges the caller vouched for.
        let (sp, dp) = unsafe { (src.add(s * STRIPE), dst.wrapping_add(s * STRIPE)) };
        let d = load(sp);
        if !dst.is_null() {
            // Write the very words that are hashed: what is delivered is what is
            // verified.
            for (i, v) in d.iter().enumerate() {
                // SAFETY: as above; one stripe of dst is writable.
                unsafe { std::ptr::write_unaligned(dp.add(i * 8) as *mut u64, v.to_le()) };
            }
        }
        accumulate(&mut acc, &key, &d);
        count += 1;
        if count.is_multiple_of(SCRAMBLE_EVERY) {
            scramble(&mut acc, &key);
        }
    }
    (h.acc, h.stripes) = (acc, count);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
/// # Safety
/// As [`stripes_generic`], and the CPU supports AVX2.
unsafe fn stripes_avx2(h: &mut FusedHasher, src: *const u8, dst: *mut u8, n: usize) {
    // SAFETY: forwarded contract.
    unsafe { stripes_generic(h, src, dst, n) }
}

/// # Safety
/// As [`stripes_generic`].
unsafe fn stripes(h: &mut FusedHasher, src: *const u8, dst: *mut u8, n: usize) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present; the rest is the caller's contract.
        return unsafe { stripes_avx2(h, src, dst, n) };
    }
    // SAFETY: the caller's contract.
    unsafe { stripes_generic(h, src, dst, n) }
}

impl FusedHasher {
    /// A hasher keyed by `seed`.
    pub fn new(seed: u64) -> Self {
        let mut key = [0u64; LANES];
        let mut acc = [0u64; LANES];
        for i in 0..LANES {
            key[i] = splitmix64(seed ^ (i as u64).wrapping_mul(0x1000_0000_01B3));
            acc[i] = splitmix64(key[i]);
        }
        Self {
            acc,
            key,
            carry: [0; STRIPE],
            carry_len: 0,
            stripes: 0,
            total: 0,
            seed,
        }
    }

    /// Copies `src` into `dst` (same length) and hashes the bytes.
    pub fn copy(&mut self, dst: &mut [u8], src: &[u8]) {
        assert_eq!(dst.len(), src.len(), "copy needs equal lengths");
        // SAFETY: two distinct slices of equal length (Rust borrows forbid overlap).
        unsafe { self.feed(src.as_ptr(), dst.as_mut_ptr(), src.len()) }
    }

    /// Copies `len` bytes from `src` to `dst` and hashes them.
    ///
    /// # Safety
    /// `src` readable and `dst` writable for `len` bytes; the ranges do not overlap.
    pub unsafe fn copy_raw(&mut self, dst: *mut u8, src: *const u8, len: usize) {
        // SAFETY: forwarded contract.
        unsafe { self.feed(src, dst, len) }
    }

    /// Hashes `data` without copying it.
    pub fn update(&mut self, data: &[u8]) {
        // SAFETY: dst is null (hash only); src is a valid slice.
        unsafe { self.feed(data.as_ptr(), std::ptr::null_mut(), data.len()) }
    }

    /// # Safety
    /// `src` readable for `len`; `dst` null or writable for `len`, not overlapping.
    unsafe fn feed(&mut self, mut src: *const u8, mut dst: *mut u8, mut len: usize) {
        self.total += len as u64;
        if self.carry_len > 0 {
            let take = (STRIPE - self.carry_len).min(len);
            // Source bytes are read once, into the carry; the destination gets the
            // carry's copy, so what is delivered is what is hashed even if the
            // source changes meanwhile (a slot rewritten underneath).
            // SAFETY: take <= len bytes are readable at src / writable at dst; the
            // carry has room for them (carry_len + take <= STRIPE).
            unsafe {
                let at = self.carry.as_mut_ptr().add(self.carry_len);
                std::ptr::copy_nonoverlapping(src, at, take);
                if !dst.is_null() {
                    std::ptr::copy_nonoverlapping(at, dst, take);
                    dst = dst.add(take);
                }
                src = src.add(take);
            }
            self.carry_len += take;
            len -= take;
            if self.carry_len < STRIPE {
                return;
            }
            let carry = self.carry;
            // SAFETY: the carry holds exactly one stripe; hash only.
            unsafe { stripes(self, carry.as_ptr(), std::ptr::null_mut(), 1) };
            self.carry_len = 0;
        }
        let n = len / STRIPE;
        // SAFETY: n stripes lie within the caller's ranges.
        unsafe { stripes(self, src, dst, n) };
        let done = n * STRIPE;
        let rest = len - done;
        // SAFETY: the remaining `rest` bytes are within the caller's ranges; read
        // once into the carry, delivered from it (as above).
        unsafe {
            std::ptr::copy_nonoverlapping(src.add(done), self.carry.as_mut_ptr(), rest);
            if !dst.is_null() {
                std::ptr::copy_nonoverlapping(self.carry.as_ptr(), dst.add(done), rest);
            }
        }
        self.carry_len = rest;
    }

    /// The checksum of everything fed so far.
    pub fn digest(&self) -> u64 {
        let mut fin = [0u8; LANES * 8 + STRIPE + 8];
        for (i, a) in self.acc.iter().enumerate() {
            fin[i * 8..i * 8 + 8].copy_from_slice(&a.to_le_bytes());
        }
        let tail = LANES * 8;
        fin[tail..tail + self.carry_len].copy_from_slice(&self.carry[..self.carry_len]);
        let end = tail + self.carry_len;
        fin[end..end + 8].copy_from_slice(&self.total.to_le_bytes());
        xxh3_64_with_seed(&fin[..end + 8], self.seed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn data(n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3])
            .collect()
    }

    proptest! {
        /// Any segmentation, copy or hash-only, gives the same digest and copies exactly.
        #[test]
        fn segmentation_independent(len in 0usize..5000, cuts in proptest::collection::vec(0usize..5000, 0..6)) {
            let src = data(len);
            let mut whole = FusedHasher::new(7);
            whole.update(&src);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (len + 1)).collect();
            cuts.push(0);
            cuts.push(len);
            cuts.sort_unstable();
            let mut dst = vec![0u8; len];
            let mut h = FusedHasher::new(7);
            for w in cuts.windows(2) {
                h.copy(&mut dst[w[0]..w[1]], &src[w[0]..w[1]]);
            }
            prop_assert_eq!(&dst, &src);
            prop_assert_eq!(h.digest(), whole.digest());
        }
    }

    #[test]
    fn detects_flips_seed_and_length() {
        let mut src = data(4096 * 3 + 17);
        let base = {
            let mut h = FusedHasher::new(1);
            h.update(&src);
            h.digest()
        };
        let other_seed = {
            let mut h = FusedHasher::new(2);
            h.update(&src);
            h.digest()
        };
        assert_ne!(base, other_seed);
        for pos in [0, 63, 64, 1000, 4096 * 3 + 16] {
            for bit in [0, 3, 7] {
                src[pos] ^= 1 << bit;
                let mut h = FusedHasher::new(1);
                h.update(&src);
                assert_ne!(h.digest(), base, "flip at {pos} bit {bit} undetected");
                src[pos] ^= 1 << bit;
            }
        }
        let mut h = FusedHasher::new(1);
        h.update(&src[..src.len() - 1]);
        assert_ne!(h.digest(), base);
        // Zeros of different lengths differ.
        let mut a = FusedHasher::new(1);
        a.update(&[0u8; 128]);
        let mut b = FusedHasher::new(1);
        b.update(&[0u8; 192]);
        assert_ne!(a.digest(), b.digest());
    }

    #[test]
    fn generic_and_dispatched_paths_agree() {
        let src = data(64 * 40);
        let mut a = FusedHasher::new(3);
        // SAFETY: 40 stripes of a valid slice, hash only.
        unsafe { stripes_generic(&mut a, src.as_ptr(), std::ptr::null_mut(), 40) };
        let mut b = FusedHasher::new(3);
        // SAFETY: as above.
        unsafe { stripes(&mut b, src.as_ptr(), std::ptr::null_mut(), 40) };
        assert_eq!(a.acc, b.acc);
    }

    /// A source rewritten while it is copied (a slot reclaimed underneath): the
    /// bytes delivered are exactly the bytes hashed, so a changed block can never
    /// verify while delivering other bytes. Segments of 100 bytes are all carry and
    /// tail, the paths that once read the source twice.
    #[test]
    fn delivered_bytes_are_the_hashed_bytes_under_a_concurrent_writer() {
        use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
        let src: Vec<AtomicU8> = (0..300).map(|i| AtomicU8::new(i as u8)).collect();
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut v = 0u8;
                while !stop.load(Ordering::Relaxed) {
                    for b in &src {
                        b.store(v, Ordering::Relaxed);
                    }
                    v = v.wrapping_add(1);
                }
            });
            for _ in 0..20_000 {
                let mut dst = vec![0u8; 300];
                let mut h = FusedHasher::new(7);
                for k in 0..3 {
                    // SAFETY: 100 bytes of `src` (atomics of one byte) are readable
                    // and 100 of `dst` writable; a racy read of atomics through a
                    // plain copy is what the arena sees from another process.
                    unsafe { h.copy_raw(dst.as_mut_ptr().add(k * 100), src.as_ptr().add(k * 100).cast(), 100) };
                }
                let mut again = FusedHasher::new(7);
                again.update(&dst);
                assert_eq!(
                    h.digest(),
                    again.digest(),
                    "delivered bytes differ from the hashed ones"
                );
            }
            stop.store(true, Ordering::Relaxed);
        });
    }
}
