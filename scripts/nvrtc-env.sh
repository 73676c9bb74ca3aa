#!/usr/bin/env bash
# Fetches NVRTC (the CUDA run-time compiler library; it runs without a GPU) from
# PyPI's nvidia-cuda-nvrtc-cu12 wheel into ~/.cache/tierkv/nvrtc once, and prints
# the directory to put on LD_LIBRARY_PATH. Reuses a complete earlier download.
#
# Usage: export LD_LIBRARY_PATH=$(scripts/nvrtc-env.sh | tail -n 1)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
set -euo pipefail
version="12.8.93"
dir="${TIERKV_CACHE:-$HOME/.cache/tierkv}/nvrtc-$version"
lib="$dir/nvidia/cuda_nvrtc/lib"
if [ ! -f "$dir/.complete" ] || [ ! -f "$lib/libnvrtc.so.12" ]; then
  echo "== fetching nvidia-cuda-nvrtc-cu12==$version" >&2
  rm -rf "$dir"
  mkdir -p "$dir"
  python3 -m pip download --no-deps --only-binary=:all: -q -d "$dir" "nvidia-cuda-nvrtc-cu12==$version" >&2
  python3 -m zipfile -e "$dir"/nvidia_cuda_nvrtc_cu12-*.whl "$dir" >&2
  rm -f "$dir"/*.whl
  test -f "$lib/libnvrtc.so.12"
  touch "$dir/.complete"
fi
echo "$lib"
