#!/usr/bin/env bash
# The demonstration: real vLLM (CPU) with tierkv on this machine, set up from nothing.
#
# 1. builds (or reuses) the pinned vLLM CPU environment and the SmolLM2-135M model;
# 2. builds libtierkv.so and installs the connector into that environment;
# 3. runs prompts with a long shared prefix in one engine process, then new
#    prompts sharing that prefix in a fresh engine process, with tierkv's host tier
#    (a shared-memory arena) carrying the KV between them, next to a run without
#    any cache; prints time to first token, tokens served from tierkv, whether the
#    outputs match, and tierkv's Prometheus metrics.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv=$(scripts/vllm-env.sh | tail -n 1)
scripts/install-vllm-connector.sh "$venv/bin/python"
exec "$venv/bin/python" integration/vllm/demo.py --model "$venv/smollm2"
