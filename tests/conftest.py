"""Shared fixtures: a clean environment for every test, fresh registries, fake servers."""

from __future__ import annotations

import os
import threading
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

_ENV_PREFIXES = ("AICORTEX_", "OLLAMA_")
_KEEP = {"AICORTEX_REQUIRE_REAL", "AICORTEX_REALSTACK_HOME", "AICORTEX_PG_BIN"}


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


# -- one failover suite, two clients ------------------------------------------------------------
class AsyncClientAdapter:
    """Drives a real :class:`aicortex.AsyncClient` on an event loop in a thread, with the
    sync client's call shapes, so that one test suite runs against both clients. Only
    the calling convention is adapted: every request goes through the async driver."""

    def __init__(self, registry, **kw):
        import asyncio

        from aicortex import AsyncClient

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="test-async-loop", daemon=True)
        self._thread.start()

        async def make():
            return AsyncClient(registry, **kw)

        self.client = self.run(make())

    def run(self, aw, timeout=60):
        import asyncio

        async def wrapped():
            return await aw

        return asyncio.run_coroutine_threadsafe(wrapped(), self._loop).result(timeout)

    def __getattr__(self, name):
        return getattr(self.client, name)

    def refresh(self, *args, **kw):
        return self.run(self.client.refresh(*args, **kw))

    def models(self):
        return self.run(self.client.models())

    def route(self, model):
        return self.run(self.client.route(model))

    def list_model_servers(self, model):
        return self.run(self.client.list_model_servers(model))

    # fleet operations
    def list(self):
        return self.run(self.client.list())

    def ps(self, *args, **kw):
        return self.run(self.client.ps(*args, **kw))

    def show(self, model):
        return self.run(self.client.show(model))

    def pull(self, *args, **kw):
        return self.run(self.client.pull(*args, **kw))

    def delete(self, *args, **kw):
        return self.run(self.client.delete(*args, **kw))

    def copy(self, *args, **kw):
        return self.run(self.client.copy(*args, **kw))

    def warm(self, *args, **kw):
        return self.run(self.client.warm(*args, **kw))

    def unload(self, *args, **kw):
        return self.run(self.client.unload(*args, **kw))

    def chat(self, prompt, *, stream=False, **kw):
        if not stream:
            return self.run(self.client.chat(prompt, **kw))
        return AsyncStreamAdapter(self, self.run(self.client.chat(prompt, stream=True, **kw)))

    def generate(self, prompt, *, stream=False, **kw):
        if not stream:
            return self.run(self.client.generate(prompt, **kw))
        return AsyncStreamAdapter(self, self.run(self.client.generate(prompt, stream=True, **kw)))

    def embed(self, input, **kw):
        return self.run(self.client.embed(input, **kw))

    def close(self):
        if self._loop.is_closed():
            return
        self.run(self.client.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class AsyncStreamAdapter:
    """An :class:`aicortex.AsyncStream` read with the sync stream's call shapes."""

    def __init__(self, adapter, stream):
        self._a, self.stream = adapter, stream

    def __getattr__(self, name):
        return getattr(self.stream, name)

    def __iter__(self):
        try:
            while True:
                try:
                    event = self._a.run(self.stream.__anext__())
                except StopAsyncIteration:
                    return
                yield event
        finally:
            self.close()

    def close(self):
        self._a.run(self.stream.aclose())

    def text(self):
        return self._a.run(self.stream.text())

    def reply(self):
        return self._a.run(self.stream.reply())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def make_client(kind, registry, **kw):
    """A sync ``Client`` or an :class:`AsyncClientAdapter` over ``registry``."""
    from aicortex import Client

    return Client(registry, **kw) if kind == "sync" else AsyncClientAdapter(registry, **kw)


@pytest.fixture(params=["sync", "async"])
def client_kind(request):
    """Runs a test once with the sync ``Client`` and once with the ``AsyncClient``."""
    return request.param


# -- a fleet in a fixed try order, with a client of either kind ------------------------------------
FLEET_MODEL = "llama3.2"
FLEET_TOKENS = ("The", " sky", " is", " blue", " because", " of", " Rayleigh", " scattering", ".")


def _fast():
    from aicortex import Timeouts

    return Timeouts(connect=0.5, first_token=0.5, first_token_cold=0.5, stall=0.5)


class OrderedFleet:
    """N fake servers (in try order) in one registry, a client of the given kind, refreshed."""

    def __init__(self, kind, n=2, *, scripts=None, fakes_kw=None, registry=None, refresh=True, **client_kw):
        from aicortex import Registry
        from aicortex.testing import FakeOllama, Script

        scripts = scripts or [Script(tokens=FLEET_TOKENS)] * n
        fakes_kw = fakes_kw or [{}] * n
        self.fakes = [FakeOllama(models=[FLEET_MODEL], script=s, **kw).start() for s, kw in zip(scripts, fakes_kw)]
        self.registry = registry if registry is not None else Registry.memory()
        for i, f in enumerate(self.fakes):
            self.registry.add(f.url, name=f"s{i}", priority=n - i)  # s0 first, always
        client_kw.setdefault("timeout", _fast())
        client_kw.setdefault("spread_load", False)
        self.client = make_client(kind, self.registry, **client_kw)
        if refresh:
            self.client.refresh()

    @property
    def urls(self):
        return [f.url for f in self.fakes]

    def close(self):
        self.client.close()
        self.registry.close()
        for f in self.fakes:
            f.stop()




# -- a real PostgreSQL server for the PostgreSQL registry (scripts/pgserver.py) --------------------
def _pg_unavailable(reason: str) -> None:
    """Skip with the reason; with AICORTEX_REQUIRE_REAL=1 (as CI sets it) fail instead."""
    if os.environ.get("AICORTEX_REQUIRE_REAL") == "1":
        pytest.fail(f"PostgreSQL unavailable (AICORTEX_REQUIRE_REAL=1): {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL unavailable: {reason}")


_PG: dict = {}


@pytest.fixture(scope="session")
def pg_server():
    """One PostgreSQL server for the session: initdb into a temp dir, listening on
    127.0.0.1 on a free port, its password in PGPASSWORD; stopped by its PID at the end."""
    if "error" in _PG:
        _pg_unavailable(_PG["error"])
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError as exc:
        _PG["error"] = f"psycopg is not installed ({exc}): pip install -e '.[test]'"
        _pg_unavailable(_PG["error"])
    from pgserver import PgServer, PgUnavailable

    try:
        server = PgServer().start()
    except PgUnavailable as exc:
        _PG["error"] = exc.reason
        _pg_unavailable(exc.reason)
    old = os.environ.get("PGPASSWORD")
    server.export_password()
    yield server
    server.cleanup()
    if old is None:
        os.environ.pop("PGPASSWORD", None)
    else:
        os.environ["PGPASSWORD"] = old


@pytest.fixture
def pg_url(pg_server):
    """A fresh, empty database on the session's PostgreSQL server; its URL (no password)."""
    _PG["n"] = _PG.get("n", 0) + 1
    name = f"t{os.getpid()}_{_PG['n']}"
    url = pg_server.create_database(name)
    yield url
    pg_server.drop_database(name)


@pytest.fixture(params=["sqlite", "postgres"])
def store_location(request, tmp_path):
    """A registry location that does not exist yet, once per store: an SQLite file path,
    then a fresh PostgreSQL database URL."""
    if request.param == "sqlite":
        return str(tmp_path / "reg" / "servers.db")
    return request.getfixturevalue("pg_url")
