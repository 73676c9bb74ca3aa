"""The engine's whole path through one libtierkv.so: store, lookup and load of 128
blocks through the C ABI (handle checks, the manager, movement between tiers, the
host tier; with --disk also the write-behind offers to the disk tier).

Run: python integration/bench/abi_path.py --lib target/release/libtierkv.so [--disk DIR]
Prints `case<TAB>unit<TAB>value` lines (medians of --reps repetitions), the format of
the Rust benches, so that integration/bench/ab_bench.py can put two libraries side
by side.

Blocks are shaped like SmolLM2-135M's at block size 32 in fp32: 30 layer segments of
48 KiB (1.4 MiB a block), in a layer-major engine layout of 256 blocks; stores read
blocks 0-127, loads write blocks 128-255. The host tier (256 MiB, about 170 blocks)
evicts from the second repetition on: two warm-up repetitions touch every page of it
first, so the figures are the steady state, not page faults.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "integration" / "vllm"))
from tierkv_vllm.lib import LOAD_LOADED, STORE_STORED, TierKV  # noqa: E402

LAYERS, SEG, BLOCKS, N = 30, 48 * 1024, 256, 128


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--disk", help="a directory for a disk tier (write-through)")
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    store = f"abi-path-{uuid.uuid4().hex[:8]}"
    os.environ.update(TIERKV_STORE_NAME=store, TIERKV_CPU_BYTES="256MiB", TIERKV_HW_INTERVAL="off", TIERKV_LOG="off")
    if args.disk:
        os.environ.update(TIERKV_DISK_PATH=args.disk, TIERKV_DISK_BYTES="4GiB", TIERKV_DISK_ADMIT="always")
    block_bytes = LAYERS * SEG
    mem = ctypes.create_string_buffer(os.urandom(LAYERS * SEG * BLOCKS // 64) * 64, LAYERS * SEG * BLOCKS)
    base = ctypes.addressof(mem)
    tkv = TierKV(block_tokens=32, block_bytes=block_bytes, lib_path=args.lib, exporter=False)
    try:
        tkv.register_layout([(base + layer * SEG * BLOCKS, SEG, SEG) for layer in range(LAYERS)], BLOCKS)
        gb = N * block_bytes / 1e9
        store_s, lookup_s, load_s = [], [], []
        for rep in range(args.reps + 2):
            hashes = os.urandom(16 * N)
            t = time.perf_counter()
            out = tkv.store_blocks(hashes, list(range(N)))
            t_store = time.perf_counter() - t
            if args.disk:
                tkv.disk_flush(60.0)
            t = time.perf_counter()
            for _ in range(100):
                found = tkv.lookup(hashes)
            t_lookup = (time.perf_counter() - t) / 100
            t = time.perf_counter()
            res = tkv.load_blocks(hashes, list(range(N, 2 * N)))
            t_load = time.perf_counter() - t
            if found != N or set(out) != {STORE_STORED} or set(res) != {LOAD_LOADED}:
                raise SystemExit(f"unexpected results: found {found}, stores {set(out)}, loads {set(res)}")
            if rep == 0 and mem.raw[: N * SEG] != mem.raw[N * SEG : 2 * N * SEG]:
                raise SystemExit("loaded bytes differ from the stored ones")
            if rep > 1:  # two repetitions warm up (every arena page touched once)
                store_s.append(t_store)
                lookup_s.append(t_lookup)
                load_s.append(t_load)
        tag = "_disk" if args.disk else ""
        print("case\tunit\tvalue")
        print(f"abi_store{tag}\tGB_per_s\t{gb / statistics.median(store_s):.2f}")
        print(f"abi_lookup{tag}\tus_per_call\t{statistics.median(lookup_s) * 1e6:.2f}")
        print(f"abi_load{tag}\tGB_per_s\t{gb / statistics.median(load_s):.2f}")
    finally:
        tkv.close()
        for suffix in ("arena", "g3dir"):
            Path(f"/dev/shm/tierkv-{store}.{suffix}").unlink(missing_ok=True)
        if args.disk:
            Path(args.disk, f"tierkv-{store}.g3").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
