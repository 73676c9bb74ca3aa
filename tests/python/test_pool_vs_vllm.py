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
import time
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
    make = factory or (lambda n: TierKV(block_tokens=BS, block_bytes=4096, pool_blocks=n, pool_engine_order=True))
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
        t = TierKV(block_tokens=BS, block_bytes=4096, pool_blocks=n, pool_engine_order=True)
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
def test_tierkvs_pool_deciding_serves_vllm_exactly_as_its_own(env, monkeypatch, seed):
    """RustBlockPool (tierkv's pool chooses blocks, victims and hits) in vLLM's
    order (TIERKV_POOL_EVICTION=lru) and vLLM's BlockPool, driven by the same random
    schedule, give vLLM the same view after every call: the same blocks, counts,
    hashes and free counts; tierkv's own free count matches; every victim reaches
    the demotion sink once."""
    from vllm.v1.core.block_pool import BlockPool

    from tierkv_vllm import pool as pool_mod

    monkeypatch.setenv("TIERKV_POOL_EVICTION", "lru")
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


# ------------------------------------- TIERKV_POOL_EVICTION: a policy picks the victims


def _rust_pool(n: int):
    from tierkv_vllm.pool import RustBlockPool

    return RustBlockPool(n, True, BS, tkv_factory=lambda k: TierKV(block_tokens=BS, block_bytes=4096, pool_blocks=k))


@pytest.mark.parametrize("seed", range(4))
def test_a_hazard_pool_keeps_vllms_view_consistent(env, monkeypatch, seed):
    """With TIERKV_POOL_EVICTION=hazard (the default), tierkv's pool picks other victims than
    vLLM's order, and vLLM's view of the pool follows it through random schedules
    (the pool's own asserts: every allocated block free in vLLM's view), counts
    agree, and every victim reaches the demotion sink."""
    from tierkv_vllm import pool as pool_mod

    monkeypatch.delenv("TIERKV_POOL_EVICTION", raising=False)
    victims: list[tuple[bytes, int, bool]] = []
    pool_mod.set_demotion_sink(victims.extend)
    try:
        ours = _rust_pool(24)
        s = Scheduler(ours, random.Random(seed), lookahead=seed % 2 == 1)
        for _ in range(1500):
            s.step()
            assert ours._tkv.pool_state()["free"] == ours.get_num_free_blocks()
            held = {b.block_id for _, blocks, _ in s.admitted for b in blocks}
            held |= {b.block_id for _, blocks in s.running for b in blocks}
            assert all(ours.blocks[i].ref_cnt > 0 for i in held)
        st = ours._tkv.pool_state()
        assert st["hits"] > 0 and st["evictions"] > 0
        assert ours.victims == len(victims) == st["evictions"]
        assert ours.policy() == "hazard"
        assert "tierkv_engine_pool_policy_fallbacks_total" in ours._tkv.metrics_text()
    finally:
        pool_mod.set_demotion_sink(None)


def _serve(pool, hashes: list[bytes]) -> int:
    """One request as vLLM's scheduler runs it: prefix lookup and hit, allocation,
    caching of its full blocks, release last block first. Returns its hits."""
    req = SimpleNamespace(block_hashes=hashes)
    hits = []
    for h in hashes:
        got = pool.get_cached_block(h, [0])
        if got is None:
            break
        hits.append(got[0])
    pool.touch(hits)
    blocks = hits + pool.get_new_blocks(len(hashes) - len(hits))
    pool.cache_full_blocks(req, blocks, len(hits), len(blocks), BS, 0)
    pool.free_blocks(reversed(blocks))
    return len(hits)


@pytest.mark.parametrize("policy", ["lru", "hazard"])
def test_hazard_keeps_a_reused_prefix_in_g1_through_a_flood(env, monkeypatch, policy):
    """A 4-block prefix asked for after every flood of 16 blocks used once, in a
    pool of 16 usable blocks: vLLM's order (lru) has always evicted it by then;
    hazard learns that the flood never returns and keeps the prefix in G1."""
    monkeypatch.setenv("TIERKV_POOL_EVICTION", policy)
    pool = _rust_pool(17)
    assert pool.policy() == policy
    hot = [block_hash(1, i) for i in range(4)]
    late = 0
    for r in range(40):
        got = _serve(pool, hot)
        late += got if r >= 10 else 0
        for f in range(4):
            time.sleep(0.005)  # the policy's clock is the wall clock: requests apart
            assert _serve(pool, [block_hash(1000 + 4 * r + f, i) for i in range(4)]) == 0
    if policy == "lru":
        assert late == 0
    else:
        # Nearly every late round hits the whole prefix (the wall clock's jitter
        # on a busy machine may cost a round).
        assert late >= 0.9 * 30 * 4, late


def test_a_shadow_pool_keeps_vllms_order_whatever_the_policy(env, monkeypatch):
    """TIERKV_CREATE_POOL_ENGINE_ORDER (the plugin's shadow asks for it): with
    TIERKV_POOL_EVICTION=hazard set, the shadow still agrees with vLLM call by call;
    a shadow given a pool in another order stops at once instead of reporting
    disagreements that are only the policy's."""
    other = shadow(8, lambda n: TierKV(block_tokens=BS, block_bytes=4096, pool_blocks=n))
    assert not other._shadow and other.disagreements == [0, 0, 0, 0]
    monkeypatch.setenv("TIERKV_POOL_EVICTION", "hazard")
    pool = shadow(24, lambda n: TierKV(block_tokens=BS, block_bytes=4096, pool_blocks=n, pool_engine_order=True))
    s = Scheduler(pool, random.Random(3))
    for _ in range(1500):
        s.step()
    pool.flush()
    assert pool.disagreements == [0, 0, 0, 0]
    assert pool._tkv.pool_state()["evictions"] > 0
