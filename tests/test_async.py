"""The async client on a live event loop, and health off the request path: a registry
that is locked or read-only never breaks or delays a reply."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest
import sqlite_utils

from aicortex import AsyncClient, AsyncStream, Client, Registry, Timeouts
from aicortex.testing import FakeOllama, Script, blackhole_listener
from conftest import make_client

pytestmark = pytest.mark.timeout(60)

M = "llama3.2"
TOKENS = ("The", " sky", " is", " blue", ".")
FAST = Timeouts(connect=0.5, first_token=1.0, first_token_cold=1.0, stall=1.0)


class LockHolder:
    """Another process that holds the registry file's write lock until stopped."""

    def __init__(self, path):
        code = textwrap.dedent(f"""
            import sqlite3, sys
            conn = sqlite3.connect({str(path)!r}, isolation_level=None)
            conn.execute("BEGIN EXCLUSIVE")
            print("locked", flush=True)
            sys.stdin.readline()
            conn.execute("ROLLBACK")
        """)
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "locked"

    def release(self):
        if self.proc.poll() is None:
            self.proc.stdin.write("\n")
            self.proc.stdin.flush()
            self.proc.wait(10)
        self.proc.stdin.close()
        self.proc.stdout.close()


def _file_registry(path, fakes):
    reg = Registry(path, seed=False)
    for i, f in enumerate(fakes):
        reg.add(f.url, name=f"s{i}")
    return reg


def test_async_stream_both_forms_and_reply():
    async def main(url):
        async with AsyncClient(url, timeout=FAST) as client:
            async with client.chat("hi", model=M, stream=True) as stream:
                assert isinstance(stream, AsyncStream)
                kinds = [e.type async for e in stream]
            assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("token") == len(TOKENS)
            stream2 = await client.chat("hi", model=M, stream=True)
            text = "".join([e.content async for e in stream2 if e.type == "token"])
            reply = await client.chat("hi", model=M)
            again = await (await client.chat("hi", model=M, stream=True)).text()
            return text, reply.text, again, stream2.server

    with FakeOllama(models=[M], script=Script(tokens=TOKENS)) as fake:
        text, reply, again, server = asyncio.run(main(fake.url))
    assert text == reply == again == "".join(TOKENS) and server == fake.url


def test_cancelling_the_task_closes_the_connection_at_once():
    async def main(fake):
        async with AsyncClient(fake.url, timeout=FAST) as client:
            seen = asyncio.Event()

            async def read():
                async with client.chat("hi", model=M, stream=True) as stream:
                    async for event in stream:
                        if event.type == "token":
                            seen.set()

            task = asyncio.create_task(read())
            await seen.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return await asyncio.to_thread(fake.wait_for_disconnect, 5.0)

    with FakeOllama(models=[M], script=Script(tokens=TOKENS * 40, token_delay=0.02)) as fake:
        assert asyncio.run(main(fake))
        rec = fake.chat_requests[-1]
        assert rec.disconnected and rec.tokens_sent < 100


def test_an_async_stream_dropped_unclosed_is_closed_with_a_resource_warning():
    async def main(fake):
        client = AsyncClient(fake.url, timeout=FAST)
        stream = await client.chat("hi", model=M, stream=True)
        async for event in stream:
            if event.type == "token":
                break
        with pytest.warns(ResourceWarning, match="not closed"):
            del stream, event
        ok = await asyncio.to_thread(fake.wait_for_disconnect, 5.0)
        await client.aclose()
        return ok

    with FakeOllama(models=[M], script=Script(tokens=TOKENS * 40, token_delay=0.02)) as fake:
        assert asyncio.run(main(fake))


def test_heartbeat_keeps_ticking_while_a_stream_is_read_the_registry_is_locked_and_a_server_is_blackholed(tmp_path):
    """The event loop never waits on SQLite or on a silent server: a 10 ms heartbeat
    keeps ticking through a reply whose first server is blackholed, with the registry
    file locked by another process the whole time."""
    path = tmp_path / "reg.db"
    with FakeOllama(models=[M], script=Script(tokens=TOKENS * 10, token_delay=0.01)) as fake, blackhole_listener() as dead:
        reg = _file_registry(path, [fake])
        reg.add(dead, name="dead", priority=5)
        from aicortex import ModelEntry

        reg.record_refresh(dead, version="0.12.6", models=[ModelEntry(M)], loaded=[M])
        reg.record_refresh(fake.url, version="0.12.6", models=[ModelEntry(M)], loaded=[M])
        reg.close()

        registry = Registry(path, seed=False)

        async def main():
            async with AsyncClient(registry, timeout=FAST, refresh_ttl_s=None) as client:
                gaps = []

                async def heartbeat():
                    last = time.monotonic()
                    while True:
                        await asyncio.sleep(0.01)
                        now = time.monotonic()
                        gaps.append(now - last)
                        last = now

                beat = asyncio.create_task(heartbeat())
                holder = await asyncio.to_thread(LockHolder, path)
                try:
                    t0 = time.monotonic()
                    stream = await client.chat("hi", model=M, stream=True)
                    async with stream:
                        kinds = [e.type async for e in stream]
                    elapsed = time.monotonic() - t0
                finally:
                    await asyncio.to_thread(holder.release)
                beat.cancel()
                return kinds, gaps, elapsed, stream

        kinds, gaps, elapsed, stream = asyncio.run(main())
        registry.close()
    assert kinds[0] == "start" and "error" in kinds and kinds[-1] == "end"
    assert stream.attempts[0].server == dead and stream.server == fake.url
    # The blackhole cost one first-token timeout (1 s), the reply about 0.5 s; the loop
    # never stopped for longer than a fraction of that (a blocked loop would show a gap
    # of a whole timeout).
    assert len(gaps) > 20 and max(gaps) < 0.5, max(gaps)


@pytest.fixture
def caplog_aicortex(caplog):
    caplog.set_level(logging.WARNING, logger="aicortex")
    return caplog


def test_a_read_only_registry_never_breaks_a_reply_and_the_failure_is_logged(tmp_path, client_kind, caplog_aicortex):
    path = tmp_path / "reg.db"
    with FakeOllama(models=[M], script=Script(tokens=TOKENS)) as fake:
        reg = _file_registry(path, [fake])
        with Client(reg) as setup:
            setup.refresh()
        reg.close()
        ro = sqlite_utils.Database(sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False))
        registry = Registry(ro, seed=False)
        client = make_client(client_kind, registry, timeout=FAST, refresh_ttl_s=None)
        try:
            stream = client.chat("hi", model=M, stream=True)
            kinds = [e.type for e in stream]
            assert kinds[-1] == "end" and stream.text() == "".join(TOKENS)
            client.fleet.flush()  # what the background writer does about once a second
            assert client.fleet.storage_errors >= 1
            assert client.fleet.health(fake.url, M).successes == 1  # in memory all the same
            assert any("registry write failed" in r.getMessage() for r in caplog_aicortex.records)
            # A second reply works as well, and the failure is not logged as a warning again.
            warnings = len(caplog_aicortex.records)
            assert client.chat("hi", model=M).text == "".join(TOKENS)
            client.fleet.flush()
            assert len(caplog_aicortex.records) == warnings
        finally:
            client.close()
            ro.close()


def test_a_registry_locked_past_the_busy_timeout_never_delays_end(tmp_path, client_kind, caplog_aicortex):
    path = tmp_path / "reg.db"
    with FakeOllama(models=[M], script=Script(tokens=TOKENS)) as fake:
        reg = _file_registry(path, [fake])
        reg.db.execute("PRAGMA busy_timeout = 300")  # 0.3 s instead of 10 s, to see it expire
        client = make_client(client_kind, reg, timeout=FAST)
        client.refresh()
        holder = LockHolder(path)
        try:
            t0 = time.monotonic()
            stream = client.chat("hi", model=M, stream=True)
            kinds = [e.type for e in stream]
            took = time.monotonic() - t0
            assert kinds[-1] == "end" and stream.text() == "".join(TOKENS)
            assert took < 0.3 or took < stream.ttft_s + 0.3  # end did not wait on the lock
            client.fleet.flush()  # waits the busy timeout in the background writer, then gives up
            assert client.fleet.storage_errors >= 1
            assert any("registry write failed" in r.getMessage() for r in caplog_aicortex.records)
        finally:
            holder.release()
        client.fleet.flush()  # the lock is gone: what was kept in memory is written now
        assert reg.health(fake.url, M).successes == 1
        client.close()
        reg.close()
