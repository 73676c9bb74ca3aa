"""Time to first token in real vLLM (CPU, SmolLM2-135M fp32), tierkv next to the
alternatives that run on this machine, in one run.

Run (inside the vLLM environment, after scripts/install-vllm-connector.sh or with
TIERKV_LIB set):
    python integration/bench/ttft_bench.py --model DIR [--lmcache-site DIR]

Workload: 8 prompts of about 900 tokens: the help-desk system prompt of
tests/e2e/prompts.py followed by a distinct document (the docstring of a standard
library module, real text that ships with Python) and a question.

Cases (every engine with VLLM_CPU_OMP_THREADS_BIND=0, the same for all, since vLLM
changes its thread binding when a connector is configured):
  none            no cache: every prompt computed (cold)
  vllm-prefix     vLLM's own prefix cache: each prompt run once, then timed again
  tierkv-fresh    tierkv: one engine stores the prompts; a *fresh engine process*
                  times them (nothing in vLLM's own cache)
  tierkv-repeat   tierkv: each prompt run once, vLLM's cache flushed, timed again
  tierkv-disk     tierkv with the disk tier: one engine stores the prompts (write-
                  through), the host tier is wiped (a restart), a fresh engine times
                  them: each prompt's own blocks come from disk (the shared system
                  prompt from disk once, then from the host tier it was onboarded to)
  tierkv-remote   tierkv with the remote tier: one engine ("machine A") stores the
                  prompts into a local 3-master Redis cluster (scripts/redis-
                  cluster.sh); a fresh engine with its own empty host tier
                  ("machine B": another store name and shared-memory directory)
                  times them: every hit is found and read in the cluster
  example         vLLM's ExampleConnector (shared storage), run/flush/time
  lmcache         LMCache 0.5.6 multiprocess server (only with --lmcache-site)

Reports the median and mean time to first token per case, the ratio to `none`, and
whether every case's greedy outputs equal the cold run's.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
import prompts as prompt_sets  # noqa: E402

DOC_MODULES = ["argparse", "collections", "json", "logging", "pathlib", "statistics", "textwrap", "zipfile"]


def workload(model: str, target_tokens: int = 900) -> list[list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    docs = [" ".join((importlib.import_module(m).__doc__ or "").split()) for m in DOC_MODULES]
    head = tok(f"{prompt_sets.SYSTEM}\n\nDocument:\n")["input_ids"]
    tail = tok("\n\nQuestion: What is the document above about?\nAnswer:")["input_ids"]
    room = target_tokens - len(head) - len(tail)
    out = []
    for i in range(len(docs)):
        # Document i first, then the others in turn until the prompt is full.
        text = " ".join(docs[i:] + docs[:i])
        body = tok(text)["input_ids"][:room]
        out.append(head + body + tail)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def engine(model: str, mode: str, prompts: Path, tmp: Path, extra: list[str], env_extra: dict) -> dict:
    out = tmp / f"{mode}-{uuid.uuid4().hex[:6]}.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_CPU_OMP_THREADS_BIND="0", **env_extra)
    cmd = [sys.executable, str(ROOT / "tests/e2e/vllm_driver.py"), "--model", model, "--mode", mode]
    cmd += ["--prompts", str(prompts), "--out", str(out), "--max-tokens", "8", *extra]
    with open(tmp / "engines.log", "a") as log:
        log.write(f"\n=== {' '.join(cmd)}\n")
        log.flush()
        subprocess.run(cmd, env=env, check=True, stdout=log, stderr=subprocess.STDOUT)
    return json.loads(out.read_text())


def start_lmcache(site: str, tmp: Path) -> tuple[subprocess.Popen, int]:
    port, http = free_port(), free_port()
    env = dict(os.environ, LMCACHE_TRACK_USAGE="false", PYTHONPATH=site, VLLM_CPU_OMP_THREADS_BIND="0")
    cmd = [sys.executable, "-m", "lmcache.v1.multiprocess.http_server", "--host", "localhost", "--port", str(port)]
    cmd += ["--http-host", "127.0.0.1", "--http-port", str(http), "--l1-size-gb", "4", "--eviction-policy", "LRU"]
    cmd += ["--chunk-size", "32", "--supported-transfer-mode", "auto", "--disable-observability"]
    log = open(tmp / "lmcache.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port
        if proc.poll() is not None:
            raise RuntimeError(f"LMCache server exited: {(tmp / 'lmcache.log').read_text()[-2000:]}")
        time.sleep(1)
    raise RuntimeError("LMCache server did not start")


def remote_case(model: str, prompts: Path, tmp: Path, tkv_env: dict) -> dict:
    """Machine A fills a fresh local cluster; machine B (own store, own shared-memory
    directory, nothing in its host tier) is timed."""
    script = ROOT / "scripts" / "redis-cluster.sh"
    cluster = tmp / "redis"
    out = subprocess.run([str(script), "start", str(cluster)], check=True, capture_output=True, text=True)
    url = out.stdout.strip().splitlines()[-1]
    try:
        envs = []
        for machine in ("a", "b"):
            shm = tmp / f"shm-{machine}"
            shm.mkdir(exist_ok=True)
            envs.append(
                dict(
                    tkv_env,
                    TIERKV_STORE_NAME=f"ttft-remote-{machine}",
                    TIERKV_SHM_DIR=str(shm),
                    TIERKV_REMOTE_URL=url,
                    TIERKV_REMOTE_ADMIT="always",
                )
            )
        engine(model, "tierkv", prompts, tmp, ["--no-timing"], envs[0])
        return engine(model, "tierkv", prompts, tmp, [], envs[1])
    finally:
        subprocess.run([str(script), "stop", str(cluster)], check=False)
        for machine in ("a", "b"):
            shutil.rmtree(tmp / f"shm-{machine}", ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--lmcache-site", help="a folder with lmcache 0.5.6 installed (--target)")
    ap.add_argument("--keep", help="keep engine logs in this folder")
    ap.add_argument("--cases", help="comma-separated cases to run (default: all; `none` always runs)")
    args = ap.parse_args()
    only = set(args.cases.split(",")) if args.cases else None

    def want(case: str) -> bool:
        return only is None or case in only

    tmp = Path(args.keep or tempfile.mkdtemp(prefix="tierkv-ttft-"))
    tmp.mkdir(parents=True, exist_ok=True)
    prompts = tmp / "prompts.json"
    ps = workload(args.model)
    prompts.write_text(json.dumps(ps))
    store = f"ttft-{uuid.uuid4().hex[:8]}"
    tkv_env = {"TIERKV_STORE_NAME": store, "TIERKV_CPU_BYTES": "2GiB"}
    results: dict[str, dict] = {}
    results["none"] = engine(args.model, "none", prompts, tmp, [], {})
    if want("vllm-prefix"):
        results["vllm-prefix"] = engine(args.model, "prefix", prompts, tmp, ["--repeat"], {})
    if want("tierkv-fresh"):
        engine(args.model, "tierkv", prompts, tmp, ["--no-timing"], tkv_env)
        results["tierkv-fresh"] = engine(args.model, "tierkv", prompts, tmp, [], tkv_env)
    if want("tierkv-repeat"):
        store2 = dict(tkv_env, TIERKV_STORE_NAME=store + "-r")
        results["tierkv-repeat"] = engine(args.model, "tierkv", prompts, tmp, ["--repeat"], store2)
    # Disk hits: fill a store with the disk tier on (write-through), wipe its host
    # tier (a restart), and run a fresh engine: every hit is read from disk.
    disk_store = store + "-d"
    if want("tierkv-disk"):
        disk_env = dict(
            tkv_env,
            TIERKV_STORE_NAME=disk_store,
            TIERKV_DISK_PATH=str(tmp / "disk"),
            TIERKV_DISK_BYTES="2GiB",
            TIERKV_DISK_ADMIT="always",
        )
        engine(args.model, "tierkv", prompts, tmp, ["--no-timing"], disk_env)
        Path(f"/dev/shm/tierkv-{disk_store}.arena").unlink(missing_ok=True)
        Path(f"/dev/shm/tierkv-{disk_store}.g3dir").unlink(missing_ok=True)
        results["tierkv-disk"] = engine(args.model, "tierkv", prompts, tmp, [], disk_env)
    if want("tierkv-remote"):
        results["tierkv-remote"] = remote_case(args.model, prompts, tmp, tkv_env)
    storage = tmp / "example-storage"
    if want("example"):
        storage.mkdir(exist_ok=True)
        results["example"] = engine(args.model, "example", prompts, tmp, ["--repeat", "--storage", str(storage)], {})
    if args.lmcache_site and want("lmcache"):
        server, port = start_lmcache(args.lmcache_site, tmp)
        try:
            env = {"PYTHONPATH": args.lmcache_site, "LMCACHE_TRACK_USAGE": "false"}
            results["lmcache"] = engine(args.model, "lmcache", prompts, tmp, ["--repeat", "--lmcache-port", str(port)], env)
        finally:
            server.terminate()
            server.wait(30)
    shutil.rmtree(tmp / "disk", ignore_errors=True)
    for s in (store, store + "-r", store + "-d"):
        Path(f"/dev/shm/tierkv-{s}.arena").unlink(missing_ok=True)
        Path(f"/dev/shm/tierkv-{s}.g3dir").unlink(missing_ok=True)
    shutil.rmtree(storage, ignore_errors=True)

    cold = results["none"]
    base = statistics.median(cold["ttft_s"])
    print(f"8 prompts, {min(map(len, ps))}-{max(map(len, ps))} tokens; SmolLM2-135M fp32; vLLM 0.32 CPU; 1 engine thread")
    print(f"{'case':16}{'median TTFT s':>15}{'mean TTFT s':>13}{'vs none':>9}  outputs = cold run")
    for name, r in results.items():
        med, mean = statistics.median(r["ttft_s"]), statistics.mean(r["ttft_s"])
        same = r["outputs"] == cold["outputs"]
        print(f"{name:16}{med:>15.3f}{mean:>13.3f}{base / med:>8.1f}x  {same}")
    (tmp / "results.json").write_text(json.dumps(results))
    print(f"\nraw results: {tmp / 'results.json'}")


if __name__ == "__main__":
    main()
