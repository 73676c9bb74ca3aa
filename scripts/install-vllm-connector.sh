#!/usr/bin/env bash
# Builds the connector wheel (libtierkv.so inside, scripts/build-wheel.sh) and
# installs it into a Python environment that has vLLM.
#
# Usage: scripts/install-vllm-connector.sh [PYTHON]   (default: python3)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=${1:-python3}
cd "$root"
wheel=$(scripts/build-wheel.sh | tail -n 1)
"$python" -m pip install -q --disable-pip-version-check --no-deps --force-reinstall "$wheel"
echo "installed $(basename "$wheel") into $("$python" -c 'import sys; print(sys.prefix)')"
