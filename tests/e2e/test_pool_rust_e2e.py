"""tierkv's pool deciding inside real vLLM (``TIERKV_VLLM_POOL=rust``).

vLLM's own prefix cache is on in every engine here, so G1 (the engine's KV cache)
serves hits; with ``rust`` tierkv's pool chooses the blocks, the eviction victims
and the prefix hits, and the connector copies a cached block to the host tier only
when tierkv's pool evicts it. Checks, on one prompt set with heavy prefix sharing
(four long prefixes, each used twice, generated one by one):

- outputs are token for token those of vLLM's own pool, whether the workload fits
  in G1 or not;
- a workload that fits in G1 copies nothing to the host tier (the connector alone
  copies every block after the step that computed it);
- a workload that does not fit demotes the victims to the host tier and serves a
  later request's evicted prefix from there.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from test_vllm_e2e import BLOCK, SHADOW, driver, finish, metric

# About 40 blocks of SmolLM2 fp32 KV (1.47 MB a block of 32 tokens): the four
# 12-block prefixes do not fit together.
SMALL_KV = 60_000_000
PREFIXES, PREFIX_BLOCKS = 4, 12

pytestmark = pytest.mark.skipif(SHADOW, reason="the shadow pass checks vLLM's pool; this file runs tierkv's")


def prompts() -> list[list[int]]:
    rng = random.Random(12)
    prefixes = [[rng.randrange(1000, 40000) for _ in range(PREFIX_BLOCKS * BLOCK)] for _ in range(PREFIXES)]
    # Round robin: by the time a prefix comes back, the three others were used since.
    return [p + [rng.randrange(1000, 40000) for _ in range(17)] for _ in range(2) for p in prefixes]


def copied_to_host(result: dict) -> float:
    return metric(result["metrics"], "tierkv_transfer_bytes_total", 'src="engine",dst="host"')


def host_loads(result: dict) -> float:
    return metric(result["metrics"], "tierkv_block_ops_total", 'tier="host",op="load"')


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pool-rust")
    ps = prompts()
    common = ("--one-by-one", "--max-tokens", "8", "--max-model-len", "1024")
    # vLLM's order where the figures assume it; the default (hazard) in its own run.
    rust = {"TIERKV_VLLM_POOL": "rust", "TIERKV_POOL_EVICTION": "lru"}

    def start(mode, kv, extra=None, name=None):
        args = (*common, "--kv-bytes", str(kv))
        if mode == "tierkv":
            args = (*args, "--prefix-cache")
        store = f"pool-rust-{name}" if name else None
        return driver(tmp, mode, ps, store, args, extra), store

    out = {}
    # Two engines at a time on the 2-core machine.
    pairs = [
        (("vllm", "prefix", 1 << 30, None), ("rust_fit", "tierkv", 1 << 30, rust)),
        (("connector_fit", "tierkv", 1 << 30, None), ("rust_small", "tierkv", SMALL_KV, rust)),
        (("rust_hazard", "tierkv", SMALL_KV, {"TIERKV_VLLM_POOL": "rust"}),),
    ]
    stores = []
    try:
        for pair in pairs:
            handles = []
            for name, mode, kv, extra in pair:
                h, store = start(mode, kv, extra, name if mode == "tierkv" else None)
                handles.append((name, h))
                stores.append(store)
            for name, h in handles:
                out[name] = finish(h)
    finally:
        for s in stores:
            if s:
                Path(f"/dev/shm/tierkv-{s}.arena").unlink(missing_ok=True)
                Path(f"/dev/shm/tierkv-{s}.g3dir").unlink(missing_ok=True)
    return out


def test_tierkvs_pool_is_installed_and_outputs_are_vllms(runs):
    for name in ("rust_fit", "rust_small", "rust_hazard"):
        log = Path(runs[name]["log"]).read_text()
        assert "tierkv: pool rust installed" in log, f"{name}: tierkv's pool was not installed"
        assert runs[name]["outputs"] == runs["vllm"]["outputs"], f"{name}: outputs differ from vLLM's own pool"
    assert runs["connector_fit"]["outputs"] == runs["vllm"]["outputs"]


def test_a_workload_that_fits_in_g1_copies_nothing(runs):
    assert copied_to_host(runs["rust_fit"]) == 0
    # The connector alone copies every computed block (the contrast measured).
    assert copied_to_host(runs["connector_fit"]) >= PREFIXES * PREFIX_BLOCKS * metric(
        runs["connector_fit"]["metrics"], "tierkv_block_bytes"
    )


def test_evicted_prefixes_are_demoted_and_served_from_the_host_tier(runs):
    small = runs["rust_small"]
    assert copied_to_host(small) > 0, "victims were not demoted"
    # The second round's prefixes were evicted from G1: loaded back from the host tier.
    assert host_loads(small) >= PREFIX_BLOCKS


def test_a_hazard_g1_serves_vllms_outputs_and_demotes_its_victims(runs):
    """TIERKV_POOL_EVICTION unset (hazard): the learned policy picks G1's victims;
    outputs stay vLLM's and its victims go to the host tier like the engine order's."""
    hz = runs["rust_hazard"]
    assert "eviction hazard" in Path(hz["log"]).read_text(), "the pool did not take TIERKV_POOL_EVICTION"
    assert copied_to_host(hz) > 0, "victims were not demoted"
    # G1 cannot hold the four prefixes: what it let go of in the first round
    # comes back from the host tier in the second.
    assert host_loads(hz) > 0, "no evicted prefix was served from the host tier"
