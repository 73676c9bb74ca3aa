"""Core hot paths, tierkv next to vLLM 0.32's own code, in one run.

Run (inside the vLLM environment):
    python integration/bench/core_bench.py [--quick]

1. Block hashing + prefix lookup of a 131,072-token prompt in 16-token blocks:
   vLLM's `hash_block_tokens` (sha256_cbor, vLLM's default) with a `BlockPool`
   lookup per block, against tierkv's native xxh3-128 chain plus lookup (and its
   vLLM-compatible sha256_cbor).
2. Allocate + free of 8,192 blocks, 64 per request: vLLM's
   `BlockPool.get_new_blocks` / `free_blocks` against tierkv's `BlockPool`.
3. Host-tier store and load against memcpy of the same bytes (tierkv only).

Each figure is a median of repetitions; the ratios are what to read, the machine is
noisy. The tierkv side runs `cargo bench -p tierkv --bench core`.
"""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def median_s(reps: int, fn) -> float:
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def vllm_side(quick: bool) -> dict[str, float]:
    from vllm.utils.hashing import get_hash_fn_by_name
    from vllm.v1.core import kv_cache_utils as kcu
    from vllm.v1.core.block_pool import BlockPool

    reps = 3 if quick else 7
    rng = random.Random(0)
    tokens = [rng.randrange(0, 128_000) for _ in range(131_072)]
    bs = 16
    n_blocks = len(tokens) // bs
    fn = get_hash_fn_by_name("sha256_cbor")
    kcu.init_none_hash(fn)
    pool = BlockPool(num_gpu_blocks=n_blocks + 1, enable_caching=True, hash_block_size=bs)
    hashes = []
    parent = None
    for i in range(n_blocks):
        parent = kcu.hash_block_tokens(fn, parent, tokens[i * bs : (i + 1) * bs])
        hashes.append(parent)
    blocks = pool.get_new_blocks(n_blocks)
    for b, h in zip(blocks, hashes):
        key = kcu.make_block_hash_with_group_id(h, 0)
        b.set_block_hash(key, bs)
        pool.cached_block_hash_to_block.insert(key, b)

    def hash_and_lookup():
        parent = None
        for i in range(n_blocks):
            parent = kcu.hash_block_tokens(fn, parent, tokens[i * bs : (i + 1) * bs])
            if pool.get_cached_block(parent, [0]) is None:
                break

    out = {"hash_lookup_ns_per_block": median_s(reps, hash_and_lookup) / n_blocks * 1e9}

    pool2 = BlockPool(num_gpu_blocks=n_blocks + 1, enable_caching=True, hash_block_size=bs)

    def alloc_free():
        for _ in range(n_blocks // 64):
            got = pool2.get_new_blocks(64)
            pool2.free_blocks(reversed(got))

    out["alloc_free_ns_per_block"] = median_s(reps, alloc_free) / n_blocks * 1e9
    return out


def tierkv_side(quick: bool) -> dict[str, float]:
    cmd = ["cargo", "bench", "-q", "-p", "tierkv", "--bench", "core", "--"]
    if quick:
        cmd.append("--quick")
    text = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    out = {}
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[0] != "case":
            out[f"{parts[0]}_{parts[1]}"] = float(parts[2])
    return out


def main() -> None:
    quick = "--quick" in sys.argv
    ours = tierkv_side(quick)
    theirs = vllm_side(quick)
    rows = [
        ("hash + lookup, ns/block (16-token blocks, 128K prompt)", theirs["hash_lookup_ns_per_block"], ours["hash_lookup_ns_per_block"]),
        ("  tierkv with vLLM-compatible sha256_cbor", theirs["hash_lookup_ns_per_block"], ours["hash_lookup_sha256_cbor_ns_per_block"]),
        ("allocate + free, ns/block (64 per request)", theirs["alloc_free_ns_per_block"], ours["alloc_free_ns_per_block"]),
    ]
    print(f"{'case':58}{'vLLM 0.32':>12}{'tierkv':>12}{'speed-up':>10}")
    for name, v, t in rows:
        print(f"{name:58}{v:>12.1f}{t:>12.2f}{v / t:>9.0f}x")
    print()
    print(f"{'host tier vs memcpy, GB/s':58}{'memcpy':>12}{'tierkv':>12}{'ratio':>10}")
    print(f"{'  store (gather 30 layers + checksum)':58}{ours['memcpy_gather_GB_per_s']:>12.2f}{ours['host_store_GB_per_s']:>12.2f}{ours['store_vs_memcpy_ratio']:>10.2f}")
    print(f"{'  load (scatter 30 layers + verify)':58}{ours['memcpy_scatter_GB_per_s']:>12.2f}{ours['host_load_GB_per_s']:>12.2f}{ours['load_vs_memcpy_ratio']:>10.2f}")
    print(f"\nmachine: {os.cpu_count()} cores; python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
