"""The connector wheel as it ships (``scripts/build-wheel.sh``; ``scripts/test.sh``
builds it, installs it into the vLLM environment and sets ``TIERKV_WHEEL``): a
platform wheel with a manylinux tag and the library inside, its vLLM plugin
declared, and, once installed, found by vLLM by name with no source tree around."""

from __future__ import annotations

import json
import os
import re
import subprocess
import zipfile
from pathlib import Path

import pytest

WHEEL = os.environ.get("TIERKV_WHEEL")
PYTHON = os.environ.get("TIERKV_VLLM_PYTHON")

pytestmark = pytest.mark.skipif(not WHEEL, reason="TIERKV_WHEEL not set (scripts/test.sh builds the wheel)")


def test_a_platform_wheel_with_the_library_inside():
    name = Path(WHEEL).name
    assert re.fullmatch(r"tierkv_vllm-[\w.]+-py3-none-manylinux_2_\d+_x86_64\.whl", name), name
    with zipfile.ZipFile(WHEEL) as z:
        names = z.namelist()
        libs = [n for n in names if n.endswith(".so")]
        assert libs == ["tierkv_vllm/libtierkv.so"], libs
        assert z.read("tierkv_vllm/libtierkv.so")[:4] == b"\x7fELF"
        meta = next(n for n in names if n.endswith(".dist-info/WHEEL"))
        wheel_info = z.read(meta).decode()
        assert "Root-Is-Purelib: false" in wheel_info
        assert re.search(r"^Tag: py3-none-manylinux_2_\d+_x86_64$", wheel_info, re.MULTILINE), wheel_info
        eps = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
        assert "[vllm.general_plugins]" in eps and "tierkv = tierkv_vllm.plugin:register" in eps
        assert "tierkv_vllm/connector/__init__.py" in names


@pytest.mark.skipif(not PYTHON, reason="TIERKV_VLLM_PYTHON not set")
def test_installed_vllm_finds_the_connector_by_name_without_the_source_tree(tmp_path):
    code = """
import json, os
import tierkv_vllm
from tierkv_vllm.lib import _load, find_library
from vllm.plugins import load_general_plugins
load_general_plugins()
load_general_plugins()  # vLLM may load plugins again: harmless
from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory
cls = KVConnectorFactory.get_connector_class_by_name("TierKVConnector")
lib = find_library()
_load(lib)
print(json.dumps({"pkg": tierkv_vllm.__file__, "lib": lib, "cls": cls.__module__ + "." + cls.__name__}))
"""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TIERKV_LIB")}
    out = subprocess.run([PYTHON, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert "site-packages" in got["pkg"], got
    assert Path(got["lib"]).parent == Path(got["pkg"]).parent, got
    assert got["cls"] == "tierkv_vllm.connector.TierKVConnector"
