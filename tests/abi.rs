//! The built `libtierkv.so`, loaded with dlopen and driven only through its C ABI:
//! every kind of bad argument, many threads at once, corruption, metrics.

use std::ffi::c_char;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

#[path = "common.rs"]
mod common;

use common::{api, create, create_in, destroy, hashes, metrics};
use tierkv_abi_tests::{code, status, Hash, Info, Mgr, Params, Region};

#[test]
fn version_and_info() {
    // SAFETY: no arguments.
    assert_eq!(unsafe { (api().tierkv_abi_version)() }, 3);
    let (m, _s) = create(16, 4096, 0, &[]);
    let mut info = Info::default();
    // SAFETY: valid out pointer.
    assert_eq!(unsafe { (api().tierkv_manager_info)(m, &mut info) }, status::OK);
    assert_eq!((info.abi_version, info.block_tokens, info.block_bytes), (3, 16, 4096));
    assert!(info.host_capacity_blocks > 100);
    assert_eq!(info.metrics_port, 0);
    destroy(m);
}

#[test]
fn bad_handles_and_pointers_are_errors_not_crashes() {
    let a = api();
    let (m, _s) = create(4, 4096, 8, &[]);
    let tokens = [1u32; 8];
    let mut out = [Hash::default(); 2];
    let mut n = 0usize;
    // SAFETY: (all calls below) tierkv validates every pointer it is given; the bad
    // ones are exactly what is under test and are never dereferenced by it.
    unsafe {
        let bogus = 0x1000 as Mgr;
        assert_eq!(
            (a.tierkv_hash_tokens)(
                std::ptr::null_mut(),
                std::ptr::null(),
                tokens.as_ptr(),
                8,
                out.as_mut_ptr(),
                2,
                &mut n
            ),
            status::INVALID_ARGUMENT
        );
        assert!(a.last_error().contains("null"), "{}", a.last_error());
        assert_eq!(
            (a.tierkv_hash_tokens)(bogus, std::ptr::null(), tokens.as_ptr(), 8, out.as_mut_ptr(), 2, &mut n),
            status::INVALID_ARGUMENT
        );
        assert!(a.last_error().contains("unknown"), "{}", a.last_error());
        assert_eq!(
            (a.tierkv_hash_tokens)(m, std::ptr::null(), std::ptr::null(), 8, out.as_mut_ptr(), 2, &mut n),
            status::INVALID_ARGUMENT
        );
        assert!(a.last_error().contains("tokens is null"));
        let misaligned = (tokens.as_ptr() as *const u8).add(1) as *const u32;
        assert_eq!(
            (a.tierkv_hash_tokens)(m, std::ptr::null(), misaligned, 4, out.as_mut_ptr(), 2, &mut n),
            status::INVALID_ARGUMENT
        );
        assert!(a.last_error().contains("misaligned"));
        assert_eq!(
            (a.tierkv_hash_tokens)(
                m,
                std::ptr::null(),
                tokens.as_ptr(),
                usize::MAX,
                out.as_mut_ptr(),
                2,
                &mut n
            ),
            status::INVALID_ARGUMENT
        );
        assert!(a.last_error().contains("overflows"), "{}", a.last_error());
        assert_eq!(
            (a.tierkv_hash_tokens)(m, std::ptr::null(), tokens.as_ptr(), 8, out.as_mut_ptr(), 1, &mut n),
            status::BUFFER_TOO_SMALL
        );
        assert_eq!(n, 2);
        assert_eq!(
            (a.tierkv_hash_tokens)(
                m,
                std::ptr::null(),
                tokens.as_ptr(),
                8,
                out.as_mut_ptr(),
                2,
                std::ptr::null_mut()
            ),
            status::INVALID_ARGUMENT
        );
        // Success clears the last error.
        assert_eq!(
            (a.tierkv_hash_tokens)(m, std::ptr::null(), tokens.as_ptr(), 8, out.as_mut_ptr(), 2, &mut n),
            status::OK
        );
        assert_eq!(a.last_error(), "");
        // Store/load without a layout; bad layouts.
        let ids = [0u64; 2];
        assert_eq!(
            (a.tierkv_store_blocks)(m, out.as_ptr(), ids.as_ptr(), 2, std::ptr::null_mut()),
            status::STATE
        );
        let r = Region {
            base: 0,
            block_stride: 4096,
            bytes_per_block: 4096,
        };
        assert_eq!((a.tierkv_register_layout)(m, &r, 1, 4), status::INVALID_ARGUMENT);
        assert!(a.last_error().contains("null"));
        let buf = vec![0u8; 4096 * 4];
        let r = Region {
            base: buf.as_ptr() as u64,
            block_stride: 2048,
            bytes_per_block: 4096,
        };
        assert_eq!((a.tierkv_register_layout)(m, &r, 1, 4), status::INVALID_ARGUMENT);
        let r = Region {
            base: buf.as_ptr() as u64,
            block_stride: 2048,
            bytes_per_block: 2048,
        };
        assert_eq!((a.tierkv_register_layout)(m, &r, 1, 4), status::INVALID_ARGUMENT);
        assert!(a.last_error().contains("4096"), "{}", a.last_error());
        assert_eq!((a.tierkv_register_layout)(m, &r, 0, 4), status::INVALID_ARGUMENT);
        let r = Region {
            base: buf.as_ptr() as u64,
            block_stride: 4096,
            bytes_per_block: 4096,
        };
        assert_eq!((a.tierkv_register_layout)(m, &r, 1, 4), status::OK);
        let far = [7u64, 0];
        assert_eq!(
            (a.tierkv_store_blocks)(m, out.as_ptr(), far.as_ptr(), 2, std::ptr::null_mut()),
            status::INVALID_ARGUMENT
        );
        assert!(a.last_error().contains("out of range"));
        let mut res = [0u8; 2];
        let mut loaded = 0usize;
        assert_eq!(
            (a.tierkv_load_blocks)(m, out.as_ptr(), ids.as_ptr(), 2, std::ptr::null_mut(), &mut loaded),
            status::INVALID_ARGUMENT
        );
        let two = [0u64, 1];
        assert_eq!(
            (a.tierkv_load_blocks)(m, out.as_ptr(), two.as_ptr(), 2, res.as_mut_ptr(), &mut loaded),
            status::OK
        );
        assert_eq!((res, loaded), ([code::MISS; 2], 0), "nothing stored yet: misses");
        // Pool contract violations.
        let mut got = [0u32; 16];
        assert_eq!((a.tierkv_pool_allocate)(m, 9, got.as_mut_ptr()), status::INSUFFICIENT);
        assert!(
            a.last_error().contains("requested 9, available 8"),
            "{}",
            a.last_error()
        );
        assert_eq!((a.tierkv_pool_free)(m, [3u32].as_ptr(), 1), status::INVALID_ARGUMENT);
        assert_eq!((a.tierkv_pool_free)(m, [99u32].as_ptr(), 1), status::INVALID_ARGUMENT);
        assert!(a.last_error().contains("out of range"));
        // Destroyed handles are unknown.
        destroy(m);
        assert_eq!((a.tierkv_manager_destroy)(m), status::INVALID_ARGUMENT);
        assert_eq!(
            (a.tierkv_lookup)(m, out.as_ptr(), 2, std::ptr::null_mut(), &mut n),
            status::INVALID_ARGUMENT
        );
        assert_eq!(
            (a.tierkv_manager_destroy)(std::ptr::null_mut()),
            status::INVALID_ARGUMENT
        );
    }
}

#[test]
fn bad_configuration_names_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let (m, st) = create_in(dir.path(), 16, 4096, 0, &[("TIERKV_CPU_BYTES", "lots")]);
    assert_eq!(st, status::CONFIG);
    assert!(m.is_null());
    let e = api().last_error();
    assert!(
        e.contains("TIERKV_CPU_BYTES") && e.contains("lots") && e.contains("GiB"),
        "{e}"
    );
    let (_, st) = create_in(dir.path(), 16, 1 << 30, 0, &[("TIERKV_CPU_BYTES", "1MiB")]);
    assert_eq!(st, status::NO_SPACE);
    assert!(api().last_error().contains("TIERKV_CPU_BYTES"));
    let (_, st) = create_in(dir.path(), 0, 4096, 0, &[]);
    assert_eq!(st, status::INVALID_ARGUMENT);
    let (m, st) = create_in(dir.path(), 16, 4096, 0, &[("TIERKV_STORE_NAME", "s")]);
    assert_eq!(st, status::OK);
    // The same store with another block size is refused with a clear message.
    let (_, st) = create_in(dir.path(), 16, 8192, 0, &[("TIERKV_STORE_NAME", "s")]);
    assert_eq!(st, status::CONFIG);
    assert!(api().last_error().contains("TIERKV_STORE_NAME"));
    destroy(m);
    let bad_ns = [0xffu8, 0];
    let params = Params {
        block_tokens: 16,
        pool_blocks: 0,
        block_bytes: 4096,
        namespace_: bad_ns.as_ptr() as *const c_char,
        flags: 0,
    };
    let mut out: Mgr = std::ptr::null_mut();
    assert_eq!(
        // SAFETY: valid pointers; the namespace is NUL-terminated (but not UTF-8).
        unsafe { (api().tierkv_manager_create)(&params, &mut out) },
        status::INVALID_ARGUMENT
    );
    let params = Params {
        flags: 0x80,
        namespace_: std::ptr::null(),
        ..params
    };
    assert_eq!(
        // SAFETY: as above.
        unsafe { (api().tierkv_manager_create)(&params, &mut out) },
        status::INVALID_ARGUMENT
    );
    assert_eq!(
        // SAFETY: null params are rejected.
        unsafe { (api().tierkv_manager_create)(std::ptr::null(), &mut out) },
        status::INVALID_ARGUMENT
    );
}

/// Engine memory as a layer-major layout: `layers` regions of `blocks` blocks.
struct Engine {
    layers: Vec<Vec<u8>>,
    seg: usize,
}

impl Engine {
    fn new(layers: usize, blocks: usize, seg: usize) -> Self {
        Self {
            layers: (0..layers).map(|_| vec![0u8; blocks * seg]).collect(),
            seg,
        }
    }
    fn regions(&self) -> Vec<Region> {
        self.layers
            .iter()
            .map(|l| Region {
                base: l.as_ptr() as u64,
                block_stride: self.seg as u64,
                bytes_per_block: self.seg as u64,
            })
            .collect()
    }
    fn fill(&mut self, block: usize, seed: u32) {
        let seg = self.seg;
        for (li, l) in self.layers.iter_mut().enumerate() {
            for (i, b) in l[block * seg..(block + 1) * seg].iter_mut().enumerate() {
                *b = (seed.wrapping_mul(2_654_435_761).wrapping_add((li * 977 + i) as u32) >> 7) as u8;
            }
        }
    }
    fn block(&self, block: usize) -> Vec<u8> {
        self.layers
            .iter()
            .flat_map(|l| l[block * self.seg..(block + 1) * self.seg].to_vec())
            .collect()
    }
}

#[test]
fn many_threads_store_and_load_through_the_abi() {
    let (layers, seg, blocks_per_thread, threads) = (4usize, 1024usize, 16usize, 8usize);
    // One manager, one layout over shared engine memory, many threads storing and
    // loading disjoint block ranges through a tier too small for all of them.
    let (m, _s) = create(16, (layers * seg) as u64, 0, &[("TIERKV_CPU_BYTES", "2MiB")]);
    let engine = Arc::new(Mutex::new(Engine::new(layers, blocks_per_thread * threads, seg)));
    {
        let regions = engine.lock().unwrap().regions();
        assert_eq!(
            // SAFETY: regions describe live buffers that outlive the manager's use.
            unsafe {
                (api().tierkv_register_layout)(m, regions.as_ptr(), regions.len(), (blocks_per_thread * threads) as u64)
            },
            status::OK
        );
    }
    let m_addr = m as usize;
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let engine = engine.clone();
            std::thread::spawn(move || {
                let a = api();
                let m = m_addr as Mgr;
                let base = t * blocks_per_thread;
                let tokens: Vec<u32> = (0..(blocks_per_thread * 16) as u32)
                    .map(|i| i + 100_000 * t as u32)
                    .collect();
                let hs = hashes(m, &tokens);
                let ids: Vec<u64> = (base..base + blocks_per_thread).map(|b| b as u64).collect();
                let want: Vec<Vec<u8>> = {
                    let mut e = engine.lock().unwrap();
                    for b in base..base + blocks_per_thread {
                        e.fill(b, (b * 31 + 7) as u32);
                    }
                    (base..base + blocks_per_thread).map(|b| e.block(b)).collect()
                };
                for round in 0..20 {
                    let mut res = vec![9u8; ids.len()];
                    // SAFETY: this thread's blocks are written by no one else during the call.
                    let st =
                        unsafe { (a.tierkv_store_blocks)(m, hs.as_ptr(), ids.as_ptr(), ids.len(), res.as_mut_ptr()) };
                    assert_eq!(st, status::OK, "{}", a.last_error());
                    assert!(res.iter().all(|&r| r <= 2));
                    {
                        // Scribble over our blocks, then load them back.
                        let mut e = engine.lock().unwrap();
                        for b in base..base + blocks_per_thread {
                            e.fill(b, round + 1_000_000);
                        }
                    }
                    let mut loaded = 0usize;
                    // SAFETY: as above.
                    let st = unsafe {
                        (a.tierkv_load_blocks)(m, hs.as_ptr(), ids.as_ptr(), ids.len(), res.as_mut_ptr(), &mut loaded)
                    };
                    assert_eq!(st, status::OK, "{}", a.last_error());
                    let e = engine.lock().unwrap();
                    for (i, b) in (base..base + blocks_per_thread).enumerate() {
                        match res[i] {
                            code::LOADED => assert_eq!(e.block(b), want[i], "thread {t} block {b}: wrong bytes served"),
                            code::MISS | code::BUSY => {} // evicted by other threads (the tier is small) or busy
                            r => panic!("unexpected load result {r}"),
                        }
                    }
                    drop(e);
                    let mut e = engine.lock().unwrap();
                    for b in base..base + blocks_per_thread {
                        e.fill(b, (b * 31 + 7) as u32);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let text = metrics(m);
    assert!(
        text.contains("tierkv_checksum_failures_total{tier=\"host\"} 0"),
        "{text}"
    );
    destroy(m);
}

#[test]
fn flipped_byte_in_the_shared_arena_is_reported_never_served() {
    let a = api();
    let seg = 4096;
    let (m, s) = create(4, seg as u64, 0, &[("TIERKV_STORE_NAME", "flip")]);
    let mut engine = Engine::new(1, 4, seg);
    engine.fill(0, 1);
    engine.fill(1, 2);
    let regions = engine.regions();
    let hs = hashes(m, &[1, 2, 3, 4, 5, 6, 7, 8]);
    let ids = [0u64, 1];
    // SAFETY: live buffers, not accessed concurrently.
    unsafe {
        assert_eq!((a.tierkv_register_layout)(m, regions.as_ptr(), 1, 4), status::OK);
        assert_eq!(
            (a.tierkv_store_blocks)(m, hs.as_ptr(), ids.as_ptr(), 2, std::ptr::null_mut()),
            status::OK
        );
    }
    let mut tiers = [0u8; 2];
    let mut hits = 0usize;
    assert_eq!(
        // SAFETY: valid buffers.
        unsafe { (a.tierkv_lookup)(m, hs.as_ptr(), 2, tiers.as_mut_ptr(), &mut hits) },
        status::OK
    );
    assert_eq!((hits, tiers), (2, [2, 2]));
    // Flip one byte of the second block's payload in the file.
    let path = s.dir.path().join("tierkv-flip.arena");
    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let mut data = Vec::new();
    f.read_to_end(&mut data).unwrap();
    let want0 = engine.block(0);
    let want1 = engine.block(1);
    let pos = data
        .windows(64)
        .position(|w| w == &want1[..64])
        .expect("payload in arena");
    data[pos + 10] ^= 1;
    use std::io::Seek;
    f.seek(std::io::SeekFrom::Start(0)).unwrap();
    f.write_all(&data).unwrap();
    engine.fill(0, 99);
    engine.fill(1, 99);
    let mut res = [9u8; 2];
    let mut loaded = 0usize;
    assert_eq!(
        // SAFETY: as above.
        unsafe { (a.tierkv_load_blocks)(m, hs.as_ptr(), ids.as_ptr(), 2, res.as_mut_ptr(), &mut loaded) },
        status::OK
    );
    assert_eq!((res, loaded), ([code::LOADED, code::CORRUPT], 1), "block 1 is corrupt");
    assert_eq!(engine.block(0), want0);
    let text = metrics(m);
    assert!(
        text.contains("tierkv_checksum_failures_total{tier=\"host\"} 1"),
        "{text}"
    );
    // A corrupt block is dropped: the next lookup stops before it.
    assert_eq!(
        // SAFETY: valid buffers.
        unsafe { (a.tierkv_lookup)(m, hs.as_ptr(), 2, std::ptr::null_mut(), &mut hits) },
        status::OK
    );
    assert_eq!(hits, 1);
    destroy(m);
}

#[test]
fn exporter_serves_metrics_and_a_taken_port_is_only_a_warning() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (m, _s) = create(16, 4096, 0, &[("TIERKV_METRICS_ADDR", &port)]);
    let mut info = Info::default();
    // SAFETY: valid out pointer.
    assert_eq!(unsafe { (api().tierkv_manager_info)(m, &mut info) }, status::OK);
    assert_eq!(info.metrics_port, 0, "port in use: no exporter, but the manager works");
    destroy(m);
    let (m, _s) = create(16, 4096, 0, &[("TIERKV_METRICS_ADDR", "127.0.0.1:0")]);
    // SAFETY: valid out pointer.
    assert_eq!(unsafe { (api().tierkv_manager_info)(m, &mut info) }, status::OK);
    assert_ne!(info.metrics_port, 0);
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", info.metrics_port)).unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut body = String::new();
    conn.read_to_string(&mut body).unwrap();
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    assert!(body.contains("# TYPE tierkv_lookups_total counter"));
    destroy(m);
}

#[test]
fn engine_pool_through_the_abi() {
    let a = api();
    let (m, _s) = create(4, 4096, 4, &[]);
    let mut ids = [0u32; 4];
    let h = Hash { lo: 5, hi: 6 };
    let mut flag = 0u8;
    let mut n = 0usize;
    // SAFETY: valid buffers throughout.
    unsafe {
        assert_eq!((a.tierkv_pool_allocate)(m, 2, ids.as_mut_ptr()), status::OK);
        assert_eq!(&ids[..2], &[0, 1]);
        assert_eq!((a.tierkv_pool_register)(m, 0, &h, &mut flag), status::OK);
        assert_eq!(flag, 1);
        assert_eq!((a.tierkv_pool_fork)(m, ids.as_ptr(), 1), status::OK);
        let mut dst = 0u32;
        assert_eq!((a.tierkv_pool_copy_on_write)(m, 0, &mut dst, &mut flag), status::OK);
        assert_eq!((dst, flag), (2, 1));
        assert_eq!((a.tierkv_pool_free)(m, [0u32, 1].as_ptr(), 2), status::OK);
        let mut tiers = [0u8; 1];
        assert_eq!((a.tierkv_lookup)(m, &h, 1, tiers.as_mut_ptr(), &mut n), status::OK);
        assert_eq!((n, tiers[0]), (1, 1), "found in the engine tier");
        let mut got = [0u32; 1];
        assert_eq!(
            (a.tierkv_pool_acquire_cached)(m, &h, 1, got.as_mut_ptr(), &mut n),
            status::OK
        );
        assert_eq!((n, got[0]), (1, 0));
        // touch references exactly the block named (here held: one more reference,
        // released below with the acquired one); an unknown id is refused.
        assert_eq!((a.tierkv_pool_touch)(m, got.as_ptr(), 1), status::OK);
        assert_eq!((a.tierkv_pool_free)(m, [0u32, 0].as_ptr(), 2), status::OK);
        assert_eq!((a.tierkv_pool_touch)(m, [99u32].as_ptr(), 1), status::INVALID_ARGUMENT);
    }
    destroy(m);
    let (m, _s) = create(4, 4096, 0, &[]);
    assert_eq!(
        // SAFETY: valid buffer.
        unsafe { (a.tierkv_pool_allocate)(m, 1, ids.as_mut_ptr()) },
        status::STATE
    );
    destroy(m);
}

/// The pool's queries and the shadow counters: two blocks holding one identity
/// (the first is found, the second takes over), forgetting, a reset, the state, and
/// shadow counts that show on the scrape.
#[test]
fn pool_queries_and_shadow_counters_through_the_abi() {
    let a = api();
    let (m, _s) = create(4, 4096, 6, &[]);
    let h = Hash { lo: 7, hi: 8 };
    let mut ids = [0u32; 2];
    let (mut flag, mut n) = (0u8, 0usize);
    let mut st = tierkv_abi_tests::PoolState::default();
    // SAFETY: valid buffers throughout, except the null ones under test (validated).
    unsafe {
        assert_eq!((a.tierkv_pool_allocate)(m, 2, ids.as_mut_ptr()), status::OK);
        assert_eq!((a.tierkv_pool_register)(m, ids[0], &h, &mut flag), status::OK);
        assert_eq!(flag, 1);
        assert_eq!((a.tierkv_pool_register)(m, ids[1], &h, &mut flag), status::OK);
        assert_eq!(flag, 0, "a second holder is not the one found");
        let mut found = [0u32; 2];
        let other = Hash { lo: 1, hi: 1 };
        assert_eq!(
            (a.tierkv_pool_find)(m, [h, other].as_ptr(), 2, found.as_mut_ptr()),
            status::OK
        );
        assert_eq!(found, [ids[0], u32::MAX]);
        assert_eq!((a.tierkv_pool_forget)(m, &ids[0], 1, &mut n), status::OK);
        assert_eq!(n, 1);
        assert_eq!((a.tierkv_pool_find)(m, &h, 1, found.as_mut_ptr()), status::OK);
        assert_eq!(found[0], ids[1], "the second holder took over");
        assert_eq!(
            (a.tierkv_pool_forget)(m, [99u32].as_ptr(), 1, &mut n),
            status::INVALID_ARGUMENT
        );
        assert_eq!((a.tierkv_pool_state)(m, &mut st), status::OK);
        assert_eq!((st.num_blocks, st.free, st.cached, st.allocated), (6, 4, 1, 2));
        assert_eq!((a.tierkv_pool_reset_prefix_cache)(m, &mut n), status::OK);
        assert_eq!(n, 1);
        let mut flags = [9u8; 2];
        let two = [Hash { lo: 20, hi: 0 }, Hash { lo: 20, hi: 0 }];
        assert_eq!(
            (a.tierkv_pool_register_many)(m, ids.as_ptr(), two.as_ptr(), 2, flags.as_mut_ptr()),
            status::OK
        );
        assert_eq!(flags, [1, 0], "one call, the first holder found");
        assert_eq!(
            (a.tierkv_pool_register_many)(m, [ids[0], 5].as_ptr(), two.as_ptr(), 2, std::ptr::null_mut()),
            status::INVALID_ARGUMENT,
            "block 5 is not held"
        );
        assert_eq!((a.tierkv_pool_state)(m, std::ptr::null_mut()), status::INVALID_ARGUMENT);
        assert_eq!(
            (a.tierkv_pool_shadow_record)(m, 10, [0u64, 0, 2, 0].as_ptr()),
            status::OK
        );
        assert_eq!(
            (a.tierkv_pool_shadow_record)(m, 1, std::ptr::null()),
            status::INVALID_ARGUMENT
        );
    }
    let text = metrics(m);
    assert!(text.contains("tierkv_pool_shadow_ops_total 10"), "{text}");
    assert!(text.contains("tierkv_pool_shadow_disagreements_total{kind=\"prefix_hits\"} 2"));
    destroy(m);
}

/// KV events through the C ABI: bad arguments are errors, a buffer below the
/// minimum is BUFFER_TOO_SMALL with the minimum written, a named store comes back
/// as one msgpack `KVEventBatch` holding the engine's key.
#[test]
fn kv_events_through_the_abi() {
    let a = api();
    let (m, _s) = create(4, 4096, 0, &[]);
    let mut mem = vec![9u8; 2 * 4096];
    let region = Region {
        base: mem.as_mut_ptr() as u64,
        block_stride: 4096,
        bytes_per_block: 4096,
    };
    let h = Hash { lo: 41, hi: 42 };
    let key = 0xdead_beef_0000_0001u64;
    let mut buf = vec![0u8; 4096];
    let (mut len, mut n, mut rest) = (0usize, 0usize, 0usize);
    // SAFETY: valid buffers throughout, except the null ones under test (validated).
    unsafe {
        assert_eq!((a.tierkv_register_layout)(m, &region, 1, 2), status::OK);
        assert_eq!(
            (a.tierkv_name_blocks)(m, &h, std::ptr::null(), std::ptr::null(), 1),
            status::INVALID_ARGUMENT
        );
        assert_eq!(
            (a.tierkv_take_events)(m, buf.as_mut_ptr(), 4096, std::ptr::null_mut(), &mut n, &mut rest),
            status::INVALID_ARGUMENT
        );
        assert_eq!((a.tierkv_events_start)(m, 0), status::OK);
        assert_eq!((a.tierkv_name_blocks)(m, &h, &key, std::ptr::null(), 1), status::OK);
        let mut res = [0u8; 1];
        assert_eq!(
            (a.tierkv_store_blocks)(m, &h, [0u64].as_ptr(), 1, res.as_mut_ptr()),
            status::OK
        );
        assert_eq!(res[0], code::STORED);
        assert_eq!(
            (a.tierkv_take_events)(m, buf.as_mut_ptr(), 100, &mut len, &mut n, &mut rest),
            status::BUFFER_TOO_SMALL
        );
        assert_eq!((len, n), (512, 0), "the minimum is written, nothing taken");
        assert_eq!(
            (a.tierkv_take_events)(m, buf.as_mut_ptr(), 512, &mut len, &mut n, &mut rest),
            status::OK
        );
        assert_eq!((n, rest), (1, 0));
        let batch = &buf[..len];
        assert_eq!(&batch[..2], &[0x93, 0xcb], "[ts: float64, ...]");
        let mut tagged = vec![0xcf];
        tagged.extend_from_slice(&key.to_be_bytes());
        assert!(
            batch.windows(9).any(|w| w == tagged),
            "the engine's key is in the batch"
        );
        assert!(batch.windows(11).any(|w| w == b"BlockStored"));
        assert_eq!(
            (a.tierkv_take_events)(m, buf.as_mut_ptr(), 512, &mut len, &mut n, &mut rest),
            status::OK
        );
        assert_eq!((len, n, rest), (0, 0, 0), "taken once");
    }
    destroy(m);
}

#[test]
fn two_managers_in_one_process_share_a_store_and_destroy_races_safely() {
    let a = api();
    let (m1, s) = create(4, 4096, 0, &[("TIERKV_STORE_NAME", "pair")]);
    let (m2, st) = create_in(s.dir.path(), 4, 4096, 0, &[("TIERKV_STORE_NAME", "pair")]);
    assert_eq!(st, status::OK);
    let mut engine = Engine::new(1, 1, 4096);
    engine.fill(0, 5);
    let regions = engine.regions();
    let hs = hashes(m1, &[9, 9, 9, 9]);
    assert_eq!(hs, hashes(m2, &[9, 9, 9, 9]), "same namespace, same identity");
    // SAFETY: live buffers.
    unsafe {
        assert_eq!((a.tierkv_register_layout)(m1, regions.as_ptr(), 1, 1), status::OK);
        assert_eq!(
            (a.tierkv_store_blocks)(m1, hs.as_ptr(), [0u64].as_ptr(), 1, std::ptr::null_mut()),
            status::OK
        );
    }
    let mut n = 0usize;
    assert_eq!(
        // SAFETY: valid buffers.
        unsafe { (a.tierkv_lookup)(m2, hs.as_ptr(), 1, std::ptr::null_mut(), &mut n) },
        status::OK
    );
    assert_eq!(n, 1);
    // Many threads call m2 while it is destroyed: each call either works or reports
    // an unknown handle; nothing crashes.
    let addr = m2 as usize;
    let h0 = hs[0];
    let callers: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let mut ok = 0;
                for _ in 0..2000 {
                    let mut n = 0usize;
                    // SAFETY: the handle may be destroyed concurrently: that is the test.
                    let st = unsafe { (api().tierkv_lookup)(addr as Mgr, &h0, 1, std::ptr::null_mut(), &mut n) };
                    assert!(st == status::OK || st == status::INVALID_ARGUMENT);
                    ok += usize::from(st == status::OK);
                }
                ok
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(2));
    destroy(m2);
    for c in callers {
        c.join().unwrap();
    }
    destroy(m1);
}

/// The generated header compiles as C11 with warnings as errors, and a C host
/// that dlopens the library works through it.
#[test]
fn c_host_compiles_and_runs() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = tempfile::tempdir().unwrap();
    let exe = out.path().join("smoke");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let build = std::process::Command::new(&cc)
        .args(["-std=gnu11", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(root.join("plugin/include"))
        .arg(root.join("tests/c/smoke.c"))
        .arg("-o")
        .arg(&exe)
        .arg("-ldl")
        .output()
        .expect("a C compiler (cc) is needed for this test");
    assert!(build.status.success(), "{}", String::from_utf8_lossy(&build.stderr));
    let shm = tempfile::tempdir().unwrap();
    let run = std::process::Command::new(&exe)
        .arg(tierkv_abi_tests::lib_path())
        .arg(shm.path())
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "C host failed ({:?}): {}{}",
        run.status.code(),
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&run.stdout).trim(), "ok");
}
