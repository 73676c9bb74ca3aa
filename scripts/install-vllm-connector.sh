#!/usr/bin/env bash
# Builds libtierkv.so (release) and installs the `tierkv_vllm` connector package,
# with the library inside it, into a Python environment that has vLLM.
#
# Usage: scripts/install-vllm-connector.sh [PYTHON]   (default: python3)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=${1:-python3}
cd "$root"
cargo build --release -p tierkv
cp target/release/libtierkv.so integration/vllm/tierkv_vllm/libtierkv.so
"$python" -m pip install -q --disable-pip-version-check --no-deps --force-reinstall ./integration/vllm
rm -rf integration/vllm/build integration/vllm/*.egg-info
echo "installed tierkv_vllm into $("$python" -c 'import sys; print(sys.prefix)')"
