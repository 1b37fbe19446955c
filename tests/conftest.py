"""Shared fixtures: a clean environment for every test, fresh registries, fake servers."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

_ENV_PREFIXES = ("AICORTEX_", "OLLAMA_")
_KEEP = {"AICORTEX_REQUIRE_REAL", "AICORTEX_REALSTACK_HOME"}


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch, tmp_path_factory):
    """No AICORTEX_*/OLLAMA_* variable leaks in, and no test touches the user's data dir."""
    for name in list(os.environ):
        if name.startswith(_ENV_PREFIXES) and name not in _KEEP:
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("xdg-data")))
    yield


@pytest.fixture
def registry():
    """A fresh, unseeded in-memory registry."""
    from aicortex import Registry

    reg = Registry.memory()
    yield reg
    reg.close()


@pytest.fixture
def db_path(tmp_path):
    """A path for a registry file that does not exist yet."""
    return tmp_path / "reg" / "servers.db"
