"""Regression tests from a review of the new core (flow, drivers, transports, fleet view).

Real loopback FakeOllama servers (and a tiny raw HTTP server where FakeOllama cannot give
the wire shape needed), real clients, no mocks of aicortex code.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

from aicortex import AICortexError, AsyncClient, Client, Registry, Timeouts
from aicortex._health import Health
from aicortex.testing import FakeOllama, Script
from conftest import make_client

pytestmark = pytest.mark.timeout(30)

MODEL = "llama3.2"
TOKENS = ("The", " sky", " is", " blue", " because", " of", " Rayleigh", " scattering", ".")
FULL = "".join(TOKENS)
FAST = Timeouts(connect=0.5, first_token=0.5, first_token_cold=0.5, stall=0.5)


class Fleet:
    """N fake servers (in try order) in one registry, a client of the given kind, refreshed."""

    def __init__(self, kind, n=1, *, scripts=None, registry=None, **client_kw):
        scripts = scripts or [Script(tokens=TOKENS)] * n
        self.fakes = [FakeOllama(models=[MODEL], script=s).start() for s in scripts]
        self.registry = registry if registry is not None else Registry.memory()
        for i, f in enumerate(self.fakes):
            self.registry.add(f.url, name=f"s{i}", priority=n - i)
        client_kw.setdefault("timeout", FAST)
        client_kw.setdefault("spread_load", False)
        self.client = make_client(kind, self.registry, **client_kw)
        self.client.refresh()

    @property
    def urls(self):
        return [f.url for f in self.fakes]

    def close(self):
        self.client.close()
        self.registry.close()
        for f in self.fakes:
            f.stop()


@pytest.fixture
def fleet(client_kind):
    made = []

    def make(n=1, **kw):
        fl = Fleet(client_kind, n, **kw)
        made.append(fl)
        return fl

    yield make
    for fl in made:
        fl.close()


def _half_open(fl, url, model=""):
    fl.registry.update_health(url, model, lambda h: Health(failures=1, open_until=time.time() - 1))
    fl.client.fleet.reload()


class _AsyncFleet:
    """An AsyncClient on its own event loop (for cancellation tests), over fake servers."""

    def __init__(self, n=1, scripts=None, registry=None, **client_kw):
        scripts = scripts or [Script(tokens=TOKENS)] * n
        self.fakes = [FakeOllama(models=[MODEL], script=s).start() for s in scripts]
        self.registry = registry if registry is not None else Registry.memory()
        for i, f in enumerate(self.fakes):
            self.registry.add(f.url, name=f"s{i}", priority=n - i)
        client_kw.setdefault("timeout", FAST)
        client_kw.setdefault("spread_load", False)
        self.client_kw = client_kw

    @property
    def urls(self):
        return [f.url for f in self.fakes]

    def close(self):
        self.registry.close()
        for f in self.fakes:
            f.stop()


@pytest.fixture
def afleet():
    made = []

    def make(n=1, **kw):
        fl = _AsyncFleet(n, **kw)
        made.append(fl)
        return fl

    yield make
    for fl in made:
        fl.close()


# -- 1. async: a task cancelled while the head is awaited leaves nothing in flight ----------------
def test_async_cancel_while_opening_leaves_no_request_in_flight(afleet):
    """``_drive_async`` counted the request in flight (``fleet.begin``) before awaiting
    ``open_chat`` and only un-counted it for a ``ServerError``: a cancellation there (a
    client that went away, ``asyncio.timeout``) left the count at 1 for ever, and routing
    ("fewer requests in flight first") shunned the server."""
    fl = afleet(1, scripts=[Script(tokens=TOKENS, first_token_delay=5.0)], timeout=Timeouts(first_token=10, first_token_cold=10))
    url = fl.urls[0]

    async def main():
        async with AsyncClient(fl.registry, **fl.client_kw) as client:
            await client.refresh()

            async def consume():
                async with client.chat("hi", model=MODEL, stream=True) as stream:
                    async for _ in stream:
                        pass

            task = asyncio.create_task(consume())
            assert await asyncio.to_thread(fl.fakes[0].wait_for_requests, 1, "/api/chat", 3.0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return client.fleet.inflight(url)

    assert asyncio.run(main()) == 0
