//! Runs the C++ harness (`tests/cxx/harness.cc`, compiled by cxx-build) against the
//! bridge: C++ code using `tierkv::Manager` as an engine would.

#[test]
fn the_bridge_from_cpp() {
    let dir = tempfile::tempdir().unwrap();
    // SAFETY: set before any manager exists; this test binary runs one test.
    unsafe {
        std::env::set_var("TIERKV_SHM_DIR", dir.path());
        std::env::set_var("TIERKV_STORE_NAME", "cxx-harness");
        std::env::set_var("TIERKV_CPU_BYTES", "4MiB");
        std::env::set_var("TIERKV_SEMANTIC", "1");
    }
    let failures = tierkv_cxx::harness::run_all();
    assert!(failures.is_empty(), "C++ checks failed:\n{failures}");
}
