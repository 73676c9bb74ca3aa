"""Print block-hash test vectors computed by vLLM's own `hash_block_tokens`.

Usage (inside the vLLM environment, with the `xxhash` package importable):
    PYTHONHASHSEED=SEED python gen_hash_vectors.py > plugin/src/prefix/vllm_vectors.txt

One line per case: algo|seed|namespace|block_size|tokens|digest,digest,...
(tokens comma-separated, digests hex). The Rust tests read this file.
"""

import os
import random

from vllm.utils.hashing import get_hash_fn_by_name
from vllm.v1.core import kv_cache_utils as kcu


def main() -> None:
    seed = os.environ.get("PYTHONHASHSEED")
    rng = random.Random(1234)
    cases = [
        (16, [], ""),
        (16, list(range(16)), ""),
        (16, [rng.randrange(0, 200_000) for _ in range(16 * 5 + 7)], ""),
        (32, [rng.randrange(0, 2**31 - 1) for _ in range(32 * 4)], ""),
        (16, [rng.randrange(0, 50) for _ in range(48)], "tenant-a"),
        (4, [23, 24, 255, 256, 65535, 65536, 2**32 - 1, 0], "model/lora"),
    ]
    for algo in ("sha256_cbor", "xxhash_cbor"):
        fn = get_hash_fn_by_name(algo)
        kcu.init_none_hash(fn)
        for bs, tokens, ns in cases:
            extra = (ns,) if ns else None
            parent = None
            digests = []
            for i in range(len(tokens) // bs):
                parent = kcu.hash_block_tokens(fn, parent, tokens[i * bs : (i + 1) * bs], extra)
                digests.append(bytes(parent).hex())
            print(f"{algo}|{seed}|{ns}|{bs}|{','.join(map(str, tokens))}|{','.join(digests)}")


if __name__ == "__main__":
    main()
