"""The vLLM connector's namespace covers everything that decides a block's bytes."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "integration" / "vllm"))

from tierkv_vllm import identity  # noqa: E402


def config(model: str, **over):
    mc = types.SimpleNamespace(
        model=model,
        revision=over.get("revision"),
        dtype=over.get("dtype", "float32"),
        quantization=over.get("quantization"),
        hf_overrides=over.get("hf_overrides", {}),
        hf_config=types.SimpleNamespace(rope_theta=over.get("rope_theta", 10000.0), rope_scaling=None),
    )
    cc = types.SimpleNamespace(cache_dtype=over.get("kv", "auto"), block_size=over.get("block", 16))
    return types.SimpleNamespace(
        model_config=mc,
        cache_config=cc,
        device_config=types.SimpleNamespace(device_type=over.get("device", "cpu")),
        attention_config=types.SimpleNamespace(backend=over.get("backend")),
    )


def test_every_part_changes_the_namespace(tmp_path, monkeypatch):
    monkeypatch.delenv("VLLM_KV_CACHE_LAYOUT", raising=False)
    monkeypatch.delenv("TIERKV_NAMESPACE", raising=False)
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"\0" * 4096)
    base = identity.namespace(config(str(model)))
    assert identity.namespace(config(str(model))) == base, "stable"
    variants = [
        config(str(model), revision="v2"),
        config(str(model), dtype="bfloat16"),
        config(str(model), kv="fp8"),
        config(str(model), quantization="awq"),
        config(str(model), hf_overrides={"rope_scaling": {"type": "yarn", "factor": 4}}),
        config(str(model), rope_theta=500000.0),
        config(str(model), block=32),
        config(str(model), device="cuda"),
        config(str(model), backend="FLASHINFER"),
    ]
    seen = {base}
    for v in variants:
        ns = identity.namespace(v)
        assert ns not in seen, ns
        seen.add(ns)
    monkeypatch.setenv("VLLM_KV_CACHE_LAYOUT", "HND")
    assert identity.namespace(config(str(model))) not in seen
    monkeypatch.delenv("VLLM_KV_CACHE_LAYOUT")
    monkeypatch.setenv("TIERKV_NAMESPACE", "tenant-b")
    tenant = identity.namespace(config(str(model)))
    assert tenant not in seen and tenant.endswith("|tenant-b"), "the operator's part stays last"


def test_weights_changed_in_place_change_the_fingerprint(tmp_path, monkeypatch):
    model = tmp_path / "m"
    model.mkdir()
    w = model / "model.safetensors"
    w.write_bytes(b"\1" * 100_000)
    before = identity.weights_fingerprint(model)
    assert (model / ".tierkv-weights.json").exists(), "cached beside the weights"
    # One byte changed, same size, same path (the mtime moves, as any write does).
    data = bytearray(w.read_bytes())
    data[50_000] ^= 1
    w.write_bytes(bytes(data))
    st = w.stat()
    os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    after = identity.weights_fingerprint(model)
    assert after != before
    # Unchanged files are not read again: the cache answers.
    calls = []
    monkeypatch.setattr(identity, "_file_digest", lambda p: calls.append(p) or "x")
    assert identity.weights_fingerprint(model) == after
    assert calls == []


def test_a_read_only_model_directory_caches_elsewhere(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    model = tmp_path / "ro"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"\2" * 1000)
    monkeypatch.setattr(identity.os, "access", lambda p, mode: False)
    fp = identity.weights_fingerprint(model)
    assert not (model / ".tierkv-weights.json").exists()
    assert list((tmp_path / "home" / ".cache" / "tierkv" / "weights").iterdir())
    assert identity.weights_fingerprint(model) == fp
