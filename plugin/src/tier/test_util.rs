//! Helpers shared by the tiers' unit tests.

/// `len` bytes that are a function of `key` alone (xorshift), so any mix-up of
/// blocks shows as wrong bytes.
pub(crate) fn pattern(key: u128, len: usize) -> Vec<u8> {
    let mut x = key as u64 ^ (key >> 64) as u64 ^ 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Whether the tests run as root (needed to give a file to another uid).
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
