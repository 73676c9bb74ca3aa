#!/usr/bin/env bash
# Builds the llama.cpp host (integration/llamacpp/tierkv_llama.cc): llama.cpp from
# scripts/llamacpp-env.sh (cached), tierkv's C++ bridge installed under
# target/llamacpp/prefix by scripts/install-cxx.sh, the host linked against both.
# Prints the binary's path as the last line (the llama.cpp cache directory, with
# model.gguf and llama-server, on the line before).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
llama=$(scripts/llamacpp-env.sh | tail -n 1)
prefix="$root/target/llamacpp/prefix"
scripts/install-cxx.sh "$prefix" >&2
g++ -std=c++17 -O2 -Wall -Wextra -o target/llamacpp/tierkv-llama integration/llamacpp/tierkv_llama.cc \
  -DTIERKV_LLAMA_BUILD="\"$(cat "$llama/.complete")\"" \
  -I"$prefix/include" -I"$llama/prefix/include" \
  "$prefix/lib/libtierkv_cxx.a" -L"$llama/prefix/lib" -lllama -lggml -lggml-base \
  -Wl,-rpath,"$llama/prefix/lib" -lpthread -ldl -lm >&2
echo "$llama"
echo "$root/target/llamacpp/tierkv-llama"
