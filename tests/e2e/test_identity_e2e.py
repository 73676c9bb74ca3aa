"""A model updated in place never shares blocks with its old self, in real vLLM.

The engine's namespace (``tierkv_vllm/identity.py``) holds a fingerprint of the
weights' content, so after one tensor changes at the same path the same prompts
find nothing in the host or disk tier, and outputs equal a run without tierkv on
the new weights. A control run on unchanged weights shows the same prompts do hit.
"""

from __future__ import annotations

import shutil
import sys
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import prompts as prompt_sets  # noqa: E402
from test_vllm_e2e import MODEL, metric, run  # noqa: E402


def served(result: dict) -> float:
    return metric(result["metrics"], "tierkv_loaded_tokens_total") - metric(
        result["metrics_before"], "tierkv_loaded_tokens_total"
    )


def perturb(weights: Path) -> None:
    """Adds 1% to the final norm's weights, written back at the same path."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(weights))
    tensors["model.norm.weight"] = tensors["model.norm.weight"] * 1.01
    save_file(tensors, str(weights), metadata={"format": "pt"})


def test_weights_replaced_in_place_never_share_blocks(tmp_path):
    model = tmp_path / "model"
    shutil.copytree(MODEL, model)
    name = f"e2e-weights-{uuid.uuid4().hex[:8]}"
    env = {
        "TIERKV_DISK_PATH": str(tmp_path / "disk"),
        "TIERKV_DISK_BYTES": "1GiB",
        "TIERKV_DISK_ADMIT": "always",
    }
    texts = prompt_sets.set_a()
    # One prompt at a time: what a run serves itself depends on the prompts alone.
    args = ("--model", str(model), "--one-by-one")
    try:
        # A fresh cache: later prompts of the run may hit what earlier ones stored.
        first = run(tmp_path, "tierkv", texts, name, args, env)
        assert metric(first["metrics"], "tierkv_block_ops_total", 'tier="host",op="store"') >= 10
        control = run(tmp_path, "tierkv", texts, name, args, env)
        assert served(control) > served(first), "unchanged weights: the same prompts hit the earlier run's blocks"
        perturb(model / "model.safetensors")
        changed = run(tmp_path, "tierkv", texts, name, args, env)
        # Exactly what a fresh cache serves: nothing of the earlier runs.
        assert served(changed) == served(first), "blocks of the old weights were served"
        plain = run(tmp_path, "none", texts, None, args)
        assert changed["outputs"] == plain["outputs"]
    finally:
        Path(f"/dev/shm/tierkv-{name}.arena").unlink(missing_ok=True)
        Path(f"/dev/shm/tierkv-{name}.g3dir").unlink(missing_ok=True)
