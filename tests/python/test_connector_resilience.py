"""The vLLM connector degrades and never crashes the engine, under library
errors and under vLLM's async scheduling; the binding refuses mismatched lists.

vLLM forces async scheduling off on CPU (``platforms/cpu.py``:
``scheduler_config.async_scheduling = False``), so the async case is a replay of
the scheduler-side calls with the numbers vLLM 0.32's ``AsyncScheduler`` passes:
after a step is scheduled, ``request.num_computed_tokens`` already counts the
tokens of that step, while the sampled tokens (``num_output_placeholders``: 1 per
step, plus the draft tokens with speculative decoding) are not yet in
``request.all_token_ids``. ``build_connector_meta`` therefore sees
``num_computed_tokens + num_scheduled_tokens`` up to ``1 + num_spec_tokens``
tokens ahead of the tokens that exist.
"""

from __future__ import annotations

import ctypes
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "integration" / "vllm"))

from tierkv_vllm import TierKV  # noqa: E402
from tierkv_vllm.connector import (  # noqa: E402
    Degrader,
    TierKVConnector,
    TierKVConnectorScheduler,
    TierKVConnectorWorker,
    TierKVMetadata,
)
from tierkv_vllm.lib import HASH_BYTES, LOAD_LOADED, STORE_STORED  # noqa: E402

BS = 16
BLOCK_BYTES = 4096


def bare_connector(tkv: TierKV) -> TierKVConnector:
    """A connector facade with both halves (scheduler and worker) over `tkv`, as
    the two processes would have them (no VllmConfig needed)."""
    c = object.__new__(TierKVConnector)
    c._tkv = tkv
    c._degrade = Degrader(tkv)
    c._scheduler = TierKVConnectorScheduler(
        tkv, BS, store_decode=True, rehash_from_start=False, semantic=False, degrade=c._degrade
    )
    c._worker = TierKVConnectorWorker(
        tkv, None, num_blocks=8, rope=None, semantic=False, layerwise=False, degrade=c._degrade
    )
    return c


def fake_request(req_id: str, tokens: list[int]):
    return types.SimpleNamespace(
        request_id=req_id,
        prompt_token_ids=list(tokens),
        all_token_ids=list(tokens),
        lora_request=None,
        cache_salt=None,
        mm_features=None,
        prompt_embeds=None,
    )


def cached_step(req_id: str, num_computed: int, scheduled: int, new_block_ids=None):
    cached = types.SimpleNamespace(
        req_ids=[req_id],
        resumed_req_ids=set(),
        new_block_ids=[new_block_ids],
        num_computed_tokens=[num_computed],
    )
    return types.SimpleNamespace(
        scheduled_new_reqs=[],
        scheduled_cached_reqs=cached,
        num_scheduled_tokens={req_id: scheduled},
    )


def new_step(req_id: str, block_ids: list[int], scheduled: int):
    new = types.SimpleNamespace(req_id=req_id, block_ids=[block_ids], num_computed_tokens=0)
    cached = types.SimpleNamespace(req_ids=[], resumed_req_ids=set(), new_block_ids=[], num_computed_tokens=[])
    return types.SimpleNamespace(
        scheduled_new_reqs=[new], scheduled_cached_reqs=cached, num_scheduled_tokens={req_id: scheduled}
    )


def check_stores(meta: TierKVMetadata) -> int:
    """Every planned store pairs one identity with one engine block."""
    n = 0
    for _req, positions, hashes, ids in meta.stores:
        assert len(positions) == len(ids)
        assert len(hashes) == HASH_BYTES * len(ids), "identities and block ids differ in length"
        n += len(ids)
    return n


def test_async_scheduling_never_plans_blocks_without_identities(env):
    """Speculative decoding with 4 draft tokens under async scheduling: the step's
    in-flight tokens (1 sampled + 4 drafts) reach across a block boundary that the
    existing tokens do not; the connector stores only blocks whose tokens exist and
    stores the rest once they do (never skipped, never an IndexError)."""
    tkv = TierKV(block_tokens=BS, block_bytes=BLOCK_BYTES, exporter=False)
    c = bare_connector(tkv)
    prompt = list(range(1000, 1030))  # 30 tokens: one full block
    req = fake_request("r", prompt)
    assert c.get_num_new_matched_tokens(req, 0) == (0, False)
    blocks = [3, 4, 5, 6]
    m1 = c.build_connector_meta(new_step("r", blocks, 30))
    assert check_stores(m1) == 1
    # Step 2 scheduled before step 1's token arrived: computed 30, 1 + 4 in flight.
    m2 = c.build_connector_meta(cached_step("r", 30, 5))
    # 35 tokens counted as computed, 30 exist: block 1 (tokens 16..32) is not
    # planned yet, and nothing pairs an identity with the wrong block.
    assert check_stores(m2) == 0
    assert c._scheduler._reqs["r"].stored == 1
    # The tokens arrive (5 accepted), the next step is scheduled: 35 exist, 40 counted.
    req.all_token_ids += list(range(5))
    m3 = c.build_connector_meta(cached_step("r", 35, 5))
    assert check_stores(m3) == 1, "block 1 is stored now that its tokens exist"
    # Far ahead: 64 counted, 35 exist (in-flight tokens over two blocks).
    m4 = c.build_connector_meta(cached_step("r", 48, 16))
    assert check_stores(m4) == 0
    req.all_token_ids += list(range(30))
    m5 = c.build_connector_meta(cached_step("r", 64, 1))
    assert check_stores(m5) == 2
    assert c._scheduler._reqs["r"].stored == 4
    tkv.close()


def test_library_errors_degrade_instead_of_killing_the_step(env):
    """A library that fails every call (here: its manager handle destroyed under
    the connector): loads report every block failed (vLLM recomputes), lookups
    answer no hit, stores are skipped; nothing raises into vLLM's step loop."""
    tkv = TierKV(block_tokens=BS, block_bytes=BLOCK_BYTES, exporter=False)
    c = bare_connector(tkv)
    engine = ctypes.create_string_buffer(BLOCK_BYTES * 8)
    tkv.register_layout([(ctypes.addressof(engine), BLOCK_BYTES, BLOCK_BYTES)], 8)
    hashes = tkv.hash_tokens(list(range(2 * BS)))
    assert tkv.store_blocks(hashes, [0, 1]) == [STORE_STORED] * 2
    # Hold the handle value, then destroy it underneath the connector.
    handle = tkv._h
    tkv._lib.tierkv_manager_destroy(handle)
    meta = TierKVMetadata(loads=[(hashes, [2, 3])], stores=[("q", [0, 1], hashes, [4, 5])])
    c.has_connector_metadata = lambda: True
    c._get_connector_metadata = lambda: meta
    c.start_load_kv(None)
    assert c.get_block_ids_with_load_errors() == {2, 3}
    c.wait_for_save()  # skipped, not raised
    req = fake_request("q", list(range(40)))
    assert c.get_num_new_matched_tokens(req, 0) == (0, False)
    assert len(c._degrade.last_logged) >= 2, "logged (once per operation and status)"
    tkv._h = ctypes.c_void_p()  # already destroyed


def test_adapter_errors_and_loaded_tokens_are_counted(env):
    tkv = TierKV(block_tokens=BS, block_bytes=BLOCK_BYTES, exporter=False)
    c = bare_connector(tkv)
    c._degrade(1, "load", RuntimeError("boom"))
    c._degrade(1, "load", RuntimeError("boom"))
    engine = ctypes.create_string_buffer(BLOCK_BYTES * 4)
    tkv.register_layout([(ctypes.addressof(engine), BLOCK_BYTES, BLOCK_BYTES)], 4)
    hashes = tkv.hash_tokens(list(range(2 * BS)))
    tkv.store_blocks(hashes, [0, 1])
    assert tkv.load_blocks(hashes, [2, 3]) == [LOAD_LOADED] * 2
    text = tkv.metrics_text()
    assert 'tierkv_adapter_errors_total{op="load",status="internal"} 2' in text, text
    assert "tierkv_loaded_tokens_total 32" in text
    tkv.close()


def test_lookups_count_each_request_once(env):
    """vLLM asks again for a waiting request; the lookup metrics count the request
    once (the calls separately)."""
    tkv = TierKV(block_tokens=BS, block_bytes=BLOCK_BYTES, exporter=False)
    c = bare_connector(tkv)
    req = fake_request("w", list(range(3 * BS + 1)))
    for _ in range(5):
        c.get_num_new_matched_tokens(req, 0)
    text = tkv.metrics_text()
    assert "tierkv_lookups_total 1" in text
    assert "tierkv_lookup_calls_total 5" in text
    assert 'tierkv_lookup_blocks_total{tier="host",result="miss"} 3' in text
    tkv.close()


def test_mismatched_identity_and_block_lists_are_refused(env):
    """A short block-id list would be zero-filled by ctypes and load or store block 0."""
    tkv = TierKV(block_tokens=BS, block_bytes=BLOCK_BYTES, exporter=False)
    engine = ctypes.create_string_buffer(BLOCK_BYTES * 4)
    tkv.register_layout([(ctypes.addressof(engine), BLOCK_BYTES, BLOCK_BYTES)], 4)
    hashes = tkv.hash_tokens(list(range(2 * BS)))
    with pytest.raises(ValueError):
        tkv.store_blocks(hashes, [1])
    with pytest.raises(ValueError):
        tkv.load_blocks(hashes, [1])
    with pytest.raises(ValueError):
        tkv.load_blocks(hashes, [1, 2, 3])
    with pytest.raises(ValueError):
        tkv.store_blocks(hashes[:-1], [1, 2])
    assert tkv.lookup(hashes) == 0, "nothing was stored"
    tkv.close()


def test_stores_that_did_not_happen_are_planned_again(env, monkeypatch):
    """The worker reports blocks whose store was deferred, found no room or failed
    (vLLM's worker -> scheduler connector metadata); the scheduler plans them again
    in its next step while the request still holds them, a bounded number of times."""
    tkv = TierKV(block_tokens=BS, block_bytes=BLOCK_BYTES, exporter=False)
    c = bare_connector(tkv)
    engine = ctypes.create_string_buffer(BLOCK_BYTES * 8)
    tkv.register_layout([(ctypes.addressof(engine), BLOCK_BYTES, BLOCK_BYTES)], 8)
    req = fake_request("s", list(range(3 * BS + 1)))
    c.get_num_new_matched_tokens(req, 0)
    meta = c.build_connector_meta(new_step("s", [5, 6, 7], 3 * BS + 1))
    assert check_stores(meta) == 3
    # The worker: the store call fails (as a deferred or failed store would).
    real = tkv.store_blocks
    monkeypatch.setattr(tkv, "store_blocks", lambda h, ids: (_ for _ in ()).throw(RuntimeError("down")))
    c.has_connector_metadata = lambda: True
    c._get_connector_metadata = lambda: meta
    c.wait_for_save()
    wmeta = c.build_connector_worker_meta()
    assert wmeta.unstored == {"s": [0, 1, 2]}
    assert c.build_connector_worker_meta() is None, "reported once"
    # The scheduler plans them again in its next step.
    c.update_connector_output(types.SimpleNamespace(kv_connector_worker_meta=wmeta))
    again = c.build_connector_meta(cached_step("s", 3 * BS + 1, 1))
    assert [(p, ids) for _r, p, _h, ids in again.stores] == [([0, 1, 2], [5, 6, 7])]
    monkeypatch.setattr(tkv, "store_blocks", real)
    c._get_connector_metadata = lambda: again
    c.wait_for_save()
    assert c.build_connector_worker_meta() is None, "stored this time"
    assert tkv.lookup(tkv.hash_tokens(list(range(3 * BS)))) == 3
    # Bounded: a block that never stores is dropped after a few tries.
    st = c._scheduler._reqs["s"]
    for _ in range(5):
        c.update_connector_output(types.SimpleNamespace(kv_connector_worker_meta=type(wmeta)(unstored={"s": [1]})))
    assert st.retries[1] == 3
    tkv.close()
