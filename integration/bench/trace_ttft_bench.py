"""Time to first token in real vLLM replaying the start of a production trace (the
Mooncake JSONL that ``tierkv-replay`` reads), with tiers too small for its working
set: a tier's eviction policies side by side (LRU and the default, hazard): the
disk tier's (``--tier disk``, the default) or the host tier's (``--tier host``).

Run (inside the vLLM environment, with TIERKV_LIB set or the wheel installed):
    python integration/bench/trace_ttft_bench.py --model DIR \\
        --trace ../shared/traces/mooncake-conversation-head.jsonl [--requests 1500]

Workload: the trace's first ``--requests`` requests, in order, paced at their
arrival times sped up ``--speed`` times (a request that would arrive while the
engine is still busy runs as soon as it is free; TTFT is measured from the start of
its own run). Each trace block (512 tokens in the trace) becomes ``--block-tokens``
token ids drawn from a generator seeded by the block's id, so equal ids are equal
tokens and a trace prefix hit is a vLLM prefix hit (at vLLM's granularity: its
blocks are 32 tokens, the CPU attention's smallest); chains are cut at
``--max-blocks`` trace blocks to fit the model. vLLM's own prefix cache is off: every
reused token comes from tierkv.

Tiers (``--tier disk``): host memory holds ``--host-share`` of the workload's
distinct blocks, the disk tier ``--disk-share`` (write-through,
``TIERKV_DISK_ADMIT=always``, so the eviction policy alone decides what the disk
keeps; ``TIERKV_DISK_EVICTION``). ``--tier host``: the host tier alone, holding
``--host-share``, its policy ``TIERKV_EVICTION``. One engine per policy, each with a
fresh store (and disk file); every engine pinned the same way
(VLLM_CPU_OMP_THREADS_BIND=0).

Reports per policy: the share of prompt tokens served by tierkv, mean and median
TTFT, the compared tier's loads, evictions and refusals, and whether every policy's
first tokens equal the first run's (a cache must never change an answer).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from pool_vllm_bench import metric
from ttft_bench import free_port

ROOT = Path(__file__).resolve().parents[2]


def workload(trace: str, requests: int, block_tokens: int, max_blocks: int, vocab: int) -> tuple[list, list, int]:
    """The prompts (token ids), their arrivals in seconds, and the distinct blocks."""
    rows = []
    with open(trace) as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
            if len(rows) == requests:
                break
    tokens: dict[int, list[int]] = {}

    def block(b: int) -> list[int]:
        if b not in tokens:
            rng = random.Random(b)
            tokens[b] = [rng.randrange(100, vocab) for _ in range(block_tokens)]
        return tokens[b]

    prompts = [[t for b in r["hash_ids"][:max_blocks] for t in block(b)] for r in rows]
    arrivals = [(r["timestamp"] - rows[0]["timestamp"]) / 1000 for r in rows]
    return prompts, arrivals, len(tokens)


def block_bytes(model: str, block_tokens: int, dtype_bytes: int = 4) -> int:
    c = json.loads((Path(model) / "config.json").read_text())
    head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    return 2 * c["num_hidden_layers"] * c["num_key_value_heads"] * head_dim * dtype_bytes * block_tokens


def worker(args: argparse.Namespace) -> None:
    """One engine: the paced replay, TTFT per request, then the tier's metrics."""
    sys.path.insert(0, str(ROOT / "tests" / "e2e"))
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm_driver import scrape

    work = json.loads(Path(args.work).read_text())
    cfg = {"kv_connector": "TierKVConnector", "kv_role": "kv_both"}
    if os.environ.get("TIERKV_E2E_INSTALLED") != "1":
        cfg["kv_connector_module_path"] = "tierkv_vllm"
    llm = LLM(
        model=args.model,
        enable_prefix_caching=False,
        kv_transfer_config=cfg,
        block_size=32,
        kv_cache_memory_bytes=1 << 30,
        max_model_len=args.block_tokens * args.max_blocks + 64,
        max_num_seqs=8,
        enforce_eager=True,
        dtype="float32",
        seed=0,
    )
    one = SamplingParams(temperature=0.0, max_tokens=1)
    ttft, first = [], []
    start = time.monotonic()
    for p, at in zip(work["prompts"], work["arrivals_s"]):
        wait = at / args.speed - (time.monotonic() - start)
        if wait > 0:
            time.sleep(wait)
        t = time.perf_counter()
        out = llm.generate([TokensPrompt(prompt_token_ids=p)], one, use_tqdm=False)
        ttft.append(time.perf_counter() - t)
        first.append(out[0].outputs[0].token_ids[0])
    time.sleep(1.0)  # the last offloads land
    result = {"ttft_s": ttft, "first": first, "metrics": scrape(os.environ.get("TIERKV_METRICS_ADDR"))}
    Path(args.out).write_text(json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--trace")
    ap.add_argument("--requests", type=int, default=1500)
    ap.add_argument("--block-tokens", type=int, default=16, help="tokens per trace block (vLLM's blocks are 32)")
    ap.add_argument("--max-blocks", type=int, default=120, help="trace blocks per prompt at most")
    ap.add_argument("--speed", type=float, default=4.0, help="arrival times divided by this")
    ap.add_argument("--host-share", type=float, default=0.01)
    ap.add_argument("--disk-share", type=float, default=0.05)
    ap.add_argument("--policies", default="lru,hazard")
    ap.add_argument("--tier", choices=("disk", "host"), default="disk", help="the tier whose policies are compared")
    ap.add_argument("--keep", help="keep engine logs and results in this folder")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    if not args.trace:
        ap.error("--trace is required")

    tmp = Path(args.keep or tempfile.mkdtemp(prefix="tierkv-trace-ttft-"))
    tmp.mkdir(parents=True, exist_ok=True)
    vocab = json.loads((Path(args.model) / "config.json").read_text())["vocab_size"]
    prompts, arrivals, distinct = workload(args.trace, args.requests, args.block_tokens, args.max_blocks, vocab)
    work = tmp / "work.json"
    work.write_text(json.dumps({"prompts": prompts, "arrivals_s": arrivals}))
    # Capacities in vLLM blocks (32 tokens): shares of the distinct trace blocks,
    # converted.
    bb = block_bytes(args.model, 32)
    per = 32 / args.block_tokens
    host_blocks = max(1, round(distinct * args.host_share / per))
    disk_blocks = max(1, round(distinct * args.disk_share / per))
    # Room for the blocks plus each tier's own metadata (a header sector per disk
    # slot; the arena's table): the capacities the tiers report are printed below.
    host_bytes = host_blocks * bb + (4 << 20)
    disk_bytes = disk_blocks * (bb + 4096) + (1 << 20)
    results = {}
    for policy in args.policies.split(","):
        store = f"trace-{policy}-{uuid.uuid4().hex[:6]}"
        port = free_port()
        path = os.pathsep.join(filter(None, [str(ROOT / "integration" / "vllm"), os.environ.get("PYTHONPATH")]))
        env = dict(
            os.environ,
            PYTHONPATH=path,
            HF_HUB_OFFLINE="1",
            VLLM_CPU_OMP_THREADS_BIND="0",
            TIERKV_STORE_NAME=store,
            TIERKV_CPU_BYTES=str(host_bytes),
            TIERKV_METRICS_ADDR=f"127.0.0.1:{port}",
        )
        for k in ("TIERKV_DISK_PATH", "TIERKV_DISK_BYTES", "TIERKV_EVICTION", "TIERKV_DISK_EVICTION"):
            env.pop(k, None)
        if args.tier == "disk":
            env.update(
                TIERKV_DISK_PATH=str(tmp / f"disk-{policy}"),
                TIERKV_DISK_BYTES=str(disk_bytes),
                TIERKV_DISK_ADMIT="always",
                TIERKV_DISK_EVICTION=policy,
            )
        else:
            env.update(TIERKV_EVICTION=policy)
        out = tmp / f"{policy}.json"
        cmd = [sys.executable, __file__, "--worker", "--model", args.model, "--work", str(work), "--out", str(out)]
        cmd += ["--block-tokens", str(args.block_tokens), "--max-blocks", str(args.max_blocks), "--speed", str(args.speed)]
        with open(tmp / "engines.log", "a") as log:
            log.write(f"\n=== {policy}: {' '.join(cmd)}\n")
            log.flush()
            try:
                subprocess.run(cmd, env=env, check=True, stdout=log, stderr=subprocess.STDOUT)
            finally:
                for suffix in ("arena", "g3dir"):
                    Path(f"/dev/shm/tierkv-{store}.{suffix}").unlink(missing_ok=True)
                shutil.rmtree(tmp / f"disk-{policy}", ignore_errors=True)
        results[policy] = json.loads(out.read_text())

    total_tokens = sum(map(len, prompts))
    first = next(iter(results.values()))["first"]
    print(
        f"{len(prompts)} requests of {args.trace} ({arrivals[-1]:.0f} s of arrivals, run {args.speed:g}x faster), "
        f"{total_tokens} prompt tokens, {distinct} distinct trace blocks of {args.block_tokens} tokens; "
        f"tier blocks of 32 tokens ({bb / 2**20:.2f} MiB); SmolLM2-135M fp32, vLLM CPU, VLLM_CPU_OMP_THREADS_BIND=0"
    )
    tier = args.tier
    print(f"{tier} tier policies compared")
    print(f"{'policy':10}{'host blk':>9}{'disk blk':>9}{'served':>8}{'mean TTFT s':>12}{'median':>8}"
          f"{tier + ' loads':>11}{'evicted':>8}{'refused':>8}  first tokens = first run")
    for policy, r in results.items():
        m = r["metrics"] or ""
        served = metric(m, "tierkv_loaded_tokens_total") / total_tokens
        host = metric(m, "tierkv_tier_capacity_blocks", 'tier="host"')
        disk = metric(m, "tierkv_tier_capacity_blocks", 'tier="disk"')
        loads = metric(m, "tierkv_block_ops_total", f'tier="{tier}",op="load"')
        evicted = metric(m, "tierkv_block_ops_total", f'tier="{tier}",op="evict"')
        refused = (
            metric(m, "tierkv_block_ops_total", 'tier="host",op="store_rejected"')
            if tier == "host"
            else metric(m, "tierkv_offload_total", 'result="refused"')
        )
        t = r["ttft_s"]
        print(
            f"{policy:10}{host:>9.0f}{disk:>9.0f}{served:>8.3f}{statistics.mean(t):>12.3f}"
            f"{statistics.median(t):>8.3f}{loads:>11.0f}{evicted:>8.0f}{refused:>8.0f}  {r['first'] == first}"
        )
    print(f"\nraw results: {tmp}")


if __name__ == "__main__":
    main()
