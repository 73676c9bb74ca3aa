#!/usr/bin/env bash
# Builds the connector's wheel the way Rust-in-Python projects do: setuptools-rust
# runs cargo and puts libtierkv.so inside the `tierkv_vllm` package; the wheel is
# tagged py3-none-<platform> (the library is loaded with ctypes, not a CPython
# extension) and `auditwheel repair` gives it the manylinux tag its glibc symbols
# allow (built here: manylinux_2_34_x86_64).
#
# Usage: scripts/build-wheel.sh [OUTDIR]   (default: target/wheels); prints the
#        wheel's path on its last line.
# The build tools live in a venv keyed by integration/vllm/requirements-build.lock
# ($HOME/.cache/tierkv/wheel-tools), reused only when complete.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/target/wheels}
lock="$root/integration/vllm/requirements-build.lock"
tools=${TIERKV_WHEEL_TOOLS:-$HOME/.cache/tierkv/wheel-tools}
want=$(sha256sum "$lock" | cut -c1-16)
if [ "$(cat "$tools/.tierkv-complete" 2>/dev/null)" != "$want" ] || [ ! -x "$tools/bin/auditwheel" ]; then
  echo "building wheel tools at $tools" >&2
  rm -rf "$tools"
  python3 -m venv "$tools"
  "$tools/bin/pip" install -q --disable-pip-version-check -r "$lock"
  echo "$want" >"$tools/.tierkv-complete"
fi
pkg="$root/integration/vllm"
stage=$(mktemp -d)
trap 'rm -rf "$stage" "$pkg/build" "$pkg"/*.egg-info' EXIT
rm -rf "$pkg/build" "$pkg"/*.egg-info "$pkg/tierkv_vllm/libtierkv.so"
# The pinned tools build it (no isolated build environment, no download); cargo
# builds into the workspace's target directory.
CARGO_TARGET_DIR="$root/target" "$tools/bin/pip" wheel -q --disable-pip-version-check \
  --no-deps --no-build-isolation -w "$stage" "$pkg" >&2
mkdir -p "$out"
rm -f "$out"/tierkv_vllm-*.whl
PATH="$tools/bin:$PATH" "$tools/bin/auditwheel" repair -w "$out" "$stage"/tierkv_vllm-*.whl >&2
wheel=$(ls "$out"/tierkv_vllm-*manylinux*.whl)
echo "$wheel"
