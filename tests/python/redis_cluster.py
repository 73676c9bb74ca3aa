"""The Redis cluster the remote tier's tests share: ``TIERKV_REMOTE_TEST_URL`` when
set (``.ci/run`` starts one for the run), else one started by
``scripts/redis-cluster.sh`` for the module and stopped after it. Without a server
binary the tests skip, unless ``TIERKV_REQUIRE_REDIS=1`` makes that a failure.

Use: ``redis_url = pytest.fixture(scope="module")(redis_cluster.url)``."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "redis-cluster.sh"


def url(tmp_path_factory):
    """Yields a cluster's ``redis://`` URL."""
    given = os.environ.get("TIERKV_REMOTE_TEST_URL")
    if given:
        yield given
        return
    if not (shutil.which("redis-server") or shutil.which("valkey-server")):
        if os.environ.get("TIERKV_REQUIRE_REDIS") == "1":
            pytest.fail("TIERKV_REQUIRE_REDIS=1 but no redis-server")
        pytest.skip("no redis-server on PATH")
    d = tmp_path_factory.mktemp("redis") / "cluster"
    out = subprocess.run([str(SCRIPT), "start", str(d)], check=True, capture_output=True, text=True)
    yield out.stdout.strip().splitlines()[-1]
    subprocess.run([str(SCRIPT), "stop", str(d)], check=False)
