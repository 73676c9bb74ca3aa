#!/usr/bin/env bash
# Runs every test: Rust unit, property and header tests, the C ABI tests that
# dlopen the built library, the Python binding tests, and the end-to-end tests in
# real vLLM with SmolLM2-135M (setting up the vLLM environment first if needed).
#
# Usage: scripts/test.sh            everything
#        TIERKV_SKIP_VLLM=1 scripts/test.sh   Rust and C ABI tests only
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

echo "== build libtierkv.so (debug, for the C ABI tests)"
cargo build -p tierkv

echo "== NVRTC from PyPI (kernels are compiled for sm_80 and sm_90 in the tests)"
nvrtc_lib=$(scripts/nvrtc-env.sh | tail -n 1)
export LD_LIBRARY_PATH="$nvrtc_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export TIERKV_REQUIRE_NVRTC=1

echo "== Redis from Debian (the remote tier's tests start their own clusters)"
scripts/redis-cluster.sh install >/dev/null
export TIERKV_REQUIRE_REDIS=1

echo "== Rust and C ABI tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
  # The GPU build of the manager: its no-driver path here, the device round trip
  # on a GPU machine.
  cargo nextest run -p tierkv --features cuda --no-fail-fast
else
  cargo test --workspace --no-fail-fast
  cargo test -p tierkv --features cuda --no-fail-fast
fi

if [ "${TIERKV_SKIP_VLLM:-0}" = "1" ]; then
  echo "== vLLM tests skipped (TIERKV_SKIP_VLLM=1)"
  exit 0
fi

echo "== build libtierkv.so (release, for vLLM)"
cargo build --release -p tierkv
venv=$(scripts/vllm-env.sh | tail -n 1)

echo "== Prometheus from Debian (evaluates the Grafana dashboard's queries)"
export TIERKV_PROMETHEUS=$(scripts/prometheus-env.sh | tail -n 1)
export TIERKV_REQUIRE_PROMETHEUS=1

echo "== the connector wheel, installed into the vLLM environment (what ships is what is tested)"
wheel=$(scripts/build-wheel.sh | tail -n 1)
"$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps --force-reinstall "$wheel"
export TIERKV_WHEEL="$wheel"
export TIERKV_E2E_INSTALLED=1

echo "== llama.cpp (built once, cached by version) and the C++ host over tierkv's bridge"
llama_out=$(scripts/build-llamacpp-host.sh)
export TIERKV_LLAMA_DIR=$(echo "$llama_out" | tail -n 2 | head -n 1)
export TIERKV_LLAMA_HOST=$(echo "$llama_out" | tail -n 1)
export TIERKV_REQUIRE_LLAMACPP=1

echo "== Python binding and end-to-end tests (real vLLM, real llama.cpp)"
export TIERKV_VLLM_PYTHON="$venv/bin/python"
# The library inside the installed package.
export TIERKV_LIB=$(cd /tmp && TIERKV_LIB= "$venv/bin/python" -c 'from tierkv_vllm import find_library; print(find_library())')
"$venv/bin/python" -m pytest -v -p no:cacheprovider tests/python tests/e2e

echo "== the end-to-end suite again, tierkv's pool shadowing vLLM's in every engine (no disagreement allowed)"
TIERKV_VLLM_POOL=shadow "$venv/bin/python" -m pytest -v -p no:cacheprovider tests/e2e
