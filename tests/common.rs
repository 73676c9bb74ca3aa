//! Helpers shared by the dlopen test files: the loaded library, and managers
//! created in fresh directories with `TIERKV_*` variables set.
#![allow(dead_code)]

use std::ffi::c_char;
use std::sync::{Mutex, OnceLock};

use tierkv_abi_tests::{status, Api, Hash, Mgr, Params};

pub fn api() -> &'static Api {
    static API: OnceLock<Api> = OnceLock::new();
    API.get_or_init(Api::load)
}

/// Serialises environment changes (creation reads `TIERKV_*`).
pub static ENV: Mutex<()> = Mutex::new(());

pub struct Store {
    pub dir: tempfile::TempDir,
}

/// A manager in a fresh shared-memory directory, created with `vars` set.
pub fn create(block_tokens: u32, block_bytes: u64, pool: u32, vars: &[(&str, &str)]) -> (Mgr, Store) {
    let dir = tempfile::tempdir().unwrap();
    let (m, st) = create_in(dir.path(), block_tokens, block_bytes, pool, vars);
    assert_eq!(st, status::OK, "{}", api().last_error());
    (m, Store { dir })
}

pub fn create_in(
    dir: &std::path::Path,
    block_tokens: u32,
    block_bytes: u64,
    pool: u32,
    vars: &[(&str, &str)],
) -> (Mgr, i32) {
    let _g = ENV.lock().unwrap_or_else(|e| e.into_inner());
    create_in_locked(dir, block_tokens, block_bytes, pool, vars)
}

/// [`create_in`] for a caller that holds [`ENV`] already.
pub fn create_in_locked(
    dir: &std::path::Path,
    block_tokens: u32,
    block_bytes: u64,
    pool: u32,
    vars: &[(&str, &str)],
) -> (Mgr, i32) {
    let mut all: Vec<(&str, String)> = vec![
        ("TIERKV_SHM_DIR", dir.display().to_string()),
        ("TIERKV_CPU_BYTES", "8MiB".into()),
        ("TIERKV_LOG", "off".into()),
    ];
    all.extend(vars.iter().map(|(k, v)| (*k, v.to_string())));
    for (k, v) in &all {
        std::env::set_var(k, v);
    }
    let params = Params {
        block_tokens,
        pool_blocks: pool,
        block_bytes,
        namespace_: std::ptr::null(),
        flags: 0,
    };
    let mut m: Mgr = std::ptr::null_mut();
    // SAFETY: valid params and out pointer.
    let st = unsafe { (api().tierkv_manager_create)(&params, &mut m) };
    for (k, _) in &all {
        std::env::remove_var(k);
    }
    (m, st)
}

pub fn destroy(m: Mgr) {
    // SAFETY: a live handle.
    assert_eq!(unsafe { (api().tierkv_manager_destroy)(m) }, status::OK);
}

pub fn hashes(m: Mgr, tokens: &[u32]) -> Vec<Hash> {
    let mut out = vec![Hash::default(); tokens.len()];
    let mut n = 0usize;
    // SAFETY: valid buffers of the stated lengths.
    let st = unsafe {
        (api().tierkv_hash_tokens)(
            m,
            std::ptr::null(),
            tokens.as_ptr(),
            tokens.len(),
            out.as_mut_ptr(),
            out.len(),
            &mut n,
        )
    };
    assert_eq!(st, status::OK, "{}", api().last_error());
    out.truncate(n);
    out
}

pub fn metrics(m: Mgr) -> String {
    let a = api();
    let mut need = 0usize;
    assert_eq!(
        // SAFETY: a zero-capacity probe: buf is never written.
        unsafe { (a.tierkv_metrics_text)(m, std::ptr::null_mut(), 0, &mut need) },
        status::BUFFER_TOO_SMALL
    );
    let mut buf = vec![0u8; need];
    assert_eq!(
        // SAFETY: buf has `need` bytes.
        unsafe { (a.tierkv_metrics_text)(m, buf.as_mut_ptr() as *mut c_char, buf.len(), &mut need) },
        status::OK
    );
    assert_eq!(buf.last(), Some(&0));
    String::from_utf8(buf[..need - 1].to_vec()).unwrap()
}
