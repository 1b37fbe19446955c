"""Circuit breakers, backoff, deadlines and cold/warm timeouts, end to end against
FakeOllama, with breaker state shared through the registry: each test runs once per
store (an SQLite file, then a PostgreSQL database: conftest's ``store_location``)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from aicortex import Client, DeadlineExceeded, Registry, Timeouts
from aicortex.testing import FakeOllama, Script

pytestmark = pytest.mark.timeout(30)

MODEL = "llama3.2"
TOKENS = ("a", " b", " c", " d", " e")
FAST = Timeouts(connect=0.5, first_token=0.8, first_token_cold=0.8, stall=0.8)


@pytest.fixture
def fakes():
    started = []

    def make(n, **kw):
        kw.setdefault("script", Script(tokens=TOKENS))
        new = [FakeOllama(models=[MODEL], **kw).start() for _ in range(n)]
        started.extend(new)
        return new

    yield make
    for f in started:
        f.stop()


def _client(reg_path, fakes, **kw):
    reg = Registry(reg_path, seed=False)
    for i, f in enumerate(fakes):
        if not any(s.url == f.url for s in reg.servers()):
            reg.add(f.url, name=f"s{i}")
    kw.setdefault("timeout", FAST)
    client = Client(reg, spread_load=False, **kw)
    client.refresh()
    return client


def _expire_cooldown(client, url, model=""):
    """Pretend the cooldown is over (what waiting 5 s would do): write what the client
    knows, then shorten the cooldown in the registry (the client reloads it)."""
    client.fleet.flush()
    client.registry.update_health(url, model, lambda h: dataclasses.replace(h, open_until=time.time() - 0.01))


def test_a_server_in_cooldown_is_not_contacted_until_its_half_open_trial(fakes, store_location):
    s0, s1 = fakes(2)
    client = _client(store_location, [s0, s1])
    s0.push(Script(status=500))
    assert client.chat("q", model=MODEL).server == s1.url
    assert client.fleet.health(s0.url, MODEL).failures == 1
    for _ in range(3):  # in cooldown: s0 sees no chat request at all
        assert client.chat("q", model=MODEL).server == s1.url
    assert len(s0.chat_requests) == 1
    assert [s.url for s in client.list_model_servers(MODEL)] == [s1.url, s0.url]  # in cooldown: last
    _expire_cooldown(client, s0.url, MODEL)
    reply = client.chat("q", model=MODEL)  # the half-open trial goes to s0 and closes it
    assert reply.server == s0.url and len(s0.chat_requests) == 2
    assert client.fleet.health(s0.url, MODEL).failures == 0
    client.close()
    client.registry.close()


def test_a_failed_trial_reopens_with_a_longer_cooldown(fakes, store_location):
    s0, s1 = fakes(2)
    client = _client(store_location, [s0, s1])
    s0.kill()
    client.chat("q", model=MODEL)
    first = client.fleet.health(s0.url)
    assert first.failures == 1 and 4 < first.open_until - time.time() <= 5
    _expire_cooldown(client, s0.url)
    assert client.chat("q", model=MODEL).server == s1.url
    second = client.fleet.health(s0.url)
    assert second.failures == 2 and 9 < second.open_until - time.time() <= 10
    client.close()
    client.registry.close()


def test_when_every_candidate_is_in_cooldown_the_soonest_is_tried(fakes, store_location):
    (s0,) = fakes(1)
    client = _client(store_location, [s0])
    s0.push(Script(status=500))
    with pytest.raises(Exception):
        client.chat("q", model=MODEL)
    assert client.chat("q", model=MODEL).server == s0.url  # tried rather than failing untried
    client.close()
    client.registry.close()


def test_two_processes_share_breaker_state_through_the_registry_file(fakes, store_location):
    s0, s1 = fakes(2)
    db = store_location
    client = _client(db, [s0, s1])
    s0.kill()
    other = textwrap.dedent(f"""
        from aicortex import Client, Registry, Timeouts
        with Client(Registry({str(db)!r}, seed=False), timeout=Timeouts.of(0.8), spread_load=False) as c:
            print(c.chat("q", model={MODEL!r}).server)
    """)
    out = subprocess.run([sys.executable, "-c", other], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == s1.url  # the other process hit the dead s0, then s1
    # This process sees the breaker the other one tripped (at its next sync with the
    # registry, about once a second), and does not contact s0.
    client.fleet.sync()
    assert client.fleet.health(s0.url).failures == 1
    s0.start()  # back on its port: would answer if contacted
    reply = client.chat("q", model=MODEL)
    assert reply.server == s1.url and len(reply.attempts) == 1
    assert s0.chat_requests == []
    client.close()
    client.registry.close()


def test_server_busy_is_a_short_backoff_not_a_trip(fakes, store_location):
    s0, s1 = fakes(2)
    client = _client(store_location, [s0, s1])
    s0.push(Script(status=503))
    assert client.chat("q", model=MODEL).server == s1.url
    h = client.fleet.health(s0.url)
    assert h.failures == 0 and 0 < h.open_until - time.time() <= 2
    client.fleet.flush()
    assert "server busy" in client.registry.get(s0.url).last_error
    client.close()
    client.registry.close()


def test_breaking_out_of_a_stream_is_no_penalty(fakes, store_location):
    (s0,) = fakes(1, script=Script(tokens=TOKENS * 20, token_delay=0.02))
    client = _client(store_location, [s0])
    for event in client.chat("q", model=MODEL, stream=True):
        if event.type == "token":
            break
    del event
    assert s0.wait_for_disconnect()
    assert client.fleet.health(s0.url) == client.fleet.health(s0.url).__class__()
    assert client.fleet.health(s0.url, MODEL).failures == 0
    client.close()
    client.registry.close()


def test_success_records_ewma_metrics(fakes, store_location):
    (s0,) = fakes(1)
    client = _client(store_location, [s0])
    client.chat("q", model=MODEL)
    client.chat("q", model=MODEL)
    h = client.fleet.health(s0.url, MODEL)
    assert h.successes == 2 and h.ewma_ttft_s > 0 and h.ewma_tps > 0 and h.ewma_server_tps > 0
    client.close()
    client.registry.close()


def test_deadline_ends_the_request_and_says_so(fakes, store_location):
    s0, s1 = fakes(2, script=Script(blackhole=True))
    client = _client(store_location, [s0, s1], timeout=Timeouts(connect=1, first_token=5, first_token_cold=5, stall=5, deadline=0.6))
    t0 = time.perf_counter()
    stream = client.chat("q", model=MODEL, stream=True)
    with pytest.raises(DeadlineExceeded, match="deadline of 0.6 s") as info:
        list(stream)
    assert time.perf_counter() - t0 < 3
    assert info.value.deadline_s == 0.6 and len(info.value.attempts) >= 1
    assert "deadline" in [e for e in stream.events if e.type == "error"][-1].content
    client.close()
    client.registry.close()


def test_cold_models_get_the_longer_first_token_timeout(fakes, store_location):
    warm, cold = fakes(2, script=Script(tokens=TOKENS, first_token_delay=0.6))
    cold.loaded = []
    timeouts = Timeouts(connect=1, first_token=0.3, first_token_cold=3, stall=1)
    client = _client(store_location, [warm, cold], timeout=timeouts)
    stream = client.chat("q", model=MODEL, stream=True)
    events = list(stream)
    err = next(e for e in events if e.type == "error")
    assert err.server == warm.url and "first-token timeout of 0.3 s" in err.content
    assert stream.server == cold.url and stream.text() == "".join(TOKENS)
    client.close()
    client.registry.close()


def test_many_threads_share_one_client_and_registry_file(fakes, store_location):
    s0, s1 = fakes(2)
    client = _client(store_location, [s0, s1])
    s0.kill()
    errors, texts = [], []

    def work():
        try:
            for _ in range(5):
                texts.append(client.chat("q", model=MODEL).text)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and texts == ["".join(TOKENS)] * 40
    client.close()
    client.registry.close()


def test_another_processs_breaker_trip_reaches_this_process_by_itself(fakes, store_location):
    """The fleet view reloads what other processes wrote about once a second, with no
    call from the caller: after another process trips s0's breaker, this process stops
    sending to s0 on its own."""
    s0, s1 = fakes(2)
    db = store_location
    client = _client(db, [s0, s1])
    s0.kill()
    other = textwrap.dedent(f"""
        from aicortex import Client, Registry, Timeouts
        with Client(Registry({str(db)!r}, seed=False), timeout=Timeouts.of(0.8), spread_load=False) as c:
            print(c.chat("q", model={MODEL!r}).server)
    """)
    out = subprocess.run([sys.executable, "-c", other], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.strip() == s1.url, out.stderr
    waited = time.monotonic()
    while client.fleet.health(s0.url).failures == 0 and time.monotonic() - waited < 10:
        time.sleep(0.05)  # the background thread syncs about once a second
    assert client.fleet.health(s0.url).failures == 1
    s0.start()
    assert client.chat("q", model=MODEL).server == s1.url and s0.chat_requests == []
    client.close()
    client.registry.close()
