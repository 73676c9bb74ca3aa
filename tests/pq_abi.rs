//! PQ retrieval through the C ABI of the built library: an index of keys, the
//! tokens of a decode step per KV head, appends, metrics, and every kind of bad
//! argument refused without a crash.

#[path = "common.rs"]
mod common;

use std::ffi::c_void;

use common::{api, create, destroy, metrics};
use tierkv_abi_tests::{status, PqInfo, PqParams};

const LAYERS: usize = 2;
const HEADS: usize = 2;
const DIM: usize = 16;
const GROUP: usize = 3;

/// Keys `[layer][head][token][dim]` in which token `planted` of every head points
/// where the all-ones query looks.
fn keys(n: usize, planted: usize) -> Vec<f32> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut k: Vec<f32> = (0..LAYERS * HEADS * n * DIM)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 1000) as f32 / 1000.0 - 0.5
        })
        .collect();
    for lh in 0..LAYERS * HEADS {
        let at = (lh * n + planted) * DIM;
        k[at..at + DIM].iter_mut().for_each(|v| *v = 4.0);
    }
    k
}

#[test]
fn an_index_selects_sinks_window_and_the_planted_token_per_kv_head() {
    let a = api();
    let (m, _s) = create(16, 4096, 0, &[("TIERKV_PQ_SINK", "4"), ("TIERKV_PQ_BUDGET", "0.1")]);
    let n = 400;
    let k = keys(n, 123);
    let mut p = PqParams::default();
    let mut pq: *mut c_void = std::ptr::null_mut();
    let mut info = PqInfo::default();
    let q = vec![1.0f32; HEADS * GROUP * DIM];
    let mut toks = vec![0u32; HEADS * n];
    let mut counts = [0usize; HEADS];
    // SAFETY: (all calls) valid pointers and lengths, a live handle.
    unsafe {
        assert_eq!((a.tierkv_pq_params)(m, &mut p), status::OK);
        assert_eq!((p.budget, p.sink, p.subspaces, p.bits), (0.1, 4, 2, 6));
        let st = (a.tierkv_pq_build)(
            m,
            k.as_ptr(),
            LAYERS as u32,
            HEADS as u32,
            n,
            DIM as u32,
            std::ptr::null(),
            &mut pq,
        );
        assert_eq!(st, status::OK, "{}", a.last_error());
        assert_eq!((a.tierkv_pq_info)(pq, &mut info), status::OK);
        assert_eq!(
            (info.layers, info.kv_heads, info.head_dim, info.tokens),
            (2, 2, 16, 400)
        );
        assert!(info.bytes > 0);
        for layer in 0..LAYERS as u32 {
            let st = (a.tierkv_pq_topk)(
                pq,
                layer,
                q.as_ptr(),
                GROUP as u32,
                0.0,
                toks.as_mut_ptr(),
                n,
                counts.as_mut_ptr(),
            );
            assert_eq!(st, status::OK, "{}", a.last_error());
            for (h, &c) in counts.iter().enumerate() {
                // 4 sinks + 40 (20 window, 20 top-k).
                assert_eq!(c, 44);
                let sel = &toks[h * n..h * n + c];
                assert!(sel.windows(2).all(|w| w[0] < w[1]));
                assert!(sel.contains(&123), "layer {layer} head {h}: {sel:?}");
                assert!((0..4).all(|t| sel.contains(&t)) && sel.contains(&399));
            }
        }
        // A smaller budget for one call; too small a capacity writes nothing.
        let st = (a.tierkv_pq_topk)(
            pq,
            0,
            q.as_ptr(),
            GROUP as u32,
            0.05,
            toks.as_mut_ptr(),
            n,
            counts.as_mut_ptr(),
        );
        assert_eq!((st, counts), (status::OK, [24, 24]));
        counts = [7, 7];
        let st = (a.tierkv_pq_topk)(
            pq,
            0,
            q.as_ptr(),
            GROUP as u32,
            0.0,
            toks.as_mut_ptr(),
            10,
            counts.as_mut_ptr(),
        );
        assert_eq!((st, counts), (status::INVALID_ARGUMENT, [7, 7]));
        assert!(a.last_error().contains("capacity"), "{}", a.last_error());
        // Tokens appended are indexed (encoded with the same centroids).
        let more = keys(5, 0);
        assert_eq!(
            (a.tierkv_pq_append)(pq, more.as_ptr(), 5),
            status::OK,
            "{}",
            a.last_error()
        );
        assert_eq!((a.tierkv_pq_info)(pq, &mut info), status::OK);
        assert_eq!(info.tokens, 405);
    }
    let text = metrics(m);
    assert!(text.contains("tierkv_pq_builds_total 1"), "{text}");
    assert!(text.contains("tierkv_pq_topk_total 4"), "{text}");
    assert!(text.contains("tierkv_pq_index_tokens 405"), "{text}");
    // SAFETY: a live handle, destroyed once; the second destroy is a no-op.
    unsafe {
        (a.tierkv_pq_destroy)(pq);
        (a.tierkv_pq_destroy)(pq);
        assert_eq!((a.tierkv_pq_info)(pq, &mut info), status::INVALID_ARGUMENT);
    }
    assert!(metrics(m).contains("tierkv_pq_index_bytes 0"));
    destroy(m);
}

#[test]
fn bad_shapes_parameters_and_handles_are_refused() {
    let a = api();
    let (m, _s) = create(16, 4096, 0, &[]);
    let k = keys(64, 1);
    let mut pq: *mut c_void = std::ptr::null_mut();
    let bad = |p: PqParams| {
        let mut h: *mut c_void = std::ptr::null_mut();
        // SAFETY: valid pointers; the parameters are what is under test.
        let st = unsafe { (a.tierkv_pq_build)(m, k.as_ptr(), 2, 2, 64, 16, &p, &mut h) };
        (st, h.is_null())
    };
    let mut p = PqParams::default();
    // SAFETY: (all calls) tierkv validates what it is given.
    unsafe {
        assert_eq!((a.tierkv_pq_params)(m, &mut p), status::OK);
        // A head dimension that does not split; bits and budget out of range.
        assert_eq!(bad(PqParams { subspaces: 3, ..p }), (status::INVALID_ARGUMENT, true));
        assert_eq!(bad(PqParams { bits: 9, ..p }), (status::INVALID_ARGUMENT, true));
        assert_eq!(bad(PqParams { budget: 0.0, ..p }), (status::INVALID_ARGUMENT, true));
        assert_eq!(
            bad(PqParams { budget: f64::NAN, ..p }),
            (status::INVALID_ARGUMENT, true)
        );
        assert_eq!(bad(PqParams { subspaces: 4, ..p }), (status::OK, false));
        // Null keys, a zero or overflowing shape, a null out pointer.
        assert_eq!(
            (a.tierkv_pq_build)(m, std::ptr::null(), 2, 2, 64, 16, std::ptr::null(), &mut pq),
            status::INVALID_ARGUMENT
        );
        assert_eq!(
            (a.tierkv_pq_build)(m, k.as_ptr(), 0, 2, 64, 16, std::ptr::null(), &mut pq),
            status::INVALID_ARGUMENT
        );
        assert_eq!(
            (a.tierkv_pq_build)(
                m,
                k.as_ptr(),
                u32::MAX,
                u32::MAX,
                usize::MAX,
                16,
                std::ptr::null(),
                &mut pq
            ),
            status::INVALID_ARGUMENT
        );
        assert_eq!(
            (a.tierkv_pq_build)(m, k.as_ptr(), 2, 2, 64, 16, std::ptr::null(), std::ptr::null_mut()),
            status::INVALID_ARGUMENT
        );
        assert_eq!(
            (a.tierkv_pq_build)(
                std::ptr::null_mut(),
                k.as_ptr(),
                2,
                2,
                64,
                16,
                std::ptr::null(),
                &mut pq
            ),
            status::INVALID_ARGUMENT
        );
        assert_eq!(
            (a.tierkv_pq_build)(m, k.as_ptr(), 2, 2, 64, 16, std::ptr::null(), &mut pq),
            status::OK
        );
        let q = vec![0.5f32; 2 * 3 * 16];
        let mut toks = vec![0u32; 2 * 64];
        let mut counts = [0usize; 2];
        // A layer past the last, a group of 0, a budget above 1, null outputs, a bogus handle.
        assert_eq!(
            (a.tierkv_pq_topk)(pq, 2, q.as_ptr(), 3, 0.0, toks.as_mut_ptr(), 64, counts.as_mut_ptr()),
            status::INVALID_ARGUMENT
        );
        assert_eq!(
            (a.tierkv_pq_topk)(pq, 0, q.as_ptr(), 0, 0.0, toks.as_mut_ptr(), 64, counts.as_mut_ptr()),
            status::INVALID_ARGUMENT
        );
        assert_eq!(
            (a.tierkv_pq_topk)(pq, 0, q.as_ptr(), 3, 1.5, toks.as_mut_ptr(), 64, counts.as_mut_ptr()),
            status::INVALID_ARGUMENT
        );
        assert_eq!(
            (a.tierkv_pq_topk)(pq, 0, q.as_ptr(), 3, 0.0, std::ptr::null_mut(), 64, counts.as_mut_ptr()),
            status::INVALID_ARGUMENT
        );
        assert_eq!(
            (a.tierkv_pq_topk)(pq, 0, q.as_ptr(), 3, 0.0, toks.as_mut_ptr(), 64, std::ptr::null_mut()),
            status::INVALID_ARGUMENT
        );
        assert_eq!(
            (a.tierkv_pq_topk)(
                0x4000 as *const c_void,
                0,
                q.as_ptr(),
                3,
                0.0,
                toks.as_mut_ptr(),
                64,
                counts.as_mut_ptr()
            ),
            status::INVALID_ARGUMENT
        );
        assert_eq!(
            (a.tierkv_pq_topk)(pq, 0, q.as_ptr(), 3, 0.0, toks.as_mut_ptr(), 64, counts.as_mut_ptr()),
            status::OK
        );
        // An index of keys has no stored blocks to gather from; bad pointers and handles.
        let (mut kk, mut vv, mut rows) = (vec![0f32; 2 * 64 * 16], vec![0f32; 2 * 64 * 16], [0usize; 2]);
        let mut gather = |pq: *const c_void, toks: *const u32, counts: *const usize, rows: *mut usize, kk: *mut f32| {
            (a.tierkv_pq_gather)(m, pq, 0, toks, counts, 64, kk, vv.as_mut_ptr(), rows)
        };
        assert_eq!(
            gather(pq, toks.as_ptr(), counts.as_ptr(), rows.as_mut_ptr(), kk.as_mut_ptr()),
            status::STATE
        );
        assert_eq!(
            gather(
                pq,
                std::ptr::null(),
                counts.as_ptr(),
                rows.as_mut_ptr(),
                kk.as_mut_ptr()
            ),
            status::INVALID_ARGUMENT
        );
        assert_eq!(
            gather(
                pq,
                toks.as_ptr(),
                counts.as_ptr(),
                std::ptr::null_mut(),
                kk.as_mut_ptr()
            ),
            status::INVALID_ARGUMENT
        );
        assert_eq!(
            gather(
                0x4000 as *const c_void,
                toks.as_ptr(),
                counts.as_ptr(),
                rows.as_mut_ptr(),
                kk.as_mut_ptr()
            ),
            status::INVALID_ARGUMENT
        );
        let over = [65usize, 0];
        assert_eq!(
            gather(pq, toks.as_ptr(), over.as_ptr(), rows.as_mut_ptr(), kk.as_mut_ptr()),
            status::INVALID_ARGUMENT
        );
        assert_eq!((a.tierkv_pq_set_cache)(pq, 1 << 20), status::OK);
        assert_eq!(
            (a.tierkv_pq_set_cache)(0x4000 as *const c_void, 0),
            status::INVALID_ARGUMENT
        );
        assert_eq!((a.tierkv_pq_append)(pq, std::ptr::null(), 3), status::INVALID_ARGUMENT);
        assert_eq!(
            (a.tierkv_pq_append)(pq, k.as_ptr(), usize::MAX),
            status::INVALID_ARGUMENT
        );
        (a.tierkv_pq_destroy)(pq);
        (a.tierkv_pq_destroy)(std::ptr::null_mut());
    }
    destroy(m);
}
