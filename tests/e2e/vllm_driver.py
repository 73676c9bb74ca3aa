"""Run one real vLLM engine over a list of prompts and report what happened, as JSON.

Used by the end-to-end tests, the demonstration and the time-to-first-token
benchmark. One engine start per invocation (30-40 s on CPU), many prompts per run.

Usage:
    python vllm_driver.py --model DIR --mode MODE --prompts FILE --out FILE [options]

MODE:
    none      no cache at all (vLLM prefix caching off, no connector)
    prefix    vLLM's own prefix cache, no connector
    tierkv    TierKVConnector (vLLM prefix caching off: hits come from tierkv)
    example   vLLM's ExampleConnector (shared-storage example), --storage DIR
    lmcache   LMCacheMPConnector against a running LMCache server, --lmcache-port

The prompts file is JSON: a list of token-id lists, or of strings (tokenized with the
model's tokenizer). Each prompt is first run alone
with max_tokens=1 (its wall time is the time to first token), then all prompts are
generated greedily with --max-tokens for the outputs. With --repeat, every prompt is
run twice (the second run after flushing vLLM's own prefix cache) and the second
timing is reported: that isolates the cache under test from vLLM's local cache
(in `prefix` mode the cache is kept: it is the cache under test).
"""

from __future__ import annotations

import argparse
import json
import os
import time
import urllib.request


def kv_transfer_config(args) -> dict | None:
    if args.mode == "tierkv":
        cfg = {"kv_connector": "TierKVConnector", "kv_role": "kv_both"}
        if os.environ.get("TIERKV_E2E_INSTALLED") != "1":
            # From the source tree; an installed wheel registers the name itself.
            cfg["kv_connector_module_path"] = "tierkv_vllm"
        return cfg
    if args.mode == "example":
        return {
            "kv_connector": "ExampleConnector",
            "kv_role": "kv_both",
            "kv_connector_extra_config": {"shared_storage_path": args.storage},
        }
    if args.mode == "lmcache":
        return {
            "kv_connector": "LMCacheMPConnector",
            "kv_role": "kv_both",
            "kv_connector_extra_config": {
                "lmcache.mp.host": "tcp://localhost",
                "lmcache.mp.port": args.lmcache_port,
            },
        }
    return None


def scrape(addr: str | None) -> str | None:
    if not addr:
        return None
    if ":" not in addr:
        addr = f"127.0.0.1:{addr}"
    try:
        with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as r:
            return r.read().decode()
    except OSError as e:
        return f"# scrape failed: {e}"


def wait_for(path: str | None, timeout_s: float = 900) -> None:
    deadline = time.monotonic() + timeout_s
    while path and not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout_s} s")
        time.sleep(0.2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--mode", required=True, choices=["none", "prefix", "tierkv", "example", "lmcache"])
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--block-size", type=int, default=32)
    ap.add_argument("--dtype", default="float32", help="fp32 keeps greedy outputs comparable across runs")
    ap.add_argument("--kv-bytes", type=int, default=1 << 30)
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--storage", default="/tmp/tierkv-example-storage")
    ap.add_argument("--lmcache-port", type=int, default=5555)
    ap.add_argument("--repeat", action="store_true")
    ap.add_argument("--no-timing", action="store_true", help="skip the per-prompt max_tokens=1 runs")
    ap.add_argument("--one-by-one", action="store_true", help="generate the prompts one at a time, in order")
    ap.add_argument("--ignore-eos", action="store_true", help="always generate --max-tokens tokens")
    ap.add_argument("--warm", help="a prompts file generated first, in the same engine (its outputs are not reported)")
    ap.add_argument("--wait-for", help="wait for this file to exist before generating")
    ap.add_argument("--signal", help="create this file after generating")
    ap.add_argument("--hold-until", help="after --signal, wait for this file before exiting")
    ap.add_argument("--kv-events", help="publish vLLM's KV events on this ZMQ endpoint (topic 'kv')")
    ap.add_argument("--prefix-cache", action="store_true", help="vLLM's own prefix cache on in every mode")
    args = ap.parse_args()

    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    def load_prompts(path: str) -> list[list[int]]:
        ps = json.load(open(path))
        if ps and isinstance(ps[0], str):
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(args.model)
            ps = [tok(p)["input_ids"] for p in ps]
        return ps

    prompts = load_prompts(args.prompts)
    t0 = time.perf_counter()
    llm = LLM(
        model=args.model,
        enable_prefix_caching=(args.mode == "prefix" or args.prefix_cache),
        kv_transfer_config=kv_transfer_config(args),
        kv_events_config=(
            {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": args.kv_events, "topic": "kv"}
            if args.kv_events
            else None
        ),
        block_size=args.block_size,
        kv_cache_memory_bytes=args.kv_bytes,
        max_model_len=args.max_model_len,
        max_num_seqs=8,
        enforce_eager=True,
        dtype=args.dtype,
        seed=0,
    )
    start_s = time.perf_counter() - t0
    one = SamplingParams(temperature=0.0, max_tokens=1)
    greedy = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=args.ignore_eos)

    wait_for(args.wait_for)
    metrics_before = scrape(os.environ.get("TIERKV_METRICS_ADDR")) if args.mode == "tierkv" else None
    ttft = []
    if not args.no_timing:
        for p in prompts:
            if args.repeat:
                llm.generate([TokensPrompt(prompt_token_ids=p)], one, use_tqdm=False)
                if args.mode != "prefix":
                    # Flush vLLM's own cache so the cache under test serves the rerun;
                    # for `prefix`, vLLM's cache is the one under test.
                    llm.reset_prefix_cache()
            t = time.perf_counter()
            llm.generate([TokensPrompt(prompt_token_ids=p)], one, use_tqdm=False)
            ttft.append(time.perf_counter() - t)
            llm.reset_prefix_cache()
    if args.warm:
        warm = load_prompts(args.warm)
        llm.generate([TokensPrompt(prompt_token_ids=p) for p in warm], greedy, use_tqdm=False)
    t = time.perf_counter()
    if args.one_by_one:
        outs = [llm.generate([TokensPrompt(prompt_token_ids=p)], greedy, use_tqdm=False)[0] for p in prompts]
    else:
        outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], greedy, use_tqdm=False)
    gen_s = time.perf_counter() - t
    if args.kv_events:
        # The last step's events leave through vLLM's publisher thread.
        time.sleep(2.0)
    if args.signal:
        open(args.signal, "w").close()
    result = {
        "mode": args.mode,
        "prompts": prompts,
        "metrics_before": metrics_before,
        "engine_start_s": start_s,
        "ttft_s": ttft,
        "generate_s": gen_s,
        "outputs": [list(o.outputs[0].token_ids) for o in outs],
        "metrics": scrape(os.environ.get("TIERKV_METRICS_ADDR")) if args.mode == "tierkv" else None,
    }
    with open(args.out, "w") as f:
        json.dump(result, f)
    wait_for(args.hold_until)


if __name__ == "__main__":
    main()
