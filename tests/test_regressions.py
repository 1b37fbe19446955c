"""Regression tests for bugs found in review (each failed before its fix).

Each test's comment names the file and the defect it guards against. Real loopback
FakeOllama servers, no mocks of aicortex code.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import threading
import time

import pytest

from aicortex import AllServersFailed, Client, DeadlineExceeded, Registry, Timeouts
from aicortex.testing import CHATML_TEMPLATE, FakeOllama, Script

pytestmark = pytest.mark.timeout(60)

M = "llama3.2"
TOK = ("The", " sky", " is", " blue", ".")
FAST = Timeouts(connect=0.5, first_token=1.0, first_token_cold=1.0, stall=0.5)


@pytest.fixture
def fleet():
    made = []

    def make(*scripts, timeout=FAST, registry=None):
        # A script that ignores the prefill runs on a server whose /api/show template
        # says so (a ChatML-style template closes every turn).
        fakes = [
            FakeOllama(models=[M], script=s, **({} if s.continue_prefill else {"template": CHATML_TEMPLATE})).start()
            for s in scripts
        ]
        reg = registry or Registry.memory()
        for i, f in enumerate(fakes):
            reg.add(f.url, name=f"s{i}")
        client = Client(reg, timeout=timeout)
        client.refresh()
        made.append((client, reg, fakes))
        return client, reg, fakes

    yield make
    for client, reg, fakes in made:
        client.close()
        reg.close()
        for f in fakes:
            f.stop()


# 1. _session.py: the deadline is only checked between attempts (next_attempt/end_attempt);
#    the stall limit is capped by the remaining budget *per read*, so a reply that keeps
#    flowing runs past Timeouts.deadline ("total budget for the whole request").
def test_review_deadline_is_enforced_while_tokens_flow(fleet):
    tokens = tuple(f"t{i} " for i in range(20))
    client, _, _ = fleet(Script(tokens=tokens, token_delay=0.1), timeout=Timeouts(deadline=0.5))
    t0 = time.perf_counter()
    with pytest.raises(DeadlineExceeded):  # before the fix: the 2 s reply completes, nothing raised
        client.chat("hi", model=M)
    assert time.perf_counter() - t0 < 1.0


# 2. _session.py _handle/_flush_held: on a continuation, a server that ignores the prefill and
#    regenerates exactly the kept text before `done` has all of it held back as a possible
#    repeat; the done chunk then *flushes* it, so the whole reply is repeated.
@pytest.mark.parametrize("first", [Script(tokens=TOK, drop_after=5), Script(tokens=TOK, end_without_done_after=5)])
def test_review_ignored_prefill_after_the_whole_reply_is_not_repeated(fleet, first):
    client, _, _ = fleet(first, Script(tokens=TOK, continue_prefill=False))
    assert client.chat("hi", model=M).text == "The sky is blue."  # before the fix: "The sky is blue.The sky is blue."


# 3. _session.py _handle: the prefix de-dup covers content only. A server that ignores the
#    prefill restarts with its thinking, which is appended again to the kept thinking.
def test_review_ignored_prefill_does_not_repeat_thinking(fleet):
    think = ("Let me", " think")
    client, _, _ = fleet(
        Script(thinking=think, tokens=TOK, drop_after=2),
        Script(thinking=think, tokens=TOK, continue_prefill=False),
    )
    reply = client.chat("hi", model=M)
    assert reply.text == "The sky is blue."
    assert reply.thinking == "Let me think"  # before the fix: "Let me thinkLet me think"


# 4. _session.py _emit_content: a *normal* continuation whose first chunks spell the kept text
#    is taken for a restart and the kept-length prefix is cut: a word is lost.
def test_review_normal_continuation_that_starts_like_the_kept_text_is_not_cut(fleet):
    tok = ("ha", "ha", "ha", "!")
    client, _, _ = fleet(Script(tokens=tok, drop_after=1), Script(tokens=tok))  # the 2nd honours the prefill
    assert client.chat("hi", model=M).text == "hahaha!"  # before the fix: "haha!"


# 5. _client.py _claim_trial: a request routed while the breaker was half-open only claims if the
#    breaker is *still* half-open; once another request claimed the trial the state is "open" and
#    the function returns True, so both requests hit the recovering server ("exactly one request").
def test_review_half_open_breaker_admits_only_one_trial(fleet):
    from aicortex._health import Health

    client, reg, (fake,) = fleet(Script(tokens=("a", "b", "c"), token_delay=0.2), timeout=Timeouts())
    reg.update_health(fake.url, "", lambda h: Health(failures=1, open_until=time.time() - 1))
    s1 = client.chat("hi", model=M, stream=True)
    s2 = client.chat("hi", model=M, stream=True)  # routed, like s1, while half-open
    try:
        next(s1), next(s1)  # s1 holds the trial, mid-reply
        try:
            next(s2), next(s2)
        except AllServersFailed:
            pass
        in_flight = [r for r in fake.chat_requests if not r.completed]
        assert len(in_flight) == 1  # before the fix: 2 concurrent trials
    finally:
        s1.close()
        s2.close()


# 6. _stream.py _drive: on_attempt (breaker + EWMA bookkeeping) runs only after the "end"/"error"
#    events were consumed *and the generator resumed*. A caller that stops at "end" never records
#    the success: a half-open server stays blocked (trial window) and no TTFT is learnt.
def test_review_success_is_recorded_when_the_caller_stops_at_the_end_event(fleet):
    from aicortex._health import Health

    client, reg, (fake,) = fleet(Script(), timeout=Timeouts())
    reg.update_health(fake.url, "", lambda h: Health(failures=1, open_until=time.time() - 1))
    with client.chat("hi", model=M, stream=True) as s:
        for ev in s:
            if ev.type == "end":
                break
    assert client.fleet.health(fake.url).failures == 0  # before the fix: still 1, and open_until = now + 30
    assert client.fleet.health(fake.url, M).successes == 1  # before the fix: 0
    client.fleet.flush()  # and the registry gets it with the next batch
    assert reg.health(fake.url).failures == 0 and reg.health(fake.url, M).successes == 1


# 7. _client.py _record_attempt -> Registry.update_health -> _row raises RegistryError when the
#    server was removed (e.g. `aicortex servers remove` in another process) while a chat was in
#    flight: a reply that completed is turned into an exception (and a failed attempt would
#    raise instead of failing over).
def test_review_removing_a_server_mid_chat_does_not_break_a_completed_reply(fleet):
    client, reg, _ = fleet(Script(tokens=("a", "b", "c"), token_delay=0.05), timeout=Timeouts())
    s = client.chat("hi", model=M, stream=True)
    for ev in s:
        if ev.type == "token" and ev.index == 0:
            reg.remove("s0")
    assert s.text() == "abc"  # before the fix: RegistryError after the "end" event


# 8. _registry.py _setup: migrations and seeding of a *new* file run in deferred transactions
#    with no cross-process lock, so processes that open a fresh registry at the same time fail
#    with "database is locked" / "table ... already exists" (typically 5 of 6 fail).
def _open_registry(path, barrier, queue):
    barrier.wait()
    try:
        Registry(path).close()
        queue.put("ok")
    except Exception as exc:  # noqa: BLE001
        queue.put(f"{type(exc).__name__}: {exc}")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_review_processes_can_open_a_new_registry_file_together(tmp_path):
    ctx = multiprocessing.get_context("fork")
    n = 6
    barrier, queue = ctx.Barrier(n), ctx.Queue()
    path = str(tmp_path / "servers.db")
    procs = [ctx.Process(target=_open_registry, args=(path, barrier, queue)) for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    results = [queue.get(timeout=5) for _ in procs]
    assert results == ["ok"] * n, results


# 9. _transport.py _translate: httpx.PoolTimeout (our own pool of 100 connections is full) is
#    reported as "connect timeout: no connection within X s" from the *server*, counted as a
#    server failure and trips its breaker in the shared registry, though the server is healthy.
def test_review_local_pool_exhaustion_does_not_trip_a_healthy_server(fleet):
    client, reg, (fake,) = fleet(Script(tokens=("a",) * 50, token_delay=0.2), timeout=Timeouts(connect=0.5))
    streams = []
    try:
        for _ in range(100):
            s = client.chat("hi", model=M, stream=True)
            next(s), next(s)
            streams.append(s)
        with pytest.raises(AllServersFailed):
            client.chat("hi", model=M)
        client.fleet.flush()
        assert reg.health(fake.url).failures == 0  # before the fix: 1, breaker open for everyone
    finally:
        for s in streams:
            s.close()


# 10. _stream.py _drive: after the done chunk the loop `break`s before the chunked body's
#     terminator is read, so httpcore closes the connection: no chat ever reuses a keep-alive
#     connection (a new TCP/TLS handshake per request).
class _CountingProxy:
    """A loopback TCP forwarder that counts accepted connections."""

    def __init__(self, target_port: int):
        self.accepted = 0
        self._socks: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._target = target_port
        self._ls = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._ls.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self._ls.accept()
            except OSError:
                return
            self.accepted += 1
            u = socket.create_connection(("127.0.0.1", self._target))
            self._socks += [c, u]
            for a, b in ((c, u), (u, c)):
                t = threading.Thread(target=self._pipe, args=(a, b), daemon=True)
                self._threads.append(t)
                t.start()

    @staticmethod
    def _pipe(a, b):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self._ls.close()
        for s in self._socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self._threads:
            t.join(2)
        for s in self._socks:
            s.close()


def test_review_chats_reuse_a_keep_alive_connection():
    fake = FakeOllama(models=[M]).start()
    proxy = _CountingProxy(fake.port)
    reg = Registry.memory()
    reg.add(proxy.url)
    client = Client(reg)
    try:
        client.refresh()
        before = proxy.accepted
        for _ in range(3):
            client.chat("hi", model=M)
        # The refresh's idle connection should serve all three chats; today the 1st chat reuses
        # it and closes it, and chats 2 and 3 each open a new connection.
        assert proxy.accepted == before
    finally:
        client.close()
        reg.close()
        proxy.close()
        fake.stop()


# 11. _client.py chat / _config.py Timeouts.of: a per-request ``timeout={...}`` dict is applied to
#     the *default* Timeouts(), not to the client's: chat(timeout={"deadline": 60}) silently
#     resets connect/first_token/stall to 2/30/30 ("overrides the client's Timeouts").
def test_review_per_request_timeout_dict_keeps_the_client_limits(fleet):
    client, _, _ = fleet(Script(first_token_delay=3), timeout=Timeouts(connect=0.5, first_token=1.0, stall=1.0))
    t0 = time.perf_counter()
    with pytest.raises(AllServersFailed):  # before the fix: waits 3 s and succeeds (first_token back to 30)
        client.chat("hi", model=M, timeout={"deadline": 60})
    assert time.perf_counter() - t0 < 2.0


# 12. _stream.py Stream.text/reply: "Raises what iteration raises (e.g. AllServersFailed)" - only
#     the first time. Afterwards text() returns the partial text and reply() a Reply with
#     server "" as if the chat had succeeded.
def test_review_text_after_a_failed_stream_raises_again(fleet):
    client, _, _ = fleet(Script(tokens=("a", "b", "c"), drop_after=2))
    s = client.chat("hi", model=M, stream=True, on_midstream="restart")
    with pytest.raises(AllServersFailed):
        s.text()
    with pytest.raises(AllServersFailed):  # before the fix: returns "ab"
        s.reply()


# 13. _fleet.py FleetView.flush: a breaker change wakes the background thread, which takes the
#     pending outcomes and writes them; a flush() called meanwhile found nothing pending and
#     returned before that write was committed, so the registry did not yet show what the
#     caller had just flushed (seen as a flaky test_server_busy_is_a_short_backoff_not_a_trip).
def test_flush_waits_for_a_background_flush_under_way():
    from aicortex import Registry
    from aicortex._fleet import FleetView
    from aicortex._health import Outcome

    class SlowStore:
        def __init__(self, reg):
            self.reg, self.started, self.release = reg, threading.Event(), threading.Event()

        def __getattr__(self, name):
            return getattr(self.reg, name)

        def apply_outcomes(self, outcomes):
            self.started.set()
            assert self.release.wait(10)
            self.reg.apply_outcomes(outcomes)

    reg = Registry.memory()
    reg.add("http://gpu1:11434")
    store = SlowStore(reg)
    view = FleetView(store, reload_s=3600)
    try:
        view.record(Outcome(server="http://gpu1:11434", model="m", kind="failure", scope="server", at=time.time(), error="x"))
        assert store.started.wait(10)  # the background thread is writing the batch
        done = threading.Event()
        waiter = threading.Thread(target=lambda: (view.flush(), done.set()))
        waiter.start()
        assert not done.wait(0.3)  # before the fix: returns at once, nothing written yet
        store.release.set()
        waiter.join(10)
        assert done.is_set() and reg.health("http://gpu1:11434").failures == 1
    finally:
        store.release.set()
        view.close()
        reg.close()
