#!/usr/bin/env bash
# Installs tierkv for C and C++ engines under PREFIX:
#   lib/libtierkv_cxx.a              the C++ bridge (tierkv and the bridge in one archive)
#   lib/libtierkv.so                 the C library
#   include/tierkv/tierkv.hpp        the C++ entry header
#   include/tierkv-cxx/src/lib.rs.h  the generated bridge header
#   include/rust/cxx.h               cxx's runtime header
#   include/tierkv.h                 the C header
#   lib/cmake/tierkv/tierkvConfig.cmake   find_package(tierkv) -> tierkv::tierkv, tierkv::c
#   lib/pkgconfig/tierkv.pc          pkg-config for the C library
#
# Usage: scripts/install-cxx.sh PREFIX [--debug]   (--debug: the debug build, for tests)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
prefix=${1:?usage: scripts/install-cxx.sh PREFIX [--debug]}
profile=release
flag=--release
if [ "${2:-}" = "--debug" ]; then profile=debug; flag=; fi
cd "$root"
cargo build $flag -p tierkv -p tierkv-cxx >&2
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
mkdir -p "$prefix/lib/cmake/tierkv" "$prefix/lib/pkgconfig" "$prefix/include/tierkv" \
  "$prefix/include/tierkv-cxx/src" "$prefix/include/rust"
install -m 0644 "target/$profile/libtierkv_cxx.a" "$prefix/lib/"
install -m 0755 "target/$profile/libtierkv.so" "$prefix/lib/"
install -m 0644 target/cxxbridge/tierkv-cxx/src/lib.rs.h "$prefix/include/tierkv-cxx/src/"
install -m 0644 target/cxxbridge/rust/cxx.h "$prefix/include/rust/"
install -m 0644 cxx-bridge/include/tierkv/tierkv.hpp "$prefix/include/tierkv/"
install -m 0644 plugin/include/tierkv.h "$prefix/include/"
sed "s|@VERSION@|$version|" cxx-bridge/cmake/tierkvConfig.cmake.in >"$prefix/lib/cmake/tierkv/tierkvConfig.cmake"
sed -e "s|@PREFIX@|$prefix|" -e "s|@VERSION@|$version|" cxx-bridge/cmake/tierkv.pc.in >"$prefix/lib/pkgconfig/tierkv.pc"
echo "installed tierkv $version under $prefix" >&2
