"""ctypes binding of the tierkv C ABI (``plugin/include/tierkv.h``).

Block identities travel as ``bytes`` of 16 bytes per block (low then high 64-bit
half, little-endian), so lists of them slice and pickle cheaply.
"""

from __future__ import annotations

import array
import ctypes
import os
from pathlib import Path
from typing import Iterable, Sequence

ABI_VERSION = 3
HASH_BYTES = 16

STATUS_NAMES = {
    0: "OK",
    1: "INVALID_ARGUMENT",
    2: "CONFIG",
    3: "NO_SPACE",
    4: "UNAVAILABLE",
    5: "INSUFFICIENT",
    6: "STATE",
    7: "BUFFER_TOO_SMALL",
    8: "INTERNAL",
}
STATUS_BUFFER_TOO_SMALL = 7

# Per-block results: no code is 0, so a zero-filled array never reads as success;
# FAILED is what every entry holds when the call failed before that block was done.
LOAD_LOADED, LOAD_MISS, LOAD_CORRUPT, LOAD_BUSY, LOAD_IO_ERROR, LOAD_FAILED = 1, 2, 3, 4, 5, 6
TIER_ENGINE, TIER_HOST, TIER_DISK, TIER_REMOTE = 1, 2, 3, 4
# After a lookup's hits: a tier (the remote one) is still finding out about the
# next block; ask again later.
TIER_PENDING = 255
STORE_STORED, STORE_PRESENT, STORE_NO_SPACE, STORE_DEFERRED, STORE_FAILED = 1, 2, 3, 4, 5
SEMANTIC_REASONS = {
    0: "accepted",
    1: "not_consulted",
    2: "no_candidate",
    3: "below_similarity",
    4: "too_much_recompute",
    5: "no_gain",
}
DTYPE_F32, DTYPE_F16, DTYPE_BF16 = 0, 1, 2
CREATE_NO_EXPORTER = 1
CREATE_DISK_READER = 2
CREATE_POOL_ENGINE_ORDER = 4


LOOKUP_REPEAT = 1
OP_LOOKUP, OP_LOAD, OP_STORE, OP_HASH, OP_OTHER = 0, 1, 2, 3, 4


class TierKVError(RuntimeError):
    """A tierkv call failed; ``status`` is the C status name, ``code`` its number."""

    def __init__(self, status: int, message: str):
        self.code = status
        self.status = STATUS_NAMES.get(status, str(status))
        super().__init__(f"tierkv: {self.status}: {message}")


class _Hash(ctypes.Structure):
    _fields_ = [("lo", ctypes.c_uint64), ("hi", ctypes.c_uint64)]


class _Params(ctypes.Structure):
    _fields_ = [
        ("block_tokens", ctypes.c_uint32),
        ("pool_blocks", ctypes.c_uint32),
        ("block_bytes", ctypes.c_uint64),
        ("namespace_", ctypes.c_char_p),
        ("flags", ctypes.c_uint32),
    ]


class _Region(ctypes.Structure):
    _fields_ = [
        ("base", ctypes.c_uint64),
        ("block_stride", ctypes.c_uint64),
        ("bytes_per_block", ctypes.c_uint64),
    ]


class _Info(ctypes.Structure):
    _fields_ = [
        ("abi_version", ctypes.c_uint32),
        ("block_tokens", ctypes.c_uint32),
        ("block_bytes", ctypes.c_uint64),
        ("host_capacity_blocks", ctypes.c_uint64),
        ("host_blocks", ctypes.c_uint64),
        ("metrics_port", ctypes.c_uint16),
        ("store_decode", ctypes.c_uint8),
        ("hash_algo", ctypes.c_uint8),
    ]


class _DiskStatus(ctypes.Structure):
    _fields_ = [
        ("configured", ctypes.c_uint8),
        ("up", ctypes.c_uint8),
        ("direct_io", ctypes.c_uint8),
        ("blocks", ctypes.c_uint64),
        ("capacity_blocks", ctypes.c_uint64),
        ("capacity_bytes", ctypes.c_uint64),
        ("recovered_blocks", ctypes.c_uint64),
        ("recovery_dropped", ctypes.c_uint64),
        ("pending_writes", ctypes.c_uint64),
        ("writing_blocks", ctypes.c_uint64),
        ("free_blocks", ctypes.c_uint64),
        ("consistent", ctypes.c_uint8),
    ]


class _PoolState(ctypes.Structure):
    _fields_ = [
        ("num_blocks", ctypes.c_uint64),
        ("free", ctypes.c_uint64),
        ("cached", ctypes.c_uint64),
        ("allocated", ctypes.c_uint64),
        ("freed", ctypes.c_uint64),
        ("hits", ctypes.c_uint64),
        ("evictions", ctypes.c_uint64),
    ]


POOL_NONE = 0xFFFFFFFF
POOL_DISAGREEMENT_KINDS = ("allocated_ids", "eviction_victims", "prefix_hits", "free_count")


class _TokenRows(ctypes.Structure):
    _fields_ = [
        ("region", ctypes.c_uint32),
        ("is_key", ctypes.c_uint32),
        ("offset", ctypes.c_uint64),
        ("token_stride", ctypes.c_uint64),
        ("head_stride", ctypes.c_uint64),
        ("heads", ctypes.c_uint32),
        ("row_bytes", ctypes.c_uint32),
        ("elem_stride", ctypes.c_uint64),
    ]


class _TokenSource(ctypes.Structure):
    _fields_ = [("block", ctypes.c_uint32), ("slot", ctypes.c_uint32), ("delta", ctypes.c_int32)]


TOKEN_SOURCE_BYTES = ctypes.sizeof(_TokenSource)


class _Rope(ctypes.Structure):
    _fields_ = [
        ("dtype", ctypes.c_uint32),
        ("head_dim", ctypes.c_uint32),
        ("rot_dim", ctypes.c_uint32),
        ("neox", ctypes.c_uint32),
        ("base", ctypes.c_float),
        ("inv_freq", ctypes.POINTER(ctypes.c_float)),
    ]


class _PlanSummary(ctypes.Structure):
    _fields_ = [
        ("target_len", ctypes.c_uint32),
        ("reused_tokens", ctypes.c_uint32),
        ("recompute_tokens", ctypes.c_uint32),
        ("n_runs", ctypes.c_uint32),
        ("n_recompute", ctypes.c_uint32),
        ("source_blocks", ctypes.c_uint32),
        ("coverage", ctypes.c_float),
        ("estimate", ctypes.c_float),
    ]


class _Run(ctypes.Structure):
    _fields_ = [("target", ctypes.c_uint32), ("source", ctypes.c_uint32), ("len", ctypes.c_uint32)]


class _Range(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint32), ("end", ctypes.c_uint32)]


class _PqParams(ctypes.Structure):
    _fields_ = [
        ("budget", ctypes.c_double),
        ("sink", ctypes.c_uint32),
        ("subspaces", ctypes.c_uint32),
        ("bits", ctypes.c_uint32),
        ("train_sample", ctypes.c_uint32),
    ]


class _PqInfo(ctypes.Structure):
    _fields_ = [
        ("layers", ctypes.c_uint32),
        ("kv_heads", ctypes.c_uint32),
        ("head_dim", ctypes.c_uint32),
        ("value_dim", ctypes.c_uint32),
        ("tokens", ctypes.c_uint64),
        ("bytes", ctypes.c_uint64),
    ]


def _f32(obj, n: int, what: str):
    """A pointer to ``n`` contiguous float32 values of ``obj`` (a numpy array, a
    torch CPU tensor or an ``array.array('f')``), and the object that keeps them."""
    if hasattr(obj, "numpy") and hasattr(obj, "is_contiguous"):  # torch
        obj = obj.detach().contiguous().numpy()
    if hasattr(obj, "ctypes") and hasattr(obj, "dtype"):  # numpy
        if str(obj.dtype) != "float32" or not obj.flags["C_CONTIGUOUS"]:
            raise TierKVError(1, f"{what}: a C-contiguous float32 array is needed, not {obj.dtype}")
        if obj.size != n:
            raise TierKVError(1, f"{what}: {obj.size} values, the shape needs {n}")
        return obj.ctypes.data, obj
    arr = obj if isinstance(obj, array.array) and obj.typecode == "f" else array.array("f", obj)
    if len(arr) != n:
        raise TierKVError(1, f"{what}: {len(arr)} values, the shape needs {n}")
    return arr.buffer_info()[0], arr


def _rope(dtype: int, head_dim: int, rot_dim: int, base: float, neox: bool) -> _Rope:
    return _Rope(dtype, head_dim, rot_dim, 1 if neox else 0, base, None)


def find_library() -> str:
    """``TIERKV_LIB`` if set, else ``libtierkv.so`` next to this package."""
    env = os.environ.get("TIERKV_LIB")
    if env:
        if not os.path.isfile(env):
            raise TierKVError(1, f"TIERKV_LIB={env!r} is not a file")
        return env
    here = Path(__file__).resolve().parent / "libtierkv.so"
    if here.is_file():
        return str(here)
    raise TierKVError(
        4,
        "libtierkv.so not found: set TIERKV_LIB to its path, or install the package "
        "with the library copied next to it (scripts/install-vllm-connector.sh)",
    )


_LIBS: dict[str, ctypes.CDLL] = {}


def _load(path: str) -> ctypes.CDLL:
    if path in _LIBS:
        return _LIBS[path]
    lib = ctypes.CDLL(path)
    u64p, szp = ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_size_t)
    u32p = ctypes.POINTER(ctypes.c_uint32)
    hp, vp, u8p = ctypes.POINTER(_Hash), ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint8)
    sigs = {
        "tierkv_abi_version": ([], ctypes.c_uint32),
        "tierkv_last_error": ([], ctypes.c_char_p),
        "tierkv_manager_create": ([ctypes.POINTER(_Params), ctypes.POINTER(vp)], ctypes.c_int),
        "tierkv_manager_destroy": ([vp], ctypes.c_int),
        "tierkv_manager_info": ([vp, ctypes.POINTER(_Info)], ctypes.c_int),
        "tierkv_hash_tokens": ([vp, hp, vp, ctypes.c_size_t, hp, ctypes.c_size_t, szp], ctypes.c_int),
        "tierkv_lookup": ([vp, hp, ctypes.c_size_t, u8p, szp], ctypes.c_int),
        "tierkv_lookup_flags": ([vp, hp, ctypes.c_size_t, ctypes.c_uint32, u8p, szp], ctypes.c_int),
        "tierkv_record_error": ([vp, ctypes.c_uint32, ctypes.c_int32], ctypes.c_int),
        "tierkv_register_layout": ([vp, ctypes.POINTER(_Region), ctypes.c_size_t, ctypes.c_uint64], ctypes.c_int),
        "tierkv_store_blocks": ([vp, hp, u64p, ctypes.c_size_t, u8p], ctypes.c_int),
        "tierkv_load_blocks": ([vp, hp, u64p, ctypes.c_size_t, u8p, szp], ctypes.c_int),
        "tierkv_metrics_text": ([vp, ctypes.c_char_p, ctypes.c_size_t, szp], ctypes.c_int),
        "tierkv_disk_status": ([vp, ctypes.POINTER(_DiskStatus)], ctypes.c_int),
        "tierkv_disk_flush": ([vp, ctypes.c_uint64, u8p], ctypes.c_int),
        "tierkv_semantic_enabled": ([vp, u8p], ctypes.c_int),
        "tierkv_semantic_prefix_policy": (
            [vp, ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(ctypes.c_uint32)],
            ctypes.c_int,
        ),
        "tierkv_semantic_insert": ([vp, vp, ctypes.c_size_t, u8p], ctypes.c_int),
        "tierkv_semantic_lookup": (
            [vp, vp, ctypes.c_size_t, ctypes.c_size_t, ctypes.POINTER(vp), ctypes.POINTER(ctypes.c_int32)],
            ctypes.c_int,
        ),
        "tierkv_plan_destroy": ([vp], None),
        "tierkv_plan_summary": ([vp, ctypes.POINTER(_PlanSummary)], ctypes.c_int),
        "tierkv_plan_full": (
            [vp, ctypes.POINTER(_Run), ctypes.c_size_t, ctypes.POINTER(_Range), ctypes.c_size_t],
            ctypes.c_int,
        ),
        "tierkv_plan_approximate_prefix": (
            [vp, vp, ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32)],
            ctypes.c_int,
        ),
        "tierkv_plan_token_map": (
            [vp, vp, ctypes.c_uint32, ctypes.c_uint32, hp, ctypes.c_size_t, szp, vp],
            ctypes.c_int,
        ),
        "tierkv_register_token_layout": (
            [vp, ctypes.POINTER(_TokenRows), ctypes.c_size_t, ctypes.POINTER(_Rope)],
            ctypes.c_int,
        ),
        "tierkv_load_tokens": ([vp, hp, ctypes.c_size_t, vp, u64p, ctypes.c_size_t, u8p], ctypes.c_int),
        "tierkv_rerotate_keys": ([ctypes.POINTER(_Rope), vp, ctypes.c_size_t, vp], ctypes.c_int),
        "tierkv_register_device_layout": (
            [vp, ctypes.POINTER(_Region), ctypes.c_size_t, ctypes.c_uint64, ctypes.c_uint32],
            ctypes.c_int,
        ),
        "tierkv_load_blocks_layerwise": (
            [vp, hp, u64p, ctypes.c_size_t, ctypes.c_uint32, u8p, szp, ctypes.POINTER(vp)],
            ctypes.c_int,
        ),
        "tierkv_layer_load_wait_stream": ([vp, ctypes.c_uint32, vp], ctypes.c_int),
        "tierkv_layer_load_wait": ([vp, ctypes.c_uint32], ctypes.c_int),
        "tierkv_layer_load_destroy": ([vp], None),
        "tierkv_events_start": ([vp, ctypes.c_size_t], ctypes.c_int),
        "tierkv_pool_allocate": ([vp, ctypes.c_size_t, u32p], ctypes.c_int),
        "tierkv_pool_free": ([vp, u32p, ctypes.c_size_t], ctypes.c_int),
        "tierkv_pool_fork": ([vp, u32p, ctypes.c_size_t], ctypes.c_int),
        "tierkv_pool_touch": ([vp, u32p, ctypes.c_size_t], ctypes.c_int),
        "tierkv_pool_register": ([vp, ctypes.c_uint32, hp, u8p], ctypes.c_int),
        "tierkv_pool_acquire_cached": ([vp, hp, ctypes.c_size_t, u32p, szp], ctypes.c_int),
        "tierkv_pool_find": ([vp, hp, ctypes.c_size_t, u32p], ctypes.c_int),
        "tierkv_pool_register_many": ([vp, u32p, hp, ctypes.c_size_t, u8p], ctypes.c_int),
        "tierkv_pool_forget": ([vp, u32p, ctypes.c_size_t, szp], ctypes.c_int),
        "tierkv_pool_reset_prefix_cache": ([vp, szp], ctypes.c_int),
        "tierkv_pool_state": ([vp, ctypes.POINTER(_PoolState)], ctypes.c_int),
        "tierkv_pool_shadow_record": ([vp, ctypes.c_uint64, u64p], ctypes.c_int),
        "tierkv_name_blocks": ([vp, hp, u64p, u64p, ctypes.c_size_t], ctypes.c_int),
        "tierkv_take_events": ([vp, u8p, ctypes.c_size_t, szp, szp, szp], ctypes.c_int),
        "tierkv_pq_params": ([vp, ctypes.POINTER(_PqParams)], ctypes.c_int),
        "tierkv_pq_build": (
            [vp, vp, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_size_t, ctypes.c_uint32,
             ctypes.POINTER(_PqParams), ctypes.POINTER(vp)],
            ctypes.c_int,
        ),
        "tierkv_pq_build_blocks": (
            [vp, hp, ctypes.c_size_t, ctypes.c_size_t, ctypes.POINTER(_PqParams), ctypes.POINTER(vp)],
            ctypes.c_int,
        ),
        "tierkv_pq_append": ([vp, vp, ctypes.c_size_t], ctypes.c_int),
        "tierkv_pq_topk": (
            [vp, ctypes.c_uint32, vp, ctypes.c_uint32, ctypes.c_double, u32p, ctypes.c_size_t, szp],
            ctypes.c_int,
        ),
        "tierkv_pq_info": ([vp, ctypes.POINTER(_PqInfo)], ctypes.c_int),
        "tierkv_pq_set_cache": ([vp, ctypes.c_uint64], ctypes.c_int),
        "tierkv_pq_gather": (
            [vp, vp, ctypes.c_uint32, u32p, szp, ctypes.c_size_t, vp, vp, szp],
            ctypes.c_int,
        ),
        "tierkv_pq_destroy": ([vp], None),
    }
    lib.tierkv_abi_version.argtypes, lib.tierkv_abi_version.restype = [], ctypes.c_uint32
    version = lib.tierkv_abi_version()
    if version != ABI_VERSION:
        raise TierKVError(2, f"{path} has C ABI {version}, this binding needs {ABI_VERSION}")
    for name, (args, res) in sigs.items():
        try:
            fn = getattr(lib, name)
        except AttributeError:
            # Same ABI version, older build: exports are only ever added within one.
            raise TierKVError(2, f"{path} lacks {name}: it is older than this binding (rebuild or reinstall it)") from None
        fn.argtypes, fn.restype = args, res
    _LIBS[path] = lib
    return lib


def _same_length(n: int, block_ids: Sequence[int]) -> None:
    # A short id list would be zero-filled by ctypes: every missing block would
    # silently become block 0.
    if len(block_ids) != n:
        raise ValueError(f"{n} block identities but {len(block_ids)} block ids")


def _hash_array(hashes: bytes):
    if len(hashes) % HASH_BYTES:
        raise ValueError(f"block identities are {HASH_BYTES} bytes each; got {len(hashes)} bytes")
    n = len(hashes) // HASH_BYTES
    if n == 0:
        return None, 0
    return (_Hash * n).from_buffer_copy(hashes), n


class TierKV:
    """One tierkv manager (``TierkvManager*``)."""

    def __init__(
        self,
        block_tokens: int,
        block_bytes: int,
        namespace: str | None = None,
        pool_blocks: int = 0,
        lib_path: str | None = None,
        exporter: bool = True,
        disk_reader: bool = False,
        pool_engine_order: bool = False,
    ):
        self._lib = _load(lib_path or find_library())
        self._h = ctypes.c_void_p()
        ns = namespace.encode() if namespace is not None else None
        flags = (
            (0 if exporter else CREATE_NO_EXPORTER)
            | (CREATE_DISK_READER if disk_reader else 0)
            | (CREATE_POOL_ENGINE_ORDER if pool_engine_order else 0)
        )
        params = _Params(block_tokens, pool_blocks, block_bytes, ns, flags)
        self._check(self._lib.tierkv_manager_create(ctypes.byref(params), ctypes.byref(self._h)))
        self.block_tokens = block_tokens
        self.block_bytes = block_bytes

    def _check(self, status: int) -> None:
        if status != 0:
            msg = self._lib.tierkv_last_error() or b""
            raise TierKVError(status, msg.decode(errors="replace"))

    def close(self) -> None:
        if self._h:
            self._check(self._lib.tierkv_manager_destroy(self._h))
            self._h = ctypes.c_void_p()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def info(self) -> dict:
        i = _Info()
        self._check(self._lib.tierkv_manager_info(self._h, ctypes.byref(i)))
        return {name: getattr(i, name) for name, _ in _Info._fields_}

    def hash_tokens(self, tokens: Sequence[int], parent: bytes | None = None) -> bytes:
        """Identities of the full blocks of ``tokens`` (16 bytes each)."""
        toks = array.array("I", tokens)
        n_out = len(toks) // self.block_tokens
        out = (_Hash * max(n_out, 1))()
        got = ctypes.c_size_t()
        par = _Hash.from_buffer_copy(parent) if parent else None
        addr, _ = toks.buffer_info()
        self._check(
            self._lib.tierkv_hash_tokens(
                self._h,
                ctypes.byref(par) if par is not None else None,
                addr,
                len(toks),
                out,
                n_out,
                ctypes.byref(got),
            )
        )
        return bytes(out)[: got.value * HASH_BYTES]

    def lookup(self, hashes: bytes) -> int:
        """Number of leading blocks held by a tier."""
        return len(self.lookup_tiers(hashes))

    def lookup_tiers(self, hashes: bytes, repeat: bool = False) -> list[int]:
        """The tier (``TIER_*``) of each leading block held by a tier. ``repeat``: a
        request's lookup asked again (counted as a call, not as another request)."""
        return self.lookup_pending(hashes, repeat)[0]

    def lookup_pending(self, hashes: bytes, repeat: bool = False) -> tuple[list[int], bool]:
        """``lookup_tiers``, and whether a tier is still finding out about the block
        after the hits (the remote tier probing its store): ask again later. A
        pending lookup is not counted."""
        arr, n = _hash_array(hashes)
        if n == 0:
            return [], False
        hits = ctypes.c_size_t()
        tiers = (ctypes.c_uint8 * n)()
        flags = LOOKUP_REPEAT if repeat else 0
        self._check(self._lib.tierkv_lookup_flags(self._h, arr, n, flags, tiers, ctypes.byref(hits)))
        h = hits.value
        return list(tiers[:h]), h < n and tiers[h] == TIER_PENDING

    def record_error(self, op: int, status: int) -> None:
        """Counts an error the adapter degraded (``tierkv_adapter_errors_total``)."""
        self._lib.tierkv_record_error(self._h, op, status)

    def disk_status(self) -> dict:
        """The disk tier's state; ``problem`` holds why it is not serving, if so."""
        st = _DiskStatus()
        rc = self._lib.tierkv_disk_status(self._h, ctypes.byref(st))
        out = {name: getattr(st, name) for name, _ in _DiskStatus._fields_}
        out["problem"] = None
        if rc != 0:
            if STATUS_NAMES.get(rc) != "UNAVAILABLE":
                self._check(rc)
            out["problem"] = (self._lib.tierkv_last_error() or b"").decode(errors="replace")
        return out

    def disk_flush(self, timeout_s: float = 30.0) -> bool:
        """Waits for queued lower-tier writes (disk, remote); True when none is left."""
        idle = ctypes.c_uint8()
        self._check(self._lib.tierkv_disk_flush(self._h, int(timeout_s * 1000), ctypes.byref(idle)))
        return bool(idle.value)

    def register_layout(self, regions: Iterable[tuple[int, int, int]], num_blocks: int) -> None:
        regs = [_Region(*r) for r in regions]
        arr = (_Region * len(regs))(*regs)
        self._check(self._lib.tierkv_register_layout(self._h, arr, len(regs), num_blocks))

    def register_device_layout(self, regions: Iterable[tuple[int, int, int]], num_blocks: int, device: int) -> None:
        """KV in the GPU memory of CUDA device ``device`` (bases are device
        addresses). Raises ``TierKVError`` with status ``UNAVAILABLE`` when the
        library has no GPU support or no driver."""
        regs = [_Region(*r) for r in regions]
        arr = (_Region * len(regs))(*regs)
        self._check(self._lib.tierkv_register_device_layout(self._h, arr, len(regs), num_blocks, device))

    def load_blocks_layerwise(
        self, hashes: bytes, block_ids: Sequence[int], layers: int
    ) -> tuple[list[int], "LayerLoad"]:
        """Verifies every block into staging (results now), then copies layer by
        layer; wait per layer on the returned load (device layout only)."""
        arr, n = _hash_array(hashes)
        _same_length(n, block_ids)
        if arr is None:
            arr = (_Hash * 1)()  # no blocks: still a load (events only), never null
        ids = (ctypes.c_uint64 * max(n, 1))(*block_ids)
        res = (ctypes.c_uint8 * max(n, 1))()
        loaded, handle = ctypes.c_size_t(), ctypes.c_void_p()
        self._check(
            self._lib.tierkv_load_blocks_layerwise(
                self._h, arr, ids, n, layers, res, ctypes.byref(loaded), ctypes.byref(handle)
            )
        )
        return list(res)[:n], LayerLoad(self, handle)

    def store_blocks(self, hashes: bytes, block_ids: Sequence[int]) -> list[int]:
        arr, n = _hash_array(hashes)
        _same_length(n, block_ids)
        if n == 0:
            return []
        ids = (ctypes.c_uint64 * n)(*block_ids)
        res = (ctypes.c_uint8 * n)()
        self._check(self._lib.tierkv_store_blocks(self._h, arr, ids, n, res))
        return list(res)

    def load_blocks(self, hashes: bytes, block_ids: Sequence[int]) -> list[int]:
        arr, n = _hash_array(hashes)
        _same_length(n, block_ids)
        if n == 0:
            return []
        ids = (ctypes.c_uint64 * n)(*block_ids)
        res = (ctypes.c_uint8 * n)()
        loaded = ctypes.c_size_t()
        self._check(self._lib.tierkv_load_blocks(self._h, arr, ids, n, res, ctypes.byref(loaded)))
        return list(res)

    # --------------------------------------------------------------- engine pool
    # The engine block pool (created with pool_blocks > 0): vLLM's BlockPool
    # semantics over block ids; identities are 16-byte hashes as everywhere here.

    def _ids(self, ids: Sequence[int]):
        return (ctypes.c_uint32 * max(len(ids), 1))(*ids)

    def pool_allocate(self, n: int) -> list[int]:
        out = (ctypes.c_uint32 * max(n, 1))()
        self._check(self._lib.tierkv_pool_allocate(self._h, n, out))
        return list(out)[:n]

    def pool_free(self, ids: Sequence[int]) -> None:
        self._check(self._lib.tierkv_pool_free(self._h, self._ids(ids), len(ids)))

    def pool_fork(self, ids: Sequence[int]) -> None:
        self._check(self._lib.tierkv_pool_fork(self._h, self._ids(ids), len(ids)))

    def pool_touch(self, ids: Sequence[int]) -> None:
        """References exactly these blocks (a prefix hit on blocks ``pool_find``
        named); free ones leave the free list."""
        self._check(self._lib.tierkv_pool_touch(self._h, self._ids(ids), len(ids)))

    def pool_register(self, block_id: int, hash16: bytes) -> bool:
        """Whether ``block_id`` is now the block found for ``hash16``."""
        arr, n = _hash_array(hash16)
        if n != 1:
            raise ValueError("one identity")
        first = ctypes.c_uint8()
        self._check(self._lib.tierkv_pool_register(self._h, block_id, arr, ctypes.byref(first)))
        return bool(first.value)

    def pool_register_many(self, block_ids: Sequence[int], hashes: bytes) -> list[bool]:
        """``pool_register`` of many blocks in one call."""
        arr, n = _hash_array(hashes)
        _same_length(n, block_ids)
        if n == 0:
            return []
        out = (ctypes.c_uint8 * n)()
        self._check(self._lib.tierkv_pool_register_many(self._h, self._ids(block_ids), arr, n, out))
        return [bool(x) for x in out]

    def pool_acquire_cached(self, hashes: bytes) -> list[int]:
        arr, n = _hash_array(hashes)
        out = (ctypes.c_uint32 * max(n, 1))()
        got = ctypes.c_size_t()
        self._check(self._lib.tierkv_pool_acquire_cached(self._h, arr, n, out, ctypes.byref(got)))
        return list(out)[: got.value]

    def pool_find(self, hashes: bytes) -> list[int | None]:
        arr, n = _hash_array(hashes)
        out = (ctypes.c_uint32 * max(n, 1))()
        self._check(self._lib.tierkv_pool_find(self._h, arr, n, out))
        return [None if i == POOL_NONE else i for i in list(out)[:n]]

    def pool_forget(self, ids: Sequence[int]) -> int:
        dropped = ctypes.c_size_t()
        self._check(self._lib.tierkv_pool_forget(self._h, self._ids(ids), len(ids), ctypes.byref(dropped)))
        return dropped.value

    def pool_reset_prefix_cache(self) -> int:
        dropped = ctypes.c_size_t()
        self._check(self._lib.tierkv_pool_reset_prefix_cache(self._h, ctypes.byref(dropped)))
        return dropped.value

    def pool_state(self) -> dict:
        st = _PoolState()
        self._check(self._lib.tierkv_pool_state(self._h, ctypes.byref(st)))
        return {name: getattr(st, name) for name, _ in _PoolState._fields_}

    def pool_shadow_record(self, ops: int, disagreements: Sequence[int]) -> None:
        """Adds a shadow comparison's counts to the store-wide counters."""
        if len(disagreements) != len(POOL_DISAGREEMENT_KINDS):
            raise ValueError(f"{len(POOL_DISAGREEMENT_KINDS)} kinds")
        d = (ctypes.c_uint64 * len(disagreements))(*disagreements)
        self._check(self._lib.tierkv_pool_shadow_record(self._h, ops, d))

    # ------------------------------------------------------------------ KV events

    def events_start(self, capacity: int = 0) -> None:
        """Starts recording KV events of this manager's tiers (docs/events.md)."""
        self._check(self._lib.tierkv_events_start(self._h, capacity))

    def name_blocks(self, hashes: bytes, keys: Sequence[int], parents: Sequence[int] | None = None) -> None:
        """The engine's 64-bit keys (and parents' keys, 0: none) for ``hashes``:
        the names the blocks' KV events carry. Key 0 names nothing."""
        arr, n = _hash_array(hashes)
        _same_length(n, keys)
        if parents is not None:
            _same_length(n, parents)
        if n == 0:
            return
        ks = (ctypes.c_uint64 * n)(*keys)
        ps = (ctypes.c_uint64 * n)(*parents) if parents is not None else None
        self._check(self._lib.tierkv_name_blocks(self._h, arr, ks, ps, n))

    def take_events(self, max_batches: int = 64) -> list[bytes]:
        """The queued KV events as msgpack ``KVEventBatch`` buffers (vLLM's wire
        format; decode with ``msgspec.msgpack.decode(b, type=KVEventBatch)``)."""
        out: list[bytes] = []
        size = 1 << 16
        buf = (ctypes.c_uint8 * size)()
        length, n, rest = ctypes.c_size_t(), ctypes.c_size_t(), ctypes.c_size_t()
        for _ in range(max_batches):
            self._check(
                self._lib.tierkv_take_events(
                    self._h, buf, size, ctypes.byref(length), ctypes.byref(n), ctypes.byref(rest)
                )
            )
            if n.value:
                out.append(bytes(buf[: length.value]))
            if not rest.value or not n.value:
                break
        return out

    def metrics_text(self) -> str:
        need = ctypes.c_size_t()
        size = 16384
        while True:
            buf = ctypes.create_string_buffer(size)
            st = self._lib.tierkv_metrics_text(self._h, buf, size, ctypes.byref(need))
            if st == STATUS_BUFFER_TOO_SMALL:
                size = need.value
                continue
            self._check(st)
            return buf.value.decode()

    # ------------------------------------------------------------ semantic sharing

    def semantic_enabled(self) -> bool:
        """Whether semantic sharing is on for this manager's namespace."""
        on = ctypes.c_uint8()
        self._check(self._lib.tierkv_semantic_enabled(self._h, ctypes.byref(on)))
        return bool(on.value)

    def semantic_prefix_policy(self) -> tuple[int, int]:
        """What a prefix-only engine may be served from a near-duplicate:
        ``(differing tokens substituted, largest position shift)``
        (``TIERKV_SEMANTIC_SUBSTITUTE``, ``TIERKV_SEMANTIC_PREFIX_SHIFT``). ``(0, 0)``:
        nothing beyond the exact hit."""
        sub, shift = ctypes.c_uint32(), ctypes.c_uint32()
        self._check(self._lib.tierkv_semantic_prefix_policy(self._h, ctypes.byref(sub), ctypes.byref(shift)))
        return sub.value, shift.value

    def semantic_insert(self, tokens: Sequence[int]) -> bool:
        """Indexes a prompt whose full blocks were stored; False when sharing is off."""
        toks = array.array("I", tokens)
        if not toks:
            return False
        done = ctypes.c_uint8()
        self._check(self._lib.tierkv_semantic_insert(self._h, toks.buffer_info()[0], len(toks), ctypes.byref(done)))
        return bool(done.value)

    def semantic_lookup(self, tokens: Sequence[int], exact_tokens: int) -> tuple["Plan | None", str]:
        """A reuse plan for ``tokens`` (or None) and the reason (``SEMANTIC_REASONS``)."""
        toks = array.array("I", tokens)
        plan = ctypes.c_void_p()
        reason = ctypes.c_int32()
        self._check(
            self._lib.tierkv_semantic_lookup(
                self._h,
                toks.buffer_info()[0] if toks else None,
                len(toks),
                exact_tokens,
                ctypes.byref(plan),
                ctypes.byref(reason),
            )
        )
        why = SEMANTIC_REASONS.get(reason.value, str(reason.value))
        return (Plan(self, plan) if plan.value else None), why

    def pq_params(self) -> dict:
        """The manager's PQ parameters (``TIERKV_PQ_*``)."""
        p = _PqParams()
        self._check(self._lib.tierkv_pq_params(self._h, ctypes.byref(p)))
        return {name: getattr(p, name) for name, _ in _PqParams._fields_}

    def _pq_params_ref(self, params: dict | None):
        """The manager's PQ parameters with ``params`` applied (None: null, theirs)."""
        if params is None:
            return None
        base = self.pq_params()
        base.update(params)
        return ctypes.byref(_PqParams(**base))

    def pq_build(self, keys, layers: int, kv_heads: int, tokens: int, head_dim: int, params: dict | None = None) -> PqIndex:
        """A PQ index of ``keys`` ``[layer][kv_head][token][head_dim]`` float32
        (post-RoPE); ``params`` (keys of ``pq_params``) override the manager's."""
        ptr, keep = _f32(keys, layers * kv_heads * tokens * head_dim, "keys")
        p = self._pq_params_ref(params)
        h = ctypes.c_void_p()
        self._check(self._lib.tierkv_pq_build(self._h, ptr, layers, kv_heads, tokens, head_dim, p, ctypes.byref(h)))
        del keep
        return PqIndex(self, h)

    def pq_build_blocks(self, hashes: bytes, tokens: int, params: dict | None = None) -> PqIndex:
        """A PQ index of the first ``tokens`` tokens of the stored blocks ``hashes``
        (keys fetched from the tiers, read through the registered token layout);
        it can ``gather``."""
        arr, n = _hash_array(hashes)
        p = self._pq_params_ref(params)
        h = ctypes.c_void_p()
        self._check(self._lib.tierkv_pq_build_blocks(self._h, arr, n, tokens, p, ctypes.byref(h)))
        return PqIndex(self, h)

    def register_token_layout(self, rows: Sequence[tuple[int, ...]], rope: _Rope) -> None:
        """``rows``: (region, is_key, offset, token_stride, head_stride, heads, row_bytes,
        elem_stride) (see ``TierkvTokenRows``)."""
        arr = (_TokenRows * len(rows))(*[_TokenRows(*r) for r in rows])
        self._check(self._lib.tierkv_register_token_layout(self._h, arr, len(rows), ctypes.byref(rope)))

    def load_tokens(self, sources: bytes, token_map: bytes, block_ids: Sequence[int]) -> list[int]:
        """Builds engine blocks from a plan's token map (``Plan.token_map``)."""
        arr, n_src = _hash_array(sources)
        n = len(block_ids)
        if n == 0:
            return []
        mp = ctypes.create_string_buffer(token_map, len(token_map))
        ids = (ctypes.c_uint64 * n)(*block_ids)
        res = (ctypes.c_uint8 * n)()
        self._check(self._lib.tierkv_load_tokens(self._h, arr, n_src, mp, ids, n, res))
        return list(res)


class PqIndex:
    """A PQ index of a request's keys (``TierkvPq*``, after PQCache), freed with
    its object or ``close``."""

    def __init__(self, tkv: "TierKV", handle: ctypes.c_void_p):
        self._tkv, self._h = tkv, handle
        self.info = self._info()

    def _info(self) -> dict:
        i = _PqInfo()
        self._tkv._check(self._tkv._lib.tierkv_pq_info(self._h, ctypes.byref(i)))
        return {name: getattr(i, name) for name, _ in _PqInfo._fields_}

    def topk(self, layer: int, queries, group: int, budget: float = 0.0) -> list[list[int]]:
        """Per KV head, the tokens layer ``layer`` attends over (sinks, top-k by PQ
        score, local window; ascending) for ``queries`` ``[kv_head][group][head_dim]``
        float32. ``budget`` 0: the index's fraction."""
        i = self.info
        heads, cap = i["kv_heads"], max(int(i["tokens"]), 1)
        ptr, keep = _f32(queries, heads * group * i["head_dim"], "queries")
        toks = (ctypes.c_uint32 * (heads * cap))()
        counts = (ctypes.c_size_t * heads)()
        self._tkv._check(
            self._tkv._lib.tierkv_pq_topk(self._h, layer, ptr, group, budget, toks, cap, counts)
        )
        del keep
        return [list(toks[h * cap : h * cap + counts[h]]) for h in range(heads)]

    def gather(self, layer: int, tokens: Sequence[Sequence[int]]):
        """Layer ``layer``'s K and V rows of ``tokens`` (per KV head, ascending, as
        ``topk`` gives them) from the stored blocks the index was built from
        (``TierKV.pq_build_blocks``), fp32: ``(k, v, rows)`` with ``k``
        ``[kv_head][capacity][head_dim]`` and ``v`` ``[kv_head][capacity][value_dim]``
        flat ``array('f')`` (capacity: the longest list) and ``rows[h]`` the rows
        written (tokens past the stored blocks end a head's rows)."""
        i = self.info
        heads, dim, vdim = i["kv_heads"], i["head_dim"], i["value_dim"]
        if len(tokens) != heads:
            raise ValueError(f"{len(tokens)} token lists for {heads} KV heads")
        cap = max(1, max(len(t) for t in tokens))
        toks = (ctypes.c_uint32 * (heads * cap))()
        counts = (ctypes.c_size_t * heads)()
        for h, t in enumerate(tokens):
            toks[h * cap : h * cap + len(t)] = list(t)
            counts[h] = len(t)
        k = array.array("f", bytes(4 * heads * cap * dim))
        v = array.array("f", bytes(4 * heads * cap * max(vdim, 1)))
        rows = (ctypes.c_size_t * heads)()
        kp = ctypes.c_void_p(k.buffer_info()[0])
        vq = ctypes.c_void_p(v.buffer_info()[0])
        self._tkv._check(
            self._tkv._lib.tierkv_pq_gather(self._tkv._h, self._h, layer, toks, counts, cap, kp, vq, rows)
        )
        return k, v, list(rows)

    def set_cache(self, nbytes: int) -> None:
        """Keeps at most ``nbytes`` of block regions in the block cache (LFU; 0
        empties it)."""
        self._tkv._check(self._tkv._lib.tierkv_pq_set_cache(self._h, nbytes))

    def append(self, keys, n: int) -> None:
        """Encodes ``n`` appended tokens, ``[layer][kv_head][n][head_dim]`` float32."""
        i = self.info
        ptr, keep = _f32(keys, i["layers"] * i["kv_heads"] * n * i["head_dim"], "keys")
        self._tkv._check(self._tkv._lib.tierkv_pq_append(self._h, ptr, n))
        del keep
        self.info = self._info()

    def close(self) -> None:
        if self._h:
            self._tkv._lib.tierkv_pq_destroy(self._h)
            self._h = None

    def __del__(self):
        self.close()


class LayerLoad:
    """A layer-by-layer load in flight (``TierkvLayerLoad*``); ``close`` (or the
    object's end) waits for its last layer and frees it."""

    def __init__(self, tkv: TierKV, handle: ctypes.c_void_p):
        self._tkv, self._h = tkv, handle

    def wait_stream(self, layer: int, stream: int) -> None:
        """Makes CUDA stream ``stream`` (``torch.cuda.current_stream().cuda_stream``)
        wait for ``layer`` without blocking the host."""
        self._tkv._check(self._tkv._lib.tierkv_layer_load_wait_stream(self._h, layer, stream))

    def wait(self, layer: int) -> None:
        """Blocks until ``layer`` is in GPU memory."""
        self._tkv._check(self._tkv._lib.tierkv_layer_load_wait(self._h, layer))

    def close(self) -> None:
        if self._h:
            self._tkv._lib.tierkv_layer_load_destroy(self._h)
            self._h = None

    def __del__(self):
        self.close()


class Plan:
    """A semantic reuse plan (``TierkvPlan*``), freed with its object."""

    def __init__(self, tkv: TierKV, handle: ctypes.c_void_p):
        self._tkv, self._h = tkv, handle

    def __del__(self):
        if self._h:
            self._tkv._lib.tierkv_plan_destroy(self._h)
            self._h = None

    def summary(self) -> dict:
        s = _PlanSummary()
        self._tkv._check(self._tkv._lib.tierkv_plan_summary(self._h, ctypes.byref(s)))
        return {name: getattr(s, name) for name, _ in _PlanSummary._fields_}

    def full(self) -> tuple[list[tuple[int, int, int]], list[tuple[int, int]]]:
        """(runs as (target, source, len), recompute ranges as (start, end))."""
        s = self.summary()
        runs = (_Run * max(s["n_runs"], 1))()
        rec = (_Range * max(s["n_recompute"], 1))()
        self._tkv._check(self._tkv._lib.tierkv_plan_full(self._h, runs, s["n_runs"], rec, s["n_recompute"]))
        return (
            [(r.target, r.source, r.len) for r in runs[: s["n_runs"]]],
            [(r.start, r.end) for r in rec[: s["n_recompute"]]],
        )

    def approximate_prefix(self, exact_tokens: int, limit: int) -> int:
        out = ctypes.c_uint32()
        self._tkv._check(
            self._tkv._lib.tierkv_plan_approximate_prefix(self._tkv._h, self._h, exact_tokens, limit, ctypes.byref(out))
        )
        return out.value

    def token_map(self, first_block: int, n_blocks: int) -> tuple[bytes, bytes]:
        """(source identities, token map) for target blocks [first, first + n)."""
        n = n_blocks * self._tkv.block_tokens
        srcs = (_Hash * max(n, 1))()
        mp = (_TokenSource * max(n, 1))()
        got = ctypes.c_size_t()
        self._tkv._check(
            self._tkv._lib.tierkv_plan_token_map(
                self._tkv._h, self._h, first_block, n_blocks, srcs, n, ctypes.byref(got), mp
            )
        )
        return bytes(srcs)[: got.value * HASH_BYTES], bytes(mp)[: n * TOKEN_SOURCE_BYTES]


def rerotate_keys(
    keys: bytearray, deltas: Sequence[int], dtype: int, head_dim: int, rot_dim: int, base: float, neox: bool = True,
    lib_path: str | None = None,
) -> None:
    """Re-rotates rows of ``head_dim`` keys in place, row i by ``deltas[i]`` positions."""
    lib = _load(lib_path or find_library())
    rope = _rope(dtype, head_dim, rot_dim, base, neox)
    buf = (ctypes.c_uint8 * len(keys)).from_buffer(keys)
    d = array.array("i", deltas)
    status = lib.tierkv_rerotate_keys(ctypes.byref(rope), buf, len(d), d.buffer_info()[0])
    if status != 0:
        raise TierKVError(status, (lib.tierkv_last_error() or b"").decode(errors="replace"))
