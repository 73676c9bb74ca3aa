//! The C ABI against careless and hostile callers: stale handles, double
//! destroys, destroy racing a call, zero-initialised result arrays, overlapping
//! layouts and duplicate destinations. Loads the built library with dlopen.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use common::{api, create, destroy, hashes};
use tierkv_abi_tests::{code, status, Region};

const BLOCK: usize = 4096;

#[test]
fn a_stale_or_destroyed_handle_never_reaches_another_manager() {
    let a = api();
    let (m1, _s1) = create(16, BLOCK as u64, 0, &[]);
    destroy(m1);
    let (m2, _s2) = create(16, BLOCK as u64, 0, &[]);
    assert_ne!(m1, m2, "handles are never reused");
    // SAFETY: the library checks handles; stale ones are refused, not dereferenced.
    unsafe {
        assert_eq!((a.tierkv_manager_destroy)(m1), status::INVALID_ARGUMENT);
        let mut n = 0usize;
        let tokens = [1u32; 16];
        let mut out = [tierkv_abi_tests::Hash::default(); 1];
        let st = (a.tierkv_hash_tokens)(m1, std::ptr::null(), tokens.as_ptr(), 16, out.as_mut_ptr(), 1, &mut n);
        assert_eq!(st, status::INVALID_ARGUMENT);
        // A made-up handle is refused too.
        assert_eq!((a.tierkv_manager_destroy)(0x1234 as _), status::INVALID_ARGUMENT);
    }
    assert_eq!(hashes(m2, &[1; 16]).len(), 1, "the live manager is untouched");
    destroy(m2);
    // SAFETY: as above.
    assert_eq!(unsafe { (a.tierkv_manager_destroy)(m2) }, status::INVALID_ARGUMENT);
}

/// On any non-OK status every per-block result says "not done": an engine that
/// zero-initialises its arrays never reads a failed call as "all loaded".
#[test]
fn a_failed_call_never_reads_as_loaded_or_stored() {
    let a = api();
    let (m, _s) = create(16, BLOCK as u64, 0, &[]);
    let mem = vec![0u8; BLOCK * 4];
    let r = Region {
        base: mem.as_ptr() as u64,
        block_stride: BLOCK as u64,
        bytes_per_block: BLOCK as u64,
    };
    // SAFETY: a region over `mem`, which outlives the manager.
    let st = unsafe { (a.tierkv_register_layout)(m, &r, 1, 4) };
    assert_eq!(st, status::OK);
    let hs = hashes(m, &(0..32).collect::<Vec<u32>>());
    let far = [0u64, 99];
    let (mut res, mut loaded) = ([0u8; 2], 5usize);
    // SAFETY: buffers of the stated lengths.
    let st = unsafe { (a.tierkv_load_blocks)(m, hs.as_ptr(), far.as_ptr(), 2, res.as_mut_ptr(), &mut loaded) };
    assert_eq!(st, status::INVALID_ARGUMENT);
    assert_eq!((res, loaded), ([code::LOAD_FAILED; 2], 0));
    let mut res = [0u8; 2];
    // SAFETY: as above.
    let st = unsafe { (a.tierkv_store_blocks)(m, hs.as_ptr(), far.as_ptr(), 2, res.as_mut_ptr()) };
    assert_eq!(st, status::INVALID_ARGUMENT);
    assert_eq!(res, [code::STORE_FAILED; 2]);
    // A bad handle: the arrays are still written.
    let (mut res, mut loaded) = ([0u8; 2], 5usize);
    let ids = [0u64, 1];
    // SAFETY: as above; the handle is refused before use.
    let st = unsafe { (a.tierkv_load_blocks)(0x99 as _, hs.as_ptr(), ids.as_ptr(), 2, res.as_mut_ptr(), &mut loaded) };
    assert_eq!(st, status::INVALID_ARGUMENT);
    assert_eq!((res, loaded), ([code::LOAD_FAILED; 2], 0));
    // Success codes are never 0.
    let mut res = [0u8; 2];
    // SAFETY: as above.
    let st = unsafe { (a.tierkv_store_blocks)(m, hs.as_ptr(), ids.as_ptr(), 2, res.as_mut_ptr()) };
    assert_eq!(st, status::OK);
    assert_eq!(res, [code::STORED; 2]);
    destroy(m);
}

#[test]
fn overlapping_regions_and_duplicate_destinations_are_refused() {
    let a = api();
    let (m, _s) = create(16, 2 * BLOCK as u64, 0, &[]);
    let mem = vec![0u8; BLOCK * 16];
    let base = mem.as_ptr() as u64;
    let r = |off: u64| Region {
        base: base + off,
        block_stride: BLOCK as u64,
        bytes_per_block: BLOCK as u64,
    };
    // The second tensor starts half a block into the first.
    let overlapping = [r(0), r(BLOCK as u64 / 2)];
    // SAFETY: regions over `mem`.
    let st = unsafe { (a.tierkv_register_layout)(m, overlapping.as_ptr(), 2, 4) };
    assert_eq!(st, status::INVALID_ARGUMENT);
    assert!(a.last_error().contains("overlap"), "{}", a.last_error());
    let apart = [r(0), r(8 * BLOCK as u64)];
    // SAFETY: as above.
    let st = unsafe { (a.tierkv_register_layout)(m, apart.as_ptr(), 2, 4) };
    assert_eq!(st, status::OK);
    let hs = hashes(m, &(0..32).collect::<Vec<u32>>());
    let ids = [0u64, 1];
    // SAFETY: buffers of the stated lengths.
    let st = unsafe { (a.tierkv_store_blocks)(m, hs.as_ptr(), ids.as_ptr(), 2, std::ptr::null_mut()) };
    assert_eq!(st, status::OK);
    let same = [3u64, 3];
    let (mut res, mut loaded) = ([0u8; 2], 0usize);
    // SAFETY: as above.
    let st = unsafe { (a.tierkv_load_blocks)(m, hs.as_ptr(), same.as_ptr(), 2, res.as_mut_ptr(), &mut loaded) };
    assert_eq!(st, status::INVALID_ARGUMENT);
    assert!(a.last_error().contains("engine block 3"), "{}", a.last_error());
    assert_eq!((res, loaded), ([code::LOAD_FAILED; 2], 0));
    destroy(m);
}

/// `tierkv_manager_destroy` returns only after a load running on another thread
/// has stopped writing into engine memory (so the engine may free it at once).
#[test]
fn destroy_waits_for_a_load_in_flight() {
    let a = api();
    const BLOCKS: usize = 192;
    const BIG: usize = 1 << 20;
    for _attempt in 0..3 {
        let (m, _s) = create(16, BIG as u64, 0, &[("TIERKV_CPU_BYTES", "256MiB")]);
        let mem = vec![0u8; BIG * BLOCKS * 2];
        let r = Region {
            base: mem.as_ptr() as u64,
            block_stride: BIG as u64,
            bytes_per_block: BIG as u64,
        };
        // SAFETY: a region over `mem`, which outlives every call below.
        let st = unsafe { (a.tierkv_register_layout)(m, &r, 1, 2 * BLOCKS as u64) };
        assert_eq!(st, status::OK);
        let tokens: Vec<u32> = (0..(16 * BLOCKS) as u32).collect();
        let hs = hashes(m, &tokens);
        let src: Vec<u64> = (0..BLOCKS as u64).collect();
        // SAFETY: buffers of the stated lengths.
        let st = unsafe { (a.tierkv_store_blocks)(m, hs.as_ptr(), src.as_ptr(), BLOCKS, std::ptr::null_mut()) };
        assert_eq!(st, status::OK);
        let start = Instant::now();
        let load_done = AtomicU64::new(0);
        let (mgr, hs_ref, done) = (m as usize, &hs, &load_done);
        let (status_of_load, destroyed_at) = std::thread::scope(|s| {
            let loader = s.spawn(move || {
                let dst: Vec<u64> = (BLOCKS as u64..2 * BLOCKS as u64).collect();
                let mut res = vec![0u8; BLOCKS];
                let mut loaded = 0usize;
                // SAFETY: buffers of the stated lengths; `mem` outlives the scope.
                let st = unsafe {
                    (a.tierkv_load_blocks)(
                        mgr as _,
                        hs_ref.as_ptr(),
                        dst.as_ptr(),
                        BLOCKS,
                        res.as_mut_ptr(),
                        &mut loaded,
                    )
                };
                done.store(start.elapsed().as_nanos() as u64, Ordering::SeqCst);
                st
            });
            std::thread::sleep(std::time::Duration::from_millis(5));
            // SAFETY: a live handle.
            assert_eq!(unsafe { (a.tierkv_manager_destroy)(m) }, status::OK);
            let destroyed_at = start.elapsed().as_nanos() as u64;
            (loader.join().unwrap(), destroyed_at)
        });
        if status_of_load != status::OK {
            continue; // the destroy won the race before the load began: try again
        }
        let finished = load_done.load(Ordering::SeqCst);
        assert!(
            finished <= destroyed_at,
            "destroy returned at {destroyed_at} ns while the load ran until {finished} ns"
        );
        return;
    }
    eprintln!("inconclusive: the destroy began before the load in every attempt");
}

/// A `TIERKV_*` value that is not UTF-8 is an error naming the variable, never the
/// default in its place (two tenants with unreadable namespaces would share).
#[test]
fn a_non_utf8_value_is_an_error_naming_the_variable() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let bad = std::ffi::OsStr::from_bytes(b"tenant-\xff\xfe");
    let (m, st) = {
        let _g = common::ENV.lock().unwrap_or_else(|e| e.into_inner());
        std::env::set_var("TIERKV_NAMESPACE", bad);
        let r = common::create_in_locked(dir.path(), 16, BLOCK as u64, 0, &[]);
        std::env::remove_var("TIERKV_NAMESPACE");
        r
    };
    assert!(m.is_null());
    assert_eq!(st, status::CONFIG);
    assert!(
        api().last_error().contains("TIERKV_NAMESPACE"),
        "{}",
        api().last_error()
    );
}
