"""Configuration read from a real process environment: a misspelt variable is
reported with the closest name, not silently ignored."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_misspelt_variable_is_reported_with_the_closest_name(env):
    code = (
        "import sys; sys.path.insert(0, %r)\n"
        "from tierkv_vllm import TierKV\n"
        "t = TierKV(block_tokens=16, block_bytes=4096)\n"
        "t.close()\n" % str(ROOT / "integration" / "vllm")
    )
    run_env = dict(os.environ, TIERKV_CPU_BYTE="8GiB", TIERKV_LOG="warn")
    out = subprocess.run([sys.executable, "-c", code], env=run_env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "TIERKV_CPU_BYTE is not a tierkv variable" in out.stderr, out.stderr
    assert "did you mean TIERKV_CPU_BYTES" in out.stderr, out.stderr
