"""tierkv's pool deciding inside real vLLM (``TIERKV_VLLM_POOL=rust``) against vLLM's
own pool, one run, same prompts, same outputs required.

Cases (each a fresh engine in its own process; vLLM's prefix cache on in all):

- ``throughput``: 256 concurrent short requests with heavy prefix sharing (8 system
  prompts of 6 blocks of 32 tokens, a 16-token question each, 16 tokens generated), all at
  once. Reported: scheduler time per step (a timer around ``Scheduler.schedule``,
  the engine core in-process), end-to-end generated tokens per second. Engines:
  ``vllm`` (vLLM's BlockPool, no connector), ``rust`` (tierkv's pool, no
  connector: the pool alone), ``connector`` (vLLM's pool with the connector),
  ``rust+connector`` (tierkv's pool with the connector, the full configuration).
- ``copies``: 64 requests over the same 8 prompts, round robin, 4 at a time, on a
  G1 that holds them all (``fits``) and on one of 40 blocks that does not
  (``small``). Reported: bytes copied to the host tier per generated token
  (``tierkv_transfer_bytes_total{src="engine",dst="host"}``), connector alone vs
  ``rust``; and the time to first token of one more request per system prompt
  after the round robin (median), where ``small`` has evicted them from G1: vLLM
  alone recomputes, tierkv loads them from the host tier.
- ``g1``: G1's own eviction (no connector, so a hit is G1's): 6 hot prompts of 6
  blocks asked round robin, each followed by 2 prompts of 12 blocks used once, one
  request at a time, on a G1 of 48 blocks (the hot set is 36). Engines: vLLM's pool,
  tierkv's with ``TIERKV_POOL_EVICTION=lru`` (vLLM's order) and ``hazard``.
  Reported: the share of the hot prompts' tokens served from G1
  (``num_cached_tokens``) after the first round, and their median time to first
  token (one request, one token).

Run inside the vLLM environment (threads pinned as in every compared run):
    TIERKV_LIB=target/release/libtierkv.so VLLM_CPU_OMP_THREADS_BIND=0-1 \\
        python integration/bench/pool_vllm_bench.py --model ~/.cache/tierkv/vllm-cpu-venv/smollm2
Prints one tab-separated line per figure.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BS = 32
PREFIXES, PREFIX_BLOCKS, QUESTION, GEN = 8, 6, 16, 16
BLOCK_BYTES = 30 * 2 * 3 * 64 * 4 * BS  # SmolLM2-135M, fp32


def prompts(n: int, seed: int) -> list[list[int]]:
    rng = random.Random(7)
    systems = [[rng.randrange(1000, 40000) for _ in range(PREFIX_BLOCKS * BS)] for _ in range(PREFIXES)]
    rng = random.Random(seed)
    return [systems[i % PREFIXES] + [rng.randrange(1000, 40000) for _ in range(QUESTION)] for i in range(n)]


def scrape(addr: str) -> str:
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as r:
        return r.read().decode()


def metric(text: str, name: str, labels: str = "") -> float:
    """The sample of `name` with exactly `labels` (none: the unlabelled one); 0 if absent."""
    head = f"{name}{{{labels}}} " if labels else f"{name} "
    for line in (text or "").splitlines():
        if line.startswith(head):
            return float(line.split()[-1])
    return 0.0


def child(args) -> None:
    """One engine: runs the case and writes its figures as JSON."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the scheduler in this process
    from vllm.v1.core.sched import scheduler as sched_mod

    step_ns: list[int] = []
    original = sched_mod.Scheduler.schedule

    def timed(self, *a, **k):
        t = time.perf_counter_ns()
        out = original(self, *a, **k)
        if out.total_num_scheduled_tokens:
            step_ns.append(time.perf_counter_ns() - t)
        return out

    sched_mod.Scheduler.schedule = timed
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    connector = None
    if args.connector:
        connector = {"kv_connector": "TierKVConnector", "kv_role": "kv_both"}
        if os.environ.get("PYTHONPATH"):
            connector["kv_connector_module_path"] = "tierkv_vllm"
    llm = LLM(
        model=args.model,
        enable_prefix_caching=True,
        kv_transfer_config=connector,
        block_size=BS,
        kv_cache_memory_bytes=args.kv_bytes,
        max_model_len=512,
        max_num_seqs=args.max_seqs,
        enforce_eager=True,
        dtype="float32",
        seed=0,
    )
    core = llm.llm_engine.engine_core.engine_core  # in-process engine core
    pool_class = type(core.scheduler.kv_cache_manager.block_pool).__name__
    greedy = SamplingParams(temperature=0.0, max_tokens=GEN, ignore_eos=True)
    one = SamplingParams(temperature=0.0, max_tokens=1)
    if args.g1:
        Path(args.out).write_text(json.dumps(g1_case(llm, one, args.requests, pool_class)))
        return
    ps = prompts(args.requests, seed=1)
    addr = os.environ.get("TIERKV_METRICS_ADDR")
    before = scrape(addr) if connector else ""
    step_ns.clear()
    t = time.perf_counter()
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in ps], greedy, use_tqdm=False)
    wall = time.perf_counter() - t
    steps = list(step_ns)
    after = scrape(addr) if connector else ""
    ttft = []
    if args.ttft:
        for p in prompts(PREFIXES, seed=2):
            t = time.perf_counter()
            llm.generate([TokensPrompt(prompt_token_ids=p)], one, use_tqdm=False)
            ttft.append(time.perf_counter() - t)
    copied = metric(after, "tierkv_transfer_bytes_total", 'src="engine",dst="host"') - metric(
        before, "tierkv_transfer_bytes_total", 'src="engine",dst="host"'
    )
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    result = {
        "outputs": [list(o.outputs[0].token_ids) for o in outs],
        "tokens": tokens,
        "wall_s": wall,
        "steps": len(steps),
        "schedule_us_median": statistics.median(steps) / 1e3 if steps else 0.0,
        "schedule_ms_total": sum(steps) / 1e6,
        "copied_bytes": copied,
        "ttft_s": ttft,
        "pool": pool_class,
    }
    Path(args.out).write_text(json.dumps(result))


G1_HOT, G1_HOT_BLOCKS, G1_ONCE, G1_ONCE_BLOCKS, G1_BLOCKS = 6, 6, 2, 12, 48


def g1_case(llm, one, requests: int, pool_class: str) -> dict:
    """The ``g1`` case in one engine: hot prompts round robin, each followed by
    prompts used once; every request alone (max_tokens 1), timed."""
    from vllm.inputs import TokensPrompt

    rng = random.Random(11)
    hot = [[rng.randrange(1000, 40000) for _ in range(G1_HOT_BLOCKS * BS)] for _ in range(G1_HOT)]
    hot_cached, hot_tokens, hot_ttft, once_ttft, outputs = 0, 0, [], [], []
    for i in range(requests):
        p = hot[i % G1_HOT] + [rng.randrange(1000, 40000) for _ in range(8)]
        batch = [(True, p)] + [
            (False, [rng.randrange(1000, 40000) for _ in range(G1_ONCE_BLOCKS * BS + 8)]) for _ in range(G1_ONCE)
        ]
        for is_hot, toks in batch:
            t = time.perf_counter()
            o = llm.generate([TokensPrompt(prompt_token_ids=toks)], one, use_tqdm=False)[0]
            dt = time.perf_counter() - t
            outputs.append(list(o.outputs[0].token_ids))
            if is_hot and i >= G1_HOT:
                hot_cached += o.num_cached_tokens or 0
                hot_tokens += len(toks)
                hot_ttft.append(dt)
            elif not is_hot:
                once_ttft.append(dt)
    return {
        "outputs": outputs,
        "hot_cached_share": hot_cached / max(hot_tokens, 1),
        "hot_ttft_s": hot_ttft,
        "once_ttft_s": once_ttft,
        "pool": pool_class,
    }


def run(
    args,
    name: str,
    pool: str,
    connector: bool,
    kv_bytes: int,
    requests: int,
    max_seqs: int,
    ttft: bool,
    g1: bool = False,
    extra: dict | None = None,
) -> dict:
    out = Path(tempfile.mkdtemp()) / "result.json"
    env = dict(os.environ)
    env.update(extra or {})
    env["TIERKV_VLLM_POOL"] = pool
    env["TIERKV_STORE_NAME"] = f"pool-vllm-bench-{uuid.uuid4().hex[:8]}"
    env["TIERKV_METRICS_ADDR"] = f"127.0.0.1:{args.port}"
    env.setdefault("TIERKV_CPU_BYTES", "512MiB")
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0-1")
    env["HF_HUB_OFFLINE"] = "1"
    cmd = [sys.executable, __file__, "--child", "--model", args.model, "--out", str(out)]
    cmd += ["--kv-bytes", str(kv_bytes), "--requests", str(requests), "--max-seqs", str(max_seqs)]
    cmd += ["--connector"] if connector else []
    cmd += ["--ttft"] if ttft else []
    cmd += ["--g1"] if g1 else []
    log = out.with_suffix(".log")
    with open(log, "w") as f:
        rc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    store = Path(os.environ.get("TIERKV_SHM_DIR", "/dev/shm")) / f"tierkv-{env['TIERKV_STORE_NAME']}.arena"
    store.unlink(missing_ok=True)
    if rc != 0:
        raise SystemExit(f"{name}: engine failed ({rc}); log {log}:\n{log.read_text()[-3000:]}")
    result = json.loads(out.read_text())
    want = "RustBlockPool" if pool == "rust" else "BlockPool"
    if result["pool"] != want:
        raise SystemExit(f"{name}: the engine's pool is {result['pool']}, not {want}; log {log}")
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--out")
    ap.add_argument("--kv-bytes", type=int, default=1 << 30)
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--max-seqs", type=int, default=256)
    ap.add_argument("--connector", action="store_true")
    ap.add_argument("--ttft", action="store_true")
    ap.add_argument("--g1", action="store_true")
    ap.add_argument("--port", type=int, default=9477)
    ap.add_argument("--only", choices=["throughput", "copies", "g1"])
    ap.add_argument("--g1-rounds", type=int, default=60, help="hot requests of the g1 case")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of each throughput engine")
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    if not os.environ.get("TIERKV_LIB"):
        raise SystemExit("set TIERKV_LIB to the release library")
    if "PYTHONPATH" not in os.environ:
        os.environ["PYTHONPATH"] = str(ROOT / "integration" / "vllm")

    if args.only in (None, "throughput"):
        cases = [
            ("vllm", "off", False),
            ("rust", "rust", False),
            ("connector", "off", True),
            ("rust+connector", "rust", True),
        ]
        # Interleaved repetitions; each figure the median over them.
        runs: dict[str, list[dict]] = {name: [] for name, _, _ in cases}
        for _ in range(args.reps):
            for name, pool, conn in cases:
                runs[name].append(run(args, name, pool, conn, 1 << 30, 256, 256, False))
        same = all(r["outputs"] == runs["vllm"][0]["outputs"] for rs in runs.values() for r in rs)
        res = {
            name: {
                "steps": rs[0]["steps"],
                "schedule_us_median": statistics.median(r["schedule_us_median"] for r in rs),
                "schedule_ms_total": statistics.median(r["schedule_ms_total"] for r in rs),
                "tokens": rs[0]["tokens"],
                "wall_s": statistics.median(r["wall_s"] for r in rs),
            }
            for name, rs in runs.items()
        }
        print(f"throughput\toutputs_identical\t{same}")
        for name, r in res.items():
            print(
                f"throughput\t{name}\tschedule_us_median\t{r['schedule_us_median']:.0f}"
                f"\tschedule_ms_total\t{r['schedule_ms_total']:.1f}\tsteps\t{r['steps']}"
            )
            print(f"throughput\t{name}\ttokens_per_s\t{r['tokens'] / r['wall_s']:.1f}")
        base = res["vllm"]
        for name in ("rust", "connector", "rust+connector"):
            r = res[name]
            print(f"ratio\t{name}_over_vllm\tschedule_median\t{r['schedule_us_median'] / base['schedule_us_median']:.2f}")
            print(f"ratio\t{name}_over_vllm\tschedule_total\t{r['schedule_ms_total'] / base['schedule_ms_total']:.2f}")
            print(f"ratio\t{name}_over_vllm\tthroughput\t{(r['tokens'] / r['wall_s']) / (base['tokens'] / base['wall_s']):.2f}")

    if args.only in (None, "copies"):
        small = 40 * BLOCK_BYTES
        cases = [
            ("fits/connector", "off", True, 1 << 30),
            ("fits/rust", "rust", True, 1 << 30),
            ("small/vllm", "off", False, small),
            ("small/connector", "off", True, small),
            ("small/rust", "rust", True, small),
        ]
        res = {name: run(args, name, pool, conn, kv, 64, 4, True) for name, pool, conn, kv in cases}
        same = all(r["outputs"] == res["fits/connector"]["outputs"] for r in res.values())
        print(f"copies\toutputs_identical\t{same}")
        for name, r in res.items():
            if name != "small/vllm":
                print(f"copies\t{name}\tbytes_copied_per_generated_token\t{r['copied_bytes'] / r['tokens']:.0f}")
        for name in ("small/vllm", "small/connector", "small/rust"):
            print(f"copies\t{name}\tttft_ms_median_evicted_prefix\t{statistics.median(res[name]['ttft_s']) * 1e3:.1f}")


    if args.only in (None, "g1"):
        kv = G1_BLOCKS * BLOCK_BYTES
        cases = [
            ("g1/vllm", "off", {}),
            ("g1/rust-lru", "rust", {"TIERKV_POOL_EVICTION": "lru"}),
            ("g1/rust-hazard", "rust", {"TIERKV_POOL_EVICTION": "hazard"}),
        ]
        res = {name: run(args, name, pool, False, kv, args.g1_rounds, 1, False, True, extra) for name, pool, extra in cases}
        same = all(r["outputs"] == res["g1/vllm"]["outputs"] for r in res.values())
        print(f"g1\toutputs_identical\t{same}")
        base = statistics.median(res["g1/vllm"]["hot_ttft_s"])
        for name, r in res.items():
            hot = statistics.median(r["hot_ttft_s"])
            print(
                f"g1\t{name}\thot_tokens_from_g1\t{r['hot_cached_share']:.3f}"
                f"\thot_ttft_ms_median\t{hot * 1e3:.1f}\tratio_to_vllm\t{hot / base:.2f}"
                f"\tonce_ttft_ms_median\t{statistics.median(r['once_ttft_s']) * 1e3:.1f}"
            )


if __name__ == "__main__":
    main()
