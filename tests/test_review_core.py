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
from conftest import OrderedFleet as Fleet
from conftest import make_client

pytestmark = pytest.mark.timeout(30)

MODEL = "llama3.2"
TOKENS = ("The", " sky", " is", " blue", " because", " of", " Rayleigh", " scattering", ".")
FULL = "".join(TOKENS)
FAST = Timeouts(connect=0.5, first_token=0.5, first_token_cold=0.5, stall=0.5)


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


class DripHeadServer:
    """An Ollama-ish HTTP/1.1 server on 127.0.0.1 with keep-alive connections: the probes
    answer normally, and ``POST /api/chat`` sends its status line and then one header
    line every ``every`` seconds, never ending the head (until the client goes away)."""

    def __init__(self, every=0.1):
        self.every = every
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.chats = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, conn):
        import json

        buf = b""
        conn.settimeout(0.05)
        try:
            while not self._stop.is_set():
                while b"\r\n\r\n" not in buf:
                    try:
                        data = conn.recv(65536)
                    except socket.timeout:
                        if self._stop.is_set():
                            return
                        continue
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value.strip())
                while len(buf) < length:
                    buf += conn.recv(65536)
                buf = buf[length:]
                if path == "/api/chat":
                    self.chats += 1
                    conn.sendall(b"HTTP/1.1 200 OK\r\n")
                    i = 0
                    while not self._stop.is_set():
                        time.sleep(self.every)
                        conn.sendall(b"X-Drip-%d: x\r\n" % i)
                        i += 1
                    return
                if path == "/api/version":
                    body = {"version": "0.12.6"}
                elif path == "/api/tags":
                    body = {"models": [{"name": MODEL, "model": MODEL, "digest": "d", "size": 1, "details": {}, "modified_at": "2025-01-01T00:00:00Z"}]}
                elif path == "/api/ps":
                    body = {"models": [{"name": MODEL, "model": MODEL, "digest": "d", "size": 1, "details": {}, "expires_at": "2099-01-01T00:00:00Z"}]}
                else:
                    body = {}
                data = json.dumps(body).encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(data) + data)
        except OSError:
            return
        finally:
            conn.close()

    def close(self):
        self._stop.set()
        self.sock.close()


# -- 2. sync: the first-token limit holds in the header phase of a reused keep-alive connection -----
def test_first_token_limit_holds_while_a_reused_connection_drips_its_head(client_kind):
    """The watchdog shuts down the socket it learnt from httpcore's ``connect_tcp`` trace;
    on a keep-alive connection taken from the pool there is no connect, so in the header
    phase it had no socket to shut down, and a server that drips header lines (each
    within the per-read timeout) held the request past the first-token limit for ever."""
    server = DripHeadServer(every=0.1)
    registry = Registry.memory()
    registry.add(server.url, name="drip")
    client = make_client(client_kind, registry, timeout=FAST, spread_load=False)
    try:
        client.refresh()  # the probes leave keep-alive connections in the pool
        assert client.route(MODEL).candidates
        result = {}

        def run():
            t0 = time.monotonic()
            try:
                client.chat("hi", model=MODEL)
            except AICortexError as exc:
                result["error"] = exc
            result["elapsed"] = time.monotonic() - t0

        t = threading.Thread(target=run, daemon=True)
        t.start()
        t.join(5.0)
        assert not t.is_alive(), "the first-token limit of 0.5 s did not hold: still waiting after 5 s"
        assert result["elapsed"] < 2.0
        assert "first token" in str(result["error"])
    finally:
        server.close()
        client.close()
        registry.close()


# -- 3. async: a task cancelled while its half-open trial is being claimed gives it back ------------
def test_async_cancel_during_the_trial_claim_gives_the_trial_back(afleet, tmp_path):
    """``admit_async`` claims the trial in memory, then waits (at most 0.25 s) for the
    store's claim. A cancellation in that wait left the in-memory claim standing: the
    server was "open" (skipped) for the whole 30 s trial window, though nobody tried it."""
    import sqlite3

    path = tmp_path / "r.db"
    fl = afleet(2, registry=Registry(path, seed=False))
    s0 = fl.urls[0]

    async def main():
        async with AsyncClient(fl.registry, **fl.client_kw) as client:
            await client.refresh()
            fl.registry.update_health(s0, "", lambda h: Health(failures=1, open_until=time.time() - 1))
            await asyncio.to_thread(client.fleet.reload)
            assert (await client.route(MODEL)).candidates[0].state == "half_open"
            blocker = sqlite3.connect(str(path), check_same_thread=False)
            blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock: the store claim waits
            try:
                stream = await client.chat("hi", model=MODEL, stream=True)
                assert (await stream.__anext__()).type == "start"
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(stream.__anext__(), 0.1)  # cancelled while admitting
            finally:
                blocker.execute("ROLLBACK")
                blocker.close()
            await asyncio.sleep(0.3)  # the store claim completes in its worker thread
            await asyncio.to_thread(client.fleet.flush)
            await asyncio.to_thread(client.fleet.reload)
            state = (await client.route(MODEL)).candidates[0]
            reply = await client.chat("hi", model=MODEL)
            return state, reply

    state, reply = asyncio.run(main())
    assert state.server.url == s0 and state.state == "half_open"
    assert reply.server == s0  # the trial, at once


# -- 4. async: a task cancelled while asking the trial server's /api/show gives the trial back ------
def test_async_cancel_during_the_show_of_a_trial_server_gives_the_trial_back(afleet):
    """Before continuing a reply on a server, the flow admits it (claims its half-open
    trial) and then asks its ``/api/show``. The trial only travels with the attempt's plan,
    made after that answer: a cancellation while ``/api/show`` was awaited (up to 2 s)
    kept the trial claimed for its whole 30 s window."""
    fl = afleet(2, scripts=[Script(tokens=TOKENS, drop_after=3), Script(tokens=TOKENS)])
    s1 = fl.urls[1]

    async def main():
        async with AsyncClient(fl.registry, **fl.client_kw) as client:
            await client.refresh()
            fl.registry.update_health(s1, "", lambda h: Health(failures=1, open_until=time.time() - 1))
            await asyncio.to_thread(client.fleet.reload)
            fl.fakes[1].blackhole_all = True  # its /api/show never answers
            stream = await client.chat("hi", model=MODEL, stream=True)
            seen = []
            with pytest.raises(asyncio.TimeoutError):
                async with asyncio.timeout(1.0):
                    async for event in stream:
                        seen.append(event.type)
            assert "error" in seen  # s0 broke; s1 was being asked for /api/show
            assert await asyncio.to_thread(fl.fakes[1].wait_for_requests, 1, "/api/show", 1.0)
            fl.fakes[1].blackhole_all = False
            states = {c.server.url: c.state for c in (await client.route(MODEL)).candidates}
            return states

    states = asyncio.run(main())
    assert states.get(s1) == "half_open"  # not "open" (skipped) for the 30 s trial window


# -- 5. a stream read after its client was closed raises an AICortexError --------------------------
def test_a_stream_read_after_the_client_closed_raises_an_aicortex_error(client_kind):
    """``Client.close()`` closes the httpx pool; a stream made before and read after it
    then failed with httpx's ``RuntimeError`` ("the client has been closed"), which is not
    an ``AICortexError``, and left its request counted in flight. (The async client
    re-created an aiohttp session that nothing would ever close.)"""
    with FakeOllama(models=[MODEL], script=Script(tokens=TOKENS)) as fake:
        registry = Registry.memory()
        registry.add(fake.url)
        if client_kind == "sync":
            client = Client(registry, timeout=FAST)
            client.refresh()
            stream = client.chat("hi", model=MODEL, stream=True)
            client.close()
            with pytest.raises(AICortexError):
                for _ in stream:
                    pass
        else:

            async def main():
                client = AsyncClient(registry, timeout=FAST)
                await client.refresh()
                stream = await client.chat("hi", model=MODEL, stream=True)
                await client.aclose()
                with pytest.raises(AICortexError):
                    async for _ in stream:
                        pass
                return client

            client = asyncio.run(main())
        assert client.fleet.inflight(fake.url) == 0
        assert fake.chat_requests == []
        assert client.fleet.health(fake.url).failures == 0  # not the server's failure
        assert client.fleet.health(fake.url, MODEL).failures == 0
        registry.close()


# -- 6. close() from another thread while a stream is read is not the server's failure -------------
def test_close_from_another_thread_mid_stream_does_not_trip_the_servers_breaker(client_kind, tmp_path):
    """Closing the client while another thread (or task) reads a stream cuts its
    connection; that read error was taken for the server's failure: failover, and a
    breaker trip of a healthy server, written to the shared registry by close()'s flush."""
    with FakeOllama(models=[MODEL], script=Script(tokens=TOKENS * 50, token_delay=0.01)) as fake:
        registry = Registry(tmp_path / "r.db", seed=False)
        registry.add(fake.url)
        client = make_client(client_kind, registry, timeout=FAST)
        client.refresh()
        stream = client.chat("hi", model=MODEL, stream=True)
        got = {"tokens": 0}
        started = threading.Event()

        def read():
            try:
                for event in stream:
                    if event.type == "token":
                        got["tokens"] += 1
                        started.set()
            except BaseException as exc:  # noqa: BLE001 - what the reader sees
                got["error"] = exc
            started.set()

        t = threading.Thread(target=read, daemon=True)
        t.start()
        assert started.wait(5.0)
        if client_kind == "sync":
            client.close()
        else:  # the adapter's close() would stop the loop: aclose() on it, from this thread
            client.run(client.client.aclose())
        t.join(5.0)
        assert not t.is_alive()
        assert got["tokens"] < len(TOKENS) * 50
        assert isinstance(got.get("error"), AICortexError), got
        for record in ("", MODEL):
            assert registry.health(fake.url, record).failures == 0
            assert client.fleet.health(fake.url, record).failures == 0
        if client_kind == "async":
            client.close()
        registry.close()


# -- 7. a header value httpx cannot send is a ConfigError, not a UnicodeEncodeError ---------------
@pytest.mark.parametrize("value", ["Bearer t\u00f6ken", "Bearer a\r\nX-Injected: 1"])
def test_a_header_value_that_cannot_be_sent_is_a_config_error(client_kind, monkeypatch, value):
    """Per-server headers are read from the environment at request time. A value with a
    non-ASCII character made httpx raise ``UnicodeEncodeError`` out of ``chat()`` and
    ``refresh()`` (not an ``AICortexError``; the request stayed counted in flight); one
    with a line break was sent as a server failure (a breaker trip, then failover)."""
    from aicortex import ConfigError

    with FakeOllama(models=[MODEL], script=Script(tokens=TOKENS)) as fake:
        registry = Registry.memory()
        registry.add(fake.url, headers_env={"Authorization": "REVIEW_TOKEN"})
        monkeypatch.setenv("REVIEW_TOKEN", "Bearer ok")
        client = make_client(client_kind, registry, timeout=FAST)
        try:
            client.refresh()
            monkeypatch.setenv("REVIEW_TOKEN", value)
            with pytest.raises(ConfigError, match="REVIEW_TOKEN"):
                client.chat("hi", model=MODEL)
            with pytest.raises(ConfigError, match="REVIEW_TOKEN"):
                client.refresh()
            assert client.fleet.inflight(fake.url) == 0
            assert fake.chat_requests == []
            assert client.fleet.health(fake.url).failures == 0
        finally:
            client.close()
            registry.close()


# -- 8. a stream read after close() on a half-open server: no RuntimeError from the claim worker ---
def test_a_stream_read_after_close_on_a_half_open_server_raises_an_aicortex_error(client_kind):
    """The half-open trial is claimed in the store from the fleet's worker thread pool,
    which ``close()`` shuts down: a stream made before ``close()`` and read after it
    failed in its ``Admit`` with the pool's ``RuntimeError`` ("cannot schedule new futures
    after shutdown"), not an ``AICortexError``."""
    with FakeOllama(models=[MODEL], script=Script(tokens=TOKENS)) as fake:
        registry = Registry.memory()
        registry.add(fake.url)
        fl = type("F", (), {})()
        fl.registry = registry
        if client_kind == "sync":
            fl.client = client = Client(registry, timeout=FAST)
            client.refresh()
            _half_open(fl, fake.url)
            assert client.chat("hi", model=MODEL).text == FULL  # a trial: the claim pool exists
            client.fleet.flush()
            _half_open(fl, fake.url)
            stream = client.chat("hi", model=MODEL, stream=True)
            client.close()
            with pytest.raises(AICortexError):
                for _ in stream:
                    pass
        else:

            async def main():
                fl.client = client = AsyncClient(registry, timeout=FAST)
                await client.refresh()
                _half_open(fl, fake.url)
                assert (await client.chat("hi", model=MODEL)).text == FULL
                client.fleet.flush()
                _half_open(fl, fake.url)
                stream = await client.chat("hi", model=MODEL, stream=True)
                await client.aclose()
                with pytest.raises(AICortexError):
                    async for _ in stream:
                        pass
                return client

            client = asyncio.run(main())
        assert client.fleet.inflight(fake.url) == 0
        assert len(fake.chat_requests) == 1
        registry.close()
