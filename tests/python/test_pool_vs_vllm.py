"""tierkv's engine block pool against vLLM's own ``BlockPool`` (vLLM 0.32), driven
as vLLM's scheduler drives it: prefix lookups (``get_cached_block``) and hits
(``touch``), allocations, caching of full blocks, frees in reverse order, requests
that compute the same blocks at once (two blocks hold one identity), failed loads
(``evict_blocks``) and resets. The shadow pool (``tierkv_vllm.pool``) compares
every outcome; random schedules must show no disagreement, and a tierkv pool that
is one step out of line must show them at once."""

from __future__ import annotations

import contextlib
import hashlib
import random
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "integration" / "vllm"))

pytest.importorskip("vllm")

from tierkv_vllm import TierKV  # noqa: E402
from tierkv_vllm.pool import ShadowBlockPool  # noqa: E402

BS = 4


def block_hash(chain: int, i: int) -> bytes:
    return hashlib.sha256(f"{chain}/{i}".encode()).digest()


def shadow(num_blocks: int, factory=None) -> ShadowBlockPool:
    make = factory or (lambda n: TierKV(block_tokens=BS, block_bytes=4096, pool_blocks=n))
    return ShadowBlockPool(num_blocks, True, BS, tkv_factory=make)


class Scheduler:
    """The calls vLLM's KV cache manager makes, on random requests."""

    def __init__(self, pool: ShadowBlockPool, rng: random.Random, lookahead: bool = False):
        self.pool, self.rng = pool, rng
        # RustBlockPool: prefix questions inside its lookahead, as the plugin runs them.
        self.lookahead = lookahead and hasattr(pool, "lookahead")
        self.running: list[tuple[SimpleNamespace, list]] = []
        self.admitted: list[tuple[SimpleNamespace, list, int]] = []

    def admit(self) -> None:
        chain = self.rng.randrange(4)
        n = self.rng.randrange(1, 7)
        req = SimpleNamespace(block_hashes=[block_hash(chain, i) for i in range(n)])
        hits = []
        with self.pool.lookahead(req.block_hashes, n) if self.lookahead else contextlib.nullcontext():
            for h in req.block_hashes:
                got = self.pool.get_cached_block(h, [0])
                if got is None:
                    break
                hits.append(got[0])
        need = n - len(hits)
        if need > self.pool.get_num_free_blocks() - len([b for b in hits if b.ref_cnt == 0]):
            return
        self.pool.touch(hits)
        blocks = hits + self.pool.get_new_blocks(need)
        self.admitted.append((req, blocks, len(hits)))

    def compute(self) -> None:
        if not self.admitted:
            return
        req, blocks, cached = self.admitted.pop(self.rng.randrange(len(self.admitted)))
        self.pool.cache_full_blocks(req, blocks, cached, len(blocks), BS, 0)
        self.running.append((req, blocks))

    def finish(self) -> None:
        if not self.running:
            return
        _, blocks = self.running.pop(self.rng.randrange(len(self.running)))
        self.pool.free_blocks(reversed(blocks))

    def fail_loads(self) -> None:
        ids = {self.rng.randrange(1, self.pool.num_gpu_blocks) for _ in range(self.rng.randrange(1, 4))}
        self.pool.evict_blocks(ids)

    def reset(self) -> None:
        while self.admitted:
            self.compute()
        while self.running:
            self.finish()
        assert self.pool.reset_prefix_cache()

    def step(self) -> None:
        r = self.rng.random()
        if r < 0.35:
            self.admit()
        elif r < 0.6:
            self.compute()
        elif r < 0.9:
            self.finish()
        elif r < 0.98:
            self.fail_loads()
        else:
            self.reset()


@pytest.mark.parametrize("seed", range(6))
def test_random_schedules_agree_with_vllms_pool(env, seed):
    pool = shadow(24)
    s = Scheduler(pool, random.Random(seed))
    for _ in range(1500):
        s.step()
    pool.flush()
    assert pool.disagreements == [0, 0, 0, 0]
    st = pool._tkv.pool_state()
    assert st["hits"] > 0 and st["evictions"] > 0, "the schedule must exercise hits and evictions"
    assert pool._ops > 3000
    text = pool._tkv.metrics_text()
    assert "tierkv_pool_shadow_ops_total" in text
    assert 'tierkv_pool_shadow_disagreements_total{kind="allocated_ids"} 0' in text


def test_two_requests_computing_one_prefix_at_once_keep_both_blocks(env):
    pool = shadow(8)
    s = Scheduler(pool, random.Random(0))
    req = SimpleNamespace(block_hashes=[block_hash(9, 0), block_hash(9, 1)])
    a, b = pool.get_new_blocks(2), pool.get_new_blocks(2)
    pool.cache_full_blocks(req, a, 0, 2, BS, 0)
    pool.cache_full_blocks(req, b, 0, 2, BS, 0)
    pool.free_blocks(reversed(a))
    # A's blocks are reused first (released first): B's take over the identity.
    pool.get_new_blocks(pool.get_num_free_blocks())
    got = pool.get_cached_block(req.block_hashes[0], [0])
    assert got is not None and got[0].block_id == b[0].block_id
    del s
    assert pool.disagreements == [0, 0, 0, 0]


def test_a_pool_out_of_line_is_caught(env):
    def off_by_one(n):
        t = TierKV(block_tokens=BS, block_bytes=4096, pool_blocks=n)
        t.pool_allocate(1)  # one block taken that vLLM does not know of
        return t

    pool = shadow(16, off_by_one)
    s = Scheduler(pool, random.Random(1))
    for _ in range(200):
        s.step()
    assert pool.disagreements[0] > 0 and pool.disagreements[3] > 0


# ------------------------------------------------ TIERKV_VLLM_POOL=rust: tierkv decides


def _view(pool, s: Scheduler) -> tuple:
    """What vLLM's scheduler and the engine see of a pool."""
    return (
        [(b.block_id, b.ref_cnt, b.block_hash) for b in pool.blocks],
        pool.get_num_free_blocks(),
        [[b.block_id for b in blocks] for _, blocks, _ in s.admitted],
        [[b.block_id for b in blocks] for _, blocks in s.running],
    )


@pytest.mark.parametrize("seed", range(6))
def test_tierkvs_pool_deciding_serves_vllm_exactly_as_its_own(env, seed):
    """RustBlockPool (tierkv's pool chooses blocks, victims and hits) and vLLM's
    BlockPool, driven by the same random schedule, give vLLM the same view after
    every call: the same blocks, counts, hashes and free counts; tierkv's own free
    count matches; every victim reaches the demotion sink once."""
    from vllm.v1.core.block_pool import BlockPool

    from tierkv_vllm import pool as pool_mod

    victims: list[tuple[bytes, int, bool]] = []
    pool_mod.set_demotion_sink(victims.extend)
    try:
        theirs = BlockPool(24, True, BS)
        ours = pool_mod.RustBlockPool(
            24, True, BS, tkv_factory=lambda n: TierKV(block_tokens=BS, block_bytes=4096, pool_blocks=n)
        )
        # Odd seeds ask for prefixes through the lookahead (batched finds).
        a = Scheduler(theirs, random.Random(seed))
        b = Scheduler(ours, random.Random(seed), lookahead=seed % 2 == 1)
        for i in range(1500):
            a.step()
            b.step()
            assert _view(theirs, a) == _view(ours, b), f"step {i}"
            assert ours._tkv.pool_state()["free"] == ours.get_num_free_blocks()
        st = ours._tkv.pool_state()
        assert st["hits"] > 0 and st["evictions"] > 0
        assert ours.victims == len(victims) == st["evictions"]
        assert all(isinstance(h, bytes) and 0 < bid < 24 for h, bid, _ in victims)
    finally:
        pool_mod.set_demotion_sink(None)


def test_the_null_block_moves_as_in_vllms_pool(env):
    """vLLM touches and frees its null block like any other (its count is not
    maintained); tierkv's pool never sees it, vLLM's view moves as vLLM's does."""
    from vllm.v1.core.block_pool import BlockPool

    from tierkv_vllm.pool import RustBlockPool

    theirs = BlockPool(8, True, BS)
    ours = RustBlockPool(8, True, BS, tkv_factory=lambda n: TierKV(block_tokens=BS, block_bytes=4096, pool_blocks=n))
    for pool in (theirs, ours):
        blocks = [pool.null_block, *pool.get_new_blocks(2)]
        pool.touch([pool.null_block])
        pool.free_blocks(reversed(blocks))
    assert [(b.block_id, b.ref_cnt) for b in theirs.blocks] == [(b.block_id, b.ref_cnt) for b in ours.blocks]
    assert ours.get_num_free_blocks() == theirs.get_num_free_blocks() == ours._tkv.pool_state()["free"]
