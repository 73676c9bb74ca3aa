"""bf16 (what most users run): tierkv serves the same bytes vLLM's own prefix cache
would reuse, so greedy outputs equal vLLM's own prefix cache token for token.

Reused bf16 KV is not the KV a cold prefill of the whole prompt computes (the
prefix was computed in another batch shape, and the rest of the prompt is then
computed on its own), so outputs may differ from a run without any cache: for
vLLM's own prefix cache as for tierkv (docs/integration.md says what to expect per
dtype). What tierkv must guarantee is that it changes nothing beyond that: the same
blocks hit, the same bytes served.

- vLLM's prefix cache: one engine runs set A, then set B (B's prefix hits A's blocks).
- tierkv: an engine runs set A (stores its blocks); a fresh engine runs set B (its
  prefix loaded from the host tier).
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import prompts as prompt_sets  # noqa: E402
from test_vllm_e2e import metric, run  # noqa: E402

BF16 = ("--dtype", "bfloat16")


def test_bf16_outputs_equal_vllms_own_prefix_cache(tmp_path):
    warm = tmp_path / "warm.json"
    warm.write_text(json.dumps(prompt_sets.set_a()))
    own = run(tmp_path, "prefix", prompt_sets.set_b(), None, (*BF16, "--warm", str(warm)))
    name = f"e2e-bf16-{uuid.uuid4().hex[:8]}"
    try:
        run(tmp_path, "tierkv", prompt_sets.set_a(), name, BF16)
        fresh = run(tmp_path, "tierkv", prompt_sets.set_b(), name, BF16)
        served = metric(fresh["metrics"], "tierkv_loaded_tokens_total") - metric(
            fresh["metrics_before"], "tierkv_loaded_tokens_total"
        )
        assert served > 1000, "set B's prefix came from tierkv"
        assert fresh["outputs"] == own["outputs"], "tierkv's bf16 outputs differ from vLLM's own prefix cache"
    finally:
        Path(f"/dev/shm/tierkv-{name}.arena").unlink(missing_ok=True)
        Path(f"/dev/shm/tierkv-{name}.g3dir").unlink(missing_ok=True)
