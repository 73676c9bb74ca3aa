"""tierkv demonstration in real vLLM (run by scripts/demo.sh).

Three engine processes, one after another, each a fresh vLLM with its own prefix
cache off:
  1. no cache:  the second prompt set computed from scratch (the reference);
  2. tierkv:    the first prompt set, whose KV tierkv stores in its host tier;
  3. tierkv:    the second prompt set in a new process: the shared prefix comes
                from tierkv.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
import prompts  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(model: str, mode: str, texts: list[str], store: str, tmp: Path) -> dict:
    pfile, out = tmp / f"{uuid.uuid4().hex}.json", tmp / f"{uuid.uuid4().hex}.out.json"
    pfile.write_text(json.dumps(texts))
    env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_CPU_OMP_THREADS_BIND="0-1", TIERKV_STORE_NAME=store)
    env["TIERKV_METRICS_ADDR"] = f"127.0.0.1:{free_port()}"
    env.setdefault("TIERKV_CPU_BYTES", "1GiB")
    cmd = [sys.executable, str(ROOT / "tests/e2e/vllm_driver.py"), "--model", model, "--mode", mode]
    cmd += ["--prompts", str(pfile), "--out", str(out)]
    print(f"  starting a fresh vLLM engine ({mode}) ...", flush=True)
    with open(tmp / "engine.log", "a") as log:
        subprocess.run(cmd, env=env, check=True, stdout=log, stderr=subprocess.STDOUT)
    return json.loads(out.read_text())


def counter(text: str, name: str, labels: str) -> float:
    m = re.search(re.escape(f"{name}{{{labels}}}") + r" (\S+)", text)
    return float(m.group(1)) if m else 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    args = ap.parse_args()
    store = f"demo-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        print("tierkv demo: SmolLM2-135M on vLLM 0.32 (CPU), host tier in /dev/shm")
        ref = run(args.model, "none", prompts.set_b(), store, tmp)
        run(args.model, "tierkv", prompts.set_a(), store, tmp)
        hit = run(args.model, "tierkv", prompts.set_b(), store, tmp)
        Path(f"/dev/shm/tierkv-{store}.arena").unlink(missing_ok=True)
        Path(f"/dev/shm/tierkv-{store}.g3dir").unlink(missing_ok=True)
    bs = 32
    loads = counter(hit["metrics"], "tierkv_block_ops_total", 'tier="host",op="load"') - counter(
        hit["metrics_before"], "tierkv_block_ops_total", 'tier="host",op="load"'
    )
    prompt_tokens = sum(len(p) for p in hit["prompts"])
    print()
    print(f"{'':34}{'no cache':>12}{'tierkv':>12}")
    print(f"{'median time to first token (s)':34}{statistics.median(ref['ttft_s']):>12.3f}{statistics.median(hit['ttft_s']):>12.3f}")
    print(f"{'prompt tokens':34}{prompt_tokens:>12}{prompt_tokens:>12}")
    # Each prompt runs twice in the driver: alone (timed) and in the batch.
    share = loads * bs / (2 * prompt_tokens)
    print(f"{'prompt tokens served by tierkv':34}{'0%':>12}{share:>12.0%}")
    same = ref["outputs"] == hit["outputs"]
    print(f"{'greedy outputs identical':34}{'':>12}{str(same):>12}")
    print()
    print("tierkv metrics (excerpt):")
    for line in hit["metrics"].splitlines():
        if line.startswith(("tierkv_lookup_tokens_total", "tierkv_block_ops_total{tier=\"host\"", "tierkv_checksum", "tierkv_tier_blocks")):
            print("  " + line)
    if not same:
        sys.exit("outputs differ")


if __name__ == "__main__":
    main()
