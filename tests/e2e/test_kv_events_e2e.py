"""KV events of tierkv's tiers in real vLLM, through vLLM's own ZMQ publisher.

A ZMQ subscriber attached to real engines (``--kv-events-config`` on, vLLM's own
prefix cache on so that vLLM publishes its GPU blocks too) decodes every batch with
vLLM's own decoder (``msgspec`` into ``KVEventBatch``) and checks:

- every block tierkv's host tier stored has one ``BlockStored`` with
  ``medium="CPU"`` (as many as the engine's store counter), every host eviction one
  ``BlockRemoved``, and disk writes are ``medium="STORAGE"``;
- tierkv's events carry vLLM's own block hashes and tokens: each hash tierkv
  reports is one vLLM reported for its GPU block, with the same tokens;
- two engines sharing one store (one after the other) report each change once: per
  block, stores and removals alternate across both engines, never two stores in a
  row (the second engine finds the first one's blocks and reports nothing for them).
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from test_vllm_e2e import driver, finish, metric, prompt_sets

msgspec = pytest.importorskip("msgspec")
zmq = pytest.importorskip("zmq")


class Subscriber:
    """Collects the batches one engine publishes (vLLM's wire format: topic, seq,
    msgpack ``KVEventBatch``)."""

    def __init__(self, endpoint: str):
        from vllm.distributed.kv_events import KVEventBatch

        self._decoder = msgspec.msgpack.Decoder(type=KVEventBatch)
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.SUBSCRIBE, b"kv")
        self._sock.setsockopt(zmq.RCVTIMEO, 200)
        self._sock.connect(endpoint)
        self.batches = []
        self.seqs: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                topic, seq, payload = self._sock.recv_multipart()
            except zmq.Again:
                continue
            assert topic == b"kv"
            self.seqs.append(int.from_bytes(seq, "big"))
            self.batches.append(self._decoder.decode(payload))

    def close(self) -> list:
        self._stop.set()
        self._thread.join()
        self._sock.close(linger=0)
        self._ctx.term()
        return [e for b in self.batches for e in b.events]


def run_with_events(tmp: Path, name: str, store: str, disk: Path):
    endpoint = f"ipc://{tmp}/kv-{name}.sock"
    sub = Subscriber(endpoint)
    env = {
        # About ten blocks of SmolLM2 (1.4 MiB each): the host tier evicts.
        "TIERKV_CPU_BYTES": "16MiB",
        "TIERKV_DISK_PATH": str(disk),
        "TIERKV_DISK_BYTES": "256MiB",
        "TIERKV_DISK_ADMIT": "always",
    }
    args = ("--kv-events", endpoint, "--prefix-cache", "--one-by-one")
    result = finish(driver(tmp, "tierkv", prompt_sets.set_a() + prompt_sets.set_b(), store, args, env))
    return result, sub.close(), sub.seqs


def tier_events(events, medium: str):
    from vllm.distributed.kv_events import BlockRemoved, BlockStored

    stored = [e for e in events if isinstance(e, BlockStored) and e.medium == medium]
    removed = [e for e in events if isinstance(e, BlockRemoved) and e.medium == medium]
    return stored, removed


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kv-events")
    store, disk = f"ev-{uuid.uuid4().hex[:8]}", tmp / "disk"
    try:
        first = run_with_events(tmp, "a", store, disk)
        second = run_with_events(tmp, "b", store, disk)
        yield first, second
    finally:
        Path(f"/dev/shm/tierkv-{store}.arena").unlink(missing_ok=True)
        Path(f"/dev/shm/tierkv-{store}.g3dir").unlink(missing_ok=True)


def test_every_host_store_and_eviction_is_published_with_its_medium(engines):
    (result, events, seqs), _ = engines
    assert seqs == sorted(seqs) and len(seqs) == len(set(seqs)), "vLLM's sequence numbers"
    stored, removed = tier_events(events, "CPU")
    m = result["metrics"]
    host_stores = metric(m, "tierkv_block_ops_total", 'tier="host",op="store"')
    host_evictions = metric(m, "tierkv_block_ops_total", 'tier="host",op="evict"')
    assert host_evictions > 0, "the test needs a host tier that evicts"
    assert sum(len(e.block_hashes) for e in stored) == host_stores
    assert sum(len(e.block_hashes) for e in removed) == host_evictions
    assert all(e.ownership == "tierkv:host" and e.locality == "LOCAL" for e in stored + removed)
    disk_stored, _ = tier_events(events, "STORAGE")
    written = metric(m, "tierkv_block_ops_total", 'tier="disk",op="store"')
    n_disk = sum(len(e.block_hashes) for e in disk_stored)
    # Writes that land after the engine's last step are published with a later
    # step, which a finished engine does not have.
    assert 0 < n_disk <= written
    assert all(e.ownership == "tierkv:disk" for e in disk_stored)
    assert metric(m, "tierkv_events_total", 'outcome="dropped"') == 0


def test_hashes_and_tokens_are_vllms_own(engines):
    from vllm.distributed.kv_events import BlockStored

    (_, events, _), _ = engines
    gpu = {}
    for e in events:
        if isinstance(e, BlockStored) and e.medium in (None, "GPU"):
            for i, h in enumerate(e.block_hashes):
                gpu[h] = list(e.token_ids[i * e.block_size : (i + 1) * e.block_size])
    ours, _ = tier_events(events, "CPU")
    assert gpu and ours
    for e in ours:
        assert e.block_size == 32
        for i, h in enumerate(e.block_hashes):
            assert h in gpu, f"tierkv reported a block vLLM never named: {h}"
            assert list(e.token_ids[i * 32 : (i + 1) * 32]) == gpu[h]


def test_two_engines_on_one_store_report_each_change_once(engines):
    (_, first, _), (result_b, second, _) = engines
    history: dict[tuple[str, int], list[str]] = defaultdict(list)
    for events in (first, second):
        for medium in ("CPU", "STORAGE"):
            stored, removed = tier_events(events, medium)
            for e in events:
                if e in stored or e in removed:
                    kind = "stored" if e in stored else "removed"
                    for h in e.block_hashes:
                        history[(medium, h)].append(kind)
    for key, kinds in history.items():
        for a, b in zip(kinds, kinds[1:]):
            assert not (a == b == "stored"), f"{key} stored twice without a removal between: {kinds}"
    # The second engine found the first one's blocks: it loaded from tierkv and
    # reported fewer host stores than blocks it used.
    assert metric(result_b["metrics"], "tierkv_loaded_tokens_total") > 0
    counts = Counter(k for kinds in history.values() for k in kinds)
    assert counts["stored"] > 0

