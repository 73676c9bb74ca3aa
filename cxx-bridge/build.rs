//! Generates the C++ side of the bridge (`tierkv-cxx/src/lib.rs.h`, `rust/cxx.h`)
//! and compiles it into the static library; with the `cxx-tests` feature also the
//! C++ test harness.

fn main() {
    let mut bridges = vec!["src/lib.rs"];
    let tests = std::env::var_os("CARGO_FEATURE_CXX_TESTS").is_some();
    if tests {
        bridges.push("src/harness.rs");
    }
    let mut build = cxx_build::bridges(bridges);
    build.std("c++17").include("include");
    if tests {
        build.file("tests/cxx/harness.cc").include("../plugin/include");
    }
    build.compile("tierkv-cxx");
    println!("cargo:rerun-if-changed=src/lib.rs");
    println!("cargo:rerun-if-changed=src/harness.rs");
    println!("cargo:rerun-if-changed=include/tierkv/cxx.h");
    println!("cargo:rerun-if-changed=tests/cxx/harness.cc");
}
