//! The C++ test harness (`tests/cxx/harness.cc`), compiled only with the
//! `cxx-tests` feature (the crate's own tests turn it on): C++ code using the
//! bridge as an engine would, checked from `tests/cxx.rs`.

#[cxx::bridge(namespace = "tierkv_test")]
mod ffi {
    extern "Rust" {
        /// A bridge function whose body panics: C++ must get an exception.
        fn guarded_panic() -> Result<()>;
    }

    unsafe extern "C++" {
        include!("tierkv-cxx/tests/cxx/harness.h");

        /// Runs every C++ check; returns the failures, one per line (empty: all
        /// passed).
        fn run_all() -> String;
    }
}

pub use ffi::run_all;

/// A bridge body that panics, behind the same guard as every bridge function.
pub fn guarded_panic() -> Result<(), crate::Error> {
    crate::guard(|| panic!("deliberate panic of the C++ harness"))
}
