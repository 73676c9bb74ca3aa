"""The remote tier (G4) end to end in real vLLM (CPU, SmolLM2-135M).

Two engine processes stand for two machines: separate host tiers (different store
names and shared-memory directories), no disk tier, one Redis cluster of three
masters (Debian's redis-server, started by ``scripts/redis-cluster.sh``). Proves:

(a) prompts run on machine A are served on machine B from the remote tier, greedy
    outputs token-identical to a run without tierkv;
(b) with one master killed before B's requests, outputs stay identical and the
    writes to its slots are counted as failed;
(c) with bytes flipped in the stored values (``SETRANGE``), checksum failures are
    counted and outputs stay identical.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import prompts as prompt_sets  # noqa: E402
# The module's fixtures: its temporary directory and set B without any cache.
from test_vllm_e2e import baseline, tmp  # noqa: E402,F401
from test_vllm_e2e import ROOT, SHADOW, driver, finish, loaded_tokens, metric, run, shared_prefix_tokens  # noqa: E402

SCRIPT = ROOT / "scripts" / "redis-cluster.sh"
BLOCK = 32

pytestmark = pytest.mark.skipif(SHADOW, reason="the remote tier does not touch the engine pool (shadow pass)")


class Cluster:
    """A 3-master cluster of this module's own, stopped at the end."""

    def __init__(self, d: Path):
        self.dir = d
        out = subprocess.run(
            [str(SCRIPT), "start", str(d)],
            env={**os.environ, "TIERKV_REDIS_MAXMEMORY": "512mb"},
            check=True,
            capture_output=True,
            text=True,
        )
        self.url = out.stdout.strip().splitlines()[-1]
        self.ports = [int(p) for p in (d / "ports").read_text().split()]

    def cli(self, port: int, *args: str) -> str:
        return subprocess.run(
            ["redis-cli", "-p", str(port), *args], check=True, capture_output=True, text=True
        ).stdout.strip()

    def keys(self, prefix: str) -> list[tuple[int, str]]:
        out = []
        for p in self.ports:
            for k in self.cli(p, "--scan", "--pattern", f"{prefix}:*").splitlines():
                out.append((p, k))
        return out

    def kill(self, port: int) -> None:
        pid = int((self.dir / str(port) / "redis.pid").read_text())
        os.kill(pid, 9)

    def stop(self) -> None:
        subprocess.run([str(SCRIPT), "stop", str(self.dir)], check=False)


def machine(tmp: Path, url: str, prefix: str) -> tuple[str, dict]:
    """A fresh machine: its own store name and shared-memory directory."""
    name = f"e2e-remote-{uuid.uuid4().hex[:8]}"
    shm = tmp / f"{name}-shm"
    shm.mkdir()
    env = {
        "TIERKV_SHM_DIR": str(shm),
        "TIERKV_REMOTE_URL": url,
        "TIERKV_REMOTE_ADMIT": "always",
        "TIERKV_REMOTE_PREFIX": prefix,
    }
    return name, env


def remote(r: dict, result: str) -> float:
    return metric(r["metrics"], "tierkv_remote_loads_total", f'result="{result}"')


def fill(tmp: Path, cluster: Cluster, prefix: str) -> dict:
    """Machine A runs set A; its blocks are in the cluster when it exits."""
    name, env = machine(tmp, cluster.url, prefix)
    first = run(tmp, "tierkv", prompt_sets.set_a(), name, extra_env=env)
    assert metric(first["metrics"], "tierkv_tier_up", 'tier="remote"') == 1
    assert len(cluster.keys(prefix)) >= 10, "machine A's blocks did not reach the cluster"
    return first


@contextlib.contextmanager
def filled(tmp: Path, prefix: str):
    """A cluster of the test's own after machine A ran set A into it, and a fresh
    machine B's store name and environment; the cluster is stopped after."""
    cluster = Cluster(tmp / f"cluster-{prefix}")
    try:
        first = fill(tmp, cluster, prefix)
        name, env = machine(tmp, cluster.url, prefix)
        yield cluster, first, name, env
    finally:
        cluster.stop()


def test_a_blocks_computed_on_one_machine_are_served_on_another(tmp, baseline):
    with filled(tmp, "e2e-a") as (_, first, name, env):
        second = run(tmp, "tierkv", prompt_sets.set_b(), name, extra_env=env)
        shared = shared_prefix_tokens(first["prompts"], second["prompts"])
        hits = remote(second, "hit")
        assert hits >= 10, f"only {hits} blocks came from the remote tier"
        # Each shared block comes from the cluster once, then from B's host tier.
        got = loaded_tokens(second) + hits * BLOCK
        assert got >= 0.9 * shared, f"only {got} of {shared} shared prefix tokens came from tierkv"
        assert second["outputs"] == baseline["outputs"]
        assert metric(second["metrics"], "tierkv_checksum_failures_total", 'tier="remote"') == 0


def test_b_a_master_killed_costs_misses_never_a_wrong_token(tmp, baseline):
    with filled(tmp, "e2e-b") as (cluster, _, name, env):
        go = tmp / f"{name}.go"
        # Machine B starts (its remote tier connects), then a master dies before
        # its requests.
        handle = driver(tmp, "tierkv", prompt_sets.set_b(), name, ("--wait-for", str(go)), extra_env=env)
        log = Path(handle[2].name)
        end = time.time() + 600
        while "tierkv namespace" not in log.read_text():
            assert handle[0].poll() is None, log.read_text()[-3000:]
            assert time.time() < end, "machine B did not start"
            time.sleep(1)
        cluster.kill(cluster.ports[1])
        go.touch()
        second = finish(handle)
        assert second["outputs"] == baseline["outputs"]
        assert metric(second["metrics"], "tierkv_tier_up", 'tier="remote"') == 1
        # B's blocks that hash to the dead master's slots cannot be written:
        # counted, never an engine error (lookup failures count in the scheduler's
        # process, which has no exporter).
        failed = metric(second["metrics"], "tierkv_remote_writes_total", 'result="error"')
        assert failed > 0, "writes to the dead master were not counted"


def test_c_flipped_bytes_in_the_store_are_counted_and_recomputed(tmp, baseline):
    with filled(tmp, "e2e-c") as (cluster, _, name, env):
        for port, key in cluster.keys("e2e-c"):
            cluster.cli(port, "setrange", key, "4097", "\x5a\x5a")
        second = run(tmp, "tierkv", prompt_sets.set_b(), name, extra_env=env)
        failures = metric(second["metrics"], "tierkv_checksum_failures_total", 'tier="remote"')
        assert failures > 0, "flipped values were not detected"
        assert remote(second, "hit") == 0, "a flipped value was served"
        assert second["outputs"] == baseline["outputs"]
