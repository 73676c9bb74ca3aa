"""Shared fixtures of the binding tests."""

from __future__ import annotations

import uuid

import pytest


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A private store: its own shared-memory directory and name, a 4 MiB host tier."""
    monkeypatch.setenv("TIERKV_SHM_DIR", str(tmp_path))
    monkeypatch.setenv("TIERKV_STORE_NAME", f"py-{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("TIERKV_CPU_BYTES", "4MiB")
    return tmp_path
