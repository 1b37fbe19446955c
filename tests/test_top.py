"""``aicortex top``: one frame rendered to a string from a registry and live FakeOllama
/api/ps replies (no screenshots); rich is a test extra, so these fail without it."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from aicortex import AllServersFailed, Client, Registry
from aicortex._hedge import TTFT_WINDOWS
from aicortex.cli import cli
from aicortex.testing import FakeOllama, Script
from aicortex.top import _ms, acollect, collect, render_text

MODEL = "llama3.2"
TOKENS = ("The", " sky", " is", " blue", ".")


@pytest.fixture
def fleet():
    """warm (model loaded), cold (not loaded, fails its chats) and gone (stopped after the
    refresh), in one registry, with a sync client that used them."""
    warm = FakeOllama(models=[MODEL], script=Script(tokens=TOKENS, token_delay=0.002)).start()
    cold = FakeOllama(models=[MODEL], loaded=[], script=Script(status=500)).start()
    gone = FakeOllama(models=[MODEL]).start()
    reg = Registry.memory()
    for name, fake, priority in (("warm", warm, 3), ("cold", cold, 2), ("gone", gone, 1)):
        reg.add(fake.url, name=name, priority=priority)
    client = Client(reg, timeout=2.0, probe_timeout_s=1.0, spread_load=False)
    client.refresh()
    for _ in range(5):
        assert client.chat("Why?", model=MODEL).server == warm.url
    with pytest.raises(AllServersFailed):
        client.chat("Why?", model=MODEL, servers=["cold"])  # its breaker opens
    gone.stop()
    yield client, warm, cold, gone
    client.close()
    reg.close()
    warm.stop()
    cold.stop()


def _row(frame, name):
    return next(r for r in frame.rows if r.name == name)


def test_one_frame_shows_state_breaker_loaded_models_and_ttft(fleet):
    client, warm, cold, gone = fleet
    frame = collect(client)
    w, c, g = _row(frame, "warm"), _row(frame, "cold"), _row(frame, "gone")
    assert (w.state, w.breaker, w.loaded, w.inflight) == ("up", "closed", ("llama3.2:latest",), 0)
    assert w.ttft_source == "recent" and w.samples >= 5 and 0 < w.ttft_p50_s <= w.ttft_p95_s
    assert w.ewma_ttft_s is not None and w.tokens_per_second is not None
    assert (c.state, c.breaker, c.loaded) == ("up", "open", ())
    assert 0 < c.cooldown_s <= 5.0
    assert g.state == "down" and g.error
    text = render_text(frame, width=200)
    lines = {name: next(line for line in text.splitlines() if f" {name} " in line) for name in ("warm", "cold", "gone")}
    assert "up" in lines["warm"] and "closed" in lines["warm"] and "llama3.2:latest" in lines["warm"]
    assert _ms(w.ttft_p50_s) + " r" in lines["warm"]
    assert "open" in lines["cold"] and "llama3.2" not in lines["cold"]
    assert "down" in lines["gone"]
    assert "1 of 3 servers up" not in text and "2 of 3 servers up" in text


def test_without_recent_replies_the_last_bench_gives_the_quantiles(fleet):
    client, warm, cold, gone = fleet
    client.bench(MODEL, runs=3)  # cold fails its runs, gone is down: warm gets figures
    TTFT_WINDOWS.clear()  # as in a process that sent no chat: `aicortex top` on its own
    row = _row(collect(client, inflight=False), "warm")
    assert row.ttft_source == "bench" and row.ttft_p50_s is not None and row.inflight is None
    assert " b" in render_text(collect(client, inflight=False))


def test_the_live_view_refreshes_and_survives_a_failed_refresh(fleet, monkeypatch):
    import io

    from rich.console import Console

    from aicortex import RegistryError, top

    client = fleet[0]
    calls = {"collect": 0, "sleep": 0}
    real = top.collect

    def flaky(c, **kw):
        calls["collect"] += 1
        if calls["collect"] == 3:
            raise RegistryError("database is locked")
        return real(c, **kw)

    def sleep(seconds):
        calls["sleep"] += 1
        if calls["sleep"] == 3:
            raise KeyboardInterrupt  # Ctrl-C: run() returns

    monkeypatch.setattr(top, "collect", flaky)
    monkeypatch.setattr(top, "_sleep", sleep)
    out = io.StringIO()
    top.run(client, interval_s=0.01, console=Console(file=out, width=200, color_system=None))
    assert calls == {"collect": 3, "sleep": 3}
    text = out.getvalue()
    assert "refresh failed: database is locked" in text and "warm" in text  # the last good frame stays


def test_the_async_client_collects_the_same_frame(fleet):
    import asyncio

    from aicortex import AsyncClient

    client, warm, cold, gone = fleet
    client.fleet.flush()  # what the sync client's background writer does about once a second

    async def main():
        async with AsyncClient(client.registry, probe_timeout_s=1.0) as aclient:
            return await acollect(aclient)

    frame = asyncio.run(main())
    assert [r.state for r in frame.rows] == ["up", "up", "down"]
    assert _row(frame, "cold").breaker == "open"


def test_the_command_prints_one_frame(tmp_path):
    db = tmp_path / "servers.db"
    with FakeOllama(models=[MODEL]) as fake:
        with Registry(db, seed=False) as reg:
            reg.add(fake.url, name="gpu1")
        result = CliRunner(env={"COLUMNS": "160"}).invoke(cli, ["top", "--once", "--db", str(db)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "gpu1" in result.output and "up" in result.output and "llama3.2:latest" in result.output
    assert "1 of 1 servers up" in result.output


def test_with_a_postgresql_registry_in_flight_counts_every_process(pg_url):
    """Another process's request in flight (its lease in PostgreSQL) shows in a view that
    sent nothing itself; on SQLite the standalone view cannot know, and says '-'."""
    import threading

    from aicortex.top import shares_inflight

    with FakeOllama(models=[MODEL], script=Script(tokens=TOKENS, first_token_delay=3.0)) as slow:
        with Registry(pg_url, seed=False) as reg:
            reg.add(slow.url, name="slow")
        busy = Client(pg_url, refresh_ttl_s=None, timeout=10)  # "another process"
        viewer = Client(pg_url, refresh_ttl_s=None, probe_timeout_s=1.0)
        try:
            busy.refresh()
            stream = busy.chat("Why?", model=MODEL, stream=True)
            reader = threading.Thread(target=lambda: [None for _ in stream], daemon=True)
            reader.start()
            assert slow.wait_for_requests(1, "/api/chat")
            busy.fleet.sync()  # its lease is written (the background writer does it every second)
            assert shares_inflight(viewer)
            row = _row(collect(viewer), "slow")
            assert row.inflight == 1 and viewer.fleet.inflight(slow.url) == 0
            reader.join(15)  # the reply ends after its 3 s first token
            assert stream.complete
        finally:
            busy.close()
            viewer.close()
    assert not shares_inflight(Client(Registry.memory()))
