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


# -- the real local stacks of scripts/realstack.py -------------------------------------------------
def _real_unavailable(reason: str) -> None:
    """Skip with the reason; with AICORTEX_REQUIRE_REAL=1 (as CI sets it) fail instead."""
    if os.environ.get("AICORTEX_REQUIRE_REAL") == "1":
        pytest.fail(f"real stack unavailable (AICORTEX_REQUIRE_REAL=1): {reason}", pytrace=False)
    pytest.skip(f"real stack unavailable: {reason}")


@pytest.fixture(scope="session")
def realstack_installed():
    """The realstack module, with its virtual environment installed (or the test skips)."""
    import realstack

    try:
        realstack.ensure_installed()
    except realstack.StackUnavailable as exc:
        _real_unavailable(exc.reason)
    return realstack


@pytest.fixture
def real_stacks(realstack_installed):
    """Factory: ``real_stacks(n)`` starts n real stacks, all stopped by PID after the test."""
    started = []

    def start(n: int = 1, **kw):
        try:
            stacks = realstack_installed.start_stacks(n, **kw)
        except realstack_installed.StackUnavailable as exc:
            _real_unavailable(exc.reason)
        started.extend(stacks)
        return stacks

    yield start
    for s in started:
        s.stop()
