"""The engine block pool's cost per block: vLLM's own ``BlockPool`` (Python objects)
against tierkv's (``tierkv_pool_*`` through ctypes: one call per request and
operation, ``tierkv_pool_register_many`` for a request's blocks), the shadow mode
(vLLM's pool plus the mirror and its comparisons), and the rust mode as vLLM's
scheduler calls it (``RustBlockPool``: tierkv deciding, vLLM's block objects kept
in step; vLLM's block-by-block prefix questions answered from chunked
``tierkv_pool_find`` calls, as the plugin wraps them), on the operations a
scheduler step makes: allocate a request's blocks, register (cache) them, look the
prefix up and hit it, free them in reverse order.

Run inside the vLLM environment:
    TIERKV_LIB=target/release/libtierkv.so python integration/bench/pool_bench.py
Cases run tierkv's pool in vLLM's order (``TIERKV_POOL_EVICTION=lru``) unless
named ``hazard`` (the default policy). Prints one line per case: nanoseconds per block (median of --reps repetitions of
--requests requests of --blocks blocks), all cases in one run.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "integration" / "vllm"))

BS = 16


def hashes(requests: int, blocks: int, salt: str = "") -> list[list[bytes]]:
    return [[hashlib.sha256(f"{salt}{r}/{i}".encode()).digest() for i in range(blocks)] for r in range(requests)]


def vllm_cycle(pool, reqs) -> None:
    lookahead = getattr(pool, "lookahead", None)  # RustBlockPool: as the plugin wraps vLLM's lookups
    held = []
    for hs in reqs:
        blocks = pool.get_new_blocks(len(hs))
        pool.cache_full_blocks(SimpleNamespace(block_hashes=hs), blocks, 0, len(hs), BS, 0)
        held.append(blocks)
    for blocks in held:
        pool.free_blocks(reversed(blocks))
    for hs in reqs:  # the same prompts again: every block a hit
        hit = []
        with lookahead(hs, len(hs)) if lookahead else contextlib.nullcontext():
            for h in hs:
                got = pool.get_cached_block(h, [0])
                if got is None:
                    break
                hit.append(got[0])
        pool.touch(hit)
        pool.free_blocks(reversed(hit))


def tierkv_cycle(tkv, reqs_keys, per_block: bool = False) -> None:
    held = []
    for keys in reqs_keys:
        n = len(keys) // 16
        ids = tkv.pool_allocate(n)
        if per_block:  # one crossing per block: what batching saves
            for i, block_id in enumerate(ids):
                tkv.pool_register(block_id, keys[16 * i : 16 * (i + 1)])
        else:
            tkv.pool_register_many(ids, keys)
        held.append(ids)
    for ids in held:
        tkv.pool_free(ids[::-1])
    for keys in reqs_keys:
        ids = tkv.pool_acquire_cached(keys)
        tkv.pool_free(ids[::-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--blocks", type=int, default=32)
    ap.add_argument("--reps", type=int, default=15)
    args = ap.parse_args()
    os.environ.setdefault("TIERKV_SHM_DIR", tempfile.mkdtemp())
    os.environ["TIERKV_STORE_NAME"] = f"pool-bench-{uuid.uuid4().hex[:8]}"
    os.environ.setdefault("TIERKV_CPU_BYTES", "4MiB")
    from tierkv_vllm.lib import TierKV
    from tierkv_vllm.pool import RustBlockPool, ShadowBlockPool, identity
    from vllm.v1.core.block_pool import BlockPool
    from vllm.v1.core.kv_cache_utils import make_block_hash_with_group_id

    n_blocks = args.requests * args.blocks + 1
    reqs = hashes(args.requests, args.blocks)
    keys = [b"".join(identity(make_block_hash_with_group_id(h, 0)) for h in hs) for hs in reqs]
    # Other prompts of the same shape: run once (untimed) they leave every block
    # cached and free, so that each allocation of the timed cycle evicts one.
    other = hashes(args.requests, args.blocks, salt="other/")
    other_keys = [b"".join(identity(make_block_hash_with_group_id(h, 0)) for h in hs) for hs in other]

    def filled(make, cycle, data):
        def made():
            pool = make()
            cycle(pool, data)
            return pool

        return made
    per_cycle = 2 * args.requests * args.blocks  # each block allocated once and hit once

    def bench(name: str, make, cycle, data) -> float:
        times = []
        for _ in range(args.reps):
            pool = make()
            t = time.perf_counter()
            cycle(pool, data)
            times.append(time.perf_counter() - t)
        ns = statistics.median(times) / per_cycle * 1e9
        print(f"{name}\tns_per_block\t{ns:.0f}", flush=True)
        return ns

    def tkv(policy: str = "lru", engine_order: bool = False):
        # TIERKV_POOL_EVICTION is read when the manager is made.
        os.environ["TIERKV_POOL_EVICTION"] = policy
        return TierKV(
            block_tokens=BS, block_bytes=4096, pool_blocks=n_blocks, exporter=False, pool_engine_order=engine_order
        )

    vllm_ns = bench("vllm_blockpool", lambda: BlockPool(n_blocks, True, BS), vllm_cycle, reqs)
    tierkv_ns = bench("tierkv_pool_ctypes", tkv, tierkv_cycle, keys)
    hazard_ns = bench("tierkv_pool_ctypes_hazard", lambda: tkv("hazard"), tierkv_cycle, keys)
    bench("tierkv_pool_ctypes_register_per_block", tkv, lambda t, k: tierkv_cycle(t, k, per_block=True), keys)
    shadow_ns = bench(
        "shadow_vllm_plus_mirror",
        lambda: ShadowBlockPool(n_blocks, True, BS, tkv_factory=lambda n: tkv(engine_order=True)),
        vllm_cycle,
        reqs,
    )
    rust_ns = bench(
        "rust_through_vllms_interface",
        lambda: RustBlockPool(n_blocks, True, BS, tkv_factory=lambda n: tkv()),
        vllm_cycle,
        reqs,
    )
    rust_hazard_ns = bench(
        "rust_through_vllms_interface_hazard",
        lambda: RustBlockPool(n_blocks, True, BS, tkv_factory=lambda n: tkv("hazard")),
        vllm_cycle,
        reqs,
    )
    # Every allocation evicts a cached block (the pool full of other prompts).
    vllm_ev = bench(
        "evicting/vllm_blockpool", filled(lambda: BlockPool(n_blocks, True, BS), vllm_cycle, other), vllm_cycle, reqs
    )
    tierkv_ev = bench("evicting/tierkv_pool_ctypes", filled(tkv, tierkv_cycle, other_keys), tierkv_cycle, keys)
    hazard_ev = bench(
        "evicting/tierkv_pool_ctypes_hazard", filled(lambda: tkv("hazard"), tierkv_cycle, other_keys), tierkv_cycle, keys
    )
    rust_ev = bench(
        "evicting/rust_through_vllms_interface",
        filled(lambda: RustBlockPool(n_blocks, True, BS, tkv_factory=lambda n: tkv()), vllm_cycle, other),
        vllm_cycle,
        reqs,
    )
    rust_hazard_ev = bench(
        "evicting/rust_through_vllms_interface_hazard",
        filled(lambda: RustBlockPool(n_blocks, True, BS, tkv_factory=lambda n: tkv("hazard")), vllm_cycle, other),
        vllm_cycle,
        reqs,
    )
    print(f"ratio\ttierkv_over_vllm\t{tierkv_ns / vllm_ns:.2f}")
    print(f"ratio\ttierkv_hazard_over_vllm\t{hazard_ns / vllm_ns:.2f}")
    print(f"ratio\tshadow_over_vllm\t{shadow_ns / vllm_ns:.2f}")
    print(f"ratio\trust_over_vllm\t{rust_ns / vllm_ns:.2f}")
    print(f"ratio\trust_hazard_over_vllm\t{rust_hazard_ns / vllm_ns:.2f}")
    print(f"ratio\tevicting/tierkv_over_vllm\t{tierkv_ev / vllm_ev:.2f}")
    print(f"ratio\tevicting/tierkv_hazard_over_vllm\t{hazard_ev / vllm_ev:.2f}")
    print(f"ratio\tevicting/rust_over_vllm\t{rust_ev / vllm_ev:.2f}")
    print(f"ratio\tevicting/rust_hazard_over_vllm\t{rust_hazard_ev / vllm_ev:.2f}")


if __name__ == "__main__":
    main()
