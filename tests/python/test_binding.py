"""The ctypes binding (``tierkv_vllm.lib``) against the built library, and block
identities checked live against vLLM's own ``hash_block_tokens``."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "integration" / "vllm"))

from tierkv_vllm import TierKV, TierKVError  # noqa: E402
from tierkv_vllm.lib import LOAD_CORRUPT, LOAD_LOADED, LOAD_MISS, STORE_PRESENT, STORE_STORED  # noqa: E402


def test_store_lookup_load_round_trip(env):
    t = TierKV(block_tokens=4, block_bytes=8192, namespace="m")
    engine = ctypes.create_string_buffer(8192 * 4)
    for i in range(8192 * 2):
        engine[i] = (i * 7) % 251
    base = ctypes.addressof(engine)
    # K and V halves of each block interleaved: block b = [K_b | V_b] at b * 8192.
    t.register_layout([(base, 8192, 4096), (base + 4096, 8192, 4096)], 4)
    hashes = t.hash_tokens(list(range(9)))
    assert len(hashes) == 2 * 16
    assert t.lookup(hashes) == 0
    assert t.store_blocks(hashes, [0, 1]) == [STORE_STORED, STORE_STORED]
    assert t.store_blocks(hashes, [0, 1]) == [STORE_PRESENT, STORE_PRESENT]
    assert t.lookup(hashes) == 2
    want = engine.raw[: 8192 * 2]
    ctypes.memset(engine, 0, 8192 * 4)
    assert t.load_blocks(hashes, [0, 1]) == [LOAD_LOADED, LOAD_LOADED]
    assert engine.raw[: 8192 * 2] == want
    other = t.hash_tokens([5] * 4)
    assert t.load_blocks(other, [2]) == [LOAD_MISS]
    text = t.metrics_text()
    assert 'tierkv_block_ops_total{tier="host",op="load"} 2' in text
    t.close()


def test_continued_hashes_equal_full_hashes(env):
    t = TierKV(block_tokens=16, block_bytes=4096)
    tokens = list(range(100))
    full = t.hash_tokens(tokens)
    head = t.hash_tokens(tokens[:32])
    assert head + t.hash_tokens(tokens[32:], parent=head[-16:]) == full


def test_bad_config_is_a_clear_error(env, monkeypatch):
    monkeypatch.setenv("TIERKV_LOG", "loud")
    with pytest.raises(TierKVError) as e:
        TierKV(block_tokens=16, block_bytes=4096)
    assert e.value.status == "CONFIG"
    assert "TIERKV_LOG" in str(e.value) and "loud" in str(e.value)


def test_corrupt_payload_is_reported(env):
    t = TierKV(block_tokens=4, block_bytes=4096)
    engine = ctypes.create_string_buffer(b"\x11" * 4096)
    t.register_layout([(ctypes.addressof(engine), 4096, 4096)], 1)
    h = t.hash_tokens([1, 2, 3, 4])
    t.store_blocks(h, [0])
    arena = Path(os.environ["TIERKV_SHM_DIR"]) / f"tierkv-{os.environ['TIERKV_STORE_NAME']}.arena"
    data = bytearray(arena.read_bytes())
    pos = data.find(b"\x11" * 64)
    data[pos + 100] ^= 0xFF
    arena.write_bytes(bytes(data))
    assert t.load_blocks(h, [0]) == [LOAD_CORRUPT]
    assert t.lookup(h) == 0


VLLM_HASH_CHECK = r"""
import json, sys
from vllm.utils.hashing import get_hash_fn_by_name
from vllm.v1.core import kv_cache_utils as kcu
fn = get_hash_fn_by_name("sha256_cbor")
kcu.init_none_hash(fn)
tokens, ns = json.loads(sys.argv[1]), sys.argv[2]
extra = (ns,) if ns else None
parent, out = None, []
for i in range(len(tokens) // 16):
    parent = kcu.hash_block_tokens(fn, parent, tokens[i * 16:(i + 1) * 16], extra)
    out.append(bytes(parent)[:16].hex())
print(json.dumps(out))
"""


@pytest.mark.parametrize("namespace", ["", "tenant-7"])
def test_sha256_cbor_identities_match_vllm_live(env, monkeypatch, namespace):
    import json
    import random

    rng = random.Random(5)
    tokens = [rng.randrange(0, 49152) for _ in range(16 * 6 + 3)]
    monkeypatch.setenv("PYTHONHASHSEED", "1234")
    monkeypatch.setenv("TIERKV_HASH", "sha256_cbor")
    t = TierKV(block_tokens=16, block_bytes=4096, namespace=namespace)
    ours = t.hash_tokens(tokens)
    out = subprocess.run(
        [sys.executable, "-c", VLLM_HASH_CHECK, json.dumps(tokens), namespace],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ),
    )
    theirs = json.loads(out.stdout.strip().splitlines()[-1])
    # Identities are the digests' first 16 bytes read big-endian; the binding
    # hands them out as (lo, hi) little-endian halves.
    ours_hex = []
    for i in range(len(ours) // 16):
        lo = int.from_bytes(ours[i * 16 : i * 16 + 8], "little")
        hi = int.from_bytes(ours[i * 16 + 8 : i * 16 + 16], "little")
        ours_hex.append(((hi << 64) | lo).to_bytes(16, "big").hex())
    assert ours_hex == theirs


def test_requests_whose_kv_is_not_a_function_of_tokens_are_not_cached():
    from types import SimpleNamespace

    from tierkv_vllm.connector import _cacheable

    plain = dict(lora_request=None, cache_salt=None, mm_features=[], prompt_embeds=None)
    assert _cacheable(SimpleNamespace(**plain))
    assert not _cacheable(SimpleNamespace(**dict(plain, lora_request=object())))
    assert not _cacheable(SimpleNamespace(**dict(plain, cache_salt="tenant-1")))
    assert not _cacheable(SimpleNamespace(**dict(plain, mm_features=[object()])))
    assert not _cacheable(SimpleNamespace(**dict(plain, prompt_embeds=object())))


def test_kv_events_decode_with_vllms_own_classes(env):
    """The library's batches are vLLM's ``KVEventBatch``: decoded by msgspec into
    vLLM's classes, stores and evictions under the names the engine gave."""
    msgspec = pytest.importorskip("msgspec")
    kv_events = pytest.importorskip("vllm.distributed.kv_events")
    t = TierKV(block_tokens=4, block_bytes=262144, namespace="m")
    engine = ctypes.create_string_buffer(262144)
    t.register_layout([(ctypes.addressof(engine), 262144, 262144)], 1)
    assert t.take_events() == [], "off: nothing recorded"
    t.events_start()
    cap = t.info()["host_capacity_blocks"]
    n = cap + 3
    hashes = t.hash_tokens(list(range(4 * n)))
    keys = [(1 << 63) + i for i in range(n)]
    t.name_blocks(hashes, keys, [0] + keys[:-1])
    for i in range(n):
        assert t.store_blocks(hashes[16 * i : 16 * (i + 1)], [0]) == [STORE_STORED]
    events = []
    for b in t.take_events():
        batch = msgspec.msgpack.decode(b, type=kv_events.KVEventBatch)
        events.extend(batch.events)
    stored = [h for e in events if isinstance(e, kv_events.BlockStored) for h in e.block_hashes]
    removed = [h for e in events if isinstance(e, kv_events.BlockRemoved) for h in e.block_hashes]
    assert stored == keys
    assert removed == keys[:3], "the oldest three evicted, named as stored"
    first = next(e for e in events if isinstance(e, kv_events.BlockStored))
    assert (first.medium, first.ownership, first.parent_block_hash, first.block_size) == (
        "CPU",
        "tierkv:host",
        None,
        4,
    )
    with pytest.raises(ValueError):
        t.name_blocks(hashes, keys[:-1])
    t.close()


@pytest.mark.parametrize("version,message", [(2, "has C ABI 2"), (3, "lacks tierkv_last_error")])
def test_an_older_library_is_a_clear_error(tmp_path, version, message):
    """Another ABI version, or an older build of this one (exports are only added
    within a version), is refused with a message saying so, not a symbol error."""
    from tierkv_vllm.lib import _load

    src = tmp_path / "old.c"
    src.write_text(f"unsigned tierkv_abi_version(void) {{ return {version}; }}\n")
    lib = tmp_path / f"libold{version}.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    with pytest.raises(TierKVError) as e:
        _load(str(lib))
    assert message in str(e.value)
