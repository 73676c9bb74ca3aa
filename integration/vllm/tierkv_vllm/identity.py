"""The namespace of a vLLM engine: everything that decides the bytes of a block
besides its tokens, so that two engines that would compute different KV never
share a block.

It is folded into every block identity (and into each disk block's header), so a
change of any part is a different cache: nothing stored under the old one is ever
found, let alone served. Parts:

- the model: its path or hub id, ``revision``, ``quantization``, ``hf_overrides``,
  the RoPE parameters of its config, and a fingerprint of its weights (below);
- the numbers: compute dtype, KV cache dtype;
- the layout: block size, device type, attention backend, ``VLLM_KV_CACHE_LAYOUT``;
- tierkv's identity format version, and the operator's ``TIERKV_NAMESPACE``.

Weights fingerprint: for a local model directory, a BLAKE2b digest of each weight
and config file's content, cached in ``.tierkv-weights.json`` beside the weights
(or under ``~/.cache/tierkv/weights`` when that directory is read-only) keyed by the
file's size, modification time and inode: replacing a tensor in place changes it;
an unchanged model is hashed once. A hub id without a local directory contributes
its id and revision.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

IDENTITY_FORMAT = "tierkv-identity-2"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".json", ".model")
_CACHE_NAME = ".tierkv-weights.json"


def _file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def _cache_path(model_dir: Path) -> Path:
    beside = model_dir / _CACHE_NAME
    if os.access(model_dir, os.W_OK):
        return beside
    key = hashlib.blake2b(str(model_dir.resolve()).encode(), digest_size=12).hexdigest()
    return Path.home() / ".cache" / "tierkv" / "weights" / f"{key}.json"


def weights_fingerprint(model_dir: str | os.PathLike) -> str:
    """Digest of the content of a local model directory's weight and config files
    (names, sizes and contents); cached per file by (size, mtime, inode). vLLM's
    scheduler and worker processes start together: a lock beside the cache makes the
    second one wait and read what the first hashed, instead of hashing it again."""
    d = Path(model_dir)
    cache_file = _cache_path(d)
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        lock = open(cache_file.with_name(cache_file.name + ".lock"), "a")
    except OSError:
        return _fingerprint(d, cache_file)  # nowhere to lock: hash unlocked
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _fingerprint(d, cache_file)


def _fingerprint(d: Path, cache_file: Path) -> str:
    files = sorted(
        p for p in d.iterdir() if p.is_file() and not p.name.startswith(_CACHE_NAME) and p.suffix in _WEIGHT_SUFFIXES
    )
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    out = hashlib.blake2b(digest_size=16)
    changed = False
    for p in files:
        st = p.stat()
        key = [st.st_size, st.st_mtime_ns, st.st_ino]
        entry = cache.get(p.name)
        if not entry or entry[0] != key:
            entry = [key, _file_digest(p)]
            cache[p.name] = entry
            changed = True
        out.update(f"{p.name}:{st.st_size}:{entry[1]};".encode())
    if changed:
        try:
            tmp = cache_file.with_name(f"{cache_file.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cache))
            os.replace(tmp, cache_file)
        except OSError:
            pass  # a read-only place: hashed again next time, still correct
    return out.hexdigest()


def _rope_of(hf_config: Any) -> Iterator[tuple[str, Any]]:
    for name in ("rope_parameters", "rope_scaling", "rope_theta", "max_position_embeddings"):
        v = getattr(hf_config, name, None)
        if v is not None:
            yield name, v


def _canonical(v: Any) -> str:
    try:
        return json.dumps(v, sort_keys=True, default=str)
    except (TypeError, ValueError):
        return repr(v)


def namespace(vllm_config: Any, operator_namespace: str | None = None) -> str:
    """The namespace string of an engine (readable parts, then a digest of the
    weights)."""
    mc = vllm_config.model_config
    cc = vllm_config.cache_config
    model = str(mc.model)
    parts = [
        IDENTITY_FORMAT,
        model,
        f"revision={getattr(mc, 'revision', None)}",
        f"dtype={mc.dtype}",
        f"kv={cc.cache_dtype}",
        f"quant={getattr(mc, 'quantization', None)}",
        f"overrides={_canonical(getattr(mc, 'hf_overrides', None) or {})}",
        f"rope={_canonical(dict(_rope_of(getattr(mc, 'hf_config', None))))}",
        f"block={cc.block_size}",
        f"device={getattr(getattr(vllm_config, 'device_config', None), 'device_type', None)}",
        f"backend={getattr(getattr(vllm_config, 'attention_config', None), 'backend', None)}",
        f"layout={os.environ.get('VLLM_KV_CACHE_LAYOUT', '')}",
    ]
    if os.path.isdir(model):
        parts.append(f"weights={weights_fingerprint(model)}")
    parts.append(os.environ.get("TIERKV_NAMESPACE", "") if operator_namespace is None else operator_namespace)
    return "|".join(parts)
