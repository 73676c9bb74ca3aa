"""Session-wide housekeeping of the end-to-end tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def _remove_shadow_stores():
    """The small stores the pool shadow opens for engines without the connector
    (TIERKV_VLLM_POOL=shadow) are removed after the session."""
    yield
    for p in Path("/dev/shm").glob("tierkv-shadow-*"):
        p.unlink(missing_ok=True)
