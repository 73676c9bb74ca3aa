"""The remote tier (G4) through the ctypes binding: two managers standing for two
machines (their own store names and shared-memory directories) share a Redis
cluster (``redis_cluster.url``)."""

from __future__ import annotations

import ctypes
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "integration" / "vllm"))

import redis_cluster  # noqa: E402
from tierkv_vllm import TierKV  # noqa: E402
from tierkv_vllm.lib import LOAD_LOADED, STORE_STORED, TIER_HOST, TIER_REMOTE  # noqa: E402

redis_url = pytest.fixture(scope="module", name="redis_url")(redis_cluster.url)


def machine(tmp_path: Path, monkeypatch, url: str, prefix: str, name: str) -> TierKV:
    shm = tmp_path / name
    shm.mkdir()
    monkeypatch.setenv("TIERKV_SHM_DIR", str(shm))
    monkeypatch.setenv("TIERKV_STORE_NAME", f"py-{name}-{uuid.uuid4().hex[:6]}")
    monkeypatch.setenv("TIERKV_CPU_BYTES", "4MiB")
    monkeypatch.setenv("TIERKV_REMOTE_URL", url)
    monkeypatch.setenv("TIERKV_REMOTE_PREFIX", prefix)
    monkeypatch.setenv("TIERKV_REMOTE_ADMIT", "always")
    return TierKV(block_tokens=4, block_bytes=8192, namespace="m")


def test_another_machine_is_told_to_ask_again_then_loads_from_the_cluster(tmp_path, monkeypatch, redis_url):
    prefix = f"py{uuid.uuid4().hex[:8]}"
    engine_a = ctypes.create_string_buffer(8192 * 2)
    for i in range(8192 * 2):
        engine_a[i] = (i * 13) % 251
    a = machine(tmp_path, monkeypatch, redis_url, prefix, "a")
    a.register_layout([(ctypes.addressof(engine_a), 8192, 8192)], 2)
    hashes = a.hash_tokens(list(range(8)))
    assert a.store_blocks(hashes, [0, 1]) == [STORE_STORED, STORE_STORED]
    assert a.disk_flush(30.0), "the remote writes did not finish"

    engine_b = ctypes.create_string_buffer(8192 * 2)
    b = machine(tmp_path, monkeypatch, redis_url, prefix, "b")
    b.register_layout([(ctypes.addressof(engine_b), 8192, 8192)], 2)
    tiers, pending = b.lookup_pending(hashes)
    assert (tiers, pending) == ([], True), "a fresh machine must be told to ask again, not wait"
    deadline = time.monotonic() + 10
    while pending:
        assert time.monotonic() < deadline, "still pending"
        time.sleep(0.01)
        tiers, pending = b.lookup_pending(hashes, repeat=True)
    assert tiers == [TIER_REMOTE, TIER_REMOTE]
    assert b.load_blocks(hashes, [0, 1]) == [LOAD_LOADED, LOAD_LOADED]
    assert engine_b.raw == engine_a.raw
    # Onboarded into B's host tier.
    assert b.lookup_tiers(hashes) == [TIER_HOST, TIER_HOST]
    assert 'tierkv_tier_up{tier="remote"} 1' in b.metrics_text()
    a.close()
    b.close()
