//! NUMA placement: ask the kernel to place a mapping's pages on one node
//! (`mbind(MPOL_PREFERRED)`), the scheduler's choice for the host tier (the
//! GPU's node). For a shared-memory arena the policy is the file's, so it holds
//! for pages any process faults in later. Preferred, not bound: when the node is
//! full the kernel falls back to others instead of failing.

/// `MPOL_PREFERRED` from `<numaif.h>`.
const MPOL_PREFERRED: libc::c_long = 1;

/// Whether NUMA node `node` exists on this machine.
pub fn node_exists(node: u32) -> bool {
    std::path::Path::new(&format!("/sys/devices/system/node/node{node}")).exists()
}

/// A fresh private anonymous mapping of `len` bytes (untouched, so a
/// [`prefer_node`] call still decides where its pages land). The caller unmaps it.
pub fn map_anonymous(len: usize) -> std::io::Result<*mut u8> {
    // SAFETY: a new mapping chosen by the kernel; nothing else is affected.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(p.cast())
    }
}

/// Prefers NUMA node `node` for the pages of `[ptr, ptr + len)` (page-aligned
/// `ptr`). A node this machine does not have is `EINVAL` (checked here: the
/// kernel would quietly turn it into "local"); `ENOSYS` or `EPERM` come from a
/// kernel or sandbox without NUMA policy.
///
/// # Safety
/// `ptr..ptr + len` must be a mapping owned by the caller.
pub unsafe fn prefer_node(ptr: *mut u8, len: usize, node: u32) -> std::io::Result<()> {
    if node >= 64 || !node_exists(node) {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mask: u64 = 1 << node;
    // SAFETY: the caller owns the mapping; `mask` outlives the call and holds
    // `maxnode` = 64 bits.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mbind,
            ptr as libc::c_long,
            len as libc::c_long,
            MPOL_PREFERRED,
            &mask as *const u64 as libc::c_long,
            64 as libc::c_long,
            0 as libc::c_long,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_zero_is_accepted_and_a_missing_node_is_refused() {
        let len = 1 << 20;
        let p = map_anonymous(len);
        assert!(p.is_ok(), "{p:?}");
        // A fresh anonymous mapping of our own, unmapped below.
        let p: *mut libc::c_void = p.unwrap().cast();
        // SAFETY: our mapping.
        let zero = unsafe { prefer_node(p.cast(), len, 0) };
        match zero {
            Ok(()) => {
                // The kernel reports the policy back: preferred, node 0.
                let (mut mode, mut mask): (libc::c_int, u64) = (-1, 0);
                // SAFETY: valid out pointers; MPOL_F_ADDR (2) asks about `p`.
                let rc = unsafe {
                    libc::syscall(
                        libc::SYS_get_mempolicy,
                        &mut mode as *mut libc::c_int as libc::c_long,
                        &mut mask as *mut u64 as libc::c_long,
                        64 as libc::c_long,
                        p as libc::c_long,
                        2 as libc::c_long,
                    )
                };
                assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
                assert_eq!((libc::c_long::from(mode), mask), (MPOL_PREFERRED, 1));
            }
            // A kernel or sandbox without NUMA policy: the error is reported.
            Err(e) => assert!(matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)), "{e}"),
        }
        // SAFETY: our mapping; node 63 exists on no machine this runs on.
        let e = unsafe { prefer_node(p.cast(), len, 63) }.unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}");
        // SAFETY: unmapping what we mapped.
        unsafe { libc::munmap(p, len) };
    }
}
