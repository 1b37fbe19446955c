"""The package surface: exported names, docstrings, and an import that touches nothing."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import aicortex
import aicortex.testing

EXPECTED = {
    "__version__", "chat", "generate", "embed", "models", "list_model_servers", "refresh", "Client", "Registry", "Stream",
    "StreamEvent", "Reply", "Usage", "Attempt", "Server", "ModelEntry", "Timeouts", "HedgePolicy",
    "AsyncClient", "AsyncStream", "ChatCall", "ModelList",
    "FleetModel", "LoadedModel", "PsReport", "ShowResult", "PullProgress", "PullResult", "OpResult",
    "EmbedResult", "RefreshReport", "ProbeResult", "BenchResult", "Route", "Candidate", "Health", "Outcome", "FleetView", "Snapshot",
    "AICortexError", "ConfigError", "InvalidURL", "RegistryError", "ModelNotFound", "ServerError",
    "ConnectError", "TimeoutError", "ConnectTimeout", "PoolTimeout", "FirstTokenTimeout", "StallTimeout", "HTTPStatusError",
    "BadRequest", "ServerModelNotFound", "OllamaError", "ProtocolError", "IncompleteStream",
    "DeadlineExceeded", "AllServersFailed", "InvalidOutput",
}


def test_public_names_are_what_we_mean_them_to_be():
    assert set(aicortex.__all__) == EXPECTED
    for name in aicortex.__all__:
        obj = getattr(aicortex, name)
        if name != "__version__":
            assert inspect.getdoc(obj), f"{name} has no docstring"
            assert getattr(obj, "__module__", "aicortex").startswith("aicortex"), name


def test_every_public_method_has_a_docstring():
    for name in ("Client", "AsyncClient", "Registry", "Stream", "AsyncStream", "FleetView", "ChatCall"):
        cls = getattr(aicortex, name)
        for klass in cls.__mro__:
            if not klass.__module__.startswith("aicortex"):
                continue
            for attr, member in vars(klass).items():
                if attr.startswith("_") or not (callable(member) or isinstance(member, property)):
                    continue
                assert inspect.getdoc(member), f"{name}.{attr} has no docstring"
    for name in aicortex.testing.__all__:
        assert inspect.getdoc(getattr(aicortex.testing, name)) or name.isupper(), name


def test_exceptions_share_one_root():
    for name in aicortex.__all__:
        obj = getattr(aicortex, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, aicortex.AICortexError), name
    assert issubclass(aicortex.AllServersFailed, RuntimeError)
    assert issubclass(aicortex.ModelNotFound, LookupError)


PROBE = r"""
import json, sys
events = []
def hook(event, args):
    if event in ("socket.connect", "socket.getaddrinfo", "os.mkdir", "sqlite3.connect"):
        events.append(event)
    elif event == "open" and len(args) > 1 and isinstance(args[1], str) and any(c in args[1] for c in "wax+"):
        events.append(f"open {args[0]} {args[1]}")
sys.addaudithook(hook)
import aicortex, aicortex.cli
mods = sorted(m for m in ("httpx", "sqlite_utils", "sqlite3") if m in sys.modules)
print(json.dumps({"events": events, "heavy": mods}))
"""


def test_import_makes_no_network_call_creates_no_file_and_loads_nothing_heavy(tmp_path):
    env = {"HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "data"), "PATH": "/usr/bin:/bin",
           "PYTHONDONTWRITEBYTECODE": "1"}  # .pyc caches are Python's, not ours
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["events"] == []
    assert result["heavy"] == []  # httpx and sqlite-utils load with the first Client
    assert list(tmp_path.iterdir()) == []
